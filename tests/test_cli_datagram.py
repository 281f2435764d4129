"""`sockcat connect` / `sockcat listen` over datagram kinds (udp, udp6, unixgram) on real loopback sockets.

docs/reference.md#connect: each stdin read is one datagram; replies go to stdout; the client exits once no reply has
come for the idle timeout after stdin EOF (default 1 s, `-i` overrides); the listener prints payloads and sends stdin
back to the last sender; a unixgram client autobinds so replies can reach it.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import TIMEOUT, Proc, free_port, port_of, require, run_sockcat, sockcat, udp_bound

pytestmark = pytest.mark.timeout(60)


# -- helpers -------------------------------------------------------------------------------------------


def start(procs: list[Proc], args: list[str], *, stdin: int | None = subprocess.PIPE) -> Proc:
    p = Proc(args, stdin=stdin)
    procs.append(p)
    return p


def send(p: Proc, data: bytes) -> None:
    assert p.p.stdin is not None
    p.p.stdin.write(data)
    p.p.stdin.flush()


def close_stdin(p: Proc) -> None:
    assert p.p.stdin is not None
    p.p.stdin.close()
    p.p.stdin = None


def read_until(p: Proc, expected: bytes, timeout: float = 10.0) -> bytes:
    """Read ``p``'s stdout (unbuffered) until ``expected`` has arrived; return everything read."""
    assert p.p.stdout is not None
    fd = p.p.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while expected not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            got += chunk
    assert expected in got, f"wanted {expected!r} from {p.args}, got {got!r}"
    return got


def rest_of_stdout(p: Proc) -> bytes:
    assert p.p.stdout is not None
    fd = p.p.stdout.fileno()
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def finish_stderr(p: Proc, timeout: float = TIMEOUT) -> tuple[int, list[str]]:
    rc = p.wait(timeout)
    assert p.p.stderr is not None
    return rc, p.stderr_lines + p.p.stderr.read().decode(errors="replace").splitlines()


def unix_bound(path: str) -> bool:
    return any(row.split()[-1] == path for row in Path("/proc/net/unix").read_text().splitlines()[1:] if row.split())


def wait_bound(peer: Proc, check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if peer.p.poll() is not None:
            raise AssertionError(f"{peer.args} exited early with {peer.p.returncode}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)  # pacing the checks, not waiting for an event
    raise AssertionError(f"{peer.args} did not bind within {timeout} s")


def clean(lines: list[str]) -> None:
    extra = [line for line in lines if not line.startswith("listening on ")]
    assert extra == [], extra


# -- sockcat on both ends -----------------------------------------------------------------------------


def _kinds(tmp: Path) -> dict[str, tuple[str, str]]:
    name = f"sockcat-dg-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    return {
        "udp": ("udp://127.0.0.1:0", r"udp://127\.0\.0\.1:\d+"),
        "udp4": ("udp4://127.0.0.1:0", r"udp4?://127\.0\.0\.1:\d+"),
        "udp6": ("udp6://[::1]:0", r"udp6?://\[::1\]:\d+"),
        "unixgram": (f"unixgram:{tmp}/g.sock", re.escape(f"unixgram:{tmp}/g.sock")),
        "unixgram-abstract": (f"unixgram:@{name}", re.escape(f"unixgram:@{name}")),
    }


@pytest.mark.parametrize("kind", ["udp", "udp4", "udp6", "unixgram", "unixgram-abstract"])
def test_datagram_connect_listen_both_ways(kind: str, procs: list[Proc], short_tmp: Path) -> None:
    addr, pattern = _kinds(short_tmp)[kind]
    server = start(procs, sockcat("listen", addr))
    bound = server.read_listening()
    assert re.fullmatch(pattern, bound), bound
    client = start(procs, sockcat("connect", bound))

    send(client, b"ping from client\n")
    read_until(server, b"ping from client\n")
    send(server, b"pong from server\n")
    assert read_until(client, b"pong from server\n") == b"pong from server\n"
    send(client, b"second\n")
    read_until(server, b"second\n")

    closed = time.monotonic()
    close_stdin(client)
    rc, err = finish_stderr(client)
    waited = time.monotonic() - closed
    assert rc == 0, err
    assert err == []
    assert 0.8 <= waited < 5.0, f"client exited {waited:.2f} s after stdin EOF (idle default is 1 s)"

    assert server.p.poll() is None, "a datagram listener only ends on a signal or -i"
    server.p.send_signal(signal.SIGTERM)
    rc, err = finish_stderr(server)
    assert rc == 0, err
    clean(err)
    if kind == "unixgram":
        assert not (short_tmp / "g.sock").exists(), "the listener must remove its socket file"


def test_each_stdin_read_is_one_datagram() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.settimeout(10)
        p = subprocess.Popen(
            sockcat("connect", f"udp://127.0.0.1:{srv.getsockname()[1]}"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert p.stdin is not None
            got = []
            for msg in (b"one", b"two two", b"three three three"):
                p.stdin.write(msg)
                p.stdin.flush()
                data, client = srv.recvfrom(65536)
                got.append(data)
            assert got == [b"one", b"two two", b"three three three"]
            srv.sendto(b"reply", client)
            p.stdin.close()
            p.stdin = None
            out, err = p.communicate(timeout=TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert p.returncode == 0, err
    assert out == b"reply"


# -- interop with socat and nc -------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["udp4", "udp6"])
def test_connect_to_socat_udp_echo(v6: bool, procs: list[Proc]) -> None:
    host = "::1" if v6 else "127.0.0.1"
    port = free_port(socket.SOCK_DGRAM, host)
    listen = f"UDP6-LISTEN:{port},bind=[::1],reuseaddr" if v6 else f"UDP4-LISTEN:{port},bind=127.0.0.1,reuseaddr"
    peer = start(procs, [require("socat"), listen, "PIPE"], stdin=subprocess.DEVNULL)
    wait_bound(peer, lambda: udp_bound(port))
    target = f"udp://[::1]:{port}" if v6 else f"udp://127.0.0.1:{port}"

    started = time.monotonic()
    client = run_sockcat("connect", target, input=b"echo me please\n")
    took = time.monotonic() - started

    assert client.returncode == 0, client.stderr
    assert client.stdout == b"echo me please\n"
    assert client.stderr == b""
    assert took < 6.0


@pytest.mark.parametrize("v6", [False, True], ids=["udp4", "udp6"])
def test_socat_udp_client_to_listen(v6: bool, procs: list[Proc]) -> None:
    server = start(procs, sockcat("listen", "udp://[::1]:0" if v6 else "udp://127.0.0.1:0"))
    port = port_of(server.read_listening())
    target = f"UDP6:[::1]:{port}" if v6 else f"UDP4:127.0.0.1:{port}"
    peer = start(procs, [require("socat"), "-", target])

    send(peer, b"from socat\n")
    read_until(server, b"from socat\n")
    send(server, b"back to socat\n")
    assert read_until(peer, b"back to socat\n") == b"back to socat\n"
    close_stdin(peer)
    assert peer.wait() == 0

    server.p.send_signal(signal.SIGTERM)
    rc, err = finish_stderr(server)
    assert rc == 0, err
    clean(err)


@pytest.mark.parametrize("v6", [False, True], ids=["udp4", "udp6"])
def test_connect_to_nc_udp_listener(v6: bool, procs: list[Proc]) -> None:
    host = "::1" if v6 else "127.0.0.1"
    port = free_port(socket.SOCK_DGRAM, host)
    nc = require("nc")
    peer = start(procs, [nc, "-u", "-l", *(["-6"] if v6 else []), host, str(port)])
    wait_bound(peer, lambda: udp_bound(port))
    client = start(procs, sockcat("connect", f"udp://[::1]:{port}" if v6 else f"udp://127.0.0.1:{port}"))

    send(client, b"hello nc\n")
    read_until(peer, b"hello nc\n")
    send(peer, b"hello sockcat\n")
    assert read_until(client, b"hello sockcat\n") == b"hello sockcat\n"
    close_stdin(client)
    rc, err = finish_stderr(client)
    assert rc == 0, err
    assert err == []


@pytest.mark.parametrize("v6", [False, True], ids=["udp4", "udp6"])
def test_nc_udp_client_to_listen(v6: bool, procs: list[Proc]) -> None:
    server = start(procs, sockcat("listen", "udp://[::1]:0" if v6 else "udp://127.0.0.1:0"))
    port = port_of(server.read_listening())
    peer = start(procs, [require("nc"), "-u", "::1" if v6 else "127.0.0.1", str(port)])

    send(peer, b"from nc\n")
    read_until(server, b"from nc\n")
    send(server, b"to nc\n")
    assert read_until(peer, b"to nc\n") == b"to nc\n"

    server.p.send_signal(signal.SIGTERM)
    rc, err = finish_stderr(server)
    assert rc == 0, err
    clean(err)


def test_connect_unixgram_to_socat_echo(procs: list[Proc], short_tmp: Path) -> None:
    """socat echoes to the sender's address: only works because the sockcat client autobinds."""
    path = str(short_tmp / "echo.sock")
    peer = start(procs, [require("socat"), f"UNIX-RECVFROM:{path}", "PIPE"], stdin=subprocess.DEVNULL)
    wait_bound(peer, lambda: unix_bound(path))
    client = run_sockcat("connect", f"unixgram:{path}", input=b"unixgram echo\n")
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"unixgram echo\n"


def test_socat_unixgram_client_to_listen(procs: list[Proc], short_tmp: Path) -> None:
    path = short_tmp / "srv.sock"
    server = start(procs, sockcat("listen", f"unixgram:{path}"))
    assert server.read_listening() == f"unixgram:{path}"
    peer = start(procs, [require("socat"), "-", f"UNIX-SENDTO:{path},bind={short_tmp}/cli.sock"])
    send(peer, b"via socat\n")
    read_until(server, b"via socat\n")
    send(server, b"answer\n")
    assert read_until(peer, b"answer\n") == b"answer\n"
    close_stdin(peer)
    peer.wait()
    server.p.send_signal(signal.SIGTERM)
    rc, err = finish_stderr(server)
    assert rc == 0, err
    assert not path.exists()


def test_unixgram_client_autobinds(short_tmp: Path) -> None:
    path = str(short_tmp / "plain.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        srv.settimeout(10)
        p = subprocess.Popen(
            sockcat("connect", f"unixgram:{path}"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert p.stdin is not None
            p.stdin.write(b"who am i")
            p.stdin.flush()
            data, sender = srv.recvfrom(100)
            assert data == b"who am i"
            assert sender, "the unixgram client must bind an address so that replies can reach it"
            srv.sendto(b"you are " + (sender if isinstance(sender, bytes) else sender.encode()), sender)
            p.stdin.close()
            p.stdin = None
            out, err = p.communicate(timeout=TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert p.returncode == 0, err
    assert out.startswith(b"you are ")


# -- reply routing and idle time-outs -------------------------------------------------------------------


@pytest.mark.parametrize("family", ["udp", "unixgram"])
def test_listen_replies_to_last_sender(family: str, procs: list[Proc], short_tmp: Path) -> None:
    if family == "udp":
        server = start(procs, sockcat("listen", "udp://127.0.0.1:0"))
        target: object = ("127.0.0.1", port_of(server.read_listening()))

        def client(name: str) -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            return s
    else:
        server = start(procs, sockcat("listen", f"unixgram:{short_tmp}/r.sock"))
        server.read_listening()
        target = f"{short_tmp}/r.sock"

        def client(name: str) -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(f"{short_tmp}/{name}")
            return s

    a, b = client("a.sock"), client("b.sock")
    try:
        for s in (a, b):
            s.settimeout(5)
        a.sendto(b"A1\n", target)
        read_until(server, b"A1\n")
        b.sendto(b"B1\n", target)
        read_until(server, b"B1\n")
        send(server, b"for B\n")
        assert b.recv(100) == b"for B\n"
        a.sendto(b"A2\n", target)
        read_until(server, b"A2\n")
        send(server, b"for A\n")
        assert a.recv(100) == b"for A\n"
        a.settimeout(0.3)
        b.settimeout(0.3)
        with pytest.raises(TimeoutError):
            b.recv(100)  # B never got A's reply
        with pytest.raises(TimeoutError):
            a.recv(100)  # nor did A get B's twice
    finally:
        a.close()
        b.close()
    server.p.send_signal(signal.SIGTERM)
    assert finish_stderr(server)[0] == 0


def test_listen_idle_timeout_exits_0(procs: list[Proc]) -> None:
    server = start(procs, sockcat("listen", "-i", "1", "udp://127.0.0.1:0"), stdin=subprocess.DEVNULL)
    port = port_of(server.read_listening())
    t0 = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(3):  # traffic keeps it alive past 1 s
            s.sendto(b"tick %d\n" % i, ("127.0.0.1", port))
            time.sleep(0.5)  # pacing the traffic under the idle time, not waiting for an event
        last = time.monotonic()
        rc = server.wait(10)
    ended = time.monotonic()
    assert rc == 0
    assert ended - t0 >= 1.4, "traffic must reset the idle timer"
    assert 0.5 <= ended - last < 4.0
    assert rest_of_stdout(server) == b"tick 0\ntick 1\ntick 2\n"


def test_listen_idle_without_any_traffic(procs: list[Proc], short_tmp: Path) -> None:
    server = start(procs, sockcat("listen", "-i", "0.5", f"unixgram:{short_tmp}/idle.sock"), stdin=subprocess.DEVNULL)
    server.read_listening()
    t0 = time.monotonic()
    rc, err = finish_stderr(server, timeout=10)
    assert rc == 0, err
    assert time.monotonic() - t0 < 4.0
    clean(err)
    assert not (short_tmp / "idle.sock").exists()


def test_listen_without_idle_keeps_running(procs: list[Proc]) -> None:
    server = start(procs, sockcat("listen", "udp://127.0.0.1:0"), stdin=subprocess.DEVNULL)
    server.read_listening()
    time.sleep(1.3)  # the window (past any 1 s default) in which nothing may happen, not waiting for an event
    assert server.p.poll() is None, "without -i a datagram listener waits for a signal"
    server.p.send_signal(signal.SIGINT)
    assert server.wait() == 130


@pytest.mark.parametrize(
    ("args", "low", "high"), [((), 0.9, 4.0), (("-i", "2.5"), 2.4, 6.0), (("-i", "0.2"), 0.1, 1.0)]
)
def test_connect_idle_exit_after_eof(args: tuple[str, ...], low: float, high: float) -> None:
    """No reply at all: the client exits idle-timeout seconds after stdin EOF."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.settimeout(10)
        got: list[bytes] = []

        def sink() -> None:
            try:
                got.append(srv.recv(100))
            except OSError:
                pass

        t = threading.Thread(target=sink, daemon=True)
        t.start()
        p = subprocess.Popen(
            sockcat("connect", *args, f"udp://127.0.0.1:{srv.getsockname()[1]}"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert p.stdin is not None
            p.stdin.write(b"anyone?")
            p.stdin.flush()
            t.join(10)
            assert got == [b"anyone?"]
            eof = time.monotonic()
            out, err = p.communicate(timeout=TIMEOUT)
            took = time.monotonic() - eof
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert p.returncode == 0, err
    assert (out, err) == (b"", b"")
    assert low <= took < high, f"exited {took:.2f} s after stdin EOF"


def test_connect_late_reply_keeps_client_alive() -> None:
    """A reply inside the idle window arrives and restarts the wait."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.settimeout(10)
        p = subprocess.Popen(
            sockcat("connect", f"udp://127.0.0.1:{srv.getsockname()[1]}"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert p.stdin is not None
            p.stdin.write(b"q")
            p.stdin.close()
            p.stdin = None
            _, client = srv.recvfrom(10)
            for i in range(3):
                time.sleep(0.6)  # pacing the replies inside the idle window, not waiting for an event
                srv.sendto(b"r%d " % i, client)
            out, err = p.communicate(timeout=TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert p.returncode == 0, err
    assert out == b"r0 r1 r2 "


def test_datagram_hexdump(procs: list[Proc]) -> None:
    server = start(procs, sockcat("listen", "--hexdump", "udp://127.0.0.1:0"), stdin=subprocess.DEVNULL)
    port = port_of(server.read_listening())
    client = run_sockcat("connect", "-i", "0.2", f"udp://127.0.0.1:{port}", input=b"hello")
    assert client.returncode == 0
    read_until(server, b"hello")
    server.p.send_signal(signal.SIGTERM)
    rc, err = finish_stderr(server)
    assert rc == 0
    text = "\n".join(err)
    assert "68 65 6c 6c 6f" in text.lower() and "hello" in text
