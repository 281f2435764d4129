"""--pin on every command that connects over TLS, and --ca (client certificates) on every listener."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trustme
from conftest import TIMEOUT, Proc, port_of, run_sockcat, sockcat


def _tls_listener(procs: list[Proc], *args: str) -> tuple[str, str]:
    """`sockcat serve echo tls://…` with a throwaway certificate: (address, fingerprint)."""
    p = Proc(sockcat("serve", "echo", "tls://127.0.0.1:0", *args))
    procs.append(p)
    addr = p.read_listening()
    assert p.p.stderr is not None
    line = p.p.stderr.readline().decode()  # the line after "listening on"
    assert line.startswith("certificate sha256 "), line
    return addr, line.split()[-1]


def _other_fingerprint(fp: str) -> str:
    return ("00" if not fp.startswith("00") else "11") + fp[2:]


def test_connect_trusts_exactly_the_pinned_certificate(procs: list[Proc]) -> None:
    addr, fp = _tls_listener(procs)
    for pin in (fp, fp.replace(":", "").lower()):  # as printed, or plain hex in any case
        res = run_sockcat("connect", "--pin", pin, addr, input=b"hello\n")
        assert res.returncode == 0 and res.stdout == b"hello\n", res.stderr
    res = run_sockcat("connect", "--pin", _other_fingerprint(fp), addr, input=b"hello\n")
    assert res.returncode == 1 and b"not the pinned one" in res.stderr and res.stdout == b""
    res = run_sockcat("connect", addr, input=b"hello\n")  # without a pin, a throwaway certificate is not trusted
    assert res.returncode == 1 and b"certificate verify failed" in res.stderr
    for bad in ("nothex", fp[:-3]):
        res = run_sockcat("connect", "--pin", bad, addr)
        assert res.returncode == 2 and b"bad --pin" in res.stderr
    res = run_sockcat("connect", "--pin", fp, "--insecure", addr)
    assert res.returncode == 2 and b"--pin trusts one certificate" in res.stderr


def test_bench_and_relay_target_and_send_take_a_pin(procs: list[Proc], tmp_path: Path) -> None:
    addr, fp = _tls_listener(procs)
    res = run_sockcat("bench", addr, "--pin", fp, "-c", "2", "-d", "0.3", "--warmup", "0", "--json")
    assert res.returncode == 0, res.stderr
    res = run_sockcat("bench", addr, "--pin", _other_fingerprint(fp), "-c", "1", "-d", "0.3", "--warmup", "0")
    assert res.returncode == 1 and b"not the pinned one" in res.stderr
    relay = Proc(sockcat("relay", "tcp://127.0.0.1:0", addr, "--pin", fp))
    procs.append(relay)
    with socket.create_connection(("127.0.0.1", port_of(relay.read_listening())), timeout=TIMEOUT) as c:
        c.sendall(b"through\n")
        assert c.recv(100) == b"through\n"
    recv = Proc(sockcat("recv", "--no-code", "tls://127.0.0.1:0", "-o", str(tmp_path / "out")))
    procs.append(recv)
    raddr = recv.read_listening()
    assert recv.p.stderr is not None
    rfp = recv.p.stderr.readline().decode().split()[-1]
    (tmp_path / "f.txt").write_text("pinned\n")
    assert run_sockcat("send", "--pin", rfp, raddr, str(tmp_path / "f.txt")).returncode == 0
    assert (tmp_path / "out" / "f.txt").read_text() == "pinned\n"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    out = {"ca": tmp_path / "ca.pem", "server": tmp_path / "server.pem", "client": tmp_path / "client.pem"}
    ca.cert_pem.write_to_path(str(out["ca"]))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(out["server"]))
    ca.issue_cert("client@example").private_key_and_cert_chain_pem.write_to_path(str(out["client"]))
    return out


def _client_ctx(pki: dict[str, Path], with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_cert:
        ctx.load_cert_chain(str(pki["client"]))
    return ctx


@pytest.mark.parametrize("command", ["chat", "relay", "serve", "listen"])
def test_ca_on_a_listener_requires_client_certificates(procs: list[Proc], pki: dict[str, Path], command: str) -> None:
    tls = ("--cert", str(pki["server"]), "--ca", str(pki["ca"]))
    echo = Proc(sockcat("serve", "echo", "tcp://127.0.0.1:0"))
    procs.append(echo)
    target = echo.read_listening()
    argv = {
        "chat": ["chat", "tls://127.0.0.1:0", "--db", ":memory:", *tls],
        "relay": ["relay", "tls://127.0.0.1:0", target, *tls],
        "serve": ["serve", "echo", "tls://127.0.0.1:0", *tls],
        "listen": ["listen", "-k", "tls://127.0.0.1:0", *tls],
    }[command]
    p = Proc(sockcat(*argv))
    procs.append(p)
    port = port_of(p.read_listening())
    refused = (ssl.SSLError, ConnectionResetError, BrokenPipeError)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        pytest.raises(refused),
        _client_ctx(pki, with_cert=False).wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(b"x\n")
        assert s.recv(100) == b""  # TLS 1.3: the refusal may come with the first read
        raise ConnectionResetError  # (no data ever flowed)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        _client_ctx(pki, with_cert=True).wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        assert s.version() is not None  # the handshake went through with a certificate
    assert p.p.poll() is None
