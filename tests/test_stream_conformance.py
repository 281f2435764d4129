"""One stream-behaviour suite, run over every stream kind and both APIs (sync, aio on asyncio and on uvloop).

Kinds: tcp (127.0.0.1), tcp6 ([::1]), unix (path), unix abstract, unixpacket (SOCK_SEQPACKET), tls.
Behaviours: half-close, 8 MiB both ways, backpressure, close while the peer is blocked reading,
recv_line across many small writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from conftest import Bg as _Bg

import sockcat
from sockcat import aio
from sockcat.net.tls import client_context

T = 10.0  # bound on every single blocking operation
BIG = 8 << 20  # 8 MiB
LARGE_T = 2.0  # 8 MiB take well under a second on loopback; this bounds a stalled transfer
PACKET = 64 << 10  # unixpacket messages are at most 64 KiB
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

    def chunks(self, data: bytes) -> list[bytes]:
        """How to write ``data``: one sendall for byte streams, 64 KiB messages for unixpacket."""
        if not self.packet:
            return [data]
        return [data[i : i + PACKET] for i in range(0, len(data), PACKET)]


KIND_NAMES = ["tcp", "tcp6", "unix", "unix-abstract", "unixpacket", "tls"]


@pytest.fixture(params=KIND_NAMES)
def kind(request: pytest.FixtureRequest, short_tmp: Path) -> Kind:
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
    return Kind(name, "tls://127.0.0.1:0", {"ssl_context": client_context(insecure=True)})


# --- sync side ------------------------------------------------------------------------------------------


class Bg(_Bg):
    TIMEOUT = 2 * T


class SyncPair:
    def __init__(self, kind: Kind) -> None:
        self.listener = sockcat.listen(kind.listen)
        self.listener.settimeout(T)
        acc = Bg(self.listener.accept)
        self.client = sockcat.connect(str(self.listener.address), timeout=T, **kind.client_kw)
        self.server: sockcat.Stream = acc.get()
        self.server.settimeout(T)

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
            s_send(kind, p.client, PAYLOAD_UP)
            p.client.shutdown_write()

        def download() -> None:
            s_send(kind, p.server, PAYLOAD_DOWN)
            p.server.shutdown_write()

        def server_reads() -> bytes:
            return s_read_to_eof(p.server)

        threads = [Bg(upload), Bg(download), Bg(server_reads)]
        down = s_read_to_eof(p.client)
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
        chunk = b"\xab" * PACKET
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
            time.sleep(0.15)
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


# --- aio side -------------------------------------------------------------------------------------------


async def aio_pair(kind: Kind) -> tuple[aio.Listener, aio.Stream, aio.Stream]:
    lst = await aio.listen(kind.listen)
    server, client = await asyncio.gather(lst.accept(), aio.connect(str(lst.address), timeout=T, **kind.client_kw))
    server.timeout = T
    return lst, client, server


async def a_read_to_eof(s: aio.Stream) -> bytes:
    out = bytearray()
    while data := await s.recv():
        out += data
    return bytes(out)


async def a_send(kind: Kind, s: aio.Stream, data: bytes) -> None:
    for chunk in kind.chunks(data):
        await s.sendall(chunk)


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
            await a_send(kind, client, PAYLOAD_UP)
            await client.shutdown_write()

        async def download() -> None:
            await a_send(kind, server, PAYLOAD_DOWN)
            await server.shutdown_write()

        _, _, up, down = await asyncio.gather(upload(), download(), a_read_to_eof(server), a_read_to_eof(client))
        assert len(up) == BIG
        assert hashlib.sha256(up).hexdigest() == SHA_UP, "client -> server payload corrupted"
        assert len(down) == BIG
        assert hashlib.sha256(down).hexdigest() == SHA_DOWN, "server -> client payload corrupted"


async def aio_backpressure(kind: Kind) -> None:
    lst, client, server = await aio_pair(kind)
    async with lst, client, server:
        client.timeout = 1.0
        chunk = b"\xab" * PACKET
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
            await asyncio.sleep(0.15)
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


# --- the one suite --------------------------------------------------------------------------------------

SYNC: dict[str, Callable[[Kind], None]] = {
    "half_close": sync_half_close,
    "large_8MiB": sync_large,
    "backpressure": sync_backpressure,
    "close_while_blocked": sync_close_while_blocked,
    "recv_line_small_writes": sync_small_writes,
}
AIO: dict[str, Callable[[Kind], Coroutine[Any, Any, None]]] = {
    "half_close": aio_half_close,
    "large_8MiB": aio_large,
    "backpressure": aio_backpressure,
    "close_while_blocked": aio_close_while_blocked,
    "recv_line_small_writes": aio_small_writes,
}


KNOWN_BUGS: dict[tuple[str, str, str], str] = {}  # (kind, api, behaviour) -> why it is a strict xfail
for (_k, _a, _b), _why in list(KNOWN_BUGS.items()):
    if _a == "asyncio":
        KNOWN_BUGS[(_k, "uvloop", _b)] = _why


# uvloop runs every behaviour but backpressure (a 1 s wait each; test_aio.py covers it under uvloop).
CASES = [
    pytest.param(api, behaviour, id=f"{api}-{behaviour}")
    for api in ("sync", "asyncio", "uvloop")
    for behaviour in SYNC
    if not (api == "uvloop" and behaviour == "backpressure")
]


@pytest.mark.parametrize(("api", "behaviour"), CASES)
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
