"""`sockcat serve echo|discard|chargen|daytime` on real loopback sockets, with socat and nc as clients.

RFC 862 (echo), 863 (discard), 864 (chargen), 867 (daytime) over tcp, tcp6, udp, unix, unixgram,
unixpacket and tls; bounded memory under a client that never reads; --max-conns, --allow/--deny,
signals, usage errors; the library's `serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Proc, peer_queues, queued_to_read, require, run_sockcat, sockcat, wait_until

import sockcat as sc
from sockcat.engines.services import CHARGEN_PERIOD, ServiceServer, chargen_datagram, chargen_line, serve_async

pytestmark = pytest.mark.timeout(60)

DAYTIME_RE = re.compile(rb"[A-Z][a-z]+day, [A-Z][a-z]+ \d\d, \d{4} \d\d:\d\d:\d\d-\S*\r\n")


def start_serve(procs: list[Proc], *args: str) -> tuple[Proc, str]:
    p = Proc(sockcat("serve", *args))
    procs.append(p)
    return p, p.read_listening()


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def client(argv: list[str], data: bytes = b"", timeout: float = 10.0) -> bytes:
    res = subprocess.run(argv, input=data, capture_output=True, timeout=timeout)
    assert res.returncode == 0, (argv, res.returncode, res.stderr)
    return res.stdout


def read_stream(argv: list[str], n: int, timeout: float = 10.0) -> bytes:
    """Run a client that prints an endless stream; return its first ``n`` bytes, then kill it."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            chunk = p.stdout.read1(n - len(out))  # type: ignore[attr-defined]
            if not chunk:
                break
            out += chunk
    finally:
        p.kill()
        p.wait(5)
        p.stdout.close()
    return out


def check_chargen(data: bytes) -> None:
    """RFC 864: 72 printable characters a line (32-126), each line starting one later, CRLF."""
    lines = data.split(b"\r\n")[:-1]  # the last piece may be cut short
    assert len(lines) >= 3
    printable = bytes(range(32, 127))
    for prev, line in itertools.pairwise(lines):
        assert len(line) == 72, line
        assert all(32 <= c <= 126 for c in line)
        start = printable.index(prev[:1])
        assert line[:1] == printable[(start + 1) % 95 : (start + 1) % 95 + 1]
        # characters within a line rise by one, wrapping from '~' to ' '
        assert all(
            printable.index(line[i + 1 : i + 2]) == (printable.index(line[i : i + 1]) + 1) % 95 for i in range(71)
        )


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- the pure pattern ------------------------------------------------------------------------------------


def test_chargen_pattern_is_rfc_864() -> None:
    assert chargen_line(0) == b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh\r\n"
    assert chargen_line(1).startswith(b'"#$')
    assert len(CHARGEN_PERIOD) == 95 * 74
    check_chargen(CHARGEN_PERIOD * 2)
    for n in (1, 74, 512, 600):
        d = chargen_datagram(n, n)
        assert 1 <= len(d) <= 512


# --- echo ----------------------------------------------------------------------------------------------


def test_echo_tcp_socat(procs: list[Proc]) -> None:
    socat = require("socat")
    _, addr = start_serve(procs, "echo", "tcp://127.0.0.1:0")
    data = os.urandom(300_000)
    out = client([socat, "-t", "5", "-", f"TCP:127.0.0.1:{port_of(addr)}"], data)
    assert out == data


def test_echo_tcp_nc(procs: list[Proc]) -> None:
    nc = require("nc")
    _, addr = start_serve(procs, "echo", "tcp://127.0.0.1:0")
    assert client([nc, "-N", "127.0.0.1", str(port_of(addr))], b"hello nc\n") == b"hello nc\n"


def test_echo_udp_socat(procs: list[Proc]) -> None:
    socat = require("socat")
    _, addr = start_serve(procs, "echo", "udp://127.0.0.1:0")
    assert client([socat, "-t", "1", "-", f"UDP:127.0.0.1:{port_of(addr)}"], b"one datagram\n") == b"one datagram\n"


def test_echo_unix_nc(procs: list[Proc], short_tmp: Path) -> None:
    nc = require("nc")
    path = short_tmp / "echo.sock"
    _, addr = start_serve(procs, "echo", f"unix:{path}")
    assert addr == f"unix:{path}"
    assert client([nc, "-N", "-U", str(path)], b"over unix\n") == b"over unix\n"


def test_echo_tcp6_socat(procs: list[Proc]) -> None:
    socat = require("socat")
    _, addr = start_serve(procs, "echo", "tcp6://[::1]:0")
    assert addr.startswith("tcp6://[::1]:")
    assert client([socat, "-t", "5", "-", f"TCP6:[::1]:{port_of(addr)}"], b"six\n") == b"six\n"


def test_echo_unixgram_socat_and_nc(procs: list[Proc], short_tmp: Path) -> None:
    socat, nc = require("socat"), require("nc")
    path = short_tmp / "g.sock"
    start_serve(procs, "echo", f"unixgram:{path}")
    back = short_tmp / "c.sock"
    out = client([socat, "-t", "1", "-", f"UNIX-SENDTO:{path},bind={back}"], b"gram\n")
    assert out == b"gram\n"
    assert client([nc, "-U", "-u", "-w", "1", str(path)], b"nc gram\n") == b"nc gram\n"


def test_echo_unixpacket_keeps_records(procs: list[Proc], short_tmp: Path) -> None:
    socat = require("socat")
    path = short_tmp / "p.sock"
    start_serve(procs, "echo", f"unixpacket:{path}")
    assert client([socat, "-t", "2", "-", f"UNIX-CONNECT:{path},type=5"], b"packet\n") == b"packet\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(5)
        s.connect(str(path))
        for record in (b"a", b"bb" * 1000, b"ccc"):
            s.send(record)
        assert [s.recv(65536) for _ in range(3)] == [b"a", b"bb" * 1000, b"ccc"]


def test_echo_tls_socat_and_fingerprint(procs: list[Proc]) -> None:
    socat = require("socat")
    p, addr = start_serve(procs, "echo", "tls://127.0.0.1:0")
    fp_line = p.p.stderr.readline().decode().strip()  # type: ignore[union-attr]
    assert re.fullmatch(r"certificate sha256 ([0-9A-F]{2}:){31}[0-9A-F]{2}", fp_line), fp_line
    out = client([socat, "-t", "5", "-", f"OPENSSL:127.0.0.1:{port_of(addr)},verify=0"], b"secret\n")
    assert out == b"secret\n"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port_of(addr)), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        digest = hashlib.sha256(der).hexdigest().upper()
        assert fp_line.split()[-1] == ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def test_echo_half_close_returns_everything(procs: list[Proc]) -> None:
    _, addr = start_serve(procs, "echo", "tcp://127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", port_of(addr)), timeout=5) as s:
        s.sendall(b"x" * 100_000)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got == b"x" * 100_000


# --- discard --------------------------------------------------------------------------------------------


def test_discard_tcp_nc_swallows(procs: list[Proc]) -> None:
    nc = require("nc")
    p = Proc(sockcat("-v", "serve", "discard", "tcp://127.0.0.1:0"))
    procs.append(p)
    addr = p.read_listening()
    data = os.urandom(1_000_000)
    assert client([nc, "-N", "127.0.0.1", str(port_of(addr))], data) == b""
    p.wait_stderr("bytes received")  # the server is done with the connection
    assert p.terminate() == 0
    _, err = p.communicate()
    assert "0 bytes sent, 1000000 bytes received" in err, err


def test_discard_udp_and_unix_socat(procs: list[Proc], short_tmp: Path) -> None:
    socat = require("socat")
    _, addr = start_serve(procs, "discard", "udp://127.0.0.1:0")
    assert client([socat, "-t", "0.5", "-", f"UDP:127.0.0.1:{port_of(addr)}"], b"into the void\n") == b""
    path = short_tmp / "d.sock"
    start_serve(procs, "discard", f"unix:{path}")
    assert client([socat, "-t", "2", "-", f"UNIX-CONNECT:{path}"], b"x" * 200_000) == b""


# --- chargen --------------------------------------------------------------------------------------------


def test_chargen_tcp_socat(procs: list[Proc]) -> None:
    socat = require("socat")
    _, addr = start_serve(procs, "chargen", "tcp://127.0.0.1:0")
    data = read_stream([socat, "-u", f"TCP:127.0.0.1:{port_of(addr)}", "-"], 50_000)
    assert len(data) == 50_000
    assert data.startswith(chargen_line(0))
    check_chargen(data)


def test_chargen_unix_nc(procs: list[Proc], short_tmp: Path) -> None:
    nc = require("nc")
    path = short_tmp / "c.sock"
    start_serve(procs, "chargen", f"unix:{path}")
    data = read_stream([nc, "-d", "-U", str(path)], 20_000)
    assert len(data) == 20_000
    check_chargen(data)


def test_chargen_udp_socat_one_reply(procs: list[Proc]) -> None:
    socat = require("socat")
    _, addr = start_serve(procs, "chargen", "udp://127.0.0.1:0")
    out = client([socat, "-t", "0.5", "-", f"UDP:127.0.0.1:{port_of(addr)}"], b"?")
    assert 1 <= len(out) <= 512
    assert all(32 <= c <= 126 or c in b"\r\n" for c in out)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"x", ("127.0.0.1", port_of(addr)))
        reply = s.recv(65536)
        assert 1 <= len(reply) <= 512
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(65536)  # exactly one datagram per request
        # no reflection amplifier: a short (or empty) datagram gets one line; a long one no more than it sent
        for request, most in ((b"", 74), (b"x", 74), (b"y" * 300, 300), (b"z" * 2000, 512)):
            s.settimeout(2)
            s.sendto(request, ("127.0.0.1", port_of(addr)))
            assert 1 <= len(s.recv(65536)) <= most


def test_chargen_unixpacket_records(procs: list[Proc], short_tmp: Path) -> None:
    path = short_tmp / "cp.sock"
    start_serve(procs, "chargen", f"unixpacket:{path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(5)
        s.connect(str(path))
        records = [s.recv(8192) for _ in range(5)]
    assert all(0 < len(r) <= 4096 and len(r) % 74 == 0 for r in records)
    check_chargen(b"".join(records))


def test_chargen_never_reading_client_does_not_grow_server(procs: list[Proc]) -> None:
    p, addr = start_serve(procs, "chargen", "tcp://127.0.0.1:0")
    clients = []
    try:
        for _ in range(20):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port_of(addr)))
            clients.append(s)
        # buffers fill up, the server pauses: our windows are full and it holds bytes it cannot send
        wait_until(
            lambda: all(queued_to_read(s) > 0 and peer_queues(s)[0] > 0 for s in clients), "every client is full"
        )
        before = vm_rss_kb(p.p.pid)
        time.sleep(3.0)  # the window in which the paused server must not grow, not waiting for an event
        after = vm_rss_kb(p.p.pid)
        assert p.p.poll() is None
    finally:
        for s in clients:
            s.close()
    assert after - before < 2048, f"server RSS grew from {before} kB to {after} kB"


def test_echo_never_reading_client_is_bounded(procs: list[Proc]) -> None:
    p, addr = start_serve(procs, "echo", "tcp://127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", port_of(addr)), timeout=5) as s:
        s.setblocking(False)
        sent = 0

        def backed_up() -> bool:
            nonlocal sent
            try:
                sent += s.send(b"y" * 65536)
            except BlockingIOError:  # our buffer is full and the server leaves bytes unread: it stopped reading
                return peer_queues(s)[1] > 0
            return False

        wait_until(backed_up, "backpressure reaches the client", interval=0.05)
        before = vm_rss_kb(p.p.pid)
        time.sleep(0.5)  # the window in which the paused server must not grow, not waiting for an event
        with contextlib.suppress(BlockingIOError):
            s.send(b"y" * 65536)
        after = vm_rss_kb(p.p.pid)
    assert sent < 64 * 1024 * 1024  # the server stopped reading: backpressure reached the client
    assert after - before < 2048


# --- daytime --------------------------------------------------------------------------------------------


def test_daytime_tcp_nc_and_udp_unix_socat(procs: list[Proc], short_tmp: Path) -> None:
    nc, socat = require("nc"), require("socat")
    _, addr = start_serve(procs, "daytime", "tcp://127.0.0.1:0")
    assert DAYTIME_RE.fullmatch(client([nc, "-d", "127.0.0.1", str(port_of(addr))]))  # server closes: nc ends
    _, uaddr = start_serve(procs, "daytime", "udp://127.0.0.1:0")
    assert DAYTIME_RE.fullmatch(client([socat, "-t", "1", "-", f"UDP:127.0.0.1:{port_of(uaddr)}"], b"\n"))
    path = short_tmp / "t.sock"
    start_serve(procs, "daytime", f"unix:{path}")
    assert DAYTIME_RE.fullmatch(client([socat, "-u", f"UNIX-CONNECT:{path}", "-"]))


def test_daytime_unixgram_tls_unixpacket(procs: list[Proc], short_tmp: Path) -> None:
    socat = require("socat")
    path = short_tmp / "tg.sock"
    start_serve(procs, "daytime", f"unixgram:{path}")
    out = client([socat, "-t", "1", "-", f"UNIX-SENDTO:{path},bind={short_tmp / 'tgc.sock'}"], b"?")
    assert DAYTIME_RE.fullmatch(out)
    _, taddr = start_serve(procs, "daytime", "tls://127.0.0.1:0")
    assert DAYTIME_RE.fullmatch(client([socat, "-u", f"OPENSSL:127.0.0.1:{port_of(taddr)},verify=0", "-"]))
    ppath = short_tmp / "tp.sock"
    start_serve(procs, "daytime", f"unixpacket:{ppath}")
    assert DAYTIME_RE.fullmatch(client([socat, "-u", f"UNIX-CONNECT:{ppath},type=5", "-"]))


# --- options, signals, errors -----------------------------------------------------------------------------


def test_max_conns_closes_extra_connections(procs: list[Proc]) -> None:
    _, addr = start_serve(procs, "echo", "tcp://127.0.0.1:0", "--max-conns", "1")
    with socket.create_connection(("127.0.0.1", port_of(addr)), timeout=5) as first:
        first.sendall(b"1")
        assert first.recv(10) == b"1"
        with socket.create_connection(("127.0.0.1", port_of(addr)), timeout=5) as second:
            assert second.recv(10) == b""  # EOF at once, no hang
        first.sendall(b"2")
        assert first.recv(10) == b"2"


def test_deny_refuses_peer(procs: list[Proc]) -> None:
    _, addr = start_serve(procs, "echo", "tcp://127.0.0.1:0", "--deny", "127.0.0.0/8")
    with socket.create_connection(("127.0.0.1", port_of(addr)), timeout=5) as s:
        with contextlib.suppress(OSError):
            s.sendall(b"hi")
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass


def test_idle_timeout_closes_quiet_connection(procs: list[Proc]) -> None:
    _, addr = start_serve(procs, "echo", "tcp://127.0.0.1:0", "-i", "0.5")
    with socket.create_connection(("127.0.0.1", port_of(addr)), timeout=5) as s:
        start = time.monotonic()
        assert s.recv(10) == b""
        assert 0.4 < time.monotonic() - start < 3.0


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_ends_cleanly_and_removes_socket_file(procs: list[Proc], short_tmp: Path, sig: int, code: int) -> None:
    path = short_tmp / "s.sock"
    p, _ = start_serve(procs, "echo", f"unix:{path}", "--workers", "2")
    assert path.exists()
    p.p.send_signal(sig)
    assert p.wait() == code
    assert not path.exists()
    _, err = p.communicate()
    assert "Traceback" not in err


def test_workers_share_the_address(procs: list[Proc]) -> None:
    _, addr = start_serve(procs, "echo", "tcp://127.0.0.1:0", "--workers", "2")
    for i in range(20):
        with socket.create_connection(("127.0.0.1", port_of(addr)), timeout=5) as s:
            s.sendall(b"%d" % i)
            assert s.recv(10) == b"%d" % i


def test_workers_end_when_the_parent_is_killed(procs: list[Proc]) -> None:
    p, _ = start_serve(procs, "discard", "tcp://127.0.0.1:0", "--workers", "3")

    def children_of() -> list[int]:
        return [int(d) for d in os.listdir("/proc") if d.isdigit() and _ppid(int(d)) == p.p.pid]

    wait_until(lambda: len(children_of()) >= 2, "both workers are forked")
    children = children_of()
    assert len(children) == 2
    p.p.kill()
    p.p.wait(5)

    def alive(c: int) -> bool:  # a zombie is dead, waiting for whoever adopted it
        try:
            return "zombie" not in Path(f"/proc/{c}/status").read_text()
        except FileNotFoundError:
            return False

    wait_until(lambda: not any(alive(c) for c in children), "the workers die with their parent")
    assert not any(alive(c) for c in children)


def _ppid(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(text[text.rindex(")") + 2 :].split()[1])


def test_usage_and_network_errors(procs: list[Proc]) -> None:
    res = run_sockcat("serve", "qotd", "tcp://127.0.0.1:0")
    assert res.returncode == 2
    res = run_sockcat("serve", "echo", "tcp://[::1:80")
    assert res.returncode == 2 and b"sockcat: error: bad address 'tcp://[::1:80'" in res.stderr
    res = run_sockcat("serve", "echo", "tcp://127.0.0.1:0", "--cert", "x.pem")
    assert res.returncode == 2 and b"needs a tls:// address" in res.stderr
    res = run_sockcat("serve", "echo", "udp://127.0.0.1:0", "--max-conns", "3")
    assert res.returncode == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_sockcat("serve", "echo", f"tcp4://127.0.0.1:{port}")
        assert res.returncode == 1
        assert res.stderr.decode().strip().splitlines() == [
            f"sockcat: error: listen tcp4://127.0.0.1:{port}: address in use"
        ]


def test_unix_listener_refuses_live_and_replaces_stale(procs: list[Proc], short_tmp: Path) -> None:
    path = short_tmp / "live.sock"
    start_serve(procs, "echo", f"unix:{path}")
    res = run_sockcat("serve", "discard", f"unix:{path}")
    assert res.returncode == 1 and b"address in use" in res.stderr
    stale = short_tmp / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens
    _, addr = start_serve(procs, "echo", f"unix:{stale}")
    assert addr == f"unix:{stale}"


# --- library ----------------------------------------------------------------------------------------------


def test_library_serve_async_and_bench() -> None:
    async def main() -> None:
        ready: asyncio.Future[ServiceServer] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve_async("echo", "tcp://127.0.0.1:0", ready=ready.set_result))
        server = await asyncio.wait_for(ready, 5)
        assert server.address.port > 0
        reader, writer = await asyncio.open_connection("127.0.0.1", server.address.port)
        writer.write(b"lib\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"lib\n"
        writer.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert callable(sc.serve) and callable(sc.bench)


# --- every service over every kind (a plain-socket client, so each kind is reached the same way) ------------

KINDS = ("tcp", "tcp6", "udp", "unix", "unixgram", "unixpacket", "tls")


def _kind_address(kind: str, tmp: Path) -> str:
    return {
        "tcp": "tcp://127.0.0.1:0",
        "tcp6": "tcp6://[::1]:0",
        "udp": "udp://127.0.0.1:0",
        "unix": f"unix:{tmp / 'm.sock'}",
        "unixgram": f"unixgram:{tmp / 'm.sock'}",
        "unixpacket": f"unixpacket:{tmp / 'm.sock'}",
        "tls": "tls://127.0.0.1:0",
    }[kind]


def _client_socket(kind: str, addr: str, tmp: Path) -> socket.socket:
    """A connected client socket for ``addr`` (TLS wrapped, unixgram bound so replies can reach it)."""
    if kind in ("tcp", "tls"):
        s = socket.create_connection(("127.0.0.1", port_of(addr)), timeout=5)
        if kind == "tls":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s)
        return s
    if kind == "tcp6":
        return socket.create_connection(("::1", port_of(addr)), timeout=5)
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", port_of(addr)))
    else:
        kind_type = {"unix": socket.SOCK_STREAM, "unixgram": socket.SOCK_DGRAM, "unixpacket": socket.SOCK_SEQPACKET}
        s = socket.socket(socket.AF_UNIX, kind_type[kind])
        if kind == "unixgram":
            s.bind(str(tmp / "mc.sock"))
        s.connect(addr.split(":", 1)[1])
    s.settimeout(5)
    return s


def _recv_some(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("service", ["echo", "discard", "chargen", "daytime"])
def test_every_service_over_every_kind(procs: list[Proc], short_tmp: Path, service: str, kind: str) -> None:
    _, addr = start_serve(procs, service, _kind_address(kind, short_tmp))
    datagram = kind in ("udp", "unixgram")
    with _client_socket(kind, addr, short_tmp) as s:
        if service == "echo":
            for msg in (b"first\n", b"second " * 100):
                s.sendall(msg)
                got = s.recv(65536) if datagram or kind == "unixpacket" else _recv_some(s, len(msg))
                assert got == msg
        elif service == "discard":
            s.sendall(b"into the void\n")
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s.recv(65536)
        elif service == "chargen":
            if datagram:
                s.sendall(b"?")
                reply = s.recv(65536)
                assert 1 <= len(reply) <= 512 and all(32 <= c <= 126 or c in b"\r\n" for c in reply)
            else:
                data = _recv_some(s, 5000)
                assert len(data) >= 5000
                check_chargen(data)
        else:
            if datagram:
                s.sendall(b"?")
            assert DAYTIME_RE.fullmatch(s.recv(65536) if datagram else _recv_some(s, 200))


# --- --trace of the connections the event loop serves --------------------------------------------------------------


def _normalised(lines: list[str]) -> list[str]:
    """Trace lines with the first descriptor (the listener) shown as L, any other as C, and ports hidden."""
    listener = re.match(r"\[fd (\d+)\]", lines[0]) if lines else None
    out = []
    for line in lines:
        line = re.sub(r"fd (\d+)", lambda m: "fd L" if listener and m.group(1) == listener.group(1) else "fd C", line)
        out.append(re.sub(r"\('127\.0\.0\.1', \d+\)", "(PEER)", line))
    return out


def test_trace_shows_each_served_connection_with_its_number(procs: list[Proc]) -> None:
    """serve's connections are read and written by the event loop: their calls are shown where the protocol sees
    them, in order, each connection numbered on its accept line."""
    p = Proc(sockcat("--trace", "serve", "echo", "tcp://127.0.0.1:0"))
    procs.append(p)
    addr = p.read_listening()
    for n in (1, 2):
        assert client(sockcat("connect", addr), b"hi\n") == b"hi\n"
        p.wait_stderr("close()", count=n)
    assert p.terminate() == 0
    lines = [line for line in p.stderr_all() if line.startswith("[fd")]
    assert _normalised(lines) == [
        "[fd L] socket(AF_INET, SOCK_STREAM)",
        "[fd L] setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)",
        "[fd L] bind((PEER))",
        "[fd L] getsockname() -> (PEER)",
        "[fd L] listen(4096)",
        "[fd L] setblocking(False)",
        "[fd L] accept() -> fd C from (PEER), connection 1",
        "[fd C] recv() -> 3 bytes",
        "[fd C] send(3 bytes)",
        "[fd C] recv() -> 0 bytes",
        "[fd C] close()",
        "[fd L] accept() -> fd C from (PEER), connection 2",  # (its descriptor may be the first's again)
        "[fd C] recv() -> 3 bytes",
        "[fd C] send(3 bytes)",
        "[fd C] recv() -> 0 bytes",
        "[fd C] close()",
    ], lines


def test_trace_json_of_a_chat_connection(procs: list[Proc]) -> None:
    p = Proc(sockcat("--trace-json", "chat", "tcp://127.0.0.1:0", "--db", ":memory:"))
    procs.append(p)
    addr = p.read_listening()
    with socket.create_connection(("127.0.0.1", port_of(addr)), timeout=10) as c:
        c.recv(4096)  # the greeting
        c.sendall(b"/nick wang\n")
        c.recv(4096)
    p.wait_stderr('"call": "close"')
    assert p.terminate() == 0
    calls = [json.loads(line) for line in p.stderr_all() if line.startswith("{")]
    accept = next(c for c in calls if c["call"] == "accept")
    assert accept["result"].endswith(", connection 1")
    fd = int(accept["result"].split()[1])
    mine = [(c["call"], c.get("args"), c.get("result")) for c in calls if c["fd"] == fd]
    assert mine[0][0] == "send" and ("recv", "", "11 bytes") in mine and mine[-1] == ("close", "", None), mine
