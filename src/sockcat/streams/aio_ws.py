"""WebSocket over a non-blocking socket (or :class:`~sockcat.streams.aio_tls.AioTLS`): the asyncio twin of
:mod:`sockcat.streams.wsio`, with the same frames (:mod:`sockcat.core.websocket`), half-close and handshakes.

As in the TLS twin, one coroutine at a time puts frames on the wire (the "pusher"), and a reader never waits
for it: a pong the reader owes is queued and leaves with the pusher's next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time

from websockets.http11 import Request

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, Timeout
from sockcat.core.untrusted import escape
from sockcat.core.websocket import ClientHandshake, HandshakeReader, Keepalive, ServerAnswer, WsCore, WsError, answer
from sockcat.core.wsoptions import WsOptions
from sockcat.streams.aio_tls import AioTLS
from sockcat.streams.tlsio import drain_socket
from sockcat.streams.wsio import RECV_SIZE, WS_HANDSHAKE_TIMEOUT, handshake_errors


class AioWS:
    """An open WebSocket as an awaited byte stream: ``recv``, ``sendall``, ``close_write``."""

    def __init__(self, sock: socket.socket, core: WsCore, tls: AioTLS | None, *, ping: float | None = None) -> None:
        self.sock = sock
        self.core = core
        self.tls = tls
        self.loop = asyncio.get_running_loop()
        self._queue: list[bytes] = []
        self._pusher: asyncio.Future[None] | None = None
        self.keepalive = Keepalive(ping, time.monotonic()) if ping else None
        self._pinger = self.loop.create_task(self._keepalive(self.keepalive)) if self.keepalive else None

    async def _raw_recv(self) -> bytes:
        if self.tls is not None:
            return await self.tls.recv(RECV_SIZE)
        return await self.loop.sock_recv(self.sock, RECV_SIZE)

    async def _push(self) -> None:
        """Put every queued frame on the wire (after whoever is sending now)."""
        while self._pusher is not None:
            await asyncio.shield(self._pusher)
        if not self._queue:
            return
        done: asyncio.Future[None] = self.loop.create_future()
        self._pusher = done
        try:
            while self._queue:
                data = self._queue[0] if len(self._queue) == 1 else b"".join(self._queue)
                self._queue.clear()
                if self.tls is not None:
                    await self.tls.sendall(data)
                else:
                    await self.loop.sock_sendall(self.sock, data)
        finally:
            self._pusher = None
            done.set_result(None)

    async def _owe(self) -> None:
        """A reader's frames (pongs, an error's Close): sent now unless a pusher will send them."""
        self._queue.append(self.core.take_out())
        if self._pusher is None:
            await self._push()

    async def recv(self, n: int = RECV_SIZE) -> bytes:
        while True:
            try:
                data = self.core.read(n)
            except WsError as exc:
                raise NetworkError(errno.ECONNRESET, exc.reason) from None
            if data is not None:
                if not data and self.core.close_sent:
                    await self._end_transport()
                return data
            raw = await self._raw_recv()
            if self.keepalive is not None:
                if self.keepalive.silent:
                    raise Timeout(errno.ETIMEDOUT, self.keepalive.silence())
                self.keepalive.heard = time.monotonic()
            try:
                self.core.feed(raw)
            except WsError as exc:
                with contextlib.suppress(OSError):
                    await self._owe()
                raise NetworkError(errno.EPROTO, exc.reason) from None
            if self.core.out:
                await self._owe()

    async def sendall(self, data: bytes | bytearray | memoryview) -> None:
        if not len(data):
            return
        try:
            self._queue.append(self.core.encode(data))
        except WsError as exc:
            raise NetworkError(errno.EPIPE, exc.reason) from None
        await self._push()

    async def close_write(self) -> None:
        """Our Close; reading goes on until the peer's, then the transport half-closes."""
        frame = self.core.encode_close()
        if frame:
            self._queue.append(frame)
            with contextlib.suppress(OSError):
                await self._push()
        if self.core.peer_closed:
            await self._end_transport()

    async def _end_transport(self) -> None:
        with contextlib.suppress(OSError):
            if self.tls is not None:
                await self.tls.close_notify()
            self.sock.shutdown(socket.SHUT_WR)

    async def _keepalive(self, keepalive: Keepalive) -> None:
        while True:
            await asyncio.sleep(keepalive.every)
            ping = keepalive.tick(self.core, time.monotonic())
            if ping is None:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)  # the reader wakes up, and reports the silence
                return
            if ping:
                self._queue.append(ping)
                with contextlib.suppress(OSError):
                    await self._push()

    def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        if not self.core.close_sent and self._pusher is None and self.tls is None and self.sock.fileno() != -1:
            with contextlib.suppress(OSError):  # a last Close if it can leave at once
                self.sock.send(self.core.encode_close(), socket.MSG_DONTWAIT)


# --- the opening handshakes --------------------------------------------------------------------------


async def _recv(sock: socket.socket, tls: AioTLS | None) -> bytes:
    if tls is not None:
        return await tls.recv(RECV_SIZE)
    return await asyncio.get_running_loop().sock_recv(sock, RECV_SIZE)


async def _sendall(sock: socket.socket, tls: AioTLS | None, data: bytes) -> None:
    if tls is not None:
        await tls.sendall(data)
    else:
        await asyncio.get_running_loop().sock_sendall(sock, data)


async def client_handshake(
    sock: socket.socket, tls: AioTLS | None, addr: Address, opts: WsOptions, *, timeout: float | None = None
) -> AioWS:
    """The asyncio twin of :func:`sockcat.streams.wsio.client_handshake` (the socket is closed on failure)."""
    with handshake_errors(f"WebSocket handshake with {addr}", sock.close):
        async with asyncio.timeout(timeout if timeout is not None else WS_HANDSHAKE_TIMEOUT):
            hs = ClientHandshake(addr.host, addr.port, addr.resource, opts, secure=addr.is_tls)
            await _sendall(sock, tls, hs.request)
            core = None
            while core is None:
                core = hs.feed(await _recv(sock, tls))
    return AioWS(sock, core, tls, ping=opts.ping)


async def server_handshake(
    sock: socket.socket, tls: AioTLS | None, where: Address | str, resource: str, opts: WsOptions
) -> tuple[AioWS, ServerAnswer]:
    """The asyncio twin of :func:`sockcat.streams.wsio.server_handshake`."""
    with handshake_errors(f"WebSocket handshake from {where}", sock.close):
        async with asyncio.timeout(WS_HANDSHAKE_TIMEOUT):
            reader = HandshakeReader(response=False)
            request = None
            while request is None:
                request = reader.feed(await _recv(sock, tls))
            assert isinstance(request, Request)
            ans = answer(request, resource, opts, reader.leftover())
            await _sendall(sock, tls, ans.response)
        if ans.core is None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            drain_socket(sock)
            raise WsError(1002, f"refused {escape(request.path[:200])} with HTTP {ans.status}")
    return AioWS(sock, ans.core, tls, ping=opts.ping), ans
