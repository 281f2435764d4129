"""TLS for the asyncio streams: :class:`AioTLS` (memory BIOs over the loop's socket calls) and its handshake."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

from sockcat.core.errors import NetworkError, network_error, tls_reason
from sockcat.net.pin import check_pin
from sockcat.net.sockets import RECV_SIZE
from sockcat.streams.tlsio import TLS_HANDSHAKE_TIMEOUT, TLSCore, drain_socket

_TLS_CHUNK = 1 << 18  # plaintext encrypted per step of a TLS sendall


class AioTLS:
    """TLS over a non-blocking socket with memory BIOs: reads and writes never interleave bytes on the wire.

    One coroutine at a time moves ciphertext from the outgoing BIO to the socket (the "pusher"); it keeps
    going until the BIO is empty, so bytes added meanwhile by others leave with it. A writer waits for the
    pusher to finish; a reader never does (a pusher blocked on a full socket may be waiting for this very
    reader's peer to drain it: full-duplex transfers would deadlock). The TLS state is the sync channel's
    :class:`~sockcat.streams.tlsio.TLSCore`.
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool, hostname: str | None) -> None:
        self.sock = sock
        self.core = TLSCore(ctx, server_side=server_side, server_hostname=hostname)
        self.obj = self.core.obj
        self.outgoing = self.core.outgoing
        self.loop = asyncio.get_running_loop()
        self._pusher: asyncio.Future[None] | None = None

    async def flush(self) -> None:
        """Put everything in the outgoing BIO on the wire (after whoever is sending now)."""
        while self._pusher is not None:
            await asyncio.shield(self._pusher)
        if not self.outgoing.pending:
            return
        done: asyncio.Future[None] = self.loop.create_future()
        self._pusher = done
        try:
            while data := self.outgoing.read():
                await self.loop.sock_sendall(self.sock, data)
        finally:
            self._pusher = None
            done.set_result(None)

    async def _flush_if_idle(self) -> None:
        """A reader's flush: only when nobody is sending (a pusher sends these bytes too)."""
        if self.outgoing.pending and self._pusher is None:
            await self.flush()

    async def _fill(self) -> None:
        self.core.feed(await self.loop.sock_recv(self.sock, RECV_SIZE))

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                await self.flush()
                return
            except ssl.SSLWantReadError:
                await self.flush()
                await self._fill()

    async def recv(self, n: int) -> bytes:
        while True:
            data = self.core.read(n)
            await self._flush_if_idle()  # TLS 1.3 may owe the peer a message (key update)
            if data is not None:
                return data
            await self._fill()

    async def sendall(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = self.obj.write(view[:_TLS_CHUNK])
            view = view[n:]
            await self.flush()

    async def close_notify(self) -> None:
        self.core.close_notify()
        await self.flush()

    def drain(self) -> None:
        drain_socket(self.sock)

    def version(self) -> str | None:
        return self.obj.version()


async def handshake_async(tls: AioTLS, sock: socket.socket, what: str, timeout: float | None) -> None:
    """The asyncio TLS handshake (the twin of :func:`sockcat.streams.tlsio.handshake`): the same timeout policy and
    error wording; the socket is closed on failure."""
    try:
        async with asyncio.timeout(timeout if timeout is not None else TLS_HANDSHAKE_TIMEOUT):
            await tls.handshake()
        if not tls.obj.server_side:
            check_pin(tls.obj.context, tls.obj.getpeercert(binary_form=True), what)
    except NetworkError:
        sock.close()
        raise
    except ssl.SSLError as exc:
        sock.close()
        raise NetworkError(errno.EPROTO, f"{what}: {tls_reason(exc)}") from exc
    except OSError as exc:
        sock.close()
        err = network_error(exc, what)
        err.errno = errno.EPROTO
        raise err from exc
