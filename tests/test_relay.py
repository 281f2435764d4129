"""``sockcat relay LISTEN TARGET`` end to end: real loopback sockets, real peers (iperf3, curl, redis, socat, nc).

Every relay is a real ``sockcat relay`` process; upstream servers are either real programs or small Python
servers in threads (so a test can see what arrived and how a connection ended). docs/reference.md#addresses and #relay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import (
    TCP_CLOSE_WAIT,
    TIMEOUT,
    Proc,
    epoll_readers,
    free_port,
    peer_queues,
    port_bound,
    process_tcp_connections,
    queued_to_read,
    require,
    run_sockcat,
    sockcat,
    tcp_inodes,
    tcp_states,
    wait_port,
    wait_until,
)

from sockcat import Address

pytestmark = pytest.mark.timeout(30)

MiB = 1 << 20
BIG = 256 * MiB
LINGER0 = struct.pack("ii", 1, 0)


# --- helpers: the relay process ---------------------------------------------------------------------


class Relay:
    """A running ``sockcat relay``: its bound address, and its stderr collected line by line in a thread."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.address = Address.parse(proc.read_listening())
        self.lines = proc.stderr_lines
        self.children: list[int] = []
        stream = proc.p.stderr
        assert stream is not None
        # Lines read ahead by read_listening() sit in the reader's buffer: take them first, then read a
        # private copy of the descriptor (procs closes the original at teardown, maybe while we read).
        os.set_blocking(stream.fileno(), False)
        self._partial = b""
        with contextlib.suppress(BlockingIOError):
            self._feed(stream.read1(1 << 16) or b"")
        self._fd = os.dup(stream.fileno())
        self._stop = threading.Event()
        self._eof = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _feed(self, data: bytes) -> None:
        self._partial += data
        *done, self._partial = self._partial.split(b"\n")
        self.lines.extend(line.decode(errors="replace") for line in done)

    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                if not select.select([self._fd], [], [], 0.1)[0]:
                    continue
                try:
                    data = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    break
                self._feed(data)
        finally:
            if self._partial:
                self.lines.append(self._partial.decode(errors="replace"))
            os.close(self._fd)
            self._eof.set()

    @property
    def pid(self) -> int:
        return self.proc.p.pid

    @property
    def port(self) -> int:
        return self.address.port

    def connect(self, timeout: float = 10.0) -> socket.socket:
        a = self.address
        if a.is_unix:
            s = socket.socket(socket.AF_UNIX, a.type)
            s.settimeout(timeout)
            s.connect(a.path)
            return s
        return socket.create_connection((a.host, a.port), timeout=timeout)

    def wait_for(self, pred: Callable[[str], bool], timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if pred(line):
                    return line
            time.sleep(0.02)  # pacing the checks, not waiting for an event
        raise AssertionError(f"no such stderr line after {timeout} s: {self.lines}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.proc.p.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._eof.wait(5)
        return rc

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def close(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def start_relay(procs: list[Proc]) -> Iterator[Callable[..., Relay]]:
    """``start_relay(LISTEN, TARGET, *options, verbose=False)`` -> a running :class:`Relay`."""
    started: list[Relay] = []

    def start(listen: str, target: str, *options: str, verbose: bool = False) -> Relay:
        proc = Proc(sockcat(*(["-v"] if verbose else []), "relay", listen, target, *options))
        procs.append(proc)
        relay = Relay(proc)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.close()


# --- helpers: Python upstream servers ---------------------------------------------------------------


class Upstream:
    """A thread-per-connection stream server the relay connects to; records what happened."""

    def __init__(
        self,
        handler: Callable[[socket.socket], None],
        family: int = socket.AF_INET,
        kind: int = socket.SOCK_STREAM,
        bind: Any = ("127.0.0.1", 0),
    ) -> None:
        self.handler = handler
        self.family = family
        self.kind = kind
        self.accepted = 0
        self.peers: list[Any] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._listen(bind)

    def _listen(self, bind: Any) -> None:
        s = socket.socket(self.family, self.kind)
        if self.family != socket.AF_UNIX:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(bind)
        s.listen(1024)
        self.sock = s
        self.sockaddr = s.getsockname()
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    @property
    def url(self) -> str:
        if self.family == socket.AF_UNIX:
            scheme = "unixpacket" if self.kind == socket.SOCK_SEQPACKET else "unix"
            path = self.sockaddr
            if isinstance(path, bytes):
                path = path.decode()
            return f"{scheme}:@{path[1:]}" if path.startswith("\0") else f"{scheme}:{path}"
        if self.family == socket.AF_INET6:
            return f"tcp6://[{self.sockaddr[0]}]:{self.sockaddr[1]}"
        return f"tcp://{self.sockaddr[0]}:{self.sockaddr[1]}"

    @property
    def port(self) -> int:
        return int(self.sockaddr[1])

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                conn, peer = s.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.peers.append(peer)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(25)
            try:
                self.handler(conn)
            except Exception as exc:
                self.errors.append(exc)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.sock.close()

    def restart(self) -> None:
        """Listen again on the same address (after :meth:`stop`)."""
        self._listen(self.sockaddr)


@pytest.fixture
def upstream() -> Iterator[Callable[..., Upstream]]:
    made: list[Upstream] = []

    def make(handler: Callable[[socket.socket], None], **kw: Any) -> Upstream:
        u = Upstream(handler, **kw)
        made.append(u)
        return u

    yield make
    for u in made:
        u.stop()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(MiB):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def hasher(conn: socket.socket) -> None:
    """Read until EOF, then answer ``SHA256HEX COUNT\\n`` (so the answer comes after a half-close)."""
    h = hashlib.sha256()
    n = 0
    while data := conn.recv(MiB):
        h.update(data)
        n += len(data)
    conn.sendall(f"{h.hexdigest()} {n}\n".encode())


def resetter(conn: socket.socket) -> None:
    """Read a little, then close with SO_LINGER(1, 0): the client side gets a TCP RST."""
    conn.recv(5)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    conn.close()


# --- helpers: clients -------------------------------------------------------------------------------


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(MiB):
        chunks.append(data)
    return b"".join(chunks)


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` (from a thread, so big echoes cannot dead-lock), half-close, read until EOF."""
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    got = recv_all(sock)
    t.join(10)
    assert not errors, errors
    return got


def assert_closed_promptly(sock: socket.socket, within: float = 2.0) -> None:
    """The relay closed this client without serving it: EOF or a reset, and soon (never a hang)."""
    sock.settimeout(within + 3)
    t0 = time.monotonic()
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        data = b""
    elapsed = time.monotonic() - t0
    assert data == b"", f"expected EOF, got {data!r}"
    assert elapsed < within, f"closed after {elapsed:.2f} s"


def wait_bound(port: int, kind: int = socket.SOCK_STREAM, timeout: float = 10.0) -> None:
    """Wait until something has bound port ``port`` (for one-shot servers like iperf3 -1, which a connection to
    see would use up)."""
    wait_until(lambda: port_bound(port, kind), f"something bound port {port}", timeout)


def wait_unix(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):
                s.connect(str(path))
                return
        time.sleep(0.05)  # pacing the checks, not waiting for an event
    raise AssertionError(f"nothing listens on {path} after {timeout} s")


def byte_counts(lines: list[str]) -> list[int]:
    return [int(n) for line in lines for n in re.findall(r"(\d+) bytes", line)]


@pytest.fixture(scope="module")
def big_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """256 MiB of random bytes in a file (made once for the module) and their SHA-256."""
    path = tmp_path_factory.mktemp("relay-data") / "random.bin"
    h = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(BIG // (8 * MiB)):
            chunk = os.urandom(8 * MiB)
            h.update(chunk)
            f.write(chunk)
    yield path, h.hexdigest()
    path.unlink()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


# --- real peers through the relay -------------------------------------------------------------------


def test_iperf3_256mib_through_relay(procs: list[Proc], start_relay: Callable[..., Relay]) -> None:
    iperf3 = require("iperf3")
    port = free_port()
    server = Proc([iperf3, "-s", "-1", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL)
    procs.append(server)
    wait_bound(port)
    relay = start_relay("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}", verbose=True)
    client = subprocess.run(
        [iperf3, "-c", "127.0.0.1", "-p", str(relay.port), "-n", "256M", "-J"], capture_output=True, timeout=25
    )
    assert client.returncode == 0, (client.stdout[-2000:], client.stderr)
    result = json.loads(client.stdout)
    assert "error" not in result, result["error"]
    assert result["end"]["sum_sent"]["bytes"] >= BIG
    # iperf3's server stops counting at the client's TEST_END, with bytes still in flight: even without a
    # relay it reports a little less than was sent.
    assert result["end"]["sum_received"]["bytes"] >= 0.9 * BIG
    assert server.wait(10) == 0
    # iperf3 uses a control and a data connection: the data one shows 256 MiB in the relay's -v log.
    relay.wait_for(lambda line: any(n >= 0.9 * BIG for n in byte_counts([line])))


def test_curl_http_server_through_relay(procs: list[Proc], start_relay: Callable[..., Relay], tmp_path: Path) -> None:
    curl = require("curl")
    blob = os.urandom(3 * MiB + 17)
    (tmp_path / "blob.bin").write_bytes(blob)
    (tmp_path / "hello.txt").write_text("hello through the relay\n")
    port = free_port()
    procs.append(
        Proc(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )
    )
    wait_port(port)
    relay = start_relay("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}")
    out = tmp_path / "out.bin"
    base = f"http://127.0.0.1:{relay.port}"
    r = subprocess.run(
        [curl, "-sS", "--fail", "--max-time", "20", "-o", str(out), f"{base}/blob.bin"], capture_output=True, timeout=25
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == blob
    r = subprocess.run(
        [curl, "-sS", "--fail", "--max-time", "20", f"{base}/hello.txt"], capture_output=True, timeout=25
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello through the relay\n"
    r = subprocess.run(
        [curl, "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/nope"],
        capture_output=True,
        timeout=25,
    )
    assert r.stdout == b"404"


def test_redis_through_tcp_and_unix_relays(
    procs: list[Proc], start_relay: Callable[..., Relay], tmp_path: Path, short_tmp: Path
) -> None:
    redis_server = require("redis-server")
    redis_cli = require("redis-cli")
    port = free_port()
    args = f"--port {port} --bind 127.0.0.1 --appendonly no --dir {tmp_path}".split()
    procs.append(Proc([redis_server, *args, "--save", ""], stdout=subprocess.DEVNULL))
    wait_port(port)
    relay = start_relay("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}")

    def cli(*args: str) -> str:
        r = subprocess.run([redis_cli, *args], capture_output=True, timeout=20)
        assert r.returncode == 0, r.stderr
        return r.stdout.decode().strip()

    assert cli("-h", "127.0.0.1", "-p", str(relay.port), "SET", "k", "v") == "OK"
    assert cli("-h", "127.0.0.1", "-p", str(relay.port), "GET", "k") == "v"
    unix = start_relay(f"unix:{short_tmp}/redis.sock", f"tcp://127.0.0.1:{port}")
    assert cli("-s", str(short_tmp / "redis.sock"), "GET", "k") == "v"
    assert cli("-s", unix.address.path, "INCRBY", "n", "41") == "41"
    assert cli("-h", "127.0.0.1", "-p", str(relay.port), "INCR", "n") == "42"


@pytest.mark.parametrize("client", ["socat", "nc.openbsd", "ncat"])
def test_line_clients_through_relay(
    client: str, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    exe = require(client)
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url)
    data = os.urandom(300_000)
    argv = {
        "socat": [exe, "-t", "5", "-", f"TCP:127.0.0.1:{relay.port}"],
        "nc.openbsd": [exe, "-N", "127.0.0.1", str(relay.port)],
        "ncat": [exe, "127.0.0.1", str(relay.port)],
    }[client]
    r = subprocess.run(argv, input=data, capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data


def test_socat_as_target(procs: list[Proc], start_relay: Callable[..., Relay]) -> None:
    socat = require("socat")
    port = free_port()
    target = Proc([socat, "-t", "5", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "SYSTEM:tr a-z A-Z"])
    procs.append(target)
    wait_bound(port)
    relay = start_relay("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}")
    for i in range(3):
        with relay.connect() as s:
            # tr answers only after its input ends: the half-close must reach socat through the relay.
            assert roundtrip(s, f"hello relay {i}\n".encode()) == f"HELLO RELAY {i}\n".encode()
    target.terminate()


def test_nc_as_target(procs: list[Proc], start_relay: Callable[..., Relay]) -> None:
    nc = require("nc.openbsd")  # -N and this -l syntax are OpenBSD netcat's
    port = free_port()
    target = Proc([nc, "-N", "-l", "127.0.0.1", str(port)], stdin=subprocess.PIPE)
    procs.append(target)
    wait_bound(port)
    relay = start_relay("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}")
    with relay.connect() as s:
        assert target.p.stdin is not None
        target.p.stdin.write(b"from nc\n")
        target.p.stdin.close()  # nc -N: stdin EOF becomes shutdown(SHUT_WR) towards the relay
        assert recv_all(s) == b"from nc\n"
        s.sendall(b"from the client, after nc's half-close\n")
        s.shutdown(socket.SHUT_WR)
    assert target.p.stdout is not None
    out = target.p.stdout.read()
    assert target.wait(10) == 0
    assert out == b"from the client, after nc's half-close\n"


# --- bulk data, hash-checked ------------------------------------------------------------------------


def test_256mib_tcp_to_tcp_hash(
    big_data: tuple[Path, str], start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    path, digest = big_data
    up = upstream(hasher)
    relay = start_relay("tcp://127.0.0.1:0", up.url, verbose=True)
    with relay.connect(timeout=25) as s, path.open("rb") as f:
        s.sendfile(f)
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == f"{digest} {BIG}\n".encode()
    assert not up.errors
    line = relay.wait_for(lambda line: str(BIG) in line)
    assert str(len(f"{digest} {BIG}\n")) in line


def test_256mib_tcp_to_unix_socat_sha256sum(
    big_data: tuple[Path, str], procs: list[Proc], start_relay: Callable[..., Relay], short_tmp: Path
) -> None:
    socat = require("socat")
    require("sha256sum")
    sock_path = short_tmp / "hash.sock"
    target = Proc([socat, "-t", "10", f"UNIX-LISTEN:{sock_path},fork", "SYSTEM:sha256sum"])
    procs.append(target)
    wait_unix(sock_path)
    path, digest = big_data
    relay = start_relay("tcp://127.0.0.1:0", f"unix:{sock_path}")
    with relay.connect(timeout=25) as s, path.open("rb") as f:
        s.sendfile(f)
        s.shutdown(socket.SHUT_WR)  # sha256sum answers only after EOF: half-close crosses the relay
        assert recv_all(s) == f"{digest}  -\n".encode()
    target.terminate()


def test_200_concurrent_clients_hash_checked(
    start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(hasher)
    relay = start_relay("tcp://127.0.0.1:0", up.url)
    n = 200
    barrier = threading.Barrier(n, timeout=20)
    failures: list[str] = []

    def client(i: int) -> None:
        rng = random.Random(i)
        data = rng.randbytes(rng.randint(64 * 1024, MiB))
        want = f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode()
        try:
            with relay.connect(timeout=20) as s:
                barrier.wait()  # all 200 connected at once before any sends
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                got = recv_all(s)
            if got != want:
                failures.append(f"client {i}: {got[:80]!r} != {want[:80]!r}")
        except Exception as exc:
            failures.append(f"client {i}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 25
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "clients still running after 25 s"
    assert not failures, failures[:5]
    assert up.accepted == n


# --- mixed address kinds ----------------------------------------------------------------------------


def test_unix_to_tcp(short_tmp: Path, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    up = upstream(echo)
    relay = start_relay(f"unix:{short_tmp}/relay.sock", up.url)
    assert str(relay.address) == f"unix:{short_tmp}/relay.sock"
    data = os.urandom(2 * MiB)
    with relay.connect() as s:
        assert roundtrip(s, data) == data


def test_tcp_to_unix(short_tmp: Path, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    up = upstream(echo, family=socket.AF_UNIX, bind=str(short_tmp / "up.sock"))
    relay = start_relay("tcp://127.0.0.1:0", up.url)
    data = os.urandom(2 * MiB)
    with relay.connect() as s:
        assert roundtrip(s, data) == data


def test_abstract_unix_both_sides(start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    tag = uuid.uuid4().hex[:12]
    up = upstream(echo, family=socket.AF_UNIX, bind=f"\0sockcat-test-up-{tag}")
    assert up.url == f"unix:@sockcat-test-up-{tag}"
    relay = start_relay(f"unix:@sockcat-test-relay-{tag}", up.url)
    assert str(relay.address) == f"unix:@sockcat-test-relay-{tag}"
    assert relay.address.path == f"\0sockcat-test-relay-{tag}"
    data = os.urandom(MiB)
    with relay.connect() as s:
        assert roundtrip(s, data) == data


def test_unixpacket_to_tcp_packets_in_order(
    short_tmp: Path, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(echo)
    relay = start_relay(f"unixpacket:{short_tmp}/pkt.sock", up.url)
    assert relay.address.type == socket.SOCK_SEQPACKET
    packets = [f"packet {i:04d} ".encode() * (1 + i % 7) for i in range(200)]
    with relay.connect() as s:
        assert s.type == socket.SOCK_SEQPACKET
        for p in packets:
            s.send(p)
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"".join(packets)


def test_unixpacket_large_packets_are_not_truncated(
    short_tmp: Path, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    """Packets bigger than any one read buffer still arrive whole (a SEQPACKET recv truncates silently)."""
    up = upstream(hasher)
    relay = start_relay(f"unixpacket:{short_tmp}/big.sock", up.url)
    rng = random.Random(7)
    packets = [rng.randbytes(size) for size in (100, 70_000, 150_000, 65_537, 1)]
    with relay.connect() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for p in packets:
            s.send(p)
        s.shutdown(socket.SHUT_WR)
        whole = b"".join(packets)
        assert recv_all(s) == f"{hashlib.sha256(whole).hexdigest()} {len(whole)}\n".encode()


def test_tcp_to_unixpacket_target(
    short_tmp: Path, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    received: list[bytes] = []

    def packet_echo(conn: socket.socket) -> None:
        while data := conn.recv(1 << 17):
            received.append(data)
            conn.send(data)
        conn.shutdown(socket.SHUT_WR)

    up = upstream(packet_echo, family=socket.AF_UNIX, kind=socket.SOCK_SEQPACKET, bind=str(short_tmp / "p.sock"))
    relay = start_relay("tcp://127.0.0.1:0", up.url)
    data = b"".join(f"line {i}\n".encode() for i in range(5000))
    with relay.connect() as s:
        assert roundtrip(s, data) == data
    assert b"".join(received) == data


def test_tcp6_both_sides(start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    up = upstream(echo, family=socket.AF_INET6, bind=("::1", 0))
    relay = start_relay("tcp6://[::1]:0", up.url)
    assert relay.address.host == "::1"
    assert relay.address.family == socket.AF_INET6
    assert str(relay.address).endswith(f"://[::1]:{relay.port}")
    data = os.urandom(MiB)
    with relay.connect() as s:
        assert s.family == socket.AF_INET6
        assert roundtrip(s, data) == data
    # and between families: IPv6 in, IPv4 out
    up4 = upstream(echo)
    relay46 = start_relay("tcp://[::1]:0", up4.url)
    with relay46.connect() as s:
        assert roundtrip(s, b"six to four") == b"six to four"


def _fingerprint(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_tls_listen_self_signed_to_tcp(start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    up = upstream(echo)
    relay = start_relay("tls://127.0.0.1:0", up.url)
    assert relay.address.scheme == "tls"
    fp_line = relay.wait_for(lambda line: line.startswith("certificate sha256 "))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with relay.connect() as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        der = s.getpeercert(binary_form=True)
        assert der is not None
        assert fp_line == f"certificate sha256 {_fingerprint(der)}"
        for i in range(5):
            msg = f"tls message {i}\n".encode() * 1000
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(65536)
                assert chunk, "EOF too early"
                got += chunk
            assert got == msg
    # sockcat's own client: stdin EOF -> TLS half-close -> the echo's EOF comes back through the relay.
    # (Large enough that echoed records are still undecrypted when stdin ends and close_notify goes out.)
    data = os.urandom(1 << 20)
    r = run_sockcat("connect", str(relay.address), "--insecure", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data


def test_tls_listen_with_cert_verified_by_client(
    ca: trustme.CA, short_tmp: Path, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(short_tmp / "cert.pem"))
    cert.private_key_pem.write_to_path(str(short_tmp / "key.pem"))
    up = upstream(echo)
    relay = start_relay(
        "tls://127.0.0.1:0", up.url, "--cert", str(short_tmp / "cert.pem"), "--key", str(short_tmp / "key.pem")
    )
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with relay.connect() as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"verified\n")
        assert s.recv(100) == b"verified\n"
    assert not any(line.startswith("certificate sha256") for line in relay.lines)
    ca.cert_pem.write_to_path(str(short_tmp / "ca.pem"))
    data = os.urandom(12_000)
    r = run_sockcat("connect", f"tls://localhost:{relay.port}", "--ca", str(short_tmp / "ca.pem"), input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data


def test_tcp_to_tls_target_sockcat_listen(procs: list[Proc], start_relay: Callable[..., Relay]) -> None:
    target = Proc(sockcat("listen", "tls://127.0.0.1:0", "-k", "--exec", "cat"))
    procs.append(target)
    target_addr = target.read_listening()
    relay = start_relay("tcp://127.0.0.1:0", target_addr, "--insecure")
    for size in (10, 700_000):
        data = os.urandom(size)
        with relay.connect() as s:
            assert roundtrip(s, data) == data


def test_tcp_to_tls_target_socat_trustme(
    ca: trustme.CA, procs: list[Proc], start_relay: Callable[..., Relay], short_tmp: Path
) -> None:
    socat = require("socat")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(short_tmp / "server.pem"))
    ca.cert_pem.write_to_path(str(short_tmp / "ca.pem"))
    port = free_port()
    target = Proc(
        [
            socat,
            "-t",
            "5",
            f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={short_tmp}/server.pem,verify=0",
            "SYSTEM:tr a-z A-Z",
        ]
    )
    procs.append(target)
    wait_bound(port)
    relay = start_relay("tcp://127.0.0.1:0", f"tls://127.0.0.1:{port}", "--ca", str(short_tmp / "ca.pem"))
    with relay.connect() as s:
        assert roundtrip(s, b"hello tls target\n") == b"HELLO TLS TARGET\n"
    # Without trust in that CA the handshake fails: the client is closed at once, nothing leaks through.
    untrusting = start_relay("tcp://127.0.0.1:0", f"tls://127.0.0.1:{port}", verbose=True)
    with untrusting.connect() as s:
        assert_closed_promptly(s, within=5)
    target.terminate()


def test_tls_target_answer_survives_client_half_close(
    ca: trustme.CA, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    """The relay's close_notify to the target must not eat the target's answer already received.

    (SSLObject.unwrap() runs SSL_shutdown twice; the second call reads and drops the application data
    waiting in the incoming BIO, so the relay decrypts it first.)"""
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    size = 16 * MiB

    def big_answer(conn: socket.socket) -> None:
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"r" * size)
            while tls.recv(65536):
                pass

    up = upstream(big_answer)
    relay = start_relay("tcp://127.0.0.1:0", f"tls://127.0.0.1:{up.port}", "--insecure")
    received = []
    for _ in range(3):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.settimeout(10)
            s.connect((relay.address.host, relay.port))
            # the answer backs up inside the relay: our window is full and the relay holds unsent bytes ...
            wait_until(lambda s=s: queued_to_read(s) > 0 and peer_queues(s)[0] > 0, "the answer backs up")
            s.shutdown(socket.SHUT_WR)  # ... when our half-close makes it send close_notify to the target
            received.append(len(recv_all(s)))
    assert received == [size] * 3


def test_tls_target_verify_failure_is_logged(
    ca: trustme.CA, procs: list[Proc], start_relay: Callable[..., Relay], short_tmp: Path
) -> None:
    socat = require("socat")
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(short_tmp / "server.pem"))
    port = free_port()
    target = Proc(
        [socat, f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={short_tmp}/server.pem,verify=0", "PIPE"]
    )
    procs.append(target)
    wait_bound(port)
    relay = start_relay("tcp://127.0.0.1:0", f"tls://127.0.0.1:{port}", verbose=True)
    with relay.connect() as s:
        assert_closed_promptly(s, within=5)
    relay.wait_for(lambda line: "certificate" in line.lower() or "verify" in line.lower(), timeout=2)
    target.terminate()


# --- datagrams --------------------------------------------------------------------------------------


class UdpEcho:
    """A UDP (or unixgram) echo server thread; answers ``DATA|SOURCE`` so a test sees each session's socket."""

    def __init__(self, family: int = socket.AF_INET, bind: Any = ("127.0.0.1", 0)) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.sockaddr = self.sock.getsockname()
        self.sources: list[Any] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, src = self.sock.recvfrom(65536)
            except OSError:
                return
            if src is None:  # shut down
                return
            self.sources.append(src)
            with contextlib.suppress(OSError):
                self.sock.sendto(data + b"|" + repr(src).encode(), src)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def udp_echo() -> Iterator[Callable[..., UdpEcho]]:
    made: list[UdpEcho] = []

    def make(**kw: Any) -> UdpEcho:
        e = UdpEcho(**kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def _udp_client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


def _ask(s: socket.socket, relay: Relay, msg: bytes) -> bytes:
    target: Any = relay.address.path if relay.address.is_unix else (relay.address.host, relay.address.port)
    s.sendto(msg, target)
    return s.recv(65536)


def test_udp_relay_two_clients_own_replies(start_relay: Callable[..., Relay], udp_echo: Callable[..., UdpEcho]) -> None:
    echo_server = udp_echo()
    relay = start_relay("udp://127.0.0.1:0", f"udp://127.0.0.1:{echo_server.sockaddr[1]}")
    with _udp_client() as a, _udp_client() as b:
        replies: dict[str, list[bytes]] = {"a": [], "b": []}
        for i in range(5):
            replies["a"].append(_ask(a, relay, f"A{i}".encode()))
            replies["b"].append(_ask(b, relay, f"B{i}".encode()))
        for who, got in replies.items():
            assert [r.split(b"|")[0] for r in got] == [f"{who.upper()}{i}".encode() for i in range(5)]
        # one upstream socket per client, kept for the session
        a_src = {r.split(b"|")[1] for r in replies["a"]}
        b_src = {r.split(b"|")[1] for r in replies["b"]}
        assert len(a_src) == 1 and len(b_src) == 1 and a_src != b_src
        for s in (a, b):  # nothing else arrives
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s.recv(65536)


def test_udp_relay_socat_echo_upstream(procs: list[Proc], start_relay: Callable[..., Relay]) -> None:
    socat = require("socat")
    port = free_port(socket.SOCK_DGRAM)
    target = Proc([socat, "-T", "3", f"UDP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", "PIPE"])
    procs.append(target)
    wait_bound(port, socket.SOCK_DGRAM)
    relay = start_relay("udp://127.0.0.1:0", f"udp://127.0.0.1:{port}")
    with _udp_client() as a, _udp_client() as b:
        for i in range(3):
            assert _ask(a, relay, f"from a {i}".encode()) == f"from a {i}".encode()
            assert _ask(b, relay, f"from b {i}".encode()) == f"from b {i}".encode()
    target.terminate()


def test_unixgram_to_udp(short_tmp: Path, start_relay: Callable[..., Relay], udp_echo: Callable[..., UdpEcho]) -> None:
    echo_server = udp_echo()
    relay = start_relay(f"unixgram:{short_tmp}/g.sock", f"udp://127.0.0.1:{echo_server.sockaddr[1]}")
    assert relay.address.type == socket.SOCK_DGRAM
    clients = []
    for name in ("c1", "c2"):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        c.bind(str(short_tmp / f"{name}.sock"))  # a unixgram client needs an address to get replies
        c.settimeout(5)
        clients.append(c)
    try:
        for i in range(3):
            for n, c in enumerate(clients):
                assert _ask(c, relay, f"c{n} {i}".encode()).split(b"|")[0] == f"c{n} {i}".encode()
    finally:
        for c in clients:
            c.close()


def test_udp_to_unixgram(short_tmp: Path, start_relay: Callable[..., Relay], udp_echo: Callable[..., UdpEcho]) -> None:
    echo_server = udp_echo(family=socket.AF_UNIX, bind=str(short_tmp / "echo.sock"))
    relay = start_relay("udp://127.0.0.1:0", f"unixgram:{short_tmp}/echo.sock")
    with _udp_client() as a, _udp_client() as b:
        assert _ask(a, relay, b"alpha").split(b"|")[0] == b"alpha"
        assert _ask(b, relay, b"beta").split(b"|")[0] == b"beta"
    assert len(set(map(repr, echo_server.sources))) == 2


def test_udp_session_idle_timeout_then_new_session(
    start_relay: Callable[..., Relay], udp_echo: Callable[..., UdpEcho]
) -> None:
    echo_server = udp_echo()
    relay = start_relay("udp://127.0.0.1:0", f"udp://127.0.0.1:{echo_server.sockaddr[1]}", "-i", "1", verbose=True)
    with _udp_client() as c:
        first = _ask(c, relay, b"one").split(b"|")
        again = _ask(c, relay, b"two").split(b"|")
        assert (first[0], again[0]) == (b"one", b"two")
        assert first[1] == again[1]  # same session, same upstream socket
        client = f"udp://127.0.0.1:{c.getsockname()[1]}"
        # the idle session ends (logged with -v) ...
        relay.wait_for(lambda line: client in line and "closed" in line, timeout=5)
        # ... and the next datagram opens a new one, on a new upstream socket
        later = _ask(c, relay, b"three").split(b"|")
        assert later[0] == b"three"
        assert later[1] != first[1]


# --- half-close, resets, refusals, limits ------------------------------------------------------------

MODES = [pytest.param([], id="splice"), pytest.param(["--hexdump"], id="buffered")]

# Regression (the two "vanishing"/"together" tests below): _Flow.on_readable once spliced only once per callback;
# under uvloop, libuv stops a poll handle on POLLERR after one callback, so when a peer's data and its RST were
# queued together the error was never read and the connection (its upstream included) stayed open forever.


@pytest.mark.parametrize("mode", MODES)
def test_half_close_client_first(
    mode: list[str], start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(hasher)
    relay = start_relay("tcp://127.0.0.1:0", up.url, *mode)
    data = b"client speaks first, then half-closes\n" * 100
    with relay.connect() as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode()


@pytest.mark.parametrize("mode", MODES)
def test_half_close_upstream_first(
    mode: list[str], start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    got: list[bytes] = []
    finished = threading.Event()

    def banner_then_listen(conn: socket.socket) -> None:
        conn.sendall(b"banner\n")
        conn.shutdown(socket.SHUT_WR)
        got.append(recv_all(conn))
        finished.set()

    up = upstream(banner_then_listen)
    relay = start_relay("tcp://127.0.0.1:0", up.url, *mode)
    with relay.connect() as s:
        assert recv_all(s) == b"banner\n"  # the upstream's EOF reached us ...
        # ... while the relay holds its upstream socket half-closed (its read side at EOF, not closed)
        wait_until(lambda: TCP_CLOSE_WAIT in tcp_states(up.port, side="remote"), "the relay holds the half-close")
        s.sendall(b"but we still talk\n")  # ... and our direction still flows
        s.sendall(b"x" * 500_000)
        s.shutdown(socket.SHUT_WR)
        assert finished.wait(10)
        assert s.recv(10) == b""
    assert got == [b"but we still talk\n" + b"x" * 500_000]
    if mode:
        assert any(line.startswith("<") and "banner" in line for line in relay.lines)
        assert any(line.startswith(">") for line in relay.lines)


@pytest.mark.parametrize("mode", MODES)
def test_upstream_reset_reaches_client_as_reset(
    mode: list[str], start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(resetter)
    relay = start_relay("tcp://127.0.0.1:0", up.url, *mode)
    with relay.connect() as s:
        s.sendall(b"hello")
        s.settimeout(3)
        t0 = time.monotonic()
        with pytest.raises(ConnectionResetError):
            s.recv(100)
        assert time.monotonic() - t0 < 2
    # the relay goes on serving
    up.handler = echo
    with relay.connect() as s:
        assert roundtrip(s, b"still here") == b"still here"


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param([], id="splice"),
        pytest.param(["--hexdump"], id="buffered"),
    ],
)
def test_client_vanishing_mid_transfer_resets_upstream(
    mode: list[str], start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    outcome: list[str] = []
    started = threading.Event()
    vanished = threading.Event()

    def slow_reader(conn: socket.socket) -> None:
        started.set()
        # bytes pile up in the relay and the socket buffers until the client has vanished
        vanished.wait(TIMEOUT)
        try:
            while conn.recv(65536):
                time.sleep(0.001)  # pacing a slow reader, not waiting for an event
        except ConnectionResetError:
            outcome.append("reset")
            return
        outcome.append("eof")

    up = upstream(slow_reader)
    relay = start_relay("tcp://127.0.0.1:0", up.url, *mode)
    s = relay.connect()
    s.setblocking(False)
    sent = 0
    assert started.wait(5)
    with contextlib.suppress(BlockingIOError):
        while sent < 8 * MiB:
            sent += s.send(b"z" * 65536)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    s.close()  # the client vanishes with data in flight
    vanished.set()
    wait_until(lambda: outcome, "the upstream sees the end of the connection")
    assert outcome == ["reset"]
    up.handler = echo
    with relay.connect() as s2:
        assert roundtrip(s2, b"next client") == b"next client"


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param([], id="splice"),
        pytest.param(["--hexdump"], id="buffered"),
    ],
)
def test_client_data_and_reset_arriving_together_reset_upstream(
    mode: list[str], start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    outcome: list[str] = []

    def reader(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except ConnectionResetError:
            outcome.append("reset")
            return
        outcome.append("eof")

    up = upstream(reader)
    relay = start_relay("tcp://127.0.0.1:0", up.url, *mode)
    s = relay.connect()
    wait_until(lambda: up.accepted, "the upstream accepts the relay's connection")
    seen: list[object] = []

    def watching_both() -> bool:
        ends = tcp_inodes(local=relay.port, remote=s.getsockname()[1]) + tcp_inodes(remote=up.port)
        readers = epoll_readers(relay.pid)
        seen[:] = [ends, readers]
        return len(ends) == 2 and set(ends) <= readers

    try:
        wait_until(watching_both, "the relay is watching both sockets", timeout=TIMEOUT)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: the two ends' inodes, the relay's epoll readers: {seen}") from None
    # Freeze the relay so that the request and the RST both wait in its socket when it looks next.
    os.kill(relay.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _state(relay.pid) == "T", "the relay stops")
        s.sendall(b"q" * 50_000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        port = s.getsockname()[1]
        s.close()
        # the RST has reached the relay's socket (a reset socket leaves the kernel's table)
        wait_until(lambda: not tcp_inodes(local=relay.port, remote=port), "the reset arrives")
    finally:
        os.kill(relay.pid, signal.SIGCONT)
    wait_until(lambda: outcome, "the upstream sees the end of the connection")
    assert outcome == ["reset"]


def test_client_vanishing_during_download(start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    outcome: list[str] = []

    def talker(conn: socket.socket) -> None:
        try:
            for _ in range(200):
                conn.sendall(b"d" * MiB)
        except (ConnectionResetError, BrokenPipeError):
            outcome.append("reset")
            return
        outcome.append("all sent")

    up = upstream(talker)
    relay = start_relay("tcp://127.0.0.1:0", up.url)
    with relay.connect() as s:
        got = 0
        while got < 2 * MiB:
            got += len(s.recv(MiB))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    wait_until(lambda: outcome, "the upstream sees the end of the connection", timeout=10)
    assert outcome == ["reset"]


def test_upstream_refused_closes_client_promptly_and_relay_goes_on(
    start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    port = free_port()
    relay = start_relay("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}", verbose=True)
    for _ in range(3):
        with relay.connect() as s:
            assert_closed_promptly(s)
    relay.wait_for(lambda line: str(port) in line and "refused" in line.lower())
    upstream(echo, bind=("127.0.0.1", port))
    with relay.connect() as s:
        assert roundtrip(s, b"now it answers") == b"now it answers"
    assert relay.proc.p.poll() is None


def test_max_conns_third_client_gets_eof(start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url, "--max-conns", "2")
    c1, c2 = relay.connect(), relay.connect()
    try:
        for c in (c1, c2):
            c.sendall(b"ping")
            assert c.recv(10) == b"ping"
        with relay.connect() as c3:
            assert_closed_promptly(c3)
        for c in (c1, c2):  # the first two are unharmed
            c.sendall(b"pong")
            assert c.recv(10) == b"pong"
        assert up.accepted == 2
        assert roundtrip(c1, b"bye") == b"bye"  # c1 ends: a slot frees up
    finally:
        c1.close()
    deadline = time.monotonic() + 5
    while True:
        with relay.connect() as c4:
            # Until the relay has seen c1 end, c4 is still over the limit and closed unread: an EOF, or a reset
            # if its bytes had already arrived (the kernel's answer to closing with unread data).
            try:
                c4.sendall(b"again")
                c4.shutdown(socket.SHUT_WR)
                if recv_all(c4) == b"again":
                    break
            except OSError:
                pass
        assert time.monotonic() < deadline, "no slot after the first client left"
        time.sleep(0.1)  # pacing the retries, not waiting for an event
    c2.close()


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        (["--allow", "10.0.0.0/8"], False),
        (["--deny", "127.0.0.1/32"], False),
        (["--allow", "127.0.0.0/8"], True),
        (["--allow", "127.0.0.0/8", "--deny", "127.0.0.1/32"], False),
        (["--allow", "10.0.0.0/8", "--allow", "127.0.0.1/32"], True),
    ],
)
def test_allow_deny(
    options: list[str], allowed: bool, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url, *options)
    with relay.connect() as s:
        if allowed:
            assert roundtrip(s, b"let in") == b"let in"
        else:
            assert_closed_promptly(s)
    assert up.accepted == (1 if allowed else 0)


def test_connect_timeout(start_relay: Callable[..., Relay]) -> None:
    # A listener whose accept queue is full drops SYNs: connecting to it hangs (on loopback, no routing tricks).
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers: list[socket.socket] = []
    try:
        while True:
            f = socket.socket()
            f.settimeout(0.3)
            fillers.append(f)
            try:
                f.connect(full.getsockname())
            except TimeoutError:
                break
            assert len(fillers) < 20
        port = full.getsockname()[1]
        relay = start_relay("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}", "-w", "1", verbose=True)
        with relay.connect() as s:
            s.settimeout(8)
            t0 = time.monotonic()
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(10) == b""
            elapsed = time.monotonic() - t0
        assert 0.7 < elapsed < 4, elapsed
        relay.wait_for(lambda line: str(port) in line and "tim" in line.lower())
    finally:
        for f in fillers:
            f.close()
        full.close()


@pytest.mark.parametrize("mode", MODES)
def test_idle_timeout_closes_stream_connection(
    mode: list[str], start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url, "-i", "1", *mode)
    with relay.connect() as s:
        for _ in range(3):  # traffic keeps it alive past the idle time
            s.sendall(b"tick")
            assert s.recv(10) == b"tick"
            last = time.monotonic()
            time.sleep(0.5)  # pacing the traffic under the idle time, not waiting for an event
        s.settimeout(4)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""
        assert 0.9 < time.monotonic() - last < 3


def test_verbose_logs_addresses_and_byte_counts(
    start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    def answer_777(conn: socket.socket) -> None:
        recv_all(conn)
        conn.sendall(b"r" * 777)

    up = upstream(answer_777)
    relay = start_relay("tcp://127.0.0.1:0", up.url, verbose=True)
    with relay.connect() as s:
        client = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        assert roundtrip(s, b"q" * 1234) == b"r" * 777
    closing = relay.wait_for(lambda line: client in line and "1234" in line)
    assert "777" in closing
    mine = [line for line in relay.lines if client in line]
    assert any(str(relay.address) in line for line in mine), mine  # local address too
    assert any(up.url in line for line in mine), mine
    assert all(line.startswith("sockcat: ") for line in relay.lines[1:]), relay.lines


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("tcp://127.0.0.1:{port}", id="ip-literal"),  # the callback path: no look-up per connection
        pytest.param("tcp://localhost:{port}", id="name"),  # the general path: resolved per connection
    ],
)
def test_one_opening_and_one_closing_line_per_connection(
    target: str, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(hasher)
    relay = start_relay("tcp://127.0.0.1:0", target.format(port=up.port), verbose=True)
    clients = []
    for i in range(3):
        with relay.connect() as s:
            clients.append(f"tcp://127.0.0.1:{s.getsockname()[1]}")
            data = b"n" * (1000 + i)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode()
    for i, client in enumerate(clients):
        relay.wait_for(lambda line, c=client, n=1000 + i: c in line and f"{n} bytes" in line)
        mine = [line for line in relay.lines if client in line]
        assert len([line for line in mine if "connection from" in line]) == 1, mine
        assert len([line for line in mine if line.startswith(f"sockcat: closed {client}")]) == 1, mine


def test_missing_unix_target_closes_client_promptly_and_is_logged(
    short_tmp: Path, start_relay: Callable[..., Relay]
) -> None:
    path = short_tmp / "nobody.sock"
    relay = start_relay("tcp://127.0.0.1:0", f"unix:{path}", verbose=True)
    for _ in range(3):
        with relay.connect() as s:
            assert_closed_promptly(s)
    relay.wait_for(lambda line: str(path) in line and "connect" in line)
    cold = relay.fd_count()
    for _ in range(20):
        with relay.connect() as s:
            assert_closed_promptly(s)
    # Before each accept the relay makes the upstream socket of the next client; ``cold`` may have been read
    # after a failed client's close and before that spare was remade, so one descriptor more is its normal
    # state. A leak would be one per client (20 more).
    settled = cold + SPARE_UPSTREAM
    wait_until(lambda: relay.fd_count() <= settled, f"the relay closes every descriptor of those ({settled})", 5)
    assert relay.proc.p.poll() is None


def test_quiet_by_default(start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url)
    with relay.connect() as s:
        assert roundtrip(s, b"shh") == b"shh"
    assert relay.stop() == 0
    assert relay.lines == [f"listening on {relay.address}"]


def test_hexdump_shows_both_directions(start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url, "--hexdump")
    with relay.connect() as s:
        assert roundtrip(s, b"hello relay") == b"hello relay"
    relay.wait_for(lambda line: "68 65 6c 6c 6f 20 72 65" in line and "|hello relay|" in line and line[0] == ">")
    relay.wait_for(lambda line: "|hello relay|" in line and line[0] == "<")


def test_source_address_option(start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url, "-s", "tcp://127.0.0.2:0")
    with relay.connect() as s:
        assert roundtrip(s, b"from where?") == b"from where?"
    assert up.peers[0][0] == "127.0.0.2"


# --- no descriptor leaks ----------------------------------------------------------------------------


def _mixed(conn: socket.socket) -> None:
    kind = conn.recv(1)
    if kind == b"R":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        return
    if kind == b"D":
        with contextlib.suppress(OSError):
            for _ in range(64):
                conn.sendall(b"d" * MiB)
        return
    conn.sendall(kind)
    with contextlib.suppress(ConnectionResetError):
        echo(conn)


def _round(relay: Relay, up: Upstream, kinds: str, n: int) -> None:
    """``n`` connections cycling through ``kinds``: ``e`` small echo, ``b`` bulk echo (worker thread and pooled
    pipe), ``r`` upstream reset, ``v`` client vanishing mid-upload, ``d`` client vanishing mid-download,
    ``x`` upstream refused (its listener is closed for those)."""
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "x":
            up.stop()
            try:
                with relay.connect() as s:
                    assert_closed_promptly(s)
            finally:
                up.restart()
            continue
        with relay.connect() as s:
            if kind == "e":
                assert roundtrip(s, b"E" + b"small" * 20) == b"E" + b"small" * 20
            elif kind == "b":
                data = b"E" + os.urandom(600_000)
                assert roundtrip(s, data) == data
            elif kind == "r":
                s.sendall(b"R")
                s.settimeout(1)
                with contextlib.suppress(ConnectionResetError, TimeoutError):
                    recv_all(s)
            elif kind == "v":
                s.sendall(b"E" + b"v" * 300_000)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            elif kind == "d":
                s.sendall(b"D")
                s.recv(MiB)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)


def _fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        with contextlib.suppress(OSError):
            targets.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
    return targets


POOL_FDS = 2 * 16 + 2  # the relay keeps up to 16 idle pipes, plus the loop's own pipe
SPARE_UPSTREAM = 1  # the relay's upstream socket for its next client, made before accept


def _fd_kinds(pid: int) -> dict[str, int]:
    """The relay's descriptors by kind: ``pipe``, ``socket`` and ``other``; and ``tcp``: how many of its sockets
    are TCP connections (a leaked client or upstream, whatever the timing of the relay's spare socket)."""
    kinds = {"pipe": 0, "socket": 0, "other": 0}
    for target in _fd_targets(pid):
        kind = target.split("->", 1)[1].split(":", 1)[0]
        kinds[kind if kind in kinds else "other"] += 1
    kinds["tcp"] = process_tcp_connections(pid)
    return kinds


def _settled_fds(relay: Relay, ok: Callable[[dict[str, int]], bool], timeout: float = 5.0) -> dict:
    """The relay's descriptors by kind once ``ok`` holds (or as they are after ``timeout``: the caller checks)."""
    deadline = time.monotonic() + timeout
    now = _fd_kinds(relay.pid)
    while not ok(now) and time.monotonic() < deadline:
        time.sleep(0.05)  # pacing the checks, not waiting for an event
        now = _fd_kinds(relay.pid)
    return now


@pytest.mark.parametrize(
    "kinds",
    [
        pytest.param("eebx", id="normal-and-refused"),
        pytest.param("ebrvdx", id="with-resets"),
    ],
)
def test_no_fd_leak_after_100_connections(
    kinds: str, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(_mixed)
    relay = start_relay("tcp://127.0.0.1:0", up.url)
    cold = _fd_kinds(relay.pid)
    _round(relay, up, kinds, 30)  # warm-up: the pipe pool and the loop's pipe are made here
    # The warm-up's connections closed (the relay may have one socket more or less than now: the upstream
    # socket it makes before each accept for the next client, counted below as the one allowed extra).
    base = _settled_fds(relay, lambda now: now["tcp"] == 0)
    assert base["pipe"] <= cold["pipe"] + POOL_FDS, (cold, base)
    _round(relay, up, kinds, 100)

    def settled(now: dict[str, int]) -> bool:
        # no connection left, no socket or anything else new; pipes may only fill the bounded pool
        return (
            now["tcp"] == 0
            and now["socket"] <= base["socket"] + SPARE_UPSTREAM
            and now["other"] <= base["other"]
            and now["pipe"] <= cold["pipe"] + POOL_FDS
        )

    after = _settled_fds(relay, settled)
    assert settled(after), f"descriptors leaked: {base} -> {after}: {_fd_targets(relay.pid)}"
    assert relay.proc.p.poll() is None


# --- signals, workers -------------------------------------------------------------------------------


def test_sigterm_lets_inflight_connection_finish(
    start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url, "--grace", "10", verbose=True)
    c1 = relay.connect()
    c1.sendall(b"before")
    assert c1.recv(10) == b"before"
    relay.proc.p.send_signal(signal.SIGTERM)
    relay.wait_for(lambda line: "stopping: 1 connection(s)" in line)  # logged once it stopped accepting
    # no new connection is served any more (refused, or queued and never relayed)
    try:
        with relay.connect(timeout=2) as c2:
            c2.settimeout(1)
            c2.sendall(b"late")
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                assert c2.recv(10) == b""
    except ConnectionRefusedError:
        pass
    assert up.accepted == 1
    # the in-flight one still works, and its end lets the relay exit long before --grace
    c1.sendall(b"during grace")
    assert c1.recv(100) == b"during grace"
    assert roundtrip(c1, b"bye") == b"bye"
    c1.close()
    t0 = time.monotonic()
    assert relay.proc.wait(8) == 0
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_grace_expires(
    mode: list[str], start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url, "--grace", "1", *mode)
    with relay.connect() as c1:
        c1.sendall(b"x")
        assert c1.recv(10) == b"x"
        t0 = time.monotonic()
        relay.proc.p.send_signal(signal.SIGTERM)
        assert relay.proc.wait(10) == 0
        elapsed = time.monotonic() - t0
        assert 0.8 < elapsed < 2.5, elapsed  # the grace period, then a prompt stop
        c1.settimeout(3)
        with contextlib.suppress(ConnectionResetError):
            assert c1.recv(10) == b""


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_exit_status_and_unix_socket_removed(
    sig: int, status: int, short_tmp: Path, start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(echo)
    path = short_tmp / "relay.sock"
    relay = start_relay(f"unix:{path}", up.url)
    with relay.connect() as s:
        assert roundtrip(s, b"hi") == b"hi"
    assert path.exists()
    t0 = time.monotonic()
    assert relay.stop(sig) == status
    assert time.monotonic() - t0 < 3
    assert not path.exists()
    assert not [line for line in relay.lines if "Traceback" in line or "error" in line]


def test_sigint_tcp_exit_130(start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]) -> None:
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url)
    with relay.connect() as s:
        assert roundtrip(s, b"hi") == b"hi"
    assert relay.stop(signal.SIGINT) == 130


def test_workers_two_processes_one_listening_line(
    start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(hasher)
    relay = start_relay("tcp://127.0.0.1:0", up.url, "--workers", "2")
    children_file = Path(f"/proc/{relay.pid}/task/{relay.pid}/children")
    wait_until(lambda: children_file.read_text().split(), "the worker is forked")
    relay.children = [int(p) for p in children_file.read_text().split()]
    assert len(relay.children) == 1, relay.children
    results: list[bool] = []

    def client(i: int) -> None:
        data = f"worker test {i}\n".encode() * (1 + i * 100)
        with relay.connect() as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            results.append(recv_all(s) == f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode())

    for _ in range(3):
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
    assert results == [True] * 60
    assert relay.stop() == 0
    assert [line for line in relay.lines if line.startswith("listening on")] == [f"listening on {relay.address}"]
    for pid in relay.children:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the relay"


def _state(pid: int) -> str:
    """The process's state letter (R, S, T, Z…) from /proc/PID/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _gone(pid: int) -> bool:
    """No such process, or only a zombie left for whoever adopted it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_workers_die_when_the_parent_is_killed(
    start_relay: Callable[..., Relay], upstream: Callable[..., Upstream]
) -> None:
    up = upstream(echo)
    relay = start_relay("tcp://127.0.0.1:0", up.url, "--workers", "3")
    children_file = Path(f"/proc/{relay.pid}/task/{relay.pid}/children")
    wait_until(lambda: len(children_file.read_text().split()) >= 2, "both workers are forked")
    relay.children = [int(p) for p in children_file.read_text().split()]
    assert len(relay.children) == 2, relay.children
    with relay.connect() as s:
        assert roundtrip(s, b"served") == b"served"
    relay.proc.p.send_signal(signal.SIGKILL)
    relay.proc.wait(5)
    wait_until(lambda: all(_gone(pid) for pid in relay.children), f"the workers {relay.children} die", timeout=10)
    with pytest.raises(OSError):  # nobody serves the address any more
        relay.connect(timeout=2).close()


# --- usage and runtime errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "target", "needle"),
    [
        ("udp://127.0.0.1:0", "tcp://127.0.0.1:9", "datagram"),
        ("tcp://127.0.0.1:0", "unixgram:/tmp/sockcat-nowhere.sock", "datagram"),
        ("tcp://[::1:80", "tcp://127.0.0.1:9", "'tcp://[::1:80'"),
        ("tcp://127.0.0.1:0", "tcp://127.0.0.1:99999", "'tcp://127.0.0.1:99999'"),
        ("tcp://127.0.0.1:0", "tcp://127.0.0.1:no-such-service-xyz", "'tcp://127.0.0.1:no-such-service-xyz'"),
        ("bogus://x:1", "tcp://127.0.0.1:9", "'bogus://x:1'"),
        ("-", "tcp://127.0.0.1:9", ""),
    ],
)
def test_usage_errors_exit_2(listen: str, target: str, needle: str) -> None:
    r = run_sockcat("relay", listen, target)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockcat: error: "), lines
    assert needle in lines[0]


@pytest.mark.parametrize(
    "options",
    [["--cert", "/nonexistent.pem"], ["--insecure"], ["--sockopt", "nosuchopt=1"], ["--max-conns", "0"], ["-w", "x"]],
)
def test_option_usage_errors_exit_2(options: list[str]) -> None:
    r = run_sockcat("relay", "tcp://127.0.0.1:0", "tcp://127.0.0.1:9", *options)
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().strip().splitlines()[-1].startswith("sockcat: error: ")


def test_port_in_use_exit_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run_sockcat("relay", f"tcp://127.0.0.1:{port}", "tcp://127.0.0.1:9")
    err = r.stderr.decode()
    assert r.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockcat: error: "), lines
    assert str(port) in lines[0]


def test_unix_path_held_by_live_listener_exit_1(short_tmp: Path) -> None:
    path = short_tmp / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen(1)
        r = run_sockcat("relay", f"unix:{path}", "tcp://127.0.0.1:9")
    err = r.stderr.decode()
    assert r.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockcat: error: "), lines
    assert str(path) in lines[0]


def test_unnamed_unix_client_is_logged_in_words(
    start_relay: Callable[..., Relay], upstream: Callable[..., Upstream], short_tmp: Path
) -> None:
    """A Unix client that never bound has no address to print: -v names it in words, never as 'None' or 'unix:'."""
    up = upstream(hasher)
    relay = start_relay(f"unix:{short_tmp / 'r.sock'}", up.url, verbose=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(short_tmp / "r.sock"))
        s.sendall(b"abc")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == f"{hashlib.sha256(b'abc').hexdigest()} 3\n".encode()
    closing = relay.wait_for(lambda line: "closed" in line and "3 bytes to" in line)
    assert "closed unnamed unix peer" in closing, closing
    assert not any("None" in line or "unix: " in line for line in relay.lines), relay.lines


@pytest.mark.parametrize("limit", [40, 41])  # an odd spare descriptor: room to accept, none for the upstream
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # resolved once (callback path) / per connection
def test_out_of_descriptors_clients_wait_in_the_backlog(
    limit: int, host: str, procs: list[Proc], upstream: Callable[..., Upstream]
) -> None:
    """With 40 descriptors (room for ~10 relayed connections), 30 clients at once: the relay pauses accepting
    when it runs out, warns once, and serves every client in turn; none is accepted only to be dropped.
    A host name as the target takes the general path (a task per connection, happy eyeballs): a client
    accepted there waits for a descriptor for its upstream instead of being dropped."""
    up = upstream(hasher)
    target = up.url.replace("127.0.0.1", host)
    proc = Proc(["prlimit", f"--nofile={limit}:{limit}", *sockcat("relay", "tcp://127.0.0.1:0", target)])
    procs.append(proc)
    relay = Relay(proc)
    clients = []
    try:
        for i in range(30):
            s = socket.create_connection(("127.0.0.1", relay.address.port), timeout=30)
            clients.append(s)
            s.sendall(b"%d" % i * 1000)
            s.shutdown(socket.SHUT_WR)
        for i, s in enumerate(clients):
            data = b"%d" % i * 1000
            assert recv_all(s) == f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode(), i
    finally:
        for s in clients:
            s.close()
    warnings = [line for line in relay.lines if "warning" in line]
    assert 1 <= len(warnings) <= 5, relay.lines
    assert "accept on tcp://127.0.0.1" in warnings[0] and "too many open files" in warnings[0], warnings
    assert not any("Traceback" in line for line in relay.lines), relay.lines
    with relay.connect() as s:  # still serving
        assert roundtrip(s, b"after") == f"{hashlib.sha256(b'after').hexdigest()} 5\n".encode()


def test_unbound_unixgram_client_is_reported_at_verbose(
    short_tmp: Path, start_relay: Callable[..., Relay], udp_echo: Callable[..., UdpEcho]
) -> None:
    """A unixgram client that never bound cannot get replies: -v says so, and the relay serves others on."""
    echo_server = udp_echo()
    relay = start_relay(f"unixgram:{short_tmp}/g.sock", f"udp://127.0.0.1:{echo_server.sockaddr[1]}", verbose=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
        unbound.sendto(b"lost", str(short_tmp / "g.sock"))
    line = relay.wait_for(lambda line: "replies cannot reach it" in line)
    assert line.startswith("sockcat: ") and "unbound unixgram client" in line, line
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bound:
        bound.bind(str(short_tmp / "b.sock"))
        bound.settimeout(5)
        assert _ask(bound, relay, b"found").split(b"|")[0] == b"found"
    assert relay.proc.p.poll() is None
    assert not any("Traceback" in line for line in relay.lines), relay.lines
