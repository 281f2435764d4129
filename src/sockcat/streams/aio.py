"""The asyncio twin of sockcat's socket library: the same names, awaited.

``await aio.connect(...)``, ``await aio.listen(...)``, ``await server.accept()``, ``async for conn in server``,
``await stream.recv_line()``, ``await stream.sendall(...)``, ``await x.aclose()``, ``async with``.
Addresses, resolution, socket set-up and framing are shared with the sync API (:mod:`sockcat.streams.sync`,
:mod:`sockcat.core.framing`); only the waiting differs. TLS runs through ``ssl.SSLObject`` over the
loop's socket calls, so a TLS stream can half-close (close_notify, then TCP FIN) like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, Timeout, UsageError, network_error, tls_reason
from sockcat.core.eyeballs import Eyeballs
from sockcat.core.framing import DEFAULT_MAX_LINE, ReceiveBuffer, to_bytes
from sockcat.core.wsoptions import WsOptions
from sockcat.net import proxy as _proxy
from sockcat.net.proxy import Proxy
from sockcat.net.sockets import (
    RECV_SIZE,
    SockOpts,
    check_source,
    norm_opts,
    prepare_socket,
    resolve,
    safe_name,
    to_address,
)
from sockcat.streams.aio_open import opening
from sockcat.streams.aio_tls import AioTLS, handshake_async
from sockcat.streams.aio_ws import AioWS
from sockcat.streams.aio_ws import client_handshake as ws_client_handshake
from sockcat.streams.aio_ws import server_handshake as ws_server_handshake
from sockcat.streams.datagram import Datagram as SyncDatagram
from sockcat.streams.datagram import connect_datagram as sync_connect_datagram
from sockcat.streams.datagram import open_datagram as sync_open_datagram
from sockcat.streams.sync import Listener as SyncListener
from sockcat.streams.sync import listen as sync_listen

__all__ = [
    "Datagram",
    "Listener",
    "Stream",
    "connect",
    "connect_datagram",
    "connect_socket",
    "listen",
    "open_datagram",
]


async def _resolve(addr: Address, passive: bool = False) -> list[tuple[int, int, int, Any]]:
    if addr.is_ip and addr.family == socket.AF_UNSPEC and addr.host:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: resolve(addr, passive=passive))
    return resolve(addr, passive=passive)


class _Resource:
    """fileno, close-on-exit and ``aclose`` for the objects below; each has ``socket`` and ``close()``."""

    socket: socket.socket

    def fileno(self) -> int:
        return self.socket.fileno()

    def close(self) -> None:
        self.socket.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class Stream(_Resource):
    """A connected socket with bounded buffered reads; see :class:`sockcat.Stream` for the verbs."""

    def __init__(
        self,
        sock: socket.socket,
        scheme: str = "tcp",
        *,
        timeout: float | None = None,
        tls: AioTLS | None = None,
        ws: AioWS | None = None,
    ) -> None:
        sock.setblocking(False)
        self.socket = sock
        self.scheme = scheme
        self.timeout = timeout
        self._tls = tls
        self._ws = ws
        self.request: Any = None  # a WebSocket listener's connection: the client's HTTP request
        self._buf = ReceiveBuffer()
        self._loop = asyncio.get_running_loop()
        self.address = safe_name(sock, scheme, peer=False)
        self.peer = safe_name(sock, scheme, peer=True)

    def _where(self) -> str:
        return str(self.peer or self.address or self.scheme)

    async def _recv_raw(self, n: int) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                if self._ws is not None:
                    return await self._ws.recv(n)
                if self._tls is not None:
                    return await self._tls.recv(n)
                return await self._loop.sock_recv(self.socket, n)
        except TimeoutError as exc:
            raise Timeout(errno.ETIMEDOUT, f"recv from {self._where()}: timed out") from exc
        except ssl.SSLError as exc:
            raise NetworkError(errno.EPROTO, f"recv from {self._where()}: {tls_reason(exc)}") from exc
        except OSError as exc:
            raise network_error(exc, f"recv from {self._where()}") from exc

    async def recv_packet(self) -> bytes:
        """One whole packet of a SOCK_SEQPACKET socket, however large (``b""`` at EOF)."""
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    try:
                        size = self.socket.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
                        return self.socket.recv(max(size, 1))
                    except BlockingIOError:
                        await _readable(self.socket)
        except TimeoutError as exc:
            raise Timeout(errno.ETIMEDOUT, f"recv from {self._where()}: timed out") from exc
        except OSError as exc:
            raise network_error(exc, f"recv from {self._where()}") from exc

    async def recv(self, bufsize: int = RECV_SIZE) -> bytes:
        if self._buf:
            return self._buf.take_some(bufsize)
        return await self._recv_raw(bufsize)

    async def recv_exactly(self, n: int) -> bytes:
        while (out := self._buf.take_exactly(n)) is None:
            data = await self._recv_raw(max(RECV_SIZE, n - len(self._buf)))
            if not data:
                raise self._buf.incomplete(n)
            self._buf.feed(data)
        return out

    async def recv_until(self, delim: bytes | str, *, drop: bool = False, max_size: int = DEFAULT_MAX_LINE) -> bytes:
        d = to_bytes(delim)
        while (out := self._buf.take_until(d, max_size, drop=drop)) is None:
            data = await self._recv_raw(RECV_SIZE)
            if not data:
                raise self._buf.incomplete(None)
            self._buf.feed(data)
        return out

    async def recv_line(self, *, drop: bool = False, max_size: int = DEFAULT_MAX_LINE) -> bytes:
        return await self.recv_until(b"\n", drop=drop, max_size=max_size)

    def unrecv(self, data: bytes) -> None:
        self._buf.unread(data)

    async def sendall(self, data: bytes | bytearray | memoryview | str) -> None:
        payload = data.encode() if isinstance(data, str) else data
        try:
            async with asyncio.timeout(self.timeout):
                if self._ws is not None:
                    await self._ws.sendall(payload)
                elif self._tls is not None:
                    await self._tls.sendall(bytes(payload))
                else:
                    await self._loop.sock_sendall(self.socket, payload)
        except TimeoutError as exc:
            raise Timeout(errno.ETIMEDOUT, f"send to {self._where()}: timed out") from exc
        except ssl.SSLError as exc:
            raise NetworkError(errno.EPROTO, f"send to {self._where()}: {tls_reason(exc)}") from exc
        except OSError as exc:
            raise network_error(exc, f"send to {self._where()}") from exc

    async def send_line(self, data: bytes | bytearray | memoryview | str) -> None:
        await self.sendall(to_bytes(data) + b"\n")

    async def shutdown_write(self) -> None:
        """Half-close (a TLS stream sends close_notify first, a WebSocket its Close); reading goes on."""
        if self._ws is not None:
            await self._ws.close_write()
            return
        if self._tls is not None:
            with contextlib.suppress(OSError):
                await self._tls.close_notify()
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_WR)

    def getpeername(self) -> Any:
        return self.socket.getpeername()

    def getsockname(self) -> Any:
        return self.socket.getsockname()

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.socket.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        return self.socket.getsockopt(level, option)

    @property
    def tls_version(self) -> str | None:
        return self._tls.version() if self._tls else None

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._tls is not None and self.socket.fileno() != -1:
            self._tls.drain()
        self.socket.close()

    def __repr__(self) -> str:
        return f"<aio.Stream {self.address} -> {self.peer}>"


async def _attempt(info: tuple[int, int, int, Any], addr: Address, opts: Any, source: Address | None) -> socket.socket:
    fam, kind, proto, sa = info
    sock = prepare_socket(fam, kind, proto, opts, source, str(addr))
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, sa)
    except BaseException:
        sock.close()
        raise
    return sock


async def _happy_eyeballs(
    infos: list[tuple[int, int, int, Any]], addr: Address, opts: Any, source: Address | None
) -> socket.socket:
    """RFC 8305, as :class:`sockcat.core.eyeballs.Eyeballs` plans it (the sync connect's plan), on tasks."""
    loop = asyncio.get_running_loop()
    plan = Eyeballs(infos)
    racing: set[asyncio.Task[socket.socket]] = set()
    winner: socket.socket | None = None
    try:
        while winner is None and not plan.lost:
            if plan.due(loop.time()):
                racing.add(asyncio.ensure_future(_attempt(plan.start(loop.time()), addr, opts, source)))
                continue
            done, _ = await asyncio.wait(racing, timeout=plan.wait(loop.time()), return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                racing.discard(t)
                exc = t.exception()
                if exc is None:
                    if winner is None:
                        winner = t.result()
                    else:
                        t.result().close()
                elif isinstance(exc, OSError):
                    plan.failed(exc, loop.time())
                else:
                    raise exc
    finally:
        for t in racing:
            if t.done() and not t.cancelled() and t.exception() is None:
                t.result().close()  # (connected, but another won)
            else:
                t.cancel()
    if winner is None:
        raise plan.error()
    return winner


@opening
async def connect(
    address: Address | str,
    *,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    source: Address | str | None = None,
    sockopts: SockOpts = None,
    ssl_context: ssl.SSLContext | None = None,
    sni: str | None = None,
    proxy: Proxy | str | None = None,
    ws: WsOptions | None = None,
) -> Stream:
    """Connect to a stream address; the asyncio twin of :func:`sockcat.connect`."""
    addr = Address.parse(address)
    ct = timeout if connect_timeout is None else connect_timeout
    sock = await connect_socket(addr, timeout=ct, source=source, sockopts=sockopts, proxy=proxy)
    tls = None
    if addr.is_tls:
        from sockcat.net.tls import client_context

        ctx = ssl_context or client_context()
        hostname = sni if sni is not None else (addr.host or None)
        tls = AioTLS(sock, ctx, False, hostname)
        await handshake_async(tls, sock, f"TLS handshake with {addr}", ct)
    chan = await ws_client_handshake(sock, tls, addr, ws or WsOptions(), timeout=ct) if addr.is_ws else None
    return Stream(sock, addr.scheme, timeout=timeout, tls=tls, ws=chan)


async def connect_socket(
    address: Address | str,
    *,
    timeout: float | None = None,
    source: Address | str | None = None,
    sockopts: SockOpts = None,
    proxy: Proxy | str | None = None,
) -> socket.socket:
    """A connected non-blocking plain socket (no TLS), happy eyeballs for names; errors mapped.
    With ``proxy``, through that SOCKS or HTTP CONNECT proxy."""
    addr = Address.parse(address)
    src = Address.parse(source) if source is not None else None
    if src is not None:
        check_source(addr, src)  # (the sync connect's checks: a source of another kind or family is a usage error)
    opts = norm_opts(sockopts)
    if proxy is not None:
        return await _proxy.connect_async(Proxy.parse(proxy), addr, timeout, src, opts)
    try:
        async with asyncio.timeout(timeout):
            infos = await _resolve(addr)
            if len(infos) == 1:
                return await _attempt(infos[0], addr, opts, src)
            return await _happy_eyeballs(infos, addr, opts, src)
    except (NetworkError, UsageError):
        raise
    except OSError as exc:
        raise network_error(exc, f"connect {addr}") from exc.__cause__


class Listener(_Resource):
    """A listening socket; ``await accept()`` or ``async for conn in listener``."""

    def __init__(self, inner: SyncListener) -> None:
        self._inner = inner
        self.socket = inner.socket
        self.address = inner.address
        self.fingerprint = inner.fingerprint
        self.socket.setblocking(False)

    async def accept(self) -> Stream:
        loop = asyncio.get_running_loop()
        try:
            conn, _peer = await loop.sock_accept(self.socket)
        except OSError as exc:
            raise network_error(exc, f"accept on {self.address}") from None
        for opt in self._inner._opts:
            if opt.applies_to(conn.family, conn.type):
                with contextlib.suppress(OSError):
                    opt.apply(conn)
        tls = None
        if self._inner.ssl_context is not None:
            conn.setblocking(False)
            tls = AioTLS(conn, self._inner.ssl_context, True, None)
            await handshake_async(tls, conn, f"TLS handshake on {self.address}", None)
        if not self.address.is_ws:
            return Stream(conn, self.address.scheme, tls=tls)
        conn.setblocking(False)
        chan, ans = await ws_server_handshake(conn, tls, self.address, self.address.resource, self._inner.ws)
        stream = Stream(conn, self.address.scheme, tls=tls, ws=chan)
        stream.request = ans.request
        return stream

    def __aiter__(self) -> AsyncIterator[Stream]:
        return self._loop_accept()

    async def _loop_accept(self) -> AsyncIterator[Stream]:
        while self.socket.fileno() != -1:
            try:
                yield await self.accept()
            except NetworkError as exc:
                if exc.errno != errno.EPROTO:
                    raise

    def close(self) -> None:
        self._inner.close()


@opening
async def listen(address: Address | str, **kwargs: Any) -> Listener:
    """Listen on a stream address; takes the keyword arguments of :func:`sockcat.listen`."""
    addr = Address.parse(address)
    if addr.is_ip and addr.host and addr.family == socket.AF_UNSPEC:
        loop = asyncio.get_running_loop()
        inner = await loop.run_in_executor(None, lambda: sync_listen(addr, **kwargs))
    else:
        inner = sync_listen(addr, **kwargs)
    return Listener(inner)


class Datagram(_Resource):
    """The asyncio twin of :class:`sockcat.Datagram`."""

    def __init__(self, inner: SyncDatagram) -> None:
        self._inner = inner
        self.socket = inner.socket
        self.address = inner.address
        self.socket.setblocking(False)

    @property
    def peer(self) -> Address | None:
        return self._inner.peer

    async def recvfrom(self, bufsize: int = RECV_SIZE, *, timeout: float | None = None) -> tuple[bytes, Address]:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        data, sa = self.socket.recvfrom(bufsize)
                        return data, to_address(self.address.scheme, sa)
                    except BlockingIOError:
                        await _readable(self.socket)
        except TimeoutError as exc:
            raise Timeout(errno.ETIMEDOUT, f"recvfrom on {self.address}: timed out") from exc
        except OSError as exc:
            raise network_error(exc, f"recvfrom on {self.address}") from exc

    async def recv(self, bufsize: int = RECV_SIZE, *, timeout: float | None = None) -> bytes:
        data, _ = await self.recvfrom(bufsize, timeout=timeout)
        return data

    async def sendto(self, data: bytes | bytearray | memoryview | str, address: Address | str) -> int:
        # A datagram socket does not block on send short of a full buffer; one retry after a yield suffices.
        try:
            return self._inner.sendto(data, address)
        except NetworkError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                raise
            await asyncio.sleep(0)
            return self._inner.sendto(data, address)

    async def send(self, data: bytes | bytearray | memoryview | str) -> int:
        return self._inner.send(data)

    def close(self) -> None:
        self._inner.close()


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _wake, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@opening
async def open_datagram(address: Address | str, **kwargs: Any) -> Datagram:
    """Bind a datagram socket; takes the keyword arguments of :func:`sockcat.open_datagram`."""
    return Datagram(sync_open_datagram(address, **kwargs))


@opening
async def connect_datagram(address: Address | str, **kwargs: Any) -> Datagram:
    addr = Address.parse(address)
    if addr.is_ip and addr.host and addr.family == socket.AF_UNSPEC:
        loop = asyncio.get_running_loop()
        return Datagram(await loop.run_in_executor(None, lambda: sync_connect_datagram(addr, **kwargs)))
    return Datagram(sync_connect_datagram(addr, **kwargs))
