"""WebSocket for asyncio *protocols* (the callback style, as ``serve``, ``chat`` and ``bench`` use): a transport
that frames what a protocol writes, and a client-side protocol that opens the WebSocket and then runs an inner
protocol on message payloads, as if it were on a plain connection. Frames and handshakes are those of
:mod:`sockcat.core.websocket`; :mod:`sockcat.streams.aio_ws` is the same for ``await``-style streams.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Any, cast

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError
from sockcat.core.websocket import ClientHandshake, WsCore, WsError
from sockcat.core.wsoptions import WsOptions

_READ = 1 << 20


class WsTransport:
    """What a protocol writes to, over an open WebSocket: ``write`` sends message(s) (in text mode, one per line);
    ``write_eof`` is our Close (half-close); ``close`` sends it too. ``cache`` (optional, ``[data, frames]``) lets
    many connections without compression frame one shared buffer once (the chat's room lines)."""

    __slots__ = ("cache", "core", "t")

    def __init__(self, t: asyncio.Transport, core: WsCore, cache: list[Any] | None = None) -> None:
        self.t = t
        self.core = core
        self.cache = cache

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.core.close_sent or not data:
            return
        cache = self.cache
        if cache is not None and cache[0] is data:
            self.t.write(cache[1])
            return
        frames = self.core.encode(data)
        if cache is not None and len(data) > 256:
            cache[0], cache[1] = data, frames
        self.t.write(frames)

    def write_eof(self) -> None:
        frame = self.core.encode_close()
        if frame and not self.t.is_closing():
            self.t.write(frame)

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if not self.t.is_closing():
            self.write_eof()
            self.t.close()

    def abort(self) -> None:
        self.t.abort()

    def is_closing(self) -> bool:
        return self.t.is_closing()

    def pause_reading(self) -> None:
        self.t.pause_reading()

    def resume_reading(self) -> None:
        self.t.resume_reading()

    def is_reading(self) -> bool:
        return self.t.is_reading()

    def get_write_buffer_size(self) -> int:
        return self.t.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.t.set_write_buffer_limits(high=high, low=low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.t.get_extra_info(name, default)


def pass_on(t: asyncio.Transport, core: WsCore, inner: asyncio.BaseProtocol) -> None:
    """After bytes were fed to ``core``: payloads to ``inner``, owed control frames to the wire, and the peer's
    Close as ``inner``'s EOF (the connection ends once both Closes have passed)."""
    while data := core.read(_READ):
        if isinstance(inner, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(inner.get_buffer(len(view))).cast("B")
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                inner.buffer_updated(n)
                view = view[n:]
        else:
            cast(asyncio.Protocol, inner).data_received(data)
    if core.out:
        t.write(core.take_out())
    if (
        core.peer_closed
        and not t.is_closing()
        and (not cast(asyncio.Protocol, inner).eof_received() or core.close_sent)
    ):
        t.write(core.encode_close())
        t.close()


class WsClient(asyncio.Protocol):
    """The client side: sends the upgrade, and once answered runs ``factory()``'s protocol on a
    :class:`WsTransport`. ``opened`` gets that protocol, or the handshake's error."""

    def __init__(self, factory: Callable[[], asyncio.BaseProtocol], addr: Address, opts: WsOptions) -> None:
        self.factory = factory
        self.addr = addr
        self.hs = ClientHandshake(addr.host, addr.port, addr.resource, opts, secure=addr.is_tls)
        self.opened: asyncio.Future[asyncio.BaseProtocol] = asyncio.get_running_loop().create_future()
        self.t: asyncio.Transport | None = None
        self.core: WsCore | None = None
        self.inner: asyncio.BaseProtocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = t = cast(asyncio.Transport, transport)
        t.write(self.hs.request)

    def data_received(self, data: bytes) -> None:
        t = self.t
        if t is None:
            return
        try:
            if self.core is None:
                self.core = self.hs.feed(data)
                if self.core is None:
                    return
                self.inner = inner = self.factory()
                inner.connection_made(WsTransport(t, self.core))  # type: ignore[arg-type]
                if not self.opened.done():
                    self.opened.set_result(inner)
            else:
                self.core.feed(data)
            assert self.inner is not None
            pass_on(t, self.core, self.inner)
        except WsError as exc:
            if self.core is not None:
                t.write(self.core.take_out())
            self._fail(NetworkError(errno.EPROTO, f"WebSocket with {self.addr}: {exc.reason}"))
            t.close()

    def _fail(self, exc: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        elif self.inner is not None:
            self.inner.connection_lost(exc if isinstance(exc, Exception) else None)
            self.inner = None

    def eof_received(self) -> bool | None:
        if self.core is None:
            self._fail(NetworkError(errno.EPROTO, f"WebSocket handshake with {self.addr}: connection closed"))
            return None
        if self.t is not None and self.inner is not None:
            try:
                self.core.feed(b"")
                pass_on(self.t, self.core, self.inner)
            except WsError:
                pass
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(
                exc or NetworkError(errno.EPROTO, f"WebSocket handshake with {self.addr}: closed")
            )
        if self.inner is not None:
            self.inner.connection_lost(exc)
            self.inner = None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
