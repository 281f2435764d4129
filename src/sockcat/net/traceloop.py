"""``--trace`` for the connections an event loop serves (``serve``, ``chat``): the loop accepts, reads and writes in
C, so the calls are shown where the protocol sees them (docs/reference.md#output).

Each connection gets a number, in the order they were accepted, shown on its ``accept`` line:
``[fd 3] accept() -> fd 9 from ('127.0.0.1', 5555), connection 1``. Then, on its own descriptor: what the loop read
(``[fd 9] recv() -> 5 bytes``; ``-> 0 bytes`` at the end of the stream; ``-> ECONNRESET …`` for a reset), what the
protocol wrote (``[fd 9] send(5 bytes)``, printed as it starts), ``shutdown(SHUT_WR)`` and ``close()``. The read
size is the loop's, not shown. A TLS listener accepts on a traced socket itself, so its ``accept`` line is that
call's; the handshake's outcome follows as a note. Tracing off, the protocols are the engines' own: nothing here runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sockcat.net import trace as _trace


def traced_factory(factory: Callable[[], asyncio.BaseProtocol], listen_fd: int) -> Callable[[], asyncio.BaseProtocol]:
    """``factory`` for ``loop.create_server``, its protocols traced (wrapped as they are: streamed or buffered)."""

    def make() -> asyncio.BaseProtocol:
        return traced_protocol(factory(), listen_fd)

    return make


def traced_protocol(inner: asyncio.BaseProtocol, listen_fd: int, *, accept_line: bool = True) -> asyncio.BaseProtocol:
    """``inner``, its connection's calls traced; ``accept_line=False`` where the accept was a traced socket's own
    call, already shown (a TLS listener accepts itself)."""
    if isinstance(inner, asyncio.BufferedProtocol):
        return _TracedBuffered(inner, listen_fd, accept_line)
    return _Traced(inner, listen_fd, accept_line)


class _Tracing:
    """What both wrappers share: the connection's descriptor, the accept line, reads, the end."""

    def __init__(self, inner: Any, listen_fd: int, accept_line: bool) -> None:
        self.inner = inner
        self.listen_fd = listen_fd
        self.accept_line = accept_line
        self.fd = -1
        self.closed = False
        self.ended = False  # the peer's end of the stream was shown

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        if self.accept_line:
            peer = _trace.fmt_sockaddr(transport.get_extra_info("peername"))
            _trace.record(
                self.listen_fd, "accept", "", f"fd {self.fd} from {peer}, connection {_trace.next_connection()}"
            )
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            _trace.emit(f"tls handshake -> {tls.version()} {tls.cipher()}", self.fd)
        self.inner.connection_made(_TracedTransport(transport, self))

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, OSError):
            _trace.record(self.fd, "recv", "", error=exc)
        elif not (self.closed or self.ended):  # (TLS: a stream that ends without close_notify reaches no eof_received)
            self.show_end()
        self.close()
        self.inner.connection_lost(exc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _trace.record(self.fd, "close", "")

    def show_end(self) -> None:
        self.ended = True
        _trace.record(self.fd, "recv", "", "0 bytes")

    def eof_received(self) -> bool | None:
        self.show_end()
        result: bool | None = self.inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Traced(_Tracing, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        _trace.record(self.fd, "recv", "", f"{len(data)} bytes")
        self.inner.data_received(data)


class _TracedBuffered(_Tracing, asyncio.BufferedProtocol):
    def get_buffer(self, sizehint: int) -> Any:
        return self.inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        _trace.record(self.fd, "recv", "", f"{nbytes} bytes")
        self.inner.buffer_updated(nbytes)


class _TracedTransport:
    """The transport a traced protocol writes to: its writes, half-close and close are shown, the rest passes."""

    def __init__(self, transport: asyncio.BaseTransport, owner: _Tracing) -> None:
        self._t: Any = transport
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)

    def write(self, data: Any) -> None:
        _trace.record(self._owner.fd, "send", f"{len(data)} bytes")
        self._t.write(data)

    def writelines(self, chunks: Any) -> None:
        chunks = list(chunks)
        _trace.record(self._owner.fd, "send", f"{sum(len(c) for c in chunks)} bytes")
        self._t.writelines(chunks)

    def write_eof(self) -> None:
        _trace.record(self._owner.fd, "shutdown", "SHUT_WR")
        self._t.write_eof()

    def close(self) -> None:
        self._owner.close()
        self._t.close()

    def abort(self) -> None:
        self._owner.close()
        self._t.abort()
