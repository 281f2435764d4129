"""The stream services as asyncio protocols: echo, discard, chargen, daytime (one small object per connection)."""

from __future__ import annotations

import asyncio
from typing import cast

from sockcat.core.address import Address
from sockcat.core.errors import describe
from sockcat.core.services import (
    CHARGEN_CHUNK,
    daytime_line,
)
from sockcat.engines.services.common import (
    RECV_BUFFER,
    WRITE_HIGH_WATER,
    _Shared,
)

# --- stream protocols ---------------------------------------------------------------------------------------


class _Conn(asyncio.BaseProtocol):
    """Base of the stream services; ``rx``/``tx``/``last``/``peer`` are kept only when counting."""

    __slots__ = ("last", "peer", "rx", "shared", "transport", "tx")

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.rx = 0
        self.tx = 0
        self.last = 0.0
        self.peer: Address | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sh = self.shared
        if sh.guarded and not sh.admit(self, transport):
            return
        if len(sh.conns) >= sh.max_conns:  # the cap is always on (10,000 unless told), and costs one comparison
            if sh.log.verbose:
                sh.log.info(f"refused a connection on {sh.scheme}: --max-conns {sh.max_conns} reached")
            transport.close()
            return
        t = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = t
        sh.conns.add(self)
        self.start(t)

    def start(self, transport: asyncio.Transport) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.transport = None
        sh = self.shared
        sh.conns.discard(self)
        if sh.counting:
            why = f" ({describe(exc)})" if exc is not None else ""
            sh.log.info(f"closed {self.peer}: {self.tx} bytes sent, {self.rx} bytes received{why}")

    def eof_received(self) -> bool | None:
        return None  # the client is done: close once what we owe it is written

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """End now, dropping what is queued for the client (an idle one may never read it)."""
        if self.transport is not None:
            self.transport.abort()


class _Echo(_Conn, asyncio.Protocol):
    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    # A client that sends without reading: stop reading until our replies drain (bounded memory).
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


class _EchoCounted(_Echo):
    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.rx += n
        self.tx += n
        self.last = self.shared.loop.time()
        self.transport.write(data)  # type: ignore[union-attr]


_DISCARD_BUFFER = memoryview(bytearray(RECV_BUFFER))  # shared: what is read is thrown away


class _Discard(_Conn, asyncio.BufferedProtocol):
    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _DISCARD_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        pass


class _DiscardCounted(_Discard):
    __slots__ = ()

    def buffer_updated(self, nbytes: int) -> None:
        self.rx += nbytes
        self.last = self.shared.loop.time()


class _Chargen(_Conn, asyncio.BufferedProtocol):
    """Write the pattern while the transport is not paused; a few chunks per loop turn, then yield."""

    __slots__ = ("paused",)

    def __init__(self, shared: _Shared) -> None:
        super().__init__(shared)
        self.paused = False

    def start(self, transport: asyncio.Transport) -> None:
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._fill()

    def _fill(self) -> None:
        t = self.transport
        for _ in range(8):
            if self.paused or t is None or t.is_closing():
                return
            t.write(CHARGEN_CHUNK)
            if self.shared.counting:
                self.tx += len(CHARGEN_CHUNK)
                self.last = self.shared.loop.time()  # (writes go on only while the client reads: that is traffic)
        self.shared.loop.call_soon(self._fill)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.shared.counting:
            self.last = self.shared.loop.time()
        self._fill()

    # RFC 864: "Any data received is thrown away".
    def get_buffer(self, sizehint: int) -> memoryview:
        return _DISCARD_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        if self.shared.counting:
            self.rx += nbytes
            self.last = self.shared.loop.time()

    def eof_received(self) -> bool | None:
        return True  # a client that half-closes still gets the stream until it closes


class _Daytime(_Conn, asyncio.Protocol):
    __slots__ = ()

    def start(self, transport: asyncio.Transport) -> None:
        line = daytime_line()
        self.tx = len(line)
        transport.write(line)
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass


_STREAM: dict[str, tuple[type[_Conn], type[_Conn]]] = {
    "echo": (_Echo, _EchoCounted),
    "discard": (_Discard, _DiscardCounted),
    "chargen": (_Chargen, _Chargen),
    "daytime": (_Daytime, _Daytime),
}
