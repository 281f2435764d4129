"""One stream-behaviour suite, run over every stream kind and both APIs (sync, aio on asyncio and on uvloop).

Kinds: tcp (127.0.0.1), tcp6 ([::1]), unix (path), unix abstract, unixpacket (SOCK_SEQPACKET), tls;
proxied: tcp through a real HTTP CONNECT proxy (ncat) and through a real SOCKS5 proxy (Dante), tls through
Dante; relayed: tcp and unix clients through a ``sockcat relay`` process to a tcp listener.
Behaviours: half-close, 8 MiB both ways, backpressure, close while the peer is blocked reading,
recv_line across many small writes, a recv timeout on a silent peer (the stream stays usable).

A second, smaller suite runs the datagram kinds (udp, udp6, unixgram path and abstract) over the three APIs:
message boundaries, the peer addresses recvfrom reports, a recv timeout.
(Happy-eyeballs ordering has its own suite: tests/test_eyeballs.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import random
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from conftest import TCP_LISTEN, Proc, free_port, queued_to_read, require, tcp_sockets, wait_until
from conftest import Bg as _Bg
from conftest import sockcat as sockcat_argv

import sockcat
from sockcat import aio
from sockcat.core.address import Address
from sockcat.core.errors import Timeout
from sockcat.net.tls import client_context

T = 10.0  # bound on every single blocking operation
BIG = 8 << 20  # 8 MiB
LARGE_T = 2.0  # 8 MiB take well under a second on loopback; this bounds a stalled transfer
PACKET = 64 << 10  # unixpacket messages are at most 64 KiB
NOISE = random.Random(5).randbytes(PACKET)
SHORT = 0.2  # the recv timeout the timeout behaviour sets
SLACK = 1.5  # how late past SHORT a timeout may fire on a loaded machine
pytestmark = pytest.mark.timeout(45)

_rng = random.Random(20240601)
PAYLOAD_UP = _rng.randbytes(BIG)
PAYLOAD_DOWN = _rng.randbytes(BIG)
SHA_UP = hashlib.sha256(PAYLOAD_UP).hexdigest()
SHA_DOWN = hashlib.sha256(PAYLOAD_DOWN).hexdigest()


@dataclass
class Kind:
    name: str
    listen: str
    client_kw: dict[str, Any] = field(default_factory=dict)
    packet: bool = False
    # The path passes a half-close on. ncat's HTTP proxy ends the whole tunnel at the first EOF instead.
    half_close: bool = True
    # Where the client connects to reach a listener at the given address (a relay started for it); None: there.
    via: Callable[[Address], str] | None = None

    def chunks(self, data: bytes) -> list[bytes]:
        """How to write ``data``: one sendall for byte streams, 64 KiB messages for unixpacket."""
        if not self.packet:
            return [data]
        return [data[i : i + PACKET] for i in range(0, len(data), PACKET)]

    def target(self, address: Address) -> str:
        """The address a client connects to in order to reach the listener at ``address``."""
        return self.via(address) if self.via is not None else str(address)

    def check_route(self, client_peer: Address | None, listener: Address) -> None:
        """A proxied or relayed client is connected to its proxy or relay, not to the listener itself."""
        if self.via is None and "proxy" not in self.client_kw:
            return
        assert client_peer is not None
        assert (client_peer.host, client_peer.port, client_peer.path) != (listener.host, listener.port, listener.path)
        if "proxy" in self.client_kw:
            assert client_peer.port == int(self.client_kw["proxy"].rsplit(":", 1)[1]), "not through the proxy"


KIND_NAMES = [
    "tcp",
    "tcp6",
    "unix",
    "unix-abstract",
    "unixpacket",
    "tls",
    "proxied-http",
    "proxied-socks5",
    "proxied-tls-socks5",
    "relayed-tcp",
    "relayed-unix",
    "ws",
    "wss",
    "ws-unix",
    "relayed-ws",
]


def start_proxy(procs: list[Proc], argv: list[str], port: int) -> None:
    """Start a proxy that will listen on 127.0.0.1:``port``; return once it does (its socket is in LISTEN)."""
    proc = Proc(argv, stdout=subprocess.DEVNULL)
    procs.append(proc)
    wait_until(lambda: tcp_sockets(port, state=TCP_LISTEN) or proc.p.poll() is not None, f"{argv[0]} listens on {port}")
    assert proc.p.poll() is None, f"{argv} exited: {proc.stderr_all(1.0)}"


def http_proxy(procs: list[Proc]) -> str:
    """An ncat HTTP CONNECT proxy on loopback; its URL."""
    port = free_port()
    start_proxy(procs, [require("ncat"), "-l", "--proxy-type", "http", "127.0.0.1", str(port)], port)
    return f"http://127.0.0.1:{port}"


def socks5_proxy(procs: list[Proc], conf_dir: Path) -> str:
    """A Dante SOCKS5 proxy on loopback (it passes a half-close on, which ncat and microsocks do not); its URL."""
    port = free_port()
    conf = conf_dir / f"danted-{port}.conf"
    conf.write_text(
        f"logoutput: stderr\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n"
        "socksmethod: none\nclientmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n"
        "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\nsocks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
    )
    start_proxy(procs, [require("danted"), "-f", str(conf), "-N", "1"], port)
    return f"socks5://127.0.0.1:{port}"


def relay_via(procs: list[Proc], listen: Callable[[], str]) -> Callable[[Address], str]:
    """``via`` for a relayed kind: a ``sockcat relay LISTEN TARGET`` process per connection pair (LISTEN from
    ``listen()``), returning the address it listens on."""

    def via(target: Address) -> str:
        proc = Proc(sockcat_argv("relay", listen(), str(target)), stdout=subprocess.DEVNULL)
        procs.append(proc)
        return proc.read_listening()

    return via


@pytest.fixture
def kind(request: pytest.FixtureRequest, short_tmp: Path, procs: list[Proc]) -> Kind:
    name = request.param
    if name == "tcp":
        return Kind(name, "tcp://127.0.0.1:0")
    if name == "tcp6":
        return Kind(name, "tcp://[::1]:0")
    if name == "unix":
        return Kind(name, f"unix:{short_tmp}/s.sock")
    if name == "unix-abstract":
        return Kind(name, f"unix:@sockcat-conf-{uuid.uuid4().hex}")
    if name == "unixpacket":
        return Kind(name, f"unixpacket:{short_tmp}/p.sock", packet=True)
    if name == "tls":
        return Kind(name, "tls://127.0.0.1:0", {"ssl_context": client_context(insecure=True)})
    if name == "proxied-http":
        return Kind(name, "tcp://127.0.0.1:0", {"proxy": http_proxy(procs)}, half_close=False)
    if name == "proxied-socks5":
        return Kind(name, "tcp://127.0.0.1:0", {"proxy": socks5_proxy(procs, short_tmp)})
    if name == "proxied-tls-socks5":
        tls = {"ssl_context": client_context(insecure=True)}
        return Kind(name, "tls://127.0.0.1:0", {**tls, "proxy": socks5_proxy(procs, short_tmp)})
    if name == "relayed-tcp":
        return Kind(name, "tcp://127.0.0.1:0", via=relay_via(procs, lambda: "tcp://127.0.0.1:0"))
    if name == "ws":
        return Kind(name, "ws://127.0.0.1:0/")
    if name == "wss":
        return Kind(name, "wss://127.0.0.1:0/", {"ssl_context": client_context(insecure=True)})
    if name == "ws-unix":
        return Kind(name, f"ws+unix:{short_tmp}/w.sock:/stream")
    if name == "relayed-ws":  # a tcp client, through a tcp -> ws relay, to a WebSocket listener
        return Kind(name, "ws://127.0.0.1:0/", via=relay_via(procs, lambda: "tcp://127.0.0.1:0"))
    assert name == "relayed-unix", name
    n = itertools.count()
    return Kind(name, "tcp://127.0.0.1:0", via=relay_via(procs, lambda: f"unix:{short_tmp}/r{next(n)}.sock"))


# --- sync side ------------------------------------------------------------------------------------------


class Bg(_Bg):
    TIMEOUT = 2 * T


class SyncPair:
    def __init__(self, kind: Kind) -> None:
        self.listener = sockcat.listen(kind.listen)
        self.listener.settimeout(T)
        acc = Bg(self.listener.accept)
        self.client = sockcat.connect(kind.target(self.listener.address), timeout=T, **kind.client_kw)
        self.server: sockcat.Stream = acc.get()
        self.server.settimeout(T)
        kind.check_route(self.client.peer, self.listener.address)

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.listener.close()


@contextlib.contextmanager
def sync_pair(kind: Kind) -> Iterator[SyncPair]:
    p = SyncPair(kind)
    try:
        yield p
    finally:
        p.close()


def s_read_to_eof(s: sockcat.Stream) -> bytes:
    out = bytearray()
    while data := s.recv():
        out += data
    return bytes(out)


def s_send(kind: Kind, s: sockcat.Stream, data: bytes) -> None:
    for chunk in kind.chunks(data):
        s.sendall(chunk)


def s_send_all(kind: Kind, s: sockcat.Stream, data: bytes) -> None:
    """Send ``data`` and end this direction (a half-close), where the path passes one on."""
    s_send(kind, s, data)
    if kind.half_close:
        s.shutdown_write()


def s_read_all(kind: Kind, s: sockcat.Stream) -> bytes:
    """What :func:`s_send_all` sent: to EOF, or exactly BIG bytes where the path passes no half-close on."""
    return s_read_to_eof(s) if kind.half_close else s.recv_exactly(BIG)


def sync_half_close(kind: Kind) -> None:
    with sync_pair(kind) as p:
        p.client.sendall(b"request body")
        p.client.shutdown_write()
        assert s_read_to_eof(p.server) == b"request body"
        p.server.sendall(b"the reply")
        p.server.shutdown_write()
        assert s_read_to_eof(p.client) == b"the reply"
        assert p.client.recv() == b""


def sync_large(kind: Kind) -> None:
    """Full duplex, the netcat way: on each side one thread writes while another reads.

    TLS is tried three times: its known failure is a race, this makes missing it very unlikely.
    """
    for _ in range(3 if kind.name == "tls" else 1):
        sync_large_once(kind)


def sync_large_once(kind: Kind) -> None:
    with sync_pair(kind) as p:
        for st in (p.client, p.server):
            st.settimeout(LARGE_T)

        def upload() -> None:
            s_send_all(kind, p.client, PAYLOAD_UP)

        def download() -> None:
            s_send_all(kind, p.server, PAYLOAD_DOWN)

        def server_reads() -> bytes:
            return s_read_all(kind, p.server)

        threads = [Bg(upload), Bg(download), Bg(server_reads)]
        down = s_read_all(kind, p.client)
        up = threads[2].get()
        for th in threads[:2]:
            th.get()
        assert len(up) == BIG
        assert hashlib.sha256(up).hexdigest() == SHA_UP, "client -> server payload corrupted"
        assert len(down) == BIG
        assert hashlib.sha256(down).hexdigest() == SHA_DOWN, "server -> client payload corrupted"


def sync_backpressure(kind: Kind) -> None:
    with sync_pair(kind) as p:
        p.client.settimeout(1.0)
        chunk = NOISE  # (incompressible: a WebSocket with permessage-deflate would shrink a repeated byte)
        total = 0
        deadline = time.monotonic() + 3 * T
        while True:
            assert time.monotonic() < deadline, "sendall never blocked"
            assert total < 128 << 20, f"{total} bytes accepted without a reader: unbounded buffering"
            t0 = time.monotonic()
            try:
                p.client.sendall(chunk)
            except TimeoutError as exc:
                assert isinstance(exc, sockcat.SockcatError)
                assert time.monotonic() - t0 >= 0.9
                break
            total += len(chunk)
        assert total < 64 << 20


def sync_close_while_blocked(kind: Kind) -> None:
    for closer in ("client", "server"):
        with sync_pair(kind) as p:
            reader = p.server if closer == "client" else p.client
            other = p.client if closer == "client" else p.server

            def blocked_read(reader: sockcat.Stream = reader) -> tuple[bytes, float]:
                data = reader.recv()
                return data, time.monotonic()

            bg = Bg(blocked_read)
            time.sleep(0.15)  # the window in which the reader must stay blocked, not waiting for an event
            assert bg.is_alive(), "reader should be blocked"
            closed_at = time.monotonic()
            other.close()
            data, returned_at = bg.get(T)
            assert data == b""
            assert returned_at - closed_at < 2.0


def lines_and_pieces() -> tuple[list[bytes], list[bytes]]:
    lines = [f"line {i:04d} {'x' * (i % 7)}\n".encode() for i in range(300)]
    blob = b"".join(lines)
    r = random.Random(7)
    pieces = []
    i = 0
    while i < len(blob):
        n = r.randint(1, 4)
        pieces.append(blob[i : i + n])
        i += n
    return lines, pieces


def sync_small_writes(kind: Kind) -> None:
    lines, pieces = lines_and_pieces()
    with sync_pair(kind) as p:

        def writer() -> None:
            for piece in pieces:
                p.client.sendall(piece)
            p.client.shutdown_write()

        bg = Bg(writer)
        got = [p.server.recv_line() for _ in lines]
        assert got == lines
        assert p.server.recv() == b""
        bg.get()


def check_timeout(exc: BaseException, started: float) -> None:
    """``exc`` is the documented timeout error, raised SHORT seconds (give or take SLACK) after ``started``."""
    took = time.monotonic() - started
    assert isinstance(exc, Timeout), f"{exc!r} is not sockcat's Timeout"
    assert isinstance(exc, TimeoutError) and isinstance(exc, sockcat.NetworkError)
    assert exc.errno == errno.ETIMEDOUT
    assert SHORT - 0.05 <= took < SHORT + SLACK, f"a {SHORT} s timeout fired after {took:.3f} s"


def wait_readable(s: Any) -> None:
    """Until bytes (plaintext or TLS records) wait in ``s``'s socket: the next recv takes them at once."""
    wait_until(lambda: queued_to_read(s.socket) > 0, "bytes reach the client's socket", timeout=T)


def sync_timeout(kind: Kind) -> None:
    """A recv on a silent peer times out; so does a recv_line halfway through a line; the stream stays usable and
    the half line read before the timeout is not lost."""
    with sync_pair(kind) as p:
        p.client.settimeout(SHORT)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as ei:
            p.client.recv()
        check_timeout(ei.value, t0)

        p.server.sendall(b"par")
        wait_readable(p.client)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as ei:
            p.client.recv_line()
        check_timeout(ei.value, t0)
        assert p.client.buffered == 3, "the bytes read before the timeout"

        p.client.settimeout(T)
        p.server.sendall(b"tial\n")
        assert p.client.recv_line() == b"partial\n"
        p.client.sendall(b"still usable")
        assert p.server.recv_exactly(12) == b"still usable"
        p.server.close()
        assert p.client.recv() == b""


# --- aio side -------------------------------------------------------------------------------------------


async def aio_pair(kind: Kind) -> tuple[aio.Listener, aio.Stream, aio.Stream]:
    lst = await aio.listen(kind.listen)
    target = await asyncio.to_thread(kind.target, lst.address)
    server, client = await asyncio.gather(lst.accept(), aio.connect(target, timeout=T, **kind.client_kw))
    server.timeout = T
    kind.check_route(client.peer, lst.address)
    return lst, client, server


async def a_read_to_eof(s: aio.Stream) -> bytes:
    out = bytearray()
    while data := await s.recv():
        out += data
    return bytes(out)


async def a_send(kind: Kind, s: aio.Stream, data: bytes) -> None:
    for chunk in kind.chunks(data):
        await s.sendall(chunk)


async def a_send_all(kind: Kind, s: aio.Stream, data: bytes) -> None:
    await a_send(kind, s, data)
    if kind.half_close:
        await s.shutdown_write()


async def a_read_all(kind: Kind, s: aio.Stream) -> bytes:
    return await a_read_to_eof(s) if kind.half_close else await s.recv_exactly(BIG)


async def aio_half_close(kind: Kind) -> None:
    lst, client, server = await aio_pair(kind)
    async with lst, client, server:
        await client.sendall(b"request body")
        await client.shutdown_write()
        assert await a_read_to_eof(server) == b"request body"
        await server.sendall(b"the reply")
        await server.shutdown_write()
        assert await a_read_to_eof(client) == b"the reply"
        assert await client.recv() == b""


async def aio_large(kind: Kind) -> None:
    """Full duplex: both directions at once."""
    lst, client, server = await aio_pair(kind)
    client.timeout = server.timeout = LARGE_T
    async with lst, client, server:

        async def upload() -> None:
            await a_send_all(kind, client, PAYLOAD_UP)

        async def download() -> None:
            await a_send_all(kind, server, PAYLOAD_DOWN)

        _, _, up, down = await asyncio.gather(upload(), download(), a_read_all(kind, server), a_read_all(kind, client))
        assert len(up) == BIG
        assert hashlib.sha256(up).hexdigest() == SHA_UP, "client -> server payload corrupted"
        assert len(down) == BIG
        assert hashlib.sha256(down).hexdigest() == SHA_DOWN, "server -> client payload corrupted"


async def aio_backpressure(kind: Kind) -> None:
    lst, client, server = await aio_pair(kind)
    async with lst, client, server:
        client.timeout = 1.0
        chunk = NOISE  # (incompressible: a WebSocket with permessage-deflate would shrink a repeated byte)
        total = 0
        deadline = time.monotonic() + 3 * T
        while True:
            assert time.monotonic() < deadline, "sendall never blocked"
            assert total < 128 << 20, f"{total} bytes accepted without a reader: unbounded buffering"
            t0 = time.monotonic()
            try:
                await client.sendall(chunk)
            except TimeoutError as exc:
                assert isinstance(exc, sockcat.SockcatError)
                assert time.monotonic() - t0 >= 0.9
                break
            total += len(chunk)
        assert total < 64 << 20


async def aio_close_while_blocked(kind: Kind) -> None:
    for closer in ("client", "server"):
        lst, client, server = await aio_pair(kind)
        async with lst, client, server:
            reader, other = (server, client) if closer == "client" else (client, server)

            async def blocked_read(reader: aio.Stream = reader) -> tuple[bytes, float]:
                data = await reader.recv()
                return data, time.monotonic()

            task = asyncio.create_task(blocked_read())
            await asyncio.sleep(0.15)  # the window in which the reader must stay blocked, not waiting for an event
            assert not task.done(), "reader should be blocked"
            closed_at = time.monotonic()
            await other.aclose()
            data, returned_at = await asyncio.wait_for(task, T)
            assert data == b""
            assert returned_at - closed_at < 2.0


async def aio_small_writes(kind: Kind) -> None:
    lines, pieces = lines_and_pieces()
    lst, client, server = await aio_pair(kind)
    async with lst, client, server:

        async def writer() -> None:
            for piece in pieces:
                await client.sendall(piece)
            await client.shutdown_write()

        task = asyncio.create_task(writer())
        got = [await server.recv_line() for _ in lines]
        assert got == lines
        assert await server.recv() == b""
        await task


async def aio_timeout(kind: Kind) -> None:
    """The twin of :func:`sync_timeout` (``Stream.timeout`` bounds each read)."""
    lst, client, server = await aio_pair(kind)
    async with lst, client, server:
        client.timeout = SHORT
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as ei:
            await client.recv()
        check_timeout(ei.value, t0)

        await server.sendall(b"par")
        await asyncio.to_thread(wait_readable, client)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as ei:
            await client.recv_line()
        check_timeout(ei.value, t0)

        client.timeout = T
        await server.sendall(b"tial\n")
        assert await client.recv_line() == b"partial\n"
        await client.sendall(b"still usable")
        assert await server.recv_exactly(12) == b"still usable"
        await server.aclose()
        assert await client.recv() == b""


# --- the one suite --------------------------------------------------------------------------------------

SYNC: dict[str, Callable[[Kind], None]] = {
    "half_close": sync_half_close,
    "large_8MiB": sync_large,
    "backpressure": sync_backpressure,
    "close_while_blocked": sync_close_while_blocked,
    "recv_line_small_writes": sync_small_writes,
    "timeout": sync_timeout,
}
AIO: dict[str, Callable[[Kind], Coroutine[Any, Any, None]]] = {
    "half_close": aio_half_close,
    "large_8MiB": aio_large,
    "backpressure": aio_backpressure,
    "close_while_blocked": aio_close_while_blocked,
    "recv_line_small_writes": aio_small_writes,
    "timeout": aio_timeout,
}


KNOWN_BUGS: dict[tuple[str, str, str], str] = {}  # (kind, api, behaviour) -> why it is a strict xfail
for (_k, _a, _b), _why in list(KNOWN_BUGS.items()):
    if _a == "asyncio":
        KNOWN_BUGS[(_k, "uvloop", _b)] = _why


# Behaviours left out for a kind, and why (what a proxy does is not sockcat's to change).
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("proxied-http", "half_close"): "ncat's HTTP proxy ends the tunnel at the first EOF (no half-close passes)",
    **{
        (proxied, "backpressure"): "once connected the client's socket is plain tcp (tcp's backpressure covers it); "
        "through a proxy it would measure the proxy's buffers"
        for proxied in ("proxied-http", "proxied-socks5", "proxied-tls-socks5")
    },
}

# uvloop runs every behaviour but backpressure (a 1 s wait each; test_aio.py covers it under uvloop).
CASES = [
    pytest.param(kind, api, behaviour, id=f"{kind}-{api}-{behaviour}")
    for kind in KIND_NAMES
    for api in ("sync", "asyncio", "uvloop")
    for behaviour in SYNC
    if not (api == "uvloop" and behaviour == "backpressure") and (kind, behaviour) not in NOT_APPLICABLE
]


@pytest.mark.parametrize(("kind", "api", "behaviour"), CASES, indirect=["kind"])
def test_stream(kind: Kind, api: str, behaviour: str, request: pytest.FixtureRequest) -> None:
    why = KNOWN_BUGS.get((kind.name, api, behaviour))
    if why is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=why))
    if api == "sync":
        SYNC[behaviour](kind)
        return

    async def bounded() -> None:
        async with asyncio.timeout(3 * T):
            await AIO[behaviour](kind)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if api == "uvloop" else None) as runner:
        runner.run(bounded())


# --- datagrams: the same APIs over udp and unixgram -------------------------------------------------------


@dataclass
class DKind:
    name: str
    bind: str  # the "server": open_datagram here, recvfrom and sendto
    other: str  # a second, unconnected socket: open_datagram here, sendto the server by its address string
    sizes: tuple[int, ...] = (0, 1, 512, 1472, 1473, 9000, 32768, 60000)


DGRAM_KIND_NAMES = ["udp", "udp6", "unixgram", "unixgram-abstract"]


@pytest.fixture
def dkind(request: pytest.FixtureRequest, short_tmp: Path) -> DKind:
    name = request.param
    if name == "udp":
        return DKind(name, "udp://127.0.0.1:0", "udp://127.0.0.1:0")
    if name == "udp6":
        return DKind(name, "udp://[::1]:0", "udp://[::1]:0")
    if name == "unixgram":
        return DKind(name, f"unixgram:{short_tmp}/d.sock", f"unixgram:{short_tmp}/o.sock")
    assert name == "unixgram-abstract", name
    return DKind(name, f"unixgram:@sockcat-dg-{uuid.uuid4().hex}", f"unixgram:@sockcat-dgo-{uuid.uuid4().hex}")


def check_dgram_address(dk: DKind, got: Address, want: Address) -> None:
    """recvfrom reported ``want`` (the sender's bound address), in the address syntax, round-tripping."""
    assert isinstance(got, Address)
    assert got == want, f"recvfrom said {got}, the sender is {want}"
    assert Address.parse(str(got)) == got
    prefix = {"udp": "udp://127.0.0.1:", "udp6": "udp://[::1]:"}.get(dk.name, "unixgram:")
    assert str(got).startswith(prefix), str(got)
    if dk.name.startswith("unixgram") and want.path.startswith("/"):
        assert str(got) == f"unixgram:{want.path}"


def message(size: int) -> bytes:
    return bytes((i * 7 + size) & 0xFF for i in range(size))


BURST = [b"a", b"bb", b"", b"ccc", b"dddd\n"]  # queued before any is read: none may merge with another


def sync_dgram_boundaries(dk: DKind) -> None:
    with sockcat.open_datagram(dk.bind, timeout=T) as server, sockcat.connect_datagram(server.address, timeout=T) as c:
        for m in BURST:
            assert c.send(m) == len(m)
        for m in BURST:
            data, peer = server.recvfrom()
            assert data == m
            check_dgram_address(dk, peer, c.address)
        for size in dk.sizes:  # one at a time: a loopback queue need not hold them all
            m = message(size)
            assert c.send(m) == size
            data, peer = server.recvfrom()
            assert len(data) == size and data == m, f"a {size}-byte datagram came as {len(data)} bytes"
            assert server.sendto(data, peer) == size
            assert c.recv() == m


def sync_dgram_addresses(dk: DKind) -> None:
    with sockcat.open_datagram(dk.bind, timeout=T) as server, sockcat.open_datagram(dk.other, timeout=T) as other:
        assert other.sendto(b"ping", str(server.address)) == 4
        data, peer = server.recvfrom()
        assert data == b"ping"
        check_dgram_address(dk, peer, other.address)
        server.sendto(b"pong", str(peer))
        data, back = other.recvfrom()
        assert data == b"pong"
        check_dgram_address(dk, back, server.address)
        if dk.name.startswith("unixgram"):  # named as they were bound
            assert (str(peer), str(back)) == (dk.other, dk.bind)


def sync_dgram_timeout(dk: DKind) -> None:
    with sockcat.open_datagram(dk.bind, timeout=SHORT) as server, sockcat.connect_datagram(server.address) as c:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as ei:
            server.recvfrom()
        check_timeout(ei.value, t0)
        c.settimeout(SHORT)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as ei:
            c.recv()
        check_timeout(ei.value, t0)
        server.settimeout(T)
        c.settimeout(T)
        c.send(b"after")
        data, peer = server.recvfrom()
        assert data == b"after"
        server.sendto(b"still usable", peer)
        assert c.recv() == b"still usable"


async def aio_dgram_boundaries(dk: DKind) -> None:
    async with await aio.open_datagram(dk.bind) as server, await aio.connect_datagram(server.address) as c:
        for m in BURST:
            assert await c.send(m) == len(m)
        for m in BURST:
            data, peer = await server.recvfrom(timeout=T)
            assert data == m
            check_dgram_address(dk, peer, c.address)
        for size in dk.sizes:
            m = message(size)
            assert await c.send(m) == size
            data, peer = await server.recvfrom(timeout=T)
            assert len(data) == size and data == m, f"a {size}-byte datagram came as {len(data)} bytes"
            assert await server.sendto(data, peer) == size
            assert await c.recv(timeout=T) == m


async def aio_dgram_addresses(dk: DKind) -> None:
    async with await aio.open_datagram(dk.bind) as server, await aio.open_datagram(dk.other) as other:
        assert await other.sendto(b"ping", str(server.address)) == 4
        data, peer = await server.recvfrom(timeout=T)
        assert data == b"ping"
        check_dgram_address(dk, peer, other.address)
        await server.sendto(b"pong", str(peer))
        data, back = await other.recvfrom(timeout=T)
        assert data == b"pong"
        check_dgram_address(dk, back, server.address)
        if dk.name.startswith("unixgram"):
            assert (str(peer), str(back)) == (dk.other, dk.bind)


async def aio_dgram_timeout(dk: DKind) -> None:
    async with await aio.open_datagram(dk.bind) as server, await aio.connect_datagram(server.address) as c:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as ei:
            await server.recvfrom(timeout=SHORT)
        check_timeout(ei.value, t0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as ei:
            await c.recv(timeout=SHORT)
        check_timeout(ei.value, t0)
        await c.send(b"after")
        data, peer = await server.recvfrom(timeout=T)
        assert data == b"after"
        await server.sendto(b"still usable", peer)
        assert await c.recv(timeout=T) == b"still usable"


DSYNC: dict[str, Callable[[DKind], None]] = {
    "boundaries": sync_dgram_boundaries,
    "addresses": sync_dgram_addresses,
    "timeout": sync_dgram_timeout,
}
DAIO: dict[str, Callable[[DKind], Coroutine[Any, Any, None]]] = {
    "boundaries": aio_dgram_boundaries,
    "addresses": aio_dgram_addresses,
    "timeout": aio_dgram_timeout,
}
DGRAM_CASES = [
    pytest.param(dk, api, behaviour, id=f"{dk}-{api}-{behaviour}")
    for dk in DGRAM_KIND_NAMES
    for api in ("sync", "asyncio", "uvloop")
    for behaviour in DSYNC
]


@pytest.mark.parametrize(("dkind", "api", "behaviour"), DGRAM_CASES, indirect=["dkind"])
def test_datagram(dkind: DKind, api: str, behaviour: str) -> None:
    if api == "sync":
        DSYNC[behaviour](dkind)
        return

    async def bounded() -> None:
        async with asyncio.timeout(3 * T):
            await DAIO[behaviour](dkind)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if api == "uvloop" else None) as runner:
        runner.run(bounded())
