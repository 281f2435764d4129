"""The library relays: ``sockcat.relay(a, b)`` (sync, two Streams) and ``sockcat.aio.relay(a, b)`` (asyncio).

Each test joins two real loopback connections: client X -> listener A (accepted as ``a``) and client Y ->
listener B (accepted as ``b``); relaying ``a`` <-> ``b`` must make X and Y talk as if directly connected,
half-close and resets included, and return the bytes moved each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import queued_to_read, wait_until

import sockcat
from sockcat import aio

pytestmark = pytest.mark.timeout(30)

MiB = 1 << 20
LINGER0 = struct.pack("ii", 1, 0)


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _address(kind: str, tmp: Path, name: str) -> str:
    return {
        "tcp": "tcp://127.0.0.1:0",
        "tcp6": "tcp6://[::1]:0",
        "unix": f"unix:{tmp}/{name}.sock",
        "tls": "tls://127.0.0.1:0",
    }[kind]


PLAIN_PAIRS = [
    pytest.param(("tcp", "tcp"), id="tcp-tcp"),
    pytest.param(("unix", "tcp"), id="unix-tcp"),
    pytest.param(("tcp", "unix"), id="tcp-unix"),
    pytest.param(("tcp6", "tcp"), id="tcp6-tcp"),
]
KIND_PAIRS = [*PLAIN_PAIRS, pytest.param(("tcp", "tls"), id="tcp-tls")]


# --- sync ---------------------------------------------------------------------------------------------


def _sync_pair(address: str) -> tuple[sockcat.Stream, sockcat.Stream, sockcat.Listener]:
    """(client, accepted server side, listener): accept runs in a thread (a TLS handshake needs both)."""
    listener = sockcat.listen(address)
    with ThreadPoolExecutor(1) as ex:
        accepted = ex.submit(listener.accept)
        client = sockcat.connect(
            str(listener.address), timeout=10, ssl_context=_insecure() if listener.address.is_tls else None
        )
        server = accepted.result(10)
    server.socket.settimeout(10)
    return client, server, listener


@pytest.fixture
def sync_pairs(short_tmp: Path) -> Iterator[list[tuple[sockcat.Stream, sockcat.Stream, sockcat.Listener]]]:
    made: list[tuple[sockcat.Stream, sockcat.Stream, sockcat.Listener]] = []
    yield made
    for client, server, listener in made:
        for thing in (client, server, listener):
            with contextlib.suppress(Exception):
                thing.close()


def _read_all(stream: sockcat.Stream) -> bytes:
    chunks = []
    while data := stream.recv(MiB):
        chunks.append(data)
    return b"".join(chunks)


class _Relaying:
    """``sockcat.relay(a, b)`` in a thread; ``.result()`` waits for its return value."""

    def __init__(self, a: sockcat.Stream, b: sockcat.Stream) -> None:
        self.value: tuple[int, int] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(a, b), daemon=True)
        self.thread.start()

    def _run(self, a: sockcat.Stream, b: sockcat.Stream) -> None:
        try:
            self.value = sockcat.relay(a, b)
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 10.0) -> tuple[int, int]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"sockcat.relay still running after {timeout} s"
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


@pytest.mark.parametrize("kinds", PLAIN_PAIRS)
def test_sync_relay_both_ways_with_half_close(kinds: tuple[str, str], short_tmp: Path, sync_pairs: list) -> None:
    x, a, _ = _sync_pair(_address(kinds[0], short_tmp, "a"))
    sync_pairs.append((x, a, _))
    y, b, _ = _sync_pair(_address(kinds[1], short_tmp, "b"))
    sync_pairs.append((y, b, _))
    relaying = _Relaying(a, b)
    up = os.urandom(3 * MiB + 1)
    down = os.urandom(MiB + 7)

    def upload() -> None:
        x.sendall(up)
        x.shutdown_write()

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    assert _read_all(y) == up  # X's half-close reached Y ...
    sender.join(10)
    y.sendall(down)  # ... and Y can still answer
    y.shutdown_write()
    assert _read_all(x) == down
    assert relaying.result() == (len(up), len(down))


# Run in a child: the failure this guards against is a crash of the whole interpreter.
_SYNC_TLS_CHILD = """
import os, ssl, sys, threading
from concurrent.futures import ThreadPoolExecutor
import sockcat

def insecure():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx

def pair(address):
    listener = sockcat.listen(address)
    with ThreadPoolExecutor(1) as ex:
        accepted = ex.submit(listener.accept)
        tls = insecure() if listener.address.is_tls else None
        client = sockcat.connect(str(listener.address), timeout=10, ssl_context=tls)
        return client, accepted.result(10), listener

def read_all(stream):
    chunks = []
    while data := stream.recv(1 << 20):
        chunks.append(data)
    return b"".join(chunks)

for _ in range(8):  # the crash is a race: give it several chances
    x, a, _la = pair("tcp://127.0.0.1:0")
    y, b, _lb = pair("tls://127.0.0.1:0")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("counts", sockcat.relay(a, b)), daemon=True)
    t.start()
    up, down = os.urandom(300_000), os.urandom(100_000)
    x.sendall(up)
    x.shutdown_write()
    assert read_all(y) == up, "up"
    y.sendall(down)
    y.shutdown_write()
    assert read_all(x) == down, "down"
    t.join(10)
    assert result.get("counts") == (len(up), len(down)), result
    for s in (x, a, y, b, _la, _lb):
        s.close()
print("ok")
"""


def test_sync_relay_with_a_tls_stream() -> None:
    """Each direction copies in its own thread over one TLS Stream (this once crashed: SSLSocket is not
    thread-safe); the TLS half-close (close_notify, then FIN) passes through."""
    r = subprocess.run([sys.executable, "-c", _SYNC_TLS_CHILD], capture_output=True, timeout=25)
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr.decode(errors="replace")[-1500:]


def test_sync_relay_upstream_half_closes_first(short_tmp: Path, sync_pairs: list) -> None:
    x, a, la = _sync_pair(_address("tcp", short_tmp, "a"))
    y, b, lb = _sync_pair(_address("unix", short_tmp, "b"))
    sync_pairs.extend([(x, a, la), (y, b, lb)])
    relaying = _Relaying(a, b)
    y.sendall(b"banner\n")
    y.shutdown_write()
    assert x.recv_line() == b"banner\n"
    assert x.recv(10) == b""
    x.sendall(b"late words\n" * 1000)
    x.shutdown_write()
    assert _read_all(y) == b"late words\n" * 1000
    assert relaying.result() == (11 * 1000, 7)


def test_sync_relay_sends_bytes_already_buffered_first(short_tmp: Path, sync_pairs: list) -> None:
    x, a, la = _sync_pair(_address("tcp", short_tmp, "a"))
    y, b, lb = _sync_pair(_address("tcp", short_tmp, "b"))
    sync_pairs.extend([(x, a, la), (y, b, lb)])
    body = b"".join(f"line {i}\n".encode() for i in range(20000))
    x.sendall(b"HELLO proto/1\n" + body)
    # some of the body has arrived behind the first line, so the line's read may take it in too
    wait_until(lambda: queued_to_read(a.socket) > len(b"HELLO proto/1\n"), "the body arrives", timeout=10)
    assert a.recv_line() == b"HELLO proto/1\n"  # may read ahead into the body
    relaying = _Relaying(a, b)
    x.shutdown_write()
    assert _read_all(y) == body
    y.shutdown_write()
    assert _read_all(x) == b""
    assert relaying.result() == (len(body), 0)


def test_sync_relay_passes_a_reset_on(short_tmp: Path, sync_pairs: list) -> None:
    x, a, la = _sync_pair(_address("tcp", short_tmp, "a"))
    y, b, lb = _sync_pair(_address("tcp", short_tmp, "b"))
    sync_pairs.extend([(x, a, la), (y, b, lb)])
    relaying = _Relaying(a, b)
    x.sendall(b"ping")
    assert y.recv(4) == b"ping"
    x.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    x.close()  # X resets
    relaying.result()  # the relay returns ...
    a.close()
    b.close()
    with pytest.raises(ConnectionResetError):  # ... and Y sees a reset, not an orderly end
        y.socket.recv(100)


TCP_CLOSE = 7


def _wait_tcp_state(sock: socket.socket, state: int, timeout: float = 10.0) -> None:
    wait_until(
        lambda: sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == state,
        f"the socket reaches TCP state {state}",
        timeout,
        interval=0.005,
    )


def test_sync_relay_reset_wakes_a_direction_blocked_writing(short_tmp: Path, sync_pairs: list) -> None:
    """X floods while Y reads nothing (X->Y blocks writing to b); then X resets and Y speaks (Y->X fails):
    the blocked direction is woken too, the relay returns, and Y sees a reset."""
    x, a, la = _sync_pair(_address("tcp", short_tmp, "a"))
    y, b, lb = _sync_pair(_address("tcp", short_tmp, "b"))
    sync_pairs.extend([(x, a, la), (y, b, lb)])
    relaying = _Relaying(a, b)
    x.socket.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        for _ in range(2000):  # until every buffer on the way is full
            x.socket.send(b"f" * 65536)
    x.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    x.close()  # X resets
    _wait_tcp_state(a.socket, TCP_CLOSE)  # the relay's end has taken the reset
    with contextlib.suppress(OSError):
        y.sendall(b"hello?")  # Y->X now fails writing to a
    relaying.result()
    a.close()
    b.close()
    y.socket.settimeout(5)
    with pytest.raises(ConnectionResetError):
        while y.socket.recv(MiB):
            pass


def test_sync_relay_returns_when_both_sides_close(short_tmp: Path, sync_pairs: list) -> None:
    x, a, la = _sync_pair(_address("unix", short_tmp, "a"))
    y, b, lb = _sync_pair(_address("unix", short_tmp, "b"))
    sync_pairs.extend([(x, a, la), (y, b, lb)])
    relaying = _Relaying(a, b)
    x.close()
    y.close()
    assert relaying.result() == (0, 0)


# --- asyncio ------------------------------------------------------------------------------------------


async def _aio_pair(address: str) -> tuple[aio.Stream, aio.Stream, aio.Listener]:
    listener = await aio.listen(address)
    accepted = asyncio.ensure_future(listener.accept())
    client = await aio.connect(
        str(listener.address), timeout=10, ssl_context=_insecure() if listener.address.is_tls else None
    )
    server = await asyncio.wait_for(accepted, 10)
    return client, server, listener


async def _aio_read_all(stream: aio.Stream) -> bytes:
    chunks = []
    while data := await stream.recv(MiB):
        chunks.append(data)
    return b"".join(chunks)


async def _close_all(*things: aio.Stream | aio.Listener) -> None:
    for thing in things:
        with contextlib.suppress(Exception):
            await thing.aclose()


@pytest.mark.parametrize("kinds", KIND_PAIRS)
def test_aio_relay_both_ways_with_half_close(kinds: tuple[str, str], short_tmp: Path) -> None:
    async def main() -> None:
        x, a, la = await _aio_pair(_address(kinds[0], short_tmp, "a"))
        y, b, lb = await _aio_pair(_address(kinds[1], short_tmp, "b"))
        try:
            relaying = asyncio.ensure_future(aio.relay(a, b))
            up = os.urandom(3 * MiB + 1)
            down = os.urandom(MiB + 7)

            async def upload() -> None:
                await x.sendall(up)
                await x.shutdown_write()

            sender = asyncio.ensure_future(upload())
            assert await asyncio.wait_for(_aio_read_all(y), 15) == up
            await sender
            await y.sendall(down)
            await y.shutdown_write()
            assert await asyncio.wait_for(_aio_read_all(x), 15) == down
            assert await asyncio.wait_for(relaying, 10) == (len(up), len(down))
        finally:
            await _close_all(x, a, la, y, b, lb)

    asyncio.run(main())


def test_aio_relay_upstream_half_closes_first(short_tmp: Path) -> None:
    async def main() -> None:
        x, a, la = await _aio_pair(_address("unix", short_tmp, "a"))
        y, b, lb = await _aio_pair(_address("tcp", short_tmp, "b"))
        try:
            relaying = asyncio.ensure_future(aio.relay(a, b))
            await y.sendall(b"banner\n")
            await y.shutdown_write()
            assert await asyncio.wait_for(x.recv_line(), 5) == b"banner\n"
            assert await asyncio.wait_for(x.recv(10), 5) == b""
            await x.sendall(b"late words\n" * 1000)
            await x.shutdown_write()
            assert await asyncio.wait_for(_aio_read_all(y), 5) == b"late words\n" * 1000
            assert await asyncio.wait_for(relaying, 10) == (11 * 1000, 7)
        finally:
            await _close_all(x, a, la, y, b, lb)

    asyncio.run(main())


def test_aio_relay_sends_bytes_already_buffered_first(short_tmp: Path) -> None:
    async def main() -> None:
        x, a, la = await _aio_pair(_address("tcp", short_tmp, "a"))
        y, b, lb = await _aio_pair(_address("tcp", short_tmp, "b"))
        try:
            body = b"".join(f"line {i}\n".encode() for i in range(20000))
            await x.sendall(b"HELLO proto/1\n" + body)
            # some of the body has arrived behind the first line, so the line's read may take it in too
            wait_until(lambda: queued_to_read(a.socket) > len(b"HELLO proto/1\n"), "the body arrives", timeout=10)
            assert await a.recv_line() == b"HELLO proto/1\n"
            relaying = asyncio.ensure_future(aio.relay(a, b))
            await x.shutdown_write()
            assert await asyncio.wait_for(_aio_read_all(y), 5) == body
            await y.shutdown_write()
            assert await asyncio.wait_for(_aio_read_all(x), 5) == b""
            assert await asyncio.wait_for(relaying, 10) == (len(body), 0)
        finally:
            await _close_all(x, a, la, y, b, lb)

    asyncio.run(main())


def test_aio_relay_passes_a_reset_on(short_tmp: Path) -> None:
    async def main() -> None:
        x, a, la = await _aio_pair(_address("tcp", short_tmp, "a"))
        y, b, lb = await _aio_pair(_address("tcp", short_tmp, "b"))
        try:
            relaying = asyncio.ensure_future(aio.relay(a, b))
            await x.sendall(b"ping")
            assert await asyncio.wait_for(y.recv(4), 5) == b"ping"
            x.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            x.close()
            await asyncio.wait_for(relaying, 5)
            a.close()
            b.close()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(y.recv(100), 5)
        finally:
            await _close_all(x, a, la, y, b, lb)

    asyncio.run(main())


def test_aio_relay_many_at_once(short_tmp: Path) -> None:
    """Fifty relays in one loop, each with its own data: nothing crosses over, every count is right."""

    async def one(i: int) -> None:
        x, a, la = await _aio_pair(_address("tcp", short_tmp, f"a{i}"))
        y, b, lb = await _aio_pair(_address("unix", short_tmp, f"b{i}"))
        try:
            relaying = asyncio.ensure_future(aio.relay(a, b))
            data = os.urandom(50_000 + i * 1000)
            await x.sendall(data)
            await x.shutdown_write()
            got = await asyncio.wait_for(_aio_read_all(y), 15)
            assert got == data
            await y.sendall(got[::-1])
            await y.shutdown_write()
            assert await asyncio.wait_for(_aio_read_all(x), 15) == data[::-1]
            assert await asyncio.wait_for(relaying, 10) == (len(data), len(data))
        finally:
            await _close_all(x, a, la, y, b, lb)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(50)))

    asyncio.run(main())
