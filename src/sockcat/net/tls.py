"""TLS helpers: certificate fingerprints, throw-away self-signed certificates and ``SSLContext`` factories.

Every file or parse problem (missing file, bad PEM, key that does not match its certificate,
passphrase-protected key) is reported as a one-line :class:`~sockcat.core.errors.UsageError` naming the
file; no ``ssl.SSLError`` or ``OSError`` escapes from here.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import ipaddress
import os
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sockcat.core.errors import UsageError, describe, tls_reason
from sockcat.net.pin import parse_pin, pin_context

__all__ = ["SelfSigned", "client_context", "fingerprint_sha256", "self_signed", "server_context"]

_ALWAYS_HOSTS = ("localhost", "127.0.0.1", "::1")
_DEFAULT_CN = "localhost"
_CN_MAX = 64  # X.520 upper bound on commonName
_VALID_BEFORE = datetime.timedelta(hours=1)
_VALID_AFTER = datetime.timedelta(days=30)


def fingerprint_sha256(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate as ``openssl x509 -fingerprint -sha256`` prints it."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


@dataclass(frozen=True)
class SelfSigned:
    """A freshly generated self-signed certificate, its private key (both PEM) and its fingerprint."""

    cert_pem: bytes
    key_pem: bytes
    fingerprint: str


# -- self-signed certificates ------------------------------------------------------------------------


def _host_entry(host: str) -> x509.GeneralName | None:
    """The SubjectAlternativeName entry for one host name or IP address (None for an empty string)."""
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name:
        return None
    try:
        ip = ipaddress.ip_address(name.split("%", 1)[0] if ":" in name else name)
    except ValueError:
        pass
    else:
        return x509.IPAddress(ip)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise UsageError(f"bad host name for certificate: {host!r}") from None
    if any(c.isspace() for c in name):
        raise UsageError(f"bad host name for certificate: {host!r}")
    return x509.DNSName(name)


def _san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    seen: set[object] = set()
    for host in (*hosts, *_ALWAYS_HOSTS):
        entry = _host_entry(host)
        if entry is None:
            continue
        key: object = entry.value.lower() if isinstance(entry, x509.DNSName) else entry.value
        if key not in seen:
            seen.add(key)
            entries.append(entry)
    return entries


def _common_name(hosts: Sequence[str]) -> str:
    for host in hosts:
        name = host.strip()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if name:
            return name if len(name) <= _CN_MAX else _DEFAULT_CN
    return _DEFAULT_CN


def self_signed(hosts: Sequence[str]) -> SelfSigned:
    """A self-signed EC P-256 certificate for ``hosts`` (plus localhost, 127.0.0.1 and ::1), valid 30 days."""
    if isinstance(hosts, str):  # a lone host name is a Sequence[str] too: don't split it into letters
        hosts = [hosts]
    sans = _san_entries(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(hosts))])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _VALID_BEFORE)
        .not_valid_after(now + _VALID_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SelfSigned(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key_pem,
        fingerprint=fingerprint_sha256(cert.public_bytes(serialization.Encoding.DER)),
    )


# -- loading files, with one-line errors ---------------------------------------------------------------


class _PassphraseNeeded(Exception):
    """Raised from the password callback: never prompt on the terminal for a key passphrase."""


def _no_passphrase() -> bytes:
    raise _PassphraseNeeded


def _os_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno == errno.EISDIR:
        return "is a directory"
    return describe(exc)


def _read(path: str, what: str) -> bytes:
    """The contents of ``path``, or a UsageError like ``cannot load certificate 'x.pem': no such file``."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot load {what} {path!r}: {_os_problem(exc)}") from exc


def _chain_error(cert: str, key: str, exc: ssl.SSLError) -> UsageError:
    """Work out which of ``cert``/``key`` is at fault after ``load_cert_chain`` failed."""
    if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
        if key == cert:
            return UsageError(f"cannot load certificate {cert!r}: private key does not match certificate")
        return UsageError(f"cannot load private key {key!r}: it does not match certificate {cert!r}")
    try:
        x509.load_pem_x509_certificates(_read(cert, "certificate"))
    except ValueError:
        return UsageError(f"cannot load certificate {cert!r}: no valid PEM certificate found")
    try:
        serialization.load_pem_private_key(_read(key, "private key"), password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        return UsageError(f"cannot load private key {key!r}: passphrase-protected keys are not supported")
    except ValueError:
        return UsageError(f"cannot load private key {key!r}: no valid PEM private key found")
    except Exception:  # e.g. an unsupported key type: fall through to OpenSSL's own reason
        pass
    what = f"certificate {cert!r}" if key == cert else f"certificate {cert!r} with key {key!r}"
    return UsageError(f"cannot load {what}: {tls_reason(exc)}")


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    """``ctx.load_cert_chain(cert, key or cert)`` with one-line UsageErrors and no passphrase prompt."""
    keyfile = key or cert
    _read(cert, "certificate")
    if keyfile != cert:
        _read(keyfile, "private key")
    try:
        ctx.load_cert_chain(cert, keyfile, password=_no_passphrase)
    except _PassphraseNeeded:
        raise UsageError(f"cannot load private key {keyfile!r}: passphrase-protected keys are not supported") from None
    except ssl.SSLError as exc:
        raise _chain_error(cert, keyfile, exc) from exc
    except OSError as exc:
        raise UsageError(f"cannot load certificate {cert!r}: {_os_problem(exc)}") from exc


def _ca_error(ca: str, exc: OSError) -> UsageError:
    if isinstance(exc, ssl.SSLError):
        if getattr(exc, "reason", None) == "NO_CERTIFICATE_OR_CRL_FOUND":
            problem = "no PEM certificates found"
        else:
            problem = tls_reason(exc)
    else:
        problem = _os_problem(exc)
    return UsageError(f"cannot load CA certificates {ca!r}: {problem}")


def _ca_locations(ca: str) -> tuple[str | None, str | None]:
    """``(cafile, capath)`` for ``ca``, a PEM bundle or an OpenSSL hashed-certificate directory."""
    if os.path.isdir(ca):
        return None, ca
    _read(ca, "CA certificates")
    return ca, None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    cafile, capath = _ca_locations(ca)
    try:
        ctx.load_verify_locations(cafile=cafile, capath=capath)
    except OSError as exc:
        raise _ca_error(ca, exc) from exc


# -- contexts ------------------------------------------------------------------------------------------


def _tolerate_bare_fin(ctx: ssl.SSLContext) -> None:
    """Take a TCP FIN without close_notify as the end of the peer's direction, not a broken connection.

    ncat --ssl and many TLS stacks half-close that way; OpenSSL 3 would otherwise fail every later write,
    losing data still to be sent (the netcat family's half-close rule comes first here).
    """
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)


def client_context(
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    insecure: bool = False,
    pin: str | bytes | None = None,
) -> ssl.SSLContext:
    """A client context: verification and host-name checking on, TLS 1.2 or later.

    ``ca`` is a CA bundle file (or hashed directory) trusted *instead of* the system store;
    ``cert``/``key`` present a client certificate (the key defaults to the certificate file);
    ``insecure`` turns off certificate and host-name verification;
    ``pin`` trusts exactly the certificate with that SHA-256 (``AB:CD:…`` or plain hex), and nothing else.
    """
    if pin is not None and (insecure or ca is not None):
        raise UsageError("--pin trusts one certificate: give it without --insecure or --ca")
    if ca is None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        cafile, capath = _ca_locations(ca)
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile, capath=capath)
        except OSError as exc:
            raise _ca_error(ca, exc) from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _tolerate_bare_fin(ctx)
    if cert is not None:
        _load_chain(ctx, cert, key)
    elif key is not None:
        raise UsageError(f"private key {key!r} given without a certificate")
    if insecure:
        ctx.check_hostname = False  # must come before CERT_NONE
        ctx.verify_mode = ssl.CERT_NONE
    if pin is not None:
        pin_context(ctx, parse_pin(pin) if isinstance(pin, str) else pin)
    return ctx


def server_context(
    *, cert: str | None = None, key: str | None = None, ca: str | None = None, hosts: Sequence[str] = ()
) -> tuple[ssl.SSLContext, str | None]:
    """A server context (TLS 1.2 or later) and, for a generated certificate, its SHA-256 fingerprint.

    With ``cert`` the certificate chain (and ``key``, defaulting to the same file) is loaded and the
    fingerprint is None; without it a self-signed certificate for ``hosts`` is generated. With ``ca``
    clients must present a certificate signed by one of those CAs.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _tolerate_bare_fin(ctx)
    # No TLS 1.3 session tickets: sockcat never resumes sessions, and a client that closes without
    # reading the tickets makes its kernel answer with RST, so this side would see a reset, not EOF.
    ctx.num_tickets = 0
    fingerprint: str | None = None
    if cert is not None:
        _load_chain(ctx, cert, key)
    elif key is not None:
        raise UsageError(f"private key {key!r} given without a certificate")
    else:
        generated = self_signed(hosts)
        _load_generated(ctx, generated)
        fingerprint = generated.fingerprint
    if ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_ca(ctx, ca)
    return ctx, fingerprint


def _load_generated(ctx: ssl.SSLContext, generated: SelfSigned) -> None:
    """Load an in-memory certificate and key via files in a private (0700) directory, removed afterwards."""
    try:
        tmpdir = tempfile.mkdtemp(prefix="sockcat-tls-")
    except OSError as exc:
        raise UsageError(f"cannot create a temporary directory for the certificate: {describe(exc)}") from exc
    try:
        os.chmod(tmpdir, 0o700)
        cert_path = os.path.join(tmpdir, "cert.pem")
        key_path = os.path.join(tmpdir, "key.pem")
        for path, data in ((cert_path, generated.cert_pem), (key_path, generated.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert_path, key_path)
    except OSError as exc:
        raise UsageError(f"cannot load the generated certificate: {describe(exc)}") from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
