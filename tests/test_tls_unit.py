"""Unit tests of sockcat.net.tls: fingerprints, self-signed certificates and real TLS handshakes on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sockcat.core.errors import UsageError
from sockcat.net.tls import (
    SelfSigned,
    client_context,
    fingerprint_sha256,
    self_signed,
    server_context,
)

OPENSSL = "/usr/bin/openssl"
TIMEOUT = 5.0


# -- helpers -------------------------------------------------------------------------------------------


def openssl_fingerprint(pem_path: Path) -> str:
    # Deliberately not skipped when openssl is missing: the comparison is the point of the test.
    assert os.path.exists(OPENSSL), f"{OPENSSL} is required for this test"
    out = subprocess.run(
        [OPENSSL, "x509", "-noout", "-fingerprint", "-sha256", "-in", str(pem_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    label, _, value = out.partition("=")
    assert label.lower() == "sha256 fingerprint", out
    return value


@dataclass
class Exchange:
    """What both ends of one loopback TLS connection saw."""

    server_cert_der: bytes | None = None  # the server's certificate, as the client saw it
    client_cert_der: bytes | None = None  # the client's certificate, as the server saw it
    server_got: bytes = b""
    client_got: bytes = b""
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    versions: list[str | None] = field(default_factory=list)


def handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    server_hostname: str | None = "localhost",
    connect_host: str = "127.0.0.1",
) -> Exchange:
    """Run one TLS connection over loopback TCP (server in a thread); exchange a few bytes both ways."""
    result = Exchange()
    family = socket.AF_INET6 if ":" in connect_host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.settimeout(TIMEOUT)
    listener.bind((connect_host, 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                result.client_cert_der = tls.getpeercert(binary_form=True)
                result.versions.append(tls.version())
                data = b""
                while not data.endswith(b"\n"):
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                result.server_got = data
                tls.sendall(b"pong:" + data)
        except (OSError, ValueError) as exc:
            result.server_error = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection((connect_host, port), timeout=TIMEOUT) as raw:
            raw.settimeout(TIMEOUT)
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                result.server_cert_der = tls.getpeercert(binary_form=True)
                result.versions.append(tls.version())
                tls.sendall(b"ping\n")
                data = b""
                while True:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                result.client_got = data
    except (OSError, ValueError) as exc:
        result.client_error = exc
    finally:
        thread.join(TIMEOUT + 1)
        listener.close()
    assert not thread.is_alive(), "server thread hung"
    return result


def assert_ok(ex: Exchange) -> None:
    assert ex.server_error is None, repr(ex.server_error)
    assert ex.client_error is None, repr(ex.client_error)
    assert ex.server_got == b"ping\n"
    assert ex.client_got == b"pong:ping\n"
    assert all(v in ("TLSv1.2", "TLSv1.3") for v in ex.versions), ex.versions


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def server_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    for i, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(cert), append=i > 0)
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@pytest.fixture
def client_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    leaf = ca.issue_cert("client@example.org")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    for i, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(cert), append=i > 0)
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def write_self_signed(tmp_path: Path, ss: SelfSigned, combined: bool = False) -> tuple[str, str]:
    cert, key = tmp_path / "ss.pem", tmp_path / "ss.key"
    if combined:
        cert.write_bytes(ss.cert_pem + ss.key_pem)
        return str(cert), str(cert)
    cert.write_bytes(ss.cert_pem)
    key.write_bytes(ss.key_pem)
    return str(cert), str(key)


# -- fingerprints and self-signed certificates ---------------------------------------------------------


def test_fingerprint_matches_openssl_self_signed(tmp_path: Path) -> None:
    ss = self_signed(["example.test"])
    pem = tmp_path / "cert.pem"
    pem.write_bytes(ss.cert_pem)
    der = ssl.PEM_cert_to_DER_cert(ss.cert_pem.decode("ascii"))
    assert fingerprint_sha256(der) == ss.fingerprint
    assert ss.fingerprint == openssl_fingerprint(pem)


def test_fingerprint_matches_openssl_trustme(ca: trustme.CA, tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    der = ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode("ascii"))
    fp = fingerprint_sha256(der)
    assert fp == openssl_fingerprint(pem)
    parts = fp.split(":")
    assert len(parts) == 32 and all(len(p) == 2 and p == p.upper() for p in parts)


def test_self_signed_contents() -> None:
    ss = self_signed(["example.test", "192.0.2.7", "[2001:db8::1]", "localhost"])
    cert = x509.load_pem_x509_certificate(ss.cert_pem)
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["example.test"]
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.test", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("2001:db8::1"),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    now = datetime.datetime.now(datetime.UTC)
    assert now - datetime.timedelta(hours=1, minutes=1) < cert.not_valid_before_utc < now
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(lifetime - datetime.timedelta(days=30, hours=1)) < datetime.timedelta(seconds=5)
    assert b"PRIVATE KEY" in ss.key_pem
    assert self_signed([]).fingerprint != ss.fingerprint  # fresh key and serial every time


def test_self_signed_defaults_and_serials() -> None:
    a, b = self_signed(()), self_signed(())
    ca_, cb = x509.load_pem_x509_certificate(a.cert_pem), x509.load_pem_x509_certificate(b.cert_pem)
    cn = ca_.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == "localhost"
    assert ca_.serial_number != cb.serial_number
    san = ca_.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    with pytest.raises(AttributeError):
        a.fingerprint = "x"  # type: ignore[misc]


# -- context settings ------------------------------------------------------------------------------------


def test_client_context_defaults_and_insecure() -> None:
    ctx = client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    loose = client_context(insecure=True)
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
    assert loose.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_server_context_settings(ca_file: str) -> None:
    ctx, fp = server_context()
    assert fp is not None and len(fp) == 95
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    ctx, _ = server_context(ca=ca_file)
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_server_context_removes_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    server_context(hosts=["example.test"])
    assert list(scratch.iterdir()) == []


# -- real handshakes -------------------------------------------------------------------------------------


def test_self_signed_server_insecure_client() -> None:
    server_ctx, fp = server_context()
    assert fp is not None
    ex = handshake(server_ctx, client_context(insecure=True))
    assert_ok(ex)
    assert ex.server_cert_der is not None
    assert fingerprint_sha256(ex.server_cert_der) == fp


def test_self_signed_server_rejected_by_default_verification() -> None:
    server_ctx, _ = server_context()
    ex = handshake(server_ctx, client_context())
    assert isinstance(ex.client_error, ssl.SSLCertVerificationError), repr(ex.client_error)
    assert ex.server_got == b""


def test_self_signed_server_pinned_with_ca(tmp_path: Path) -> None:
    server_ctx, fp = server_context()
    # Fetch the server's generated certificate once, then trust exactly that certificate.
    first = handshake(server_ctx, client_context(insecure=True))
    assert_ok(first)
    assert first.server_cert_der is not None and fingerprint_sha256(first.server_cert_der) == fp
    pinned = tmp_path / "pinned.pem"
    pinned.write_text(ssl.DER_cert_to_PEM_cert(first.server_cert_der))
    ex = handshake(server_ctx, client_context(ca=str(pinned)), server_hostname="localhost")
    assert_ok(ex)
    ex = handshake(server_ctx, client_context(ca=str(pinned)), server_hostname="127.0.0.1")
    assert_ok(ex)
    # The certificate is for localhost/127.0.0.1/::1 only: another name fails the host-name check.
    ex = handshake(server_ctx, client_context(ca=str(pinned)), server_hostname="other.example")
    assert isinstance(ex.client_error, ssl.SSLCertVerificationError), repr(ex.client_error)


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 support")
def test_self_signed_server_over_ipv6(tmp_path: Path) -> None:
    ss = self_signed([])
    cert, key = write_self_signed(tmp_path, ss)
    pinned = tmp_path / "pinned.pem"
    pinned.write_bytes(ss.cert_pem)
    server_ctx, _ = server_context(cert=cert, key=key)
    try:
        ex = handshake(server_ctx, client_context(ca=str(pinned)), server_hostname="::1", connect_host="::1")
    except OSError as exc:  # e.g. ::1 not configured in a container
        pytest.skip(f"no IPv6 loopback: {exc}")
    assert_ok(ex)


def test_self_signed_files_loaded_as_cert(tmp_path: Path) -> None:
    ss = self_signed(["example.test"])
    pinned = tmp_path / "pinned.pem"
    pinned.write_bytes(ss.cert_pem)
    for combined in (False, True):
        cert, key = write_self_signed(tmp_path, ss, combined=combined)
        server_ctx, fp = server_context(cert=cert, key=None if combined else key)
        assert fp is None
        ex = handshake(server_ctx, client_context(ca=str(pinned)), server_hostname="example.test")
        assert_ok(ex)
        assert ex.server_cert_der is not None and fingerprint_sha256(ex.server_cert_der) == ss.fingerprint


def test_trustme_server_verified_with_ca(server_files: tuple[str, str], ca_file: str) -> None:
    cert, key = server_files
    server_ctx, fp = server_context(cert=cert, key=key)
    assert fp is None
    assert_ok(handshake(server_ctx, client_context(ca=ca_file)))
    assert_ok(handshake(server_ctx, client_context(ca=ca_file), server_hostname="127.0.0.1"))
    # The system store does not know trustme's CA.
    ex = handshake(server_ctx, client_context())
    assert isinstance(ex.client_error, ssl.SSLCertVerificationError), repr(ex.client_error)


def test_ca_directory(server_files: tuple[str, str], ca: trustme.CA, tmp_path: Path) -> None:
    cadir = tmp_path / "cadir"
    cadir.mkdir()
    (cadir / "ca.pem").write_bytes(ca.cert_pem.bytes())
    assert os.path.exists(OPENSSL), f"{OPENSSL} is required for this test"
    subject_hash = subprocess.run(
        [OPENSSL, "x509", "-noout", "-hash", "-in", str(cadir / "ca.pem")],
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    (cadir / f"{subject_hash}.0").write_bytes(ca.cert_pem.bytes())
    cert, key = server_files
    server_ctx, _ = server_context(cert=cert, key=key)
    assert_ok(handshake(server_ctx, client_context(ca=str(cadir))))


def test_client_certificate_required_and_verified(
    server_files: tuple[str, str], client_files: tuple[str, str], ca_file: str
) -> None:
    cert, key = server_files
    server_ctx, _ = server_context(cert=cert, key=key, ca=ca_file)
    ccert, ckey = client_files
    ex = handshake(server_ctx, client_context(ca=ca_file, cert=ccert, key=ckey))
    assert_ok(ex)
    assert ex.client_cert_der is not None
    seen = x509.load_der_x509_certificate(ex.client_cert_der)
    expected = x509.load_pem_x509_certificate(Path(ccert).read_bytes())
    assert seen == expected


def test_client_certificate_missing_is_rejected(server_files: tuple[str, str], ca_file: str) -> None:
    cert, key = server_files
    server_ctx, _ = server_context(cert=cert, key=key, ca=ca_file)
    ex = handshake(server_ctx, client_context(ca=ca_file))
    assert isinstance(ex.server_error, ssl.SSLError), repr(ex.server_error)
    assert ex.server_got == b"" and ex.client_got == b""


def test_client_certificate_from_other_ca_is_rejected(
    server_files: tuple[str, str], ca_file: str, tmp_path: Path
) -> None:
    other = trustme.CA().issue_cert("intruder@example.org")
    ccert = tmp_path / "intruder.pem"
    other.cert_chain_pems[0].write_to_path(str(ccert))
    other.private_key_pem.write_to_path(str(ccert), append=True)  # combined file: key defaults to cert
    cert, key = server_files
    server_ctx, _ = server_context(cert=cert, key=key, ca=ca_file)
    ex = handshake(server_ctx, client_context(ca=ca_file, cert=str(ccert)))
    assert isinstance(ex.server_error, ssl.SSLCertVerificationError), repr(ex.server_error)
    assert ex.server_got == b""


# -- bad inputs --------------------------------------------------------------------------------------------


def one_line_naming(exc: pytest.ExceptionInfo[UsageError], path: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert repr(path) in msg, msg
    return msg


def test_missing_files(tmp_path: Path, server_files: tuple[str, str]) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(UsageError) as exc:
        server_context(cert=missing)
    assert one_line_naming(exc, missing) == f"cannot load certificate {missing!r}: no such file"
    cert, _ = server_files
    with pytest.raises(UsageError) as exc:
        server_context(cert=cert, key=missing)
    assert one_line_naming(exc, missing) == f"cannot load private key {missing!r}: no such file"
    with pytest.raises(UsageError) as exc:
        server_context(ca=missing)
    one_line_naming(exc, missing)
    with pytest.raises(UsageError) as exc:
        client_context(ca=missing)
    one_line_naming(exc, missing)
    with pytest.raises(UsageError) as exc:
        client_context(cert=missing)
    one_line_naming(exc, missing)


def test_garbage_pem(tmp_path: Path, server_files: tuple[str, str]) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    g = str(garbage)
    cert, key = server_files
    with pytest.raises(UsageError) as exc:
        server_context(cert=g, key=key)
    assert "certificate" in one_line_naming(exc, g)
    with pytest.raises(UsageError) as exc:
        server_context(cert=cert, key=g)
    assert "private key" in one_line_naming(exc, g)
    with pytest.raises(UsageError) as exc:
        server_context(cert=cert, key=key, ca=g)
    one_line_naming(exc, g)
    with pytest.raises(UsageError) as exc:
        client_context(ca=g)
    one_line_naming(exc, g)
    with pytest.raises(UsageError) as exc:
        client_context(cert=g)
    one_line_naming(exc, g)
    with pytest.raises(UsageError) as exc:
        client_context(cert=cert)  # a certificate without its key
    one_line_naming(exc, cert)
    with pytest.raises(UsageError) as exc:
        server_context(cert=str(tmp_path))  # a directory
    one_line_naming(exc, str(tmp_path))


def test_key_mismatch(tmp_path: Path, server_files: tuple[str, str]) -> None:
    cert, _ = server_files
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(UsageError) as exc:
        server_context(cert=cert, key=str(other_key))
    assert "does not match" in one_line_naming(exc, str(other_key))
    with pytest.raises(UsageError):
        client_context(cert=cert, key=str(other_key))


def test_encrypted_key_is_rejected_without_prompting(tmp_path: Path) -> None:
    ss = self_signed([])
    key = serialization.load_pem_private_key(ss.key_pem, password=None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cert = tmp_path / "cert.pem"
    cert.write_bytes(ss.cert_pem)
    with pytest.raises(UsageError) as exc:
        server_context(cert=str(cert), key=str(enc))
    assert "passphrase" in one_line_naming(exc, str(enc))


def test_usage_error_is_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        client_context(ca=str(tmp_path / "missing.pem"))
