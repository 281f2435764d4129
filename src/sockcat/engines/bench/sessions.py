"""Sessions, one per persistent connection: what every kind shares, and the stream kinds driven by asyncio
protocols (rtt with one request in flight or pipelined, upload, download). A session sees its worker as
:class:`_WorkerLike`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable
from time import perf_counter_ns
from typing import Protocol, cast

from sockcat.core.stats import Histogram
from sockcat.engines.bench.plan import BenchPlan

# The histogram's bucket arithmetic, inlined in the sessions' reply callbacks (see Histogram.fast_state).
_, _LINEAR, _P, _P1, _TOP = Histogram().fast_state()


class _WorkerLike(Protocol):
    """What a session reads and updates on its worker (``worker._Worker``)."""

    plan: BenchPlan
    where: str
    size: int
    pipeline: int
    msg: bytes
    burst: bytes
    tagged: bool
    seq: int
    hist: Histogram
    left: int | None
    nbytes: int
    measuring: bool
    sending: bool
    rbuf: memoryview

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def error(self, kind: str, message: str) -> None: ...

    def timed_out(self, final: bool) -> None: ...

    def counted(self, k: int) -> None: ...

    def next_tag(self) -> bytes: ...


class _Session:
    """What the worker needs from a connection: time out old requests, abort."""

    __slots__ = ()
    expired: bool
    closed: asyncio.Future[BaseException | None]
    w: _WorkerLike

    def expire_before(self, limit_ns: int, final: bool) -> None:
        pass

    def _expire(self, final: bool) -> None:
        """The request in flight timed out: count it, and drop the connection (a late reply is nobody's)."""
        self.w.timed_out(final)
        self.abort()

    def pause(self) -> None:
        """The window is over: stop reading (no more replies to count)."""

    def window_start(self) -> None:
        """The measured window starts (the upload marks what its peer has acknowledged so far)."""

    def window_end(self) -> int:
        """The measured window ended: bytes the peer acknowledged in it, for an upload that counts them."""
        return 0

    def moved(self) -> int:
        """Bytes the peer acknowledged so far in the window, for an upload that counts them (not in nbytes yet)."""
        return 0

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        pass


def _settle(closed: asyncio.Future[BaseException | None], exc: BaseException | None) -> None:
    if not closed.done():
        closed.set_result(exc)


def _pause_reading(transport: asyncio.BaseTransport | None) -> None:
    if transport is not None and not transport.is_closing():
        with contextlib.suppress(Exception):  # a transport closing under us: nothing left to read anyway
            cast(asyncio.ReadTransport, transport).pause_reading()


class _TransportSession(_Session):
    """A stream connection driven by an asyncio protocol: its transport closes and aborts it."""

    __slots__ = ()
    transport: asyncio.BaseTransport | None

    def connection_lost(self, exc: Exception | None) -> None:
        _settle(self.closed, exc)

    def first_write(self, send: Callable[[], None]) -> None:
        """Call ``send`` (the connection's first write) one loop iteration after ``connection_made``.

        uvloop's libuv batches the epoll change that starts reading a new transport until its next poll. A write
        that fails at once (a peer that reset) closes the descriptor before the batch goes out, and libuv then
        aborts the whole process (SIGABRT, exit 134, nothing said). One iteration later the change is made."""

        def go() -> None:
            t = self.transport
            if t is not None and not t.is_closing() and self.w.sending:
                send()

        self.w.loop.call_soon(go)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()
        _settle(self.closed, None)


class _RttStream(_TransportSession, asyncio.Protocol):
    """Send ``pipeline`` messages; each ``size`` bytes that come back complete the oldest one.

    Used for ``--pipeline`` > 1 and for -n runs. Every reply that one read brings shares one timestamp;
    the next requests go out before the bookkeeping."""

    __slots__ = ("closed", "counts", "expired", "hist", "msg", "pending", "sent", "size", "transport", "w", "write")

    def __init__(self, w: _WorkerLike, closed: asyncio.Future[BaseException | None]) -> None:
        self.w = w
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.write: Callable[[bytes], None] | None = None
        self.sent: deque[int] = deque()
        self.pending = 0
        self.size = w.size
        self.msg = w.msg
        self.hist = w.hist
        self.counts = w.hist.counts
        self.expired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        self.write = t.write
        w = self.w
        if not w.sending:
            _pause_reading(t)
            return
        self.first_write(self._start)

    def _start(self) -> None:
        self.sent.extend([perf_counter_ns()] * self.w.pipeline)
        self.write(self.w.burst)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        n = self.pending + len(data)
        size = self.size
        if n < size:
            self.pending = n
            return
        k, self.pending = divmod(n, size)
        now = perf_counter_ns()
        sent = self.sent
        if k > len(sent):
            k = len(sent)  # bytes nobody asked for (not an echo server): not replies
            if not k:
                return
        w = self.w
        if w.sending:  # the next requests first: the server works while we count
            if k == 1:
                sent.append(now)
                self.write(self.msg)  # type: ignore[misc]
            else:
                sent.extend([now] * k)
                self.write(self.msg * k)  # type: ignore[misc]
        counts, h = self.counts, self.hist
        total, high, low = 0, h.max, h.low
        popleft = sent.popleft
        for _ in range(k):
            v = now - popleft()
            if v < _LINEAR:
                counts[v] += 1
            else:
                s = v.bit_length() - _P1
                i = (s << _P) + (v >> s)
                counts[i if i < _TOP else _TOP] += 1
            total += v
            if v > high:
                high = v
            if v < low:
                low = v
        h.total += total
        h.max = high
        h.low = low
        if w.left is not None:
            w.counted(k)

    def eof_received(self) -> bool | None:
        return None

    def expire_before(self, limit_ns: int, final: bool) -> None:
        sent = self.sent
        if sent and sent[0] < limit_ns and not self.expired:
            self.expired = True
            self._expire(final)

    def pause(self) -> None:
        _pause_reading(self.transport)


class _RttOne(_TransportSession, asyncio.Protocol):
    """One request in flight, measured for -d seconds: the common case and the hot path.

    Per reply: one clock read, the next request written, the latency counted in the histogram's bucket
    with integer operations inlined here (no call, no allocation beyond the ints). No phase test: the
    window's start empties the histogram, its end stops reading (:meth:`pause`)."""

    __slots__ = ("closed", "counts", "expired", "hist", "msg", "pending", "size", "t0", "transport", "w", "write")

    def __init__(self, w: _WorkerLike, closed: asyncio.Future[BaseException | None]) -> None:
        self.w = w
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.write: Callable[[bytes], None] | None = None
        self.pending = 0
        self.size = w.size
        self.msg = w.msg
        self.hist = w.hist
        self.counts = w.hist.counts
        self.t0 = 0  # send time of the request in flight; 0: none
        self.expired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        self.write = t.write
        if not self.w.sending:
            _pause_reading(t)
            return
        self.first_write(self._start)

    def _start(self) -> None:
        self.t0 = perf_counter_ns()
        self.write(self.msg)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        n = self.pending + len(data)
        if n < self.size:
            self.pending = n
            return
        now = perf_counter_ns()
        self.pending = 0  # with one request in flight, more than its reply is nobody's reply
        v = now - self.t0
        self.t0 = now
        self.write(self.msg)  # type: ignore[misc]
        if v < _LINEAR:
            self.counts[v] += 1
        else:
            s = v.bit_length() - _P1
            i = (s << _P) + (v >> s)
            self.counts[i if i < _TOP else _TOP] += 1
        h = self.hist
        h.total += v
        if v > h.max:
            h.max = v
        if v < h.low:
            h.low = v

    def eof_received(self) -> bool | None:
        return None

    def expire_before(self, limit_ns: int, final: bool) -> None:
        if self.t0 and self.t0 < limit_ns and not self.expired:
            self.expired = True
            self._expire(final)

    def pause(self) -> None:
        _pause_reading(self.transport)


def _acked(sock: socket.socket | None) -> int | None:
    """TCP's count of the bytes the peer acknowledged (``tcpi_bytes_acked``), None without one."""
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0]) if len(info) >= _TCP_INFO_LEN else None


# struct tcp_info (linux/tcp.h): u64 tcpi_bytes_acked follows 8 u8 fields, 24 u32 and two u64 pacing rates.
_BYTES_ACKED_AT = 120
_BYTES_ACKED = struct.Struct("=Q")
_TCP_INFO_LEN = _BYTES_ACKED_AT + 8


class _Upload(_TransportSession, asyncio.Protocol):
    """Write ``size``-byte chunks while the transport is not paused (a discard server reads them).

    Over TCP what counts is what the peer acknowledged (``tcpi_bytes_acked``), not what the kernel took from
    us: a peer that resets every connection moved nothing, however much was buffered for it. Elsewhere (Unix
    sockets) what the socket took is counted."""

    __slots__ = ("base", "closed", "expired", "last", "paused", "tcp", "transport", "w")

    def __init__(self, w: _WorkerLike, closed: asyncio.Future[BaseException | None]) -> None:
        self.w = w
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.expired = False
        self.tcp: socket.socket | None = None  # where TCP_INFO is read, if it can be
        self.base: int | None = None  # acknowledged when the window started (or when this connection did)
        self.last = 0  # acknowledged, last read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        sock = t.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            acked = _acked(sock)
            if acked is not None:
                self.tcp, self.last = sock, acked
                if self.w.measuring:
                    self.base = acked
        # No queue of our own, as iperf3: one write of --size bytes whenever the socket takes it.
        t.set_write_buffer_limits(high=0)
        self.first_write(self._fill)

    def _fill(self) -> None:
        w, t = self.w, self.transport
        chunk = w.msg
        if self.tcp is not None and self.base is not None:
            self.last = _acked(self.tcp) or self.last
        for _ in range(16):
            if self.paused or not w.sending or t is None or t.is_closing():
                return
            t.write(chunk)
            if w.measuring and self.tcp is None:
                w.nbytes += len(chunk)
        w.loop.call_soon(self._fill)

    def window_start(self) -> None:
        if self.tcp is not None:
            self.base = self.last = _acked(self.tcp) or self.last

    def moved(self) -> int:
        if self.tcp is None or self.base is None:
            return 0
        self.last = _acked(self.tcp) or self.last
        return self.last - self.base

    def window_end(self) -> int:
        if self.tcp is None or self.base is None:
            return 0
        self.last = _acked(self.tcp) or self.last
        moved, self.base = self.last - self.base, None
        return moved

    def connection_lost(self, exc: Exception | None) -> None:
        if self.w.measuring:  # cut off within the window: what was acknowledged by the last look counts
            self.w.nbytes += self.window_end()
        self.base = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._fill()

    def data_received(self, data: bytes) -> None:
        pass  # an echo server answers: read and drop

    def eof_received(self) -> bool | None:
        return None


class _Download(_TransportSession, asyncio.BufferedProtocol):
    """Read (into one buffer per worker) and count what a chargen server sends."""

    __slots__ = ("closed", "expired", "transport", "w")

    def __init__(self, w: _WorkerLike, closed: asyncio.Future[BaseException | None]) -> None:
        self.w = w
        self.closed = closed
        self.transport: asyncio.BaseTransport | None = None
        self.expired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.w.rbuf

    def buffer_updated(self, nbytes: int) -> None:
        w = self.w
        if w.measuring:
            w.nbytes += nbytes

    def eof_received(self) -> bool | None:
        return None


def _session_class(plan: BenchPlan) -> type[_RttOne] | type[_RttStream] | type[_Upload] | type[_Download]:
    if plan.mode == "throughput":
        return _Download if plan.reverse else _Upload
    return _RttOne if plan.pipeline == 1 and plan.requests is None else _RttStream
