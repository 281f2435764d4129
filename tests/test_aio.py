"""sockcat.aio on real sockets, under asyncio's default loop and under uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

import sockcat
from sockcat import (
    Address,
    AddressError,
    IncompleteReadError,
    LimitOverrunError,
    NetworkError,
    SockcatError,
    aio,
)
from sockcat.net.tls import client_context, fingerprint_sha256
from sockcat.streams import aio as aio_streams

T = 5.0
pytestmark = pytest.mark.timeout(30)

Runner = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run an async test body on a fresh loop (default asyncio or uvloop), bounded to 15 s."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(body: Callable[[], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            if request.param == "uvloop":
                assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
            async with asyncio.timeout(15):
                return await body()

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(main())

    return runner


def insecure() -> ssl.SSLContext:
    return client_context(insecure=True)


async def apair(lst: aio.Listener, **kw: Any) -> tuple[aio.Stream, aio.Stream]:
    """(client, server) through ``lst``; accept and connect run together (a TLS handshake needs both)."""
    server, client = await asyncio.gather(lst.accept(), aio.connect(str(lst.address), timeout=T, **kw))
    server.timeout = T
    return client, server


async def read_to_eof(s: aio.Stream) -> bytes:
    out = bytearray()
    while data := await s.recv():
        out += data
    return bytes(out)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connect_listen_accept(run: Runner) -> None:
    async def body() -> None:
        async with await aio.listen("tcp://127.0.0.1:0") as lst:
            assert isinstance(lst, aio.Listener)
            assert lst.address.port != 0
            assert lst.address.port == lst.socket.getsockname()[1]
            assert isinstance(lst.socket, socket.socket)
            client, server = await apair(lst)
            async with client, server:
                assert isinstance(client, aio.Stream)
                assert isinstance(client.socket, socket.socket)
                assert client.peer == lst.address
                assert server.peer == client.address
                assert client.getpeername() == ("127.0.0.1", lst.address.port)
                await client.send_line("héllo")
                assert await server.recv_line() == "héllo\n".encode()
                await server.sendall(b"pong\n")
                assert await client.recv_line(drop=True) == b"pong"

    run(body)


def test_async_for_accept_loop(run: Runner) -> None:
    async def body() -> None:
        async with await aio.listen("tcp://127.0.0.1:0") as lst:

            async def serve() -> list[bytes]:
                got = []
                async for conn in lst:
                    async with conn:
                        conn.timeout = T
                        got.append(await conn.recv_line(drop=True))
                    if len(got) == 3:
                        break
                return got

            task = asyncio.create_task(serve())
            for i in range(3):
                async with await aio.connect(str(lst.address), timeout=T) as c:
                    await c.send_line(f"client {i}")
                    assert await c.recv() == b""  # the server closed this one: order is fixed
            assert await task == [b"client 0", b"client 1", b"client 2"]

    run(body)


def test_recv_variants(run: Runner) -> None:
    async def body() -> None:
        async with await aio.listen("tcp://127.0.0.1:0") as lst:
            client, server = await apair(lst)
            async with client, server:
                await server.sendall(b"one\ntwo\r\nthree--four\n" + b"x" * 100 + b"\nend")
                assert await client.recv_line() == b"one\n"
                assert await client.recv_line(drop=True) == b"two\r"
                assert await client.recv_until(b"--") == b"three--"
                assert await client.recv_until("\n", drop=True) == b"four"
                with pytest.raises(LimitOverrunError):
                    await client.recv_line(max_size=50)
                assert await client.recv_exactly(100) == b"x" * 100
                assert await client.recv_line() == b"\n"
                client.unrecv(b"the ")
                assert await client.recv_exactly(7) == b"the end"
                await server.aclose()
                assert await client.recv() == b""

    run(body)


def test_incomplete_reads_carry_partial(run: Runner) -> None:
    async def body() -> None:
        async with await aio.listen("tcp://127.0.0.1:0") as lst:
            client, server = await apair(lst)
            async with client:
                await server.sendall(b"abc")
                await server.aclose()
                with pytest.raises(IncompleteReadError) as info:
                    await client.recv_exactly(10)
                assert info.value.partial == b"abc"
                assert info.value.expected == 10
            client, server = await apair(lst)
            async with client:
                await server.sendall(b"no newline")
                await server.aclose()
                with pytest.raises(IncompleteReadError) as info:
                    await client.recv_line()
                assert info.value.partial == b"no newline"

    run(body)


def test_timeouts_raise_and_lose_nothing(run: Runner) -> None:
    async def body() -> None:
        async with await aio.listen("tcp://127.0.0.1:0") as lst:
            server_task = asyncio.create_task(lst.accept())
            client = await aio.connect(str(lst.address), timeout=0.3)
            server = await server_task
            async with client, server:
                for op in (client.recv, client.recv_line, lambda: client.recv_exactly(2)):
                    t0 = time.monotonic()
                    with pytest.raises(TimeoutError) as info:
                        await op()
                    assert 0.2 < time.monotonic() - t0 < 3
                    assert isinstance(info.value, SockcatError)
                    assert isinstance(info.value, OSError)
                await server.sendall(b"par")
                with pytest.raises(TimeoutError):
                    await client.recv_line()
                await server.sendall(b"tial\n")
                assert await client.recv_line() == b"partial\n"
                with pytest.raises(TimeoutError):
                    await client.recv_until(b"\n")
                await server.sendall(b"k: v")
                with pytest.raises(TimeoutError):
                    await client.recv_line()
                assert await client.recv_until(b":") == b"k:"
        async with await aio.open_datagram("udp://127.0.0.1:0") as dg:
            with pytest.raises(TimeoutError):
                await dg.recvfrom(timeout=0.2)

    run(body)


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_half_close(run: Runner, kind: str, short_tmp: Path) -> None:
    addr = {"tcp": "tcp://127.0.0.1:0", "unix": f"unix:{short_tmp}/hc.sock", "tls": "tls://127.0.0.1:0"}[kind]
    kw: dict[str, Any] = {"ssl_context": insecure()} if kind == "tls" else {}

    async def body() -> None:
        async with await aio.listen(addr) as lst:
            client, server = await apair(lst, **kw)
            async with client, server:
                if kind == "tls":
                    assert client.tls_version in ("TLSv1.2", "TLSv1.3")
                await client.sendall(b"request")
                await client.shutdown_write()
                assert await read_to_eof(server) == b"request"
                await server.sendall(b"response")
                await server.shutdown_write()
                assert await read_to_eof(client) == b"response"

    run(body)
    if kind == "unix":
        assert not os.path.exists(f"{short_tmp}/hc.sock")


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_udp_datagrams(run: Runner, host: str) -> None:
    async def body() -> None:
        async with (
            await aio.open_datagram(f"udp://{host}:0") as a,
            await aio.open_datagram(f"udp://{host}:0") as b,
        ):
            assert a.address.port != 0
            assert await a.sendto(b"ping", b.address) == 4
            data, src = await b.recvfrom(timeout=T)
            assert (data, src) == (b"ping", a.address)
            await b.sendto("pong", str(src))
            assert await a.recvfrom(timeout=T) == (b"pong", b.address)

    run(body)


def test_unixgram_datagrams(run: Runner, short_tmp: Path) -> None:
    path = f"{short_tmp}/dg.sock"
    name = f"@sockcat-aio-{uuid.uuid4().hex}"

    async def body() -> None:
        async with (
            await aio.open_datagram(f"unixgram:{path}") as a,
            await aio.open_datagram(f"unixgram:{name}") as b,
        ):
            await a.sendto(b"hi", b.address)
            assert await b.recvfrom(timeout=T) == (b"hi", a.address)
            await b.sendto(b"yo", a.address)
            assert await a.recv(timeout=T) == b"yo"
            async with await aio.connect_datagram(f"unixgram:{name}") as c:
                await c.send(b"connected")
                data, src = await b.recvfrom(timeout=T)
                assert data == b"connected"
                await b.sendto(b"back", src)
                assert await c.recv(timeout=T) == b"back"

    run(body)
    assert not os.path.exists(path)


def test_connect_datagram_udp(run: Runner) -> None:
    async def body() -> None:
        async with await aio.open_datagram("udp://127.0.0.1:0") as server:
            c = await aio.connect_datagram(str(server.address))
            async with c:
                assert c.peer == server.address
                await c.send(b"q")
                data, src = await server.recvfrom(timeout=T)
                assert data == b"q"
                assert src == c.address
                await server.sendto(b"a", src)
                assert await c.recv(timeout=T) == b"a"

    run(body)


def test_aclose_and_async_with_close(run: Runner, short_tmp: Path) -> None:
    path = f"{short_tmp}/close.sock"

    async def body() -> None:
        lst = await aio.listen(f"unix:{path}")
        assert os.path.exists(path)
        client, server = await apair(lst)
        async with client:
            pass
        assert client.socket.fileno() == -1
        assert await server.recv() == b""
        await server.aclose()
        assert server.socket.fileno() == -1
        await lst.aclose()
        assert lst.socket.fileno() == -1
        assert not os.path.exists(path)
        dg = await aio.open_datagram("udp://127.0.0.1:0")
        await dg.aclose()
        assert dg.socket.fileno() == -1

    run(body)


def test_errors(run: Runner) -> None:
    async def body() -> None:
        port = _closed_port()
        with pytest.raises(ConnectionRefusedError) as info:
            await aio.connect(f"tcp://127.0.0.1:{port}", timeout=T)
        assert isinstance(info.value, SockcatError)
        assert isinstance(info.value, OSError)
        assert info.value.errno == errno.ECONNREFUSED
        with pytest.raises(AddressError) as ainfo:
            await aio.connect("tcp://[::1:80")
        assert isinstance(ainfo.value, ValueError)
        with pytest.raises(SockcatError) as rinfo:
            await aio.connect("tcp://x.invalid:80", timeout=T)
        assert isinstance(rinfo.value, OSError)

    run(body)


def test_localhost_name_connects(run: Runner) -> None:
    async def body() -> None:
        async with await aio.listen("tcp://127.0.0.1:0") as lst:
            task = asyncio.create_task(lst.accept())
            c = await aio.connect(f"tcp://localhost:{lst.address.port}", timeout=T)
            async with c, await task as s:
                await c.sendall(b"name")
                s.timeout = T
                assert await s.recv_exactly(4) == b"name"

    run(body)


def test_happy_eyeballs_falls_back(run: Runner) -> None:
    async def body() -> None:
        async with await aio.listen("tcp://127.0.0.1:0") as lst:
            port = lst.address.port
            dead = _closed_port()
            infos = [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, ("::1", dead, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, ("127.0.0.1", port)),
            ]
            task = asyncio.create_task(lst.accept())
            sock = await aio_streams._happy_eyeballs(infos, Address.parse(f"tcp://localhost:{port}"), (), None)
            with sock:
                assert sock.getpeername() == ("127.0.0.1", port)
                (await task).close()
            infos[1] = (socket.AF_INET, socket.SOCK_STREAM, 6, ("127.0.0.1", dead))
            with pytest.raises(ConnectionRefusedError):
                await aio_streams._happy_eyeballs(infos, Address.parse(f"tcp://localhost:{dead}"), (), None)

    run(body)


def test_tls(run: Runner) -> None:
    async def body() -> None:
        async with await aio.listen("tls://127.0.0.1:0") as lst:
            assert lst.fingerprint is not None
            assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", lst.fingerprint)
            client, server = await apair(lst, ssl_context=insecure())
            async with client, server:
                der = client._tls.obj.getpeercert(binary_form=True) if client._tls else None
                assert der is not None and fingerprint_sha256(der) == lst.fingerprint
                await client.send_line(b"over tls")
                assert await server.recv_line() == b"over tls\n"
                await server.sendall(b"x" * 200_000)
                assert await client.recv_exactly(200_000) == b"x" * 200_000

    run(body)


def test_tls_default_verification_fails(run: Runner) -> None:
    async def body() -> None:
        async with await aio.listen("tls://127.0.0.1:0") as lst:
            results = await asyncio.gather(
                lst.accept(), aio.connect(str(lst.address), timeout=T), return_exceptions=True
            )
            server_res, client_res = results
            assert isinstance(client_res, NetworkError), client_res
            assert "certificate verify failed" in str(client_res)
            assert isinstance(server_res, NetworkError), server_res
            # The listener still serves a good client afterwards, and async for skips a failed handshake.

            async def serve() -> bytes:
                async for conn in lst:
                    async with conn:
                        conn.timeout = T
                        return await conn.recv_line()
                return b""

            task = asyncio.create_task(serve())
            with pytest.raises(NetworkError):
                await aio.connect(str(lst.address), timeout=T)
            async with await aio.connect(str(lst.address), timeout=T, ssl_context=insecure()) as c:
                await c.send_line("good")
                assert await task == b"good\n"

    run(body)


def test_sync_and_aio_interoperate(run: Runner) -> None:
    """An aio listener and a sync client (in a thread) talk to each other."""

    async def body() -> None:
        async with await aio.listen("tcp://127.0.0.1:0") as lst:

            def sync_client() -> bytes:
                with sockcat.connect(str(lst.address), timeout=T) as c:
                    c.send_line("from sync")
                    return c.recv_line()

            fut = asyncio.get_running_loop().run_in_executor(None, sync_client)
            async with await lst.accept() as conn:
                conn.timeout = T
                line = await conn.recv_line()
                await conn.sendall(b"echo: " + line)
            assert await fut == b"echo: from sync\n"

    run(body)


def test_backpressure_send_times_out(run: Runner) -> None:
    """A peer that never reads: sendall with a 1 s timeout raises TimeoutError once the kernel buffers fill."""

    async def body() -> None:
        async with await aio.listen("tcp://127.0.0.1:0") as lst:
            client, server = await apair(lst)
            async with client, server:
                client.timeout = 1.0
                total = 0
                with pytest.raises(TimeoutError):
                    while total < 128 << 20:
                        await client.sendall(b"z" * 65536)
                        total += 65536
                assert total < 64 << 20

    run(body)


def test_tls_handshake_timeout(run: Runner) -> None:
    async def body() -> None:
        async with await aio.listen("tcp://127.0.0.1:0") as plain:
            task = asyncio.create_task(plain.accept())
            t0 = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                await aio.connect(f"tls://127.0.0.1:{plain.address.port}", timeout=0.5, ssl_context=insecure())
            assert isinstance(info.value, SockcatError)
            assert time.monotonic() - t0 < 3
            (await task).close()

    run(body)


def test_aio_serve_and_bench_in_one_loop(run: Runner) -> None:
    """aio.serve runs an echo service as a task; aio.bench loads it from the same loop and measures real replies."""

    async def main() -> None:
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        server = asyncio.ensure_future(aio.serve("echo", "tcp://127.0.0.1:0", ready=ready.set_result))
        try:
            srv = await asyncio.wait_for(ready, 10)
            async with await aio.connect(srv.address, timeout=10) as s:
                await s.sendall(b"ping\n")
                assert await s.recv_line() == b"ping\n"
            result = await aio.bench(srv.address, connections=2, requests=200, warmup=0.0)
            assert isinstance(result, sockcat.BenchResult)
            assert result.requests >= 200
            assert result.errors == 0
            assert 0 < result.latency.p50 <= result.latency.p99 <= result.latency.max
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server

    run(main)


def test_connect_and_listen_work_with_await_and_with_async_with() -> None:
    async def main() -> bytes:
        async with aio.listen("tcp://127.0.0.1:0") as server:  # no await needed
            port = server.address.port

            async def answer() -> None:
                async with await server.accept() as conn:
                    await conn.sendall(await conn.recv_line())

            task = asyncio.ensure_future(answer())
            async with aio.connect(f"tcp://127.0.0.1:{port}", timeout=5) as s:
                await s.send_line("both ways")
                line = await s.recv_line()
            await task
            s2 = await aio.connect_datagram("udp://127.0.0.1:9")  # and awaited as before
            s2.close()
            return line

    assert asyncio.run(main()) == b"both ways\n"
