"""`sockcat listen --exec/--sh-exec` (inetd style) and TLS for `connect`/`listen`, on real loopback sockets.

docs/reference.md#listen: each connection gets its own process with the socket as stdin/stdout and
SOCKCAT_PEER/SOCKCAT_LOCAL as addresses; a TLS listener without --cert prints `certificate sha256 …` (as `openssl
x509 -fingerprint -sha256`); `connect tls://` verifies by default, `--insecure` skips, `--ca` trusts a CA. Peers:
socat, ncat, openssl.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import trustme
from conftest import (
    TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
    TIMEOUT,
    Proc,
    accepted,
    finish,
    free_port,
    port_of,
    require,
    run_sockcat,
    sockcat,
    start_listen,
    tcp_states,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

FINGERPRINT = re.compile(r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}")


# -- helpers -------------------------------------------------------------------------------------------


def next_stderr_line(p: Proc, timeout: float = 10.0) -> str:
    """The next stderr line (Python's buffer included), or fail after ``timeout``."""
    box: list[bytes] = []
    assert p.p.stderr is not None
    t = threading.Thread(target=lambda: box.append(p.p.stderr.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    assert box, f"no further stderr line from {p.args} within {timeout} s"
    line = box[0].decode(errors="replace").rstrip("\n")
    p.stderr_lines.append(line)
    return line


def recv_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def tcp_listening(port: int) -> bool:
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(name).read_text().splitlines()[1:]:
            f = row.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":
                return True
    return False


def wait_peer(proc: Proc, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            err = proc.p.stderr.read().decode(errors="replace") if proc.p.stderr else ""
            raise AssertionError(f"{proc.args} exited with {proc.p.returncode}: {err}")
        if tcp_listening(port):
            return
        time.sleep(0.02)  # pacing the checks, not waiting for an event
    raise AssertionError(f"{proc.args} is not listening on {port}")


def feed_and_close(p: Proc, data: bytes) -> None:
    assert p.p.stdin is not None
    p.p.stdin.write(data)
    p.p.stdin.close()
    p.p.stdin = None


# -- --exec / --sh-exec --------------------------------------------------------------------------------


GREET = 'echo "$SOCKCAT_PEER|$SOCKCAT_LOCAL|$$"; cat'


def _exchange(port: int, payload: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        return c.getsockname()[1], recv_all(c)


def test_sh_exec_keep_open_clients_in_turn(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-k", "--sh-exec", GREET, "tcp://127.0.0.1:0")
    port = port_of(bound)
    pids = set()
    for i in range(3):
        cport, reply = _exchange(port, b"payload %d\n" % i)
        first, rest = reply.split(b"\n", 1)
        peer, local, pid = first.decode().split("|")
        assert peer == f"tcp://127.0.0.1:{cport}"
        assert local == bound
        assert rest == b"payload %d\n" % i  # cat echoed it after the greeting
        pids.add(pid)
    assert len(pids) == 3, "each connection must get its own process"
    assert server.p.poll() is None
    server.p.send_signal(signal.SIGTERM)
    rc, out, err = finish(server)
    assert rc == 0, err
    assert out == b"", "with --exec the data goes to the child, not to stdout"
    assert [line for line in err if not line.startswith("listening on ")] == []


def test_sh_exec_concurrent_clients(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-k", "--sh-exec", GREET, "tcp://127.0.0.1:0")
    port = port_of(bound)
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    try:
        greetings = []
        for c in clients:  # all four are served at once: each greets before any of them sent a byte
            line = b""
            while not line.endswith(b"\n"):
                chunk = c.recv(1)
                assert chunk, line
                line += chunk
            greetings.append(line.decode().rstrip("\n").split("|"))
        for i, c in enumerate(clients):
            c.sendall(b"concurrent %d" % i)
            c.shutdown(socket.SHUT_WR)
        for i, c in enumerate(clients):
            assert recv_all(c) == b"concurrent %d" % i
        ports = [c.getsockname()[1] for c in clients]
    finally:
        for c in clients:
            c.close()
    assert [g[0] for g in greetings] == [f"tcp://127.0.0.1:{p}" for p in ports]
    assert len({g[2] for g in greetings}) == 4
    assert all(g[1] == bound for g in greetings)
    assert server.terminate() == 0


def test_exec_env_over_ipv6_and_unix(procs: list[Proc], short_tmp: Path) -> None:
    server, bound = start_listen(
        procs, "--sh-exec", 'printf "%s|%s" "$SOCKCAT_PEER" "$SOCKCAT_LOCAL"', "tcp6://[::1]:0"
    )
    with socket.create_connection(("::1", port_of(bound)), timeout=10) as c:
        cport = c.getsockname()[1]
        reply = recv_all(c).decode()
    peer, local = reply.split("|")
    assert re.fullmatch(rf"tcp6?://\[::1\]:{cport}", peer), peer
    assert local == bound
    assert finish(server)[0] == 0

    path = short_tmp / "exec.sock"
    server, bound = start_listen(procs, "--sh-exec", 'printf "%s|%s" "$SOCKCAT_PEER" "$SOCKCAT_LOCAL"', f"unix:{path}")
    with socket.socket(socket.AF_UNIX) as c:
        c.bind(str(short_tmp / "client.sock"))  # a named client: its address can be reported
        c.settimeout(10)
        c.connect(str(path))
        reply = recv_all(c).decode()
    peer, local = reply.split("|")
    assert local == f"unix:{path}"
    assert peer == f"unix:{short_tmp / 'client.sock'}"
    assert finish(server)[0] == 0
    assert not path.exists()


def test_exec_unnamed_unix_peer_gets_an_empty_sockcat_peer(procs: list[Proc], short_tmp: Path) -> None:
    """A client that never bound has no address to print: SOCKCAT_PEER is set, and empty (never `unix:`)."""
    path = short_tmp / "anon.sock"
    server, _ = start_listen(
        procs, "--sh-exec", 'printf "%s|%s|%s" "${SOCKCAT_PEER-unset}" "$SOCKCAT_LOCAL" x', f"unix:{path}"
    )
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(10)
        c.connect(str(path))
        reply = recv_all(c).decode()
    assert reply == f"|unix:{path}|x"
    assert finish(server)[0] == 0


def test_exec_without_shell_and_without_keep_open(procs: list[Proc]) -> None:
    """--exec splits like a shell but runs none: `$SOCKCAT_PEER` stays literal. Without -k: one connection."""
    server, bound = start_listen(procs, "--exec", "printf '%s-%s' 'no shell' $SOCKCAT_PEER", "tcp://127.0.0.1:0")
    _, reply = _exchange(port_of(bound), b"")
    assert reply == b"no shell-$SOCKCAT_PEER"
    rc, _, err = finish(server)
    assert rc == 0, err
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port_of(bound)), timeout=5).close()


def test_exec_half_close_wc(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "--exec", "wc -c", "unix:@" + f"sockcat-wc-{uuid.uuid4().hex[:10]}")
    client = run_sockcat("connect", bound, input=b"z" * 100_000)
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == b"100000"
    assert finish(server)[0] == 0


def test_exec_on_unixpacket(procs: list[Proc], short_tmp: Path) -> None:
    server, bound = start_listen(procs, "--exec", "cat", f"unixpacket:{short_tmp}/pk.sock")
    client = run_sockcat("connect", bound, input=b"seqpacket echo")
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"seqpacket echo"
    assert finish(server)[0] == 0


@pytest.mark.parametrize("flag", ["--exec", "--sh-exec"])
def test_exec_child_exit_status_does_not_matter(flag: str, procs: list[Proc]) -> None:
    cmd = "false" if flag == "--exec" else "echo bye; exit 3"
    server, bound = start_listen(procs, flag, cmd, "tcp://127.0.0.1:0")
    client = run_sockcat("connect", bound, input=b"")
    assert client.returncode == 0
    assert client.stdout == (b"" if flag == "--exec" else b"bye\n")
    rc, _, err = finish(server)
    assert rc == 0, err


def test_exec_nonexistent_command_is_usage_error() -> None:
    result = run_sockcat("listen", "--exec", "no-such-command-sockcat-xyz --flag", "tcp://127.0.0.1:0", timeout=10)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockcat: error: "), lines
    assert "no-such-command-sockcat-xyz" in lines[0]
    assert "listening on" not in err, "the command is checked before binding"


# -- TLS: self-signed listener --------------------------------------------------------------------------


def _fingerprint_of_server(port: int) -> str:
    openssl = require("openssl")
    s_client = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert b"-----BEGIN CERTIFICATE-----" in s_client.stdout, s_client.stderr
    x509 = subprocess.run(
        [openssl, "x509", "-noout", "-fingerprint", "-sha256"],
        input=s_client.stdout,
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    )
    label, _, value = x509.stdout.decode().strip().partition("=")
    assert label.lower() == "sha256 fingerprint", x509.stdout
    return value


def test_self_signed_fingerprint_matches_openssl(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tls://127.0.0.1:0")
    assert re.fullmatch(r"tls://127\.0\.0\.1:\d+", bound)
    line = next_stderr_line(server)
    assert line.startswith("certificate sha256 "), line
    printed = line[len("certificate sha256 ") :]
    assert FINGERPRINT.fullmatch(printed), printed
    assert _fingerprint_of_server(port_of(bound)) == printed
    rc, _, err = finish(server)
    assert rc == 0, err


def test_each_self_signed_listener_gets_a_fresh_certificate(procs: list[Proc]) -> None:
    a, _ = start_listen(procs, "tls://127.0.0.1:0")
    b, _ = start_listen(procs, "tls://127.0.0.1:0")
    fa, fb = next_stderr_line(a), next_stderr_line(b)
    assert fa.startswith("certificate sha256 ") and fb.startswith("certificate sha256 ")
    assert fa != fb


def test_connect_verifies_by_default(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-k", "tls://127.0.0.1:0")
    result = run_sockcat("connect", bound, input=b"secret")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockcat: error: "), lines
    assert f"127.0.0.1:{port_of(bound)}" in lines[0]
    assert "certificate" in lines[0].lower() or "verif" in lines[0].lower()
    assert result.stdout == b""
    # the listener survives a failed handshake and still serves an --insecure client
    ok = run_sockcat("connect", "--insecure", bound, input=b"hello")
    assert ok.returncode == 0, ok.stderr
    server.p.send_signal(signal.SIGTERM)
    rc, out, _ = finish(server)
    assert rc == 0
    assert out == b"hello", "nothing from the refused client may leak through"


@pytest.mark.parametrize(
    "variant",
    [
        "tcp",
        "tcp-hexdump",
        "tls",
    ],
)
def test_exec_reply_after_eof(variant: str, procs: list[Proc]) -> None:
    """Half-close through --exec: the child answers only after reading EOF (and takes its time)."""
    addr = "tls://127.0.0.1:0" if variant == "tls" else "tcp://127.0.0.1:0"
    extra = ["--hexdump"] if variant == "tcp-hexdump" else []
    server, bound = start_listen(procs, *extra, "--sh-exec", "sleep 0.8; wc -c", addr)
    opts = ["--insecure"] if variant == "tls" else []
    client = run_sockcat("connect", *opts, bound, input=b"x" * 5000)
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == b"5000"
    assert finish(server)[0] == 0


def test_tls_half_close_exec_wc(procs: list[Proc]) -> None:
    """The brief's example: `listen tls://… --exec 'wc -c'` answers after the client's close_notify."""
    server, bound = start_listen(procs, "--exec", "wc -c", "tls://127.0.0.1:0")
    data = os.urandom(300_000)
    client = run_sockcat("connect", "--insecure", bound, input=data)
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == b"300000"
    assert finish(server)[0] == 0


def test_tls_sh_exec_env(procs: list[Proc]) -> None:
    server, bound = start_listen(
        procs, "--sh-exec", 'printf "%s|%s" "$SOCKCAT_PEER" "$SOCKCAT_LOCAL"', "tls://127.0.0.1:0"
    )
    client = run_sockcat("connect", "--insecure", bound, input=b"")
    assert client.returncode == 0, client.stderr
    peer, local = client.stdout.decode().split("|")
    assert re.fullmatch(r"(tls|tcp)://127\.0\.0\.1:\d+", peer), peer
    assert local in (bound, bound.replace("tls://", "tcp://"))
    assert finish(server)[0] == 0


def test_tls_listen_stdin_eof_still_receives(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tls://127.0.0.1:0")
    client = run_sockcat("connect", "--insecure", bound, input=b"after the server's EOF" * 1000)
    assert client.returncode == 0, client.stderr
    assert client.stdout == b""
    rc, out, _ = finish(server)
    assert (rc, out) == (0, b"after the server's EOF" * 1000)


# -- TLS: a real CA (trustme) ---------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    other = trustme.CA()
    paths = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
        "both": tmp_path / "both.pem",
        "other_ca": tmp_path / "other-ca.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(paths["cert"]), append=True)
    cert.private_key_pem.write_to_path(str(paths["key"]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths["both"]))
    other.cert_pem.write_to_path(str(paths["other_ca"]))
    return paths


def test_tls_with_ca_both_ways(pki: dict[str, Path], procs: list[Proc]) -> None:
    server, bound = start_listen(
        procs, "--cert", str(pki["cert"]), "--key", str(pki["key"]), "tls://127.0.0.1:0", data=b"verified hello\n"
    )
    client = run_sockcat("connect", "--ca", str(pki["ca"]), bound, input=b"client hello\n")
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"verified hello\n"
    assert client.stderr == b""
    rc, out, err = finish(server)
    assert rc == 0, err
    assert out == b"client hello\n"
    assert [line for line in err if not line.startswith("listening on ")] == [], "no fingerprint line with --cert"


def test_tls_ca_by_name_and_sni(pki: dict[str, Path], procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-k", "--cert", str(pki["both"]), "tls://127.0.0.1:0", data=b"")
    port = port_of(bound)
    by_name = run_sockcat("connect", "--ca", str(pki["ca"]), f"tls://localhost:{port}", input=b"A")
    assert by_name.returncode == 0, by_name.stderr
    with_sni = run_sockcat("connect", "--ca", str(pki["ca"]), "--sni", "localhost", bound, input=b"B")
    assert with_sni.returncode == 0, with_sni.stderr
    wrong_sni = run_sockcat("connect", "--ca", str(pki["ca"]), "--sni", "wrong.example", bound, input=b"C")
    assert wrong_sni.returncode == 1
    lines = wrong_sni.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockcat: error: "), lines
    assert "Traceback" not in wrong_sni.stderr.decode()
    server.p.send_signal(signal.SIGTERM)
    rc, out, _ = finish(server)
    assert rc == 0
    assert sorted(out) == sorted(b"AB")


def test_tls_wrong_ca_fails(pki: dict[str, Path], procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-k", "--cert", str(pki["cert"]), "--key", str(pki["key"]), "tls://127.0.0.1:0")
    result = run_sockcat("connect", "--ca", str(pki["other_ca"]), bound, input=b"x")
    assert result.returncode == 1
    err = result.stderr.decode()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockcat: error: "), lines
    assert f"127.0.0.1:{port_of(bound)}" in lines[0]
    assert "Traceback" not in err
    assert server.terminate() == 0


# -- TLS interop -----------------------------------------------------------------------------------------


def test_socat_openssl_client_to_sockcat_tls(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tls://127.0.0.1:0", data=b"from sockcat tls\n")
    port = port_of(bound)
    client = subprocess.run(
        [require("socat"), "-t", "5", "-", f"OPENSSL:127.0.0.1:{port},verify=0"],
        input=b"from socat tls\n",
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"from sockcat tls\n"
    rc, out, err = finish(server)
    assert rc == 0, err
    assert out == b"from socat tls\n"


def test_socat_openssl_client_verifies_sockcat_cert(pki: dict[str, Path], procs: list[Proc]) -> None:
    server, bound = start_listen(
        procs, "--cert", str(pki["cert"]), "--key", str(pki["key"]), "tls://127.0.0.1:0", data=b"ok\n"
    )
    port = port_of(bound)
    client = subprocess.run(
        [require("socat"), "-t", "5", "-", f"OPENSSL:127.0.0.1:{port},cafile={pki['ca']},commonname=localhost"],
        input=b"verified\n",
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"ok\n"
    rc, out, _ = finish(server)
    assert (rc, out) == (0, b"verified\n")


@pytest.mark.parametrize("verify", ["insecure", "ca"])
def test_sockcat_tls_client_to_socat_openssl_listen(verify: str, pki: dict[str, Path], procs: list[Proc]) -> None:
    port = free_port()
    peer = Proc(
        [
            require("socat"),
            "-t",
            "5",
            "-",
            f"OPENSSL-LISTEN:{port},cert={pki['both']},verify=0,reuseaddr,bind=127.0.0.1",
        ],
        stdin=subprocess.PIPE,
    )
    procs.append(peer)
    feed_and_close(peer, b"from socat server\n")
    wait_peer(peer, port)
    opts = ["--insecure"] if verify == "insecure" else ["--ca", str(pki["ca"])]
    client = run_sockcat("connect", *opts, f"tls://127.0.0.1:{port}", input=b"from sockcat client\n")
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"from socat server\n"
    rc, out, err = finish(peer)
    assert out == b"from sockcat client\n", err
    assert rc == 0, err


def test_sockcat_tls_half_close_against_socat_system(pki: dict[str, Path], procs: list[Proc]) -> None:
    port = free_port()
    peer = Proc(
        [
            require("socat"),
            f"OPENSSL-LISTEN:{port},cert={pki['both']},verify=0,reuseaddr,bind=127.0.0.1",
            "SYSTEM:sha256sum",
        ]
    )
    procs.append(peer)
    wait_peer(peer, port)
    data = os.urandom(100_000)
    client = run_sockcat("connect", "--ca", str(pki["ca"]), f"tls://127.0.0.1:{port}", input=data)
    assert client.returncode == 0, client.stderr
    assert client.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def read_until(p: Proc, expected: bytes, timeout: float = 10.0) -> bytes:
    """Read ``p``'s stdout (unbuffered, straight from the pipe) until ``expected`` arrived."""
    import select

    assert p.p.stdout is not None
    fd = p.p.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while expected not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        got += chunk
    assert expected in got, f"wanted {expected!r} from {p.args}, got {got!r}"
    return got


def write(p: Proc, data: bytes) -> None:
    assert p.p.stdin is not None
    p.p.stdin.write(data)
    p.p.stdin.flush()


def test_sockcat_tls_client_to_ncat_ssl(procs: list[Proc]) -> None:
    """Lock-step exchange with `ncat --ssl -l`; sockcat half-closes first (close_notify + FIN)."""
    port = free_port()
    peer = Proc([require("ncat"), "--ssl", "-l", "127.0.0.1", str(port)], stdin=subprocess.PIPE)
    procs.append(peer)
    wait_peer(peer, port)
    client = Proc(sockcat("connect", "--insecure", f"tls://127.0.0.1:{port}"), stdin=subprocess.PIPE)
    procs.append(client)
    write(client, b"from sockcat\n")
    read_until(peer, b"from sockcat\n")
    write(peer, b"from ncat\n")
    assert read_until(client, b"from ncat\n") == b"from ncat\n"
    feed_and_close(client, b"")
    # sockcat's close_notify and FIN are out before ncat's stdin ends: its end has left ESTABLISHED (ncat may
    # answer the close_notify by closing at once, so the end may be in FIN_WAIT2, TIME_WAIT, CLOSE_WAIT or gone)
    wait_until(lambda: TCP_ESTABLISHED not in tcp_states(port, side="remote"), "sockcat half-closes")
    feed_and_close(peer, b"")
    rc, out, err = finish(client)
    assert rc == 0, err
    assert out == b""
    assert err == []
    assert peer.wait() == 0


def test_ncat_ssl_client_to_sockcat_tls(procs: list[Proc]) -> None:
    """Lock-step exchange with an `ncat --ssl` client; sockcat's listener half-closes first."""
    server = Proc(sockcat("listen", "tls://127.0.0.1:0"), stdin=subprocess.PIPE)
    procs.append(server)
    port = port_of(server.read_listening())
    peer = Proc([require("ncat"), "--ssl", "127.0.0.1", str(port)], stdin=subprocess.PIPE)
    procs.append(peer)
    write(peer, b"ncat says hi\n")
    read_until(server, b"ncat says hi\n")
    write(server, b"sockcat says hi\n")
    assert read_until(peer, b"sockcat says hi\n") == b"sockcat says hi\n"
    feed_and_close(server, b"")
    # sockcat's close_notify and FIN are out before ncat's stdin ends: its end has left ESTABLISHED (ncat may
    # answer the close_notify by closing at once, so the end may be in FIN_WAIT2, TIME_WAIT, CLOSE_WAIT or gone)
    wait_until(lambda: TCP_ESTABLISHED not in tcp_states(port), "sockcat half-closes")
    feed_and_close(peer, b"")
    assert peer.wait() == 0
    rc, _, err = finish(server)
    assert rc == 0, err


def test_connect_keeps_sending_after_ncat_ssl_half_closes(procs: list[Proc]) -> None:
    port = free_port()
    peer = Proc([require("ncat"), "--ssl", "-l", "127.0.0.1", str(port)], stdin=subprocess.PIPE)
    procs.append(peer)
    feed_and_close(peer, b"from ncat\n")  # ncat: data, then a bare FIN
    wait_peer(peer, port)
    client = Proc(sockcat("connect", "--insecure", f"tls://127.0.0.1:{port}"), stdin=subprocess.PIPE)
    procs.append(client)
    read_until(client, b"from ncat\n")
    # ncat's FIN has arrived (sockcat's end is in CLOSE_WAIT); the upload direction is still open
    wait_until(lambda: TCP_CLOSE_WAIT in tcp_states(port, side="remote"), "ncat's FIN arrives")
    feed_and_close(client, b"late from sockcat\n")
    rc, _, err = finish(client)
    _, peer_out, _ = finish(peer)
    assert peer_out == b"late from sockcat\n"
    assert rc == 0, err


def test_listen_keeps_sending_after_ncat_ssl_half_closes(procs: list[Proc]) -> None:
    server = Proc(sockcat("listen", "tls://127.0.0.1:0"), stdin=subprocess.PIPE)
    procs.append(server)
    port = port_of(server.read_listening())
    peer = Proc([require("ncat"), "--ssl", "127.0.0.1", str(port)], stdin=subprocess.PIPE)
    procs.append(peer)
    feed_and_close(peer, b"ncat says hi\n")  # ncat: data, then a bare FIN
    read_until(server, b"ncat says hi\n")
    # ncat's FIN has arrived (sockcat's end is in CLOSE_WAIT); the upload direction is still open
    wait_until(lambda: TCP_CLOSE_WAIT in tcp_states(port), "ncat's FIN arrives")
    feed_and_close(server, b"late reply from sockcat\n")
    _, peer_out, _ = finish(peer)
    rc, _, err = finish(server)
    assert peer_out == b"late reply from sockcat\n"
    assert rc == 0, err


# -- TLS listener robustness ---------------------------------------------------------------------------


def test_tls_keep_open_serves_several_clients(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-k", "tls://127.0.0.1:0")
    for i in range(3):
        client = run_sockcat("connect", "--insecure", bound, input=b"tls client %d\n" % i)
        assert client.returncode == 0, client.stderr
    server.p.send_signal(signal.SIGTERM)
    rc, out, _ = finish(server)
    assert rc == 0
    assert out == b"tls client 0\ntls client 1\ntls client 2\n"


def test_tls_listener_ignores_a_plain_text_client(procs: list[Proc]) -> None:
    """A client that is not speaking TLS fails its handshake; its bytes never reach stdout and the
    listener (even without -k) goes on to serve the next, real TLS client."""
    server, bound = start_listen(procs, "tls://127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", port_of(bound)), timeout=10) as c:
        c.settimeout(5)
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            recv_all(c)
        except (ConnectionResetError, TimeoutError):
            pass
    client = run_sockcat("connect", "--insecure", bound, input=b"the real one")
    assert client.returncode == 0, client.stderr
    rc, out, _ = finish(server)
    assert rc == 0
    assert out == b"the real one"


@pytest.mark.parametrize("mode", ["bridge", "exec"])
def test_tls_silent_client_does_not_block_others(mode: str, procs: list[Proc]) -> None:
    extra = ["--exec", "cat"] if mode == "exec" else []
    _server, bound = start_listen(procs, "-k", *extra, "tls://127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", port_of(bound)), timeout=10):  # connects, never says hello
        wait_until(accepted(port_of(bound), 1), "the listener accepts the silent client")
        started = time.monotonic()
        client = run_sockcat("connect", "--insecure", "-w", "3", bound, input=b"hello")
        took = time.monotonic() - started
    assert client.returncode == 0, client.stderr
    assert took < 2.5, f"the second client waited {took:.1f} s behind a silent one"


def test_exec_peer_names_with_control_characters_reach_the_child_escaped(procs: list[Proc], short_tmp: Path) -> None:
    """A Unix peer chooses its own (abstract) name: a NUL, newline or escape in it never reaches the child raw, and
    never ends the listener with a traceback."""
    path = short_tmp / "evil.sock"
    server, _ = start_listen(procs, "-k", "--sh-exec", 'printf "%s" "$SOCKCAT_PEER"', f"unix:{path}")
    for name in ("\0evil\nname*\x1b[2J", "\0with\0nul"):
        with socket.socket(socket.AF_UNIX) as c:
            c.bind(name)
            c.settimeout(10)
            c.connect(str(path))
            reply = recv_all(c)
        assert b"\n" not in reply and b"\x1b" not in reply and b"\0" not in reply, reply
        assert reply.startswith(b"unix:@") and b"\\x" in reply, reply
    assert server.p.poll() is None  # still serving
