"""``bench``: a load generator for echo, discard and chargen servers over every socket kind.

Design:

* A worker is one process with one asyncio loop (uvloop when installed). Its connections are
  Protocols driven by callbacks — no task and no coroutine per request — so the client costs about
  what a minimal hand-written uvloop client costs. ``--workers N`` forks N workers (each gets its
  share of ``-c``); the parent starts them together, then adds up their figures
  (:func:`sockcat.core.stats.merge`): counts and histograms add.
* Time line of a run: connect every connection (not measured) → warm-up (traffic, not counted) →
  the window of ``-d`` seconds (or until ``-n`` requests) → close. Only the window is measured; the
  warm-up comes on top of ``-d``.
* Latency goes into a log-bucketed histogram (:class:`sockcat.core.stats.Histogram`): fixed memory, no
  sample list, exact merge across workers.
* Nothing can hang: every connect is bounded by ``-w``, every request by ``--timeout`` (a lost
  datagram or an unanswered stream request is an error, and a stream that timed out is reconnected),
  and the run by its window. A connection the server closes or resets is an error, then reconnected
  with a growing back-off. If the very first connection fails, the run stops at once with that error.
* Datagram kinds carry an 8-byte sequence number at the head of each request (when ``size`` >= 8),
  so a late echo never completes the wrong request. unixpacket has no asyncio transport: its
  sessions are small coroutines on ``sock_recv``/``sock_sendall`` (records stay whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any, cast

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, UsageError, describe, network_error, tls_reason
from sockcat.core.stats import BenchResult, Histogram, WorkerResult, merge
from sockcat.net.options import SockOpt
from sockcat.serving.process import new_runner
from sockcat.streams import aio as _aio
from sockcat.streams import sync as _s

# The histogram's bucket arithmetic, inlined in the sessions' reply callbacks (see Histogram.fast_state).
_, _LINEAR, _P, _P1, _TOP = Histogram().fast_state()

MODES = ("rtt", "throughput", "connect")
DEFAULT_CONNECTIONS = 16
DEFAULT_SIZE = {"rtt": 64, "connect": 64, "throughput": 128 * 1024}
DEFAULT_DATAGRAM_THROUGHPUT_SIZE = 1400
DEFAULT_DURATION = 10.0
DEFAULT_WARMUP = 0.5
DEFAULT_STREAM_TIMEOUT = 2.0
DEFAULT_DATAGRAM_TIMEOUT = 1.0
DEFAULT_CONNECT_TIMEOUT = 5.0
MAX_UDP_PAYLOAD = 65507
RECV_SIZE = 256 * 1024
PROGRESS_INTERVAL = 0.25
CONNECT_CONCURRENCY = 256  # connects in flight at once while setting up (a SYN flood helps nobody)

Progress = Callable[[str, float, int, int], None]
"""``progress(phase, seconds_left_in_phase, requests, bytes)``; phase is connecting, warm-up or measuring."""


@dataclass(frozen=True)
class BenchPlan:
    """Everything a worker needs to know (inherited by forked workers, never pickled)."""

    address: Address
    mode: str = "rtt"
    connections: int = DEFAULT_CONNECTIONS
    size: int = 64
    duration: float | None = DEFAULT_DURATION
    requests: int | None = None
    pipeline: int = 1
    reverse: bool = False
    warmup: float = DEFAULT_WARMUP
    timeout: float = DEFAULT_STREAM_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    workers: int = 1
    sockopts: tuple[SockOpt, ...] = ()
    source: Address | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    sni: str | None = None

    @property
    def is_packet(self) -> bool:
        return self.address.type == socket.SOCK_SEQPACKET


def make_plan(
    address: Address | str,
    *,
    mode: str = "rtt",
    connections: int | None = None,
    size: int | None = None,
    duration: float | None = None,
    requests: int | None = None,
    pipeline: int = 1,
    reverse: bool = False,
    warmup: float = DEFAULT_WARMUP,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    workers: int = 1,
    sockopts: _s.SockOpts = None,
    source: Address | str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    sni: str | None = None,
) -> BenchPlan:
    """Check the arguments (UsageError for anything wrong) and fill in the defaults."""
    addr = Address.parse(address)
    if addr.is_stdio:
        raise UsageError("bench needs a socket address, not stdio:")
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if reverse and mode != "throughput":
        raise UsageError("--reverse is for --mode throughput")
    if reverse and addr.is_datagram:
        raise UsageError(
            "--reverse needs a stream address: a datagram chargen answers one datagram per request (use --mode rtt)"
        )
    if connections is None:
        connections = 1 if mode == "throughput" else DEFAULT_CONNECTIONS
    if connections < 1:
        raise UsageError("connections must be at least 1")
    if size is None:
        size = DEFAULT_SIZE[mode]
        if mode == "throughput" and addr.is_datagram:
            size = DEFAULT_DATAGRAM_THROUGHPUT_SIZE
    if size < 0 or (size == 0 and mode != "connect"):
        raise UsageError(f"--size must be at least 1{' (0 only in connect mode)' if mode != 'connect' else ''}")
    if addr.is_ip and addr.is_datagram and size > MAX_UDP_PAYLOAD:
        raise UsageError(f"--size {size} is more than a UDP datagram holds ({MAX_UDP_PAYLOAD} bytes)")
    if requests is not None:
        if mode == "throughput":
            raise UsageError("-n/--requests is for rtt and connect modes; throughput runs for -d seconds")
        if requests < 1:
            raise UsageError("-n/--requests must be at least 1")
    elif duration is None:
        duration = DEFAULT_DURATION
    if duration is not None and not duration > 0:
        raise UsageError("-d/--duration must be more than 0 seconds")
    if pipeline < 1:
        raise UsageError("--pipeline must be at least 1")
    if warmup < 0:
        raise UsageError("--warmup must be 0 or more seconds")
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if timeout is None:
        timeout = DEFAULT_DATAGRAM_TIMEOUT if addr.is_datagram else DEFAULT_STREAM_TIMEOUT
    if not timeout > 0:
        raise UsageError("--timeout must be more than 0 seconds")
    src = Address.parse(source) if source is not None else None
    ctx = ssl_context
    if addr.is_tls and ctx is None:
        from sockcat.net.tls import client_context

        ctx = client_context()
    return BenchPlan(
        address=addr,
        mode=mode,
        connections=connections,
        size=size,
        duration=duration,
        requests=requests,
        pipeline=pipeline,
        reverse=reverse,
        warmup=warmup,
        timeout=timeout,
        connect_timeout=connect_timeout if connect_timeout is not None else DEFAULT_CONNECT_TIMEOUT,
        workers=min(workers, connections),
        sockopts=_s._opts(sockopts),
        source=src,
        ssl_context=ctx,
        sni=sni,
    )


# --- what went wrong, in a word and a sentence -------------------------------------------------------------


def _classify(exc: BaseException | None, where: str, connecting: bool) -> tuple[str, str]:
    if exc is None or isinstance(exc, EOFError):
        return "closed", f"{where}: connection closed by peer"
    if isinstance(exc, TimeoutError) and not isinstance(exc, NetworkError):
        return ("connect-timeout", f"connect {where}: timed out") if connecting else ("timeout", f"{where}: timed out")
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS handshake with {where}: {tls_reason(exc)}"
    if isinstance(exc, ConnectionRefusedError):
        kind = "refused"
    elif isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        kind = "reset"
    elif isinstance(exc, TimeoutError):
        kind = "connect-timeout" if connecting else "timeout"
    else:
        kind = "error"
    if isinstance(exc, NetworkError):
        return kind, str(exc)
    return kind, f"{'connect ' if connecting else ''}{where}: {describe(exc)}"


# --- a worker's shared state ---------------------------------------------------------------------------------


class _Worker:
    """One process's share of the run: its connections, counters and histogram."""

    def __init__(self, plan: BenchPlan, connections: int, limit: int | None) -> None:
        self.plan = plan
        self.n = connections
        self.limit = limit
        self.where = str(plan.address)
        self.size = plan.size
        self.pipeline = plan.pipeline
        self.timeout = plan.timeout
        self.timeout_ns = int(plan.timeout * 1e9)
        self.msg = b"x" * plan.size
        self.burst = self.msg * plan.pipeline
        self.tagged = plan.address.is_datagram and plan.size >= 8
        self.filler = b"x" * max(0, plan.size - 8)
        self.seq = 0
        self.result = WorkerResult(connections=connections)
        # Every reply is recorded here, warm-up included (no phase test per reply): the window's start
        # empties it in place, its end copies it into the result.
        self.hist = Histogram()
        self.left: int | None = None  # -n: requests still to answer in the window
        self.nbytes = 0
        self.measuring = False
        self.sending = True
        self.window_start_ns = 0
        self.t0 = 0.0
        self.cpu0 = 0.0
        self.sessions: set[_Session] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.attempts: dict[int, int] = {}  # connect mode: slot -> start of the attempt under way
        self.target = plan.address  # pinned to the first address that answered
        self.sni = plan.sni if plan.sni is not None else (plan.address.host or None)
        self.rbuf = memoryview(bytearray(RECV_SIZE))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Event | None = None
        self._ready_left = 0
        self._ready: asyncio.Event | None = None
        self._setup_sem: asyncio.Semaphore | None = None
        self.connected = 0

    @property
    def requests(self) -> int:
        """Requests answered in the window (so far): every one of them is a histogram sample."""
        if self.measuring:
            return self.hist.recount()
        return self.result.histogram.count

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    # --- bookkeeping called from the connections ---------------------------------------------------------
    def error(self, kind: str, message: str) -> None:
        if self.measuring:
            self.result.add_error(kind, message)
        elif self.result.first_error is None:
            self.result.first_error = message

    def timed_out(self, final: bool) -> None:
        """A request went unanswered: past ``--timeout``, or through the whole window (``final``)."""
        how = _window(self.plan) if final else f"{self.timeout:g} s"
        self.error("timeout", f"{self.where}: no reply within {how}")

    def begin_window(self) -> None:
        """Start the measured window: forget the warm-up's samples, start the clocks."""
        self.hist.reset()
        self.left = self.limit
        self.window_start_ns = perf_counter_ns()
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.measuring = True

    def finish(self) -> None:
        """End the measured window now (timer, or -n reached); idempotent. Connections stop reading at once."""
        if self.measuring:
            self.measuring = False
            self.result.seconds = time.perf_counter() - self.t0
            self.result.cpu_seconds = time.process_time() - self.cpu0
            self.hist.recount()
            self.result.histogram = self.hist.copy()
        self.sending = False
        for session in self.sessions:
            session.pause()
        if self._finished is not None:
            self._finished.set()

    def counted(self, k: int) -> None:
        """``k`` more requests answered (-n runs end when the count is reached)."""
        left = self.left
        if left is not None:
            left -= k
            self.left = left
            if left <= 0:
                self.finish()

    def next_tag(self) -> bytes:
        self.seq += 1
        return self.seq.to_bytes(8, "big") + self.filler

    # --- set-up ------------------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Open every connection (the first alone, so a dead server fails fast and names are pinned)."""
        self._loop = asyncio.get_running_loop()
        self._finished = asyncio.Event()
        self._ready = asyncio.Event()
        self._setup_sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        if self.plan.mode == "connect":
            await self._probe()
            return
        self._ready_left = 1
        first_failure = self._start_slot()
        await self._ready.wait()
        if self.connected == 0:
            exc = first_failure.exc
            if isinstance(exc, NetworkError):
                raise exc
            if isinstance(exc, OSError):
                raise network_error(exc, f"connect {self.where}") from exc
            raise NetworkError(errno.EIO, _classify(exc, self.where, True)[1]) from exc
        self._ready = asyncio.Event()
        self._ready_left = self.n - 1
        if self._ready_left == 0:
            self._ready.set()
        for _ in range(self.n - 1):
            self._start_slot()
        await self._ready.wait()

    def _slot_ready(self) -> None:
        self._ready_left -= 1
        if self._ready_left <= 0 and self._ready is not None:
            self._ready.set()

    def _start_slot(self) -> _FirstFailure:
        first = _FirstFailure()
        task = asyncio.ensure_future(self._slot(first))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return first

    async def _probe(self) -> None:
        try:
            async with asyncio.timeout(self.plan.connect_timeout + self.timeout):
                await self._one_connection()
        except (OSError, ssl.SSLError, EOFError) as exc:
            if isinstance(exc, NetworkError):
                raise
            raise NetworkError(getattr(exc, "errno", None) or errno.EIO, _classify(exc, self.where, True)[1]) from exc
        self.connected = 1

    async def _connect(self) -> socket.socket:
        """A connected non-blocking socket to the target (stream or datagram), pinned after the first."""
        plan = self.plan
        if plan.address.is_datagram:
            dg = _s.connect_datagram(self.target, source=plan.source, sockopts=plan.sockopts)
            sock = dg.socket
        else:
            sock = await _aio.connect_socket(
                self.target, timeout=plan.connect_timeout, source=plan.source, sockopts=plan.sockopts
            )
        sock.setblocking(False)
        if self.target is plan.address and plan.address.is_ip and plan.address.family == socket.AF_UNSPEC:
            with contextlib.suppress(OSError):
                peer = _s.to_address(plan.address.scheme, sock.getpeername())
                self.target = Address(
                    plan.address.scheme, peer.host, peer.port, peer.family, plan.address.type, plan.address.path
                )
        return sock

    # --- persistent connections (rtt, throughput) -------------------------------------------------------------
    async def _open(self, closed: asyncio.Future[BaseException | None]) -> _Session:
        plan = self.plan
        sem = self._setup_sem
        assert sem is not None
        async with sem, asyncio.timeout(plan.connect_timeout):
            sock = await self._connect()
            try:
                if plan.address.is_datagram:
                    return _DatagramSession(self, sock, closed)
                if plan.is_packet:
                    return _PacketSession(self, sock, closed)
                cls = _session_class(plan)

                def factory() -> asyncio.BaseProtocol:
                    return cls(self, closed)

                if plan.address.is_unix:
                    _t, proto = await self.loop.create_unix_connection(factory, sock=sock)
                elif plan.address.is_tls:
                    _t, proto = await self.loop.create_connection(
                        factory,
                        sock=sock,
                        ssl=plan.ssl_context,
                        server_hostname=self.sni,
                        ssl_handshake_timeout=plan.connect_timeout,
                    )
                else:
                    _t, proto = await self.loop.create_connection(factory, sock=sock)
                return cast(_Session, proto)
            except BaseException:
                sock.close()
                raise

    async def _slot(self, first: _FirstFailure) -> None:
        backoff = 0.01
        is_first = True
        while self.sending:
            closed: asyncio.Future[BaseException | None] = self.loop.create_future()
            try:
                session = await self._open(closed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.sending:
                    break
                kind, message = _classify(exc, self.where, True)
                self.error(kind, message)
                if is_first:
                    is_first = False
                    first.exc = exc
                    self._slot_ready()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            self.connected += 1
            if is_first:
                is_first = False
                self._slot_ready()
            self.sessions.add(session)
            started = self.loop.time()
            try:
                lost = await closed
            finally:
                self.sessions.discard(session)
                session.abort()
            if not self.sending:
                break
            if not session.expired:
                self.error(*_classify(lost, self.where, False))
            if self.loop.time() - started > 1.0:
                backoff = 0.01
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    # --- connect mode -------------------------------------------------------------------------------------------
    async def _one_connection(self) -> None:
        """Open, one round trip (``size`` bytes there and back), close."""
        plan, loop, size = self.plan, self.loop, self.size
        if plan.address.is_tls:
            stream = await _aio.connect(
                self.target,
                connect_timeout=plan.connect_timeout,
                source=plan.source,
                sockopts=plan.sockopts,
                ssl_context=plan.ssl_context,
                sni=self.sni,
            )
            try:
                if size:
                    async with asyncio.timeout(self.timeout):
                        await stream.sendall(self.msg)
                        got = 0
                        while got < size:
                            data = await stream.recv(RECV_SIZE)
                            if not data:
                                raise EOFError
                            got += len(data)
            finally:
                stream.close()
            return
        sock = await self._connect()
        try:
            if size:
                async with asyncio.timeout(self.timeout):
                    await loop.sock_sendall(sock, self.msg)
                    if plan.address.is_datagram or plan.is_packet:
                        await loop.sock_recv(sock, RECV_SIZE)  # one message is the reply
                    else:
                        got = 0
                        while got < size:
                            data = await loop.sock_recv(sock, RECV_SIZE)
                            if not data:
                                raise EOFError
                            got += len(data)
        finally:
            sock.close()

    async def _connect_slot(self, index: int) -> None:
        backoff = 0.01
        while self.sending:
            start = perf_counter_ns()
            self.attempts[index] = start
            try:
                await self._one_connection()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.attempts.pop(index, None)
                if not self.sending:
                    break
                self.error(*_classify(exc, self.where, not isinstance(exc, EOFError | TimeoutError)))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            self.attempts.pop(index, None)
            backoff = 0.01
            if self.measuring:
                self.hist.record(perf_counter_ns() - start)
                self.counted(1)

    # --- the run ------------------------------------------------------------------------------------------------
    async def run(self, delay: float = 0.0, progress: Progress | None = None) -> WorkerResult:
        """Warm up, measure, close; ``delay`` seconds from now is the common start of every worker."""
        assert self._finished is not None
        plan = self.plan
        if delay > 0:
            await asyncio.sleep(delay)
        if plan.mode == "connect":
            for i in range(self.n):
                task = asyncio.ensure_future(self._connect_slot(i))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        helpers = [asyncio.ensure_future(self._sweep())]
        if progress is not None:
            helpers.append(asyncio.ensure_future(self._report(progress)))
        try:
            if plan.warmup > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(plan.warmup):
                        await self._finished.wait()
            if not self._finished.is_set():
                self.begin_window()
                if plan.duration is not None:
                    self.loop.call_later(plan.duration, self.finish)
                await self._finished.wait()
            self._count_unanswered()
        finally:
            self.finish()
            for h in helpers:
                h.cancel()
            await self.close()
        # Throughput counts size-byte messages moved, so that rate and requests mean something there too;
        # rtt and connect count the payload of the requests answered.
        if plan.mode == "throughput":
            self.result.bytes = self.nbytes
            self.result.requests = self.nbytes // self.size
        else:
            self.result.requests = self.result.histogram.count
            self.result.bytes = self.result.requests * self.size
        return self.result

    def _count_unanswered(self) -> None:
        """Requests (or connect attempts) outstanding for the whole window failed within it."""
        if self.window_start_ns == 0:
            return
        self.measuring = True  # so that these land in the window's error counts
        try:
            self._expire(self.window_start_ns, final=True)
            for _index, start in list(self.attempts.items()):
                if start < self.window_start_ns:
                    self.error("timeout", f"{self.where}: no answer within {_window(self.plan)}")
        finally:
            self.measuring = False

    def _expire(self, limit_ns: int, final: bool = False) -> None:
        for session in list(self.sessions):
            session.expire_before(limit_ns, final)

    async def _sweep(self) -> None:
        """Time out unanswered requests; end a -n run that has stopped making progress."""
        interval = max(0.02, min(self.timeout / 4, 0.25))
        stall_limit = max(10.0, 5 * self.timeout)
        last_count, last_change = self.requests, time.monotonic()
        while True:
            await asyncio.sleep(interval)
            self._expire(perf_counter_ns() - self.timeout_ns)
            now = time.monotonic()
            if self.requests != last_count:
                last_count, last_change = self.requests, now
            elif self.measuring and self.plan.duration is None and now - last_change > stall_limit:
                self.error("stalled", f"{self.where}: no progress for {stall_limit:g} s")
                self.finish()

    async def _report(self, progress: Progress) -> None:
        plan = self.plan
        start = time.monotonic()
        while True:
            now = time.monotonic()
            if not self.measuring:
                progress("warm-up", max(0.0, plan.warmup - (now - start)), 0, 0)
            else:
                left = 0.0 if plan.duration is None else max(0.0, plan.duration - (time.perf_counter() - self.t0))
                progress("measuring", left, self.requests, self.nbytes or self.requests * self.size)
            await asyncio.sleep(PROGRESS_INTERVAL)

    async def close(self) -> None:
        """Close every connection politely (FIN, TLS close_notify), then abort what is still open."""
        self.sending = False
        sessions = list(self.sessions)
        for session in sessions:
            session.close()
        pending = [s.closed for s in sessions if not s.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=0.25)
        for session in sessions:
            session.abort()
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)


class _FirstFailure:
    __slots__ = ("exc",)

    def __init__(self) -> None:
        self.exc: BaseException | None = None


# --- sessions: one per persistent connection ---------------------------------------------------------------


class _Session:
    """What the worker needs from a connection: time out old requests, abort."""

    __slots__ = ()
    expired: bool
    closed: asyncio.Future[BaseException | None]
    w: _Worker

    def expire_before(self, limit_ns: int, final: bool) -> None:
        pass

    def _expire(self, final: bool) -> None:
        """The request in flight timed out: count it, and drop the connection (a late reply is nobody's)."""
        self.w.timed_out(final)
        self.abort()

    def pause(self) -> None:
        """The window is over: stop reading (no more replies to count)."""

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        pass


def _window(plan: BenchPlan) -> str:
    """The measuring window in words, for error messages (a -n run has no fixed length)."""
    return f"the {plan.duration:g} s window" if plan.duration is not None else "the run"


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

    def __init__(self, w: _Worker, closed: asyncio.Future[BaseException | None]) -> None:
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
        now = perf_counter_ns()
        self.sent.extend([now] * w.pipeline)
        t.write(w.burst)

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

    def __init__(self, w: _Worker, closed: asyncio.Future[BaseException | None]) -> None:
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
        self.t0 = perf_counter_ns()
        t.write(self.msg)

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


class _Upload(_TransportSession, asyncio.Protocol):
    """Write ``size``-byte chunks while the transport is not paused (a discard server reads them)."""

    __slots__ = ("closed", "expired", "paused", "transport", "w")

    def __init__(self, w: _Worker, closed: asyncio.Future[BaseException | None]) -> None:
        self.w = w
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.expired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        # No queue of our own, as iperf3: one write of --size bytes whenever the socket takes it.
        t.set_write_buffer_limits(high=0)
        self._fill()

    def _fill(self) -> None:
        w, t = self.w, self.transport
        chunk = w.msg
        for _ in range(16):
            if self.paused or not w.sending or t is None or t.is_closing():
                return
            t.write(chunk)
            if w.measuring:
                w.nbytes += len(chunk)
        w.loop.call_soon(self._fill)

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

    def __init__(self, w: _Worker, closed: asyncio.Future[BaseException | None]) -> None:
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


class _DatagramSession(_Session):
    """A connected datagram socket; rtt: tagged requests, throughput: send as fast as the socket takes."""

    __slots__ = ("closed", "expired", "fd", "out", "sock", "w", "writing")

    def __init__(self, w: _Worker, sock: socket.socket, closed: asyncio.Future[BaseException | None]) -> None:
        self.w = w
        self.sock = sock
        self.closed = closed
        self.expired = False
        self.fd = sock.fileno()
        self.out: dict[int, int] = {}  # tag (or a running number) -> send time, oldest first
        self.writing = False
        if w.plan.mode == "throughput":
            self._pump()
        else:
            w.loop.add_reader(self.fd, self._readable)
            for _ in range(w.pipeline):
                self._send_one()

    def _send_one(self) -> None:
        w = self.w
        if w.tagged:
            data = w.next_tag()
            key = w.seq
        else:
            data = w.msg
            w.seq += 1
            key = w.seq
        start = perf_counter_ns()  # before send: the reply may be back before send() returns
        try:
            self.sock.send(data)
        except OSError as exc:
            if isinstance(exc, BlockingIOError):
                w.error("send", f"{w.where}: send buffer full")
            else:
                w.error(*_classify(exc, w.where, False))
            w.loop.call_later(0.01, self._resend)
            return
        self.out[key] = start

    def _resend(self) -> None:
        if self.w.sending and self.sock.fileno() != -1:
            self._send_one()

    def _readable(self) -> None:
        w = self.w
        out = self.out
        for _ in range(64):
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable (refused) and friends: that request is lost
                if out:
                    del out[next(iter(out))]
                w.error(*_classify(exc, w.where, False))
                w.loop.call_later(0.01, self._resend)
                continue
            now = perf_counter_ns()
            start = None
            if w.tagged and len(data) >= 8:
                start = out.pop(int.from_bytes(data[:8], "big"), None)
                if start is None and len(data) == w.size:
                    continue  # a late echo of a request already counted as lost
            if start is None:
                if not out:
                    continue
                start = out.pop(next(iter(out)))  # not an echo (chargen, daytime): answers the oldest
            if w.measuring:
                w.hist.record(now - start)
                w.counted(1)
            if w.sending:
                self._send_one()

    def _pump(self) -> None:
        w = self.w
        chunk = w.msg
        for _ in range(64):
            if not w.sending or self.sock.fileno() == -1:
                return
            try:
                n = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                if not self.writing:
                    self.writing = True
                    w.loop.add_writer(self.fd, self._writable)
                return
            except OSError as exc:
                w.error(*_classify(exc, w.where, False))
                w.loop.call_later(0.01, self._pump)
                return
            if w.measuring:
                w.nbytes += n
        w.loop.call_soon(self._pump)

    def _writable(self) -> None:
        self.writing = False
        with contextlib.suppress(ValueError, OSError):
            self.w.loop.remove_writer(self.fd)
        self._pump()

    def expire_before(self, limit_ns: int, final: bool) -> None:
        out, w = self.out, self.w
        while out:
            key = next(iter(out))
            if out[key] >= limit_ns:
                break
            del out[key]
            w.timed_out(final)
            if w.sending and not final:
                self._send_one()

    def abort(self) -> None:
        if self.sock.fileno() != -1:
            with contextlib.suppress(ValueError, OSError):
                self.w.loop.remove_reader(self.fd)
            with contextlib.suppress(ValueError, OSError):
                self.w.loop.remove_writer(self.fd)
            self.sock.close()
        _settle(self.closed, None)


class _PacketSession(_Session):
    """unixpacket: one record per request and per reply, on a small coroutine."""

    __slots__ = ("closed", "expired", "sent", "sock", "task", "w")

    def __init__(self, w: _Worker, sock: socket.socket, closed: asyncio.Future[BaseException | None]) -> None:
        self.w = w
        self.sock = sock
        self.closed = closed
        self.expired = False
        self.sent: deque[int] = deque()
        self.task = asyncio.ensure_future(self._main())

    async def _main(self) -> None:
        exc: BaseException | None = None
        try:
            await self._run()
        except asyncio.CancelledError:
            pass
        except (OSError, EOFError) as e:
            exc = e if not isinstance(e, EOFError) else None
        _settle(self.closed, exc)

    async def _run(self) -> None:
        w, loop, sock = self.w, self.w.loop, self.sock
        if w.plan.mode == "throughput":
            if w.plan.reverse:
                while data := await loop.sock_recv(sock, RECV_SIZE):
                    if w.measuring:
                        w.nbytes += len(data)
                raise EOFError
            while w.sending:
                await loop.sock_sendall(sock, w.msg)
                if w.measuring:
                    w.nbytes += w.size
            return
        for _ in range(w.pipeline):
            self.sent.append(perf_counter_ns())
            await loop.sock_sendall(sock, w.msg)
        while True:
            data = await loop.sock_recv(sock, RECV_SIZE)
            if not data:
                raise EOFError
            now = perf_counter_ns()
            if not self.sent:
                continue
            start = self.sent.popleft()
            if w.measuring:
                w.hist.record(now - start)
                w.counted(1)
            if w.sending:
                self.sent.append(now)
                await loop.sock_sendall(sock, w.msg)

    def expire_before(self, limit_ns: int, final: bool) -> None:
        if self.sent and self.sent[0] < limit_ns and not self.expired:
            self.expired = True
            self._expire(final)

    def abort(self) -> None:
        self.task.cancel()
        self.sock.close()
        _settle(self.closed, None)


# --- running: in this process, or in forked workers ----------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _result(plan: BenchPlan, parts: list[WorkerResult]) -> BenchResult:
    return merge(
        parts,
        mode=plan.mode,
        address=str(plan.address),
        size=plan.size,
        workers=plan.workers,
        pipeline=plan.pipeline,
        warmup=plan.warmup,
        reverse=plan.reverse,
    )


async def bench_async(plan_or_address: BenchPlan | Address | str, **kwargs: Any) -> BenchResult:
    """The asyncio form of :func:`bench` (same arguments). With ``workers`` > 1 the workers are forked
    from a helper thread while this loop keeps running."""
    progress: Progress | None = kwargs.pop("progress", None)
    plan = plan_or_address if isinstance(plan_or_address, BenchPlan) else make_plan(plan_or_address, **kwargs)
    if plan.workers > 1:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: _run_forked(plan, progress))
    worker = _Worker(plan, plan.connections, plan.requests)
    try:
        await worker.prepare()
    except BaseException:
        await worker.close()
        raise
    part = await worker.run(0.0, progress)
    return _result(plan, [part])


def bench(
    address: Address | str,
    *,
    mode: str = "rtt",
    connections: int | None = None,
    size: int | None = None,
    duration: float | None = None,
    requests: int | None = None,
    pipeline: int = 1,
    reverse: bool = False,
    warmup: float = DEFAULT_WARMUP,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    workers: int = 1,
    sockopts: _s.SockOpts = None,
    source: Address | str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    sni: str | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Load ``address`` (an echo, discard or chargen server) and return what was measured.

    ``mode``: ``"rtt"`` (round trips of ``size`` bytes on ``connections`` connections, ``pipeline``
    outstanding on each), ``"throughput"`` (bulk upload, or download with ``reverse``), or
    ``"connect"`` (open, one round trip, close). Runs ``warmup`` seconds unmeasured, then ``duration``
    seconds (default 10) or until ``requests`` requests. ``workers`` > 1 forks that many processes.
    Raises :class:`sockcat.NetworkError` if the first connection fails; later failures are counted
    in ``BenchResult.errors``.
    """
    plan = make_plan(
        address,
        mode=mode,
        connections=connections,
        size=size,
        duration=duration,
        requests=requests,
        pipeline=pipeline,
        reverse=reverse,
        warmup=warmup,
        timeout=timeout,
        connect_timeout=connect_timeout,
        workers=workers,
        sockopts=sockopts,
        source=source,
        ssl_context=ssl_context,
        sni=sni,
    )
    return run_plan(plan, progress)


def run_plan(plan: BenchPlan, progress: Progress | None = None) -> BenchResult:
    """Run a checked plan: in this process for one worker, forked workers otherwise."""
    if plan.workers > 1:
        return _run_forked(plan, progress)

    terminated: list[bool] = []

    async def main() -> BenchResult:
        _on_sigterm(terminated)
        if progress is not None:
            progress("connecting", plan.connect_timeout, 0, 0)
        worker = _Worker(plan, plan.connections, plan.requests)
        try:
            await worker.prepare()
        except BaseException:
            await worker.close()
            raise
        part = await worker.run(0.0, progress)
        return _result(plan, [part])

    previous = signal.getsignal(signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:  # held until the loop's own handler is in place (see _on_sigterm)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        with new_runner() as runner:
            return runner.run(main())
    except asyncio.CancelledError:
        if not terminated:
            raise
    finally:
        if in_main:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    # SIGTERM ended the run: hand the signal to whoever handled it before (the CLI exits 0).
    signal.raise_signal(signal.SIGTERM)
    raise NetworkError(errno.EINTR, "bench ended by SIGTERM")


def _on_sigterm(terminated: list[bool]) -> None:
    """In the main thread, let SIGTERM cancel the run (a Python-level handler cannot unwind the loop)."""
    if threading.current_thread() is not threading.main_thread():
        return
    task = asyncio.current_task()
    assert task is not None

    def stop() -> None:
        terminated.append(True)
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


# The parent and its workers speak over a pipe: ("ready",) / ("fatal", message, errno) from a worker,
# ("go", monotonic start) from the parent, then ("progress", requests, bytes) and ("done", result).


def _worker_main(plan: BenchPlan, connections: int, limit: int | None, pipe: Any, report: bool, parent: int) -> None:
    from sockcat.serving.process import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and ends its workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    die_with_parent(parent)
    code = 0
    try:
        with new_runner() as runner:
            runner.run(_worker_async(plan, connections, limit, pipe, report))
    except BaseException as exc:
        code = 1
        with contextlib.suppress(Exception):
            pipe.send(("fatal", str(exc) or type(exc).__name__, getattr(exc, "errno", None) or errno.EIO))
    finally:
        with contextlib.suppress(Exception):
            pipe.close()
        os._exit(code)


async def _worker_async(plan: BenchPlan, connections: int, limit: int | None, pipe: Any, report: bool) -> None:
    loop = asyncio.get_running_loop()
    worker = _Worker(plan, connections, limit)
    try:
        await worker.prepare()
    except BaseException:
        await worker.close()
        raise
    pipe.send(("ready",))
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(pipe.fileno(), wake)
    await readable
    loop.remove_reader(pipe.fileno())
    msg = pipe.recv()
    if msg[0] != "go":
        await worker.close()
        return

    def send_progress(phase: str, left: float, requests: int, nbytes: int) -> None:
        with contextlib.suppress(OSError):
            pipe.send(("progress", phase, left, requests, nbytes))

    part = await worker.run(max(0.0, float(msg[1]) - time.monotonic()), send_progress if report else None)
    pipe.send(("done", part.to_dict()))


def _run_forked(plan: BenchPlan, progress: Progress | None) -> BenchResult:
    ctx = multiprocessing.get_context("fork")
    shares = _split(plan.connections, plan.workers)
    limits: list[int | None] = (
        [max(1, n) for n in _split(plan.requests, plan.workers)] if plan.requests is not None else [None] * plan.workers
    )
    procs: list[Any] = []
    pipes: list[Any] = []
    finished = False
    try:
        for share, limit in zip(shares, limits, strict=True):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(
                target=_worker_main,
                args=(plan, share, limit, child_end, progress is not None, os.getpid()),
                daemon=True,
            )
            p.start()
            child_end.close()
            procs.append(p)
            pipes.append(parent_end)
        if progress is not None:
            progress("connecting", plan.connect_timeout, 0, 0)
        # 1. every worker connected (or one failed: then the run is over)
        deadline = time.monotonic() + plan.connect_timeout * 2 + 10.0
        waiting = set(range(len(pipes)))
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetworkError(errno.ETIMEDOUT, f"connect {plan.address}: workers did not connect in time")
            for end in multiprocessing.connection.wait([pipes[i] for i in waiting], timeout=left):
                i = pipes.index(end)
                msg = _recv(end)
                if msg[0] == "ready":
                    waiting.discard(i)
                elif msg[0] == "fatal":
                    raise NetworkError(int(msg[2]), str(msg[1]))
        # 2. a common start, so every worker measures the same window
        start = time.monotonic() + 0.02
        for end in pipes:
            end.send(("go", start))
        # 3. their results
        window = plan.warmup + (plan.duration if plan.duration is not None else 0.0)
        hard = None if plan.duration is None else start + window + plan.timeout + 10.0
        parts: dict[int, WorkerResult] = {}
        latest: dict[int, tuple[str, float, int, int]] = {}
        while len(parts) < len(pipes):
            live = [pipes[i] for i in range(len(pipes)) if i not in parts]
            timeout = None if hard is None else max(0.0, hard - time.monotonic())
            ready = multiprocessing.connection.wait(live, timeout=timeout)
            if not ready:
                break
            for end in ready:
                i = pipes.index(end)
                msg = _recv(end)
                if msg[0] == "progress" and progress is not None:
                    latest[i] = (msg[1], msg[2], msg[3], msg[4])
                    phases = {v[0] for v in latest.values()}
                    phase = "measuring" if "measuring" in phases else next(iter(phases))
                    progress(
                        phase,
                        max(v[1] for v in latest.values()),
                        sum(v[2] for v in latest.values()),
                        sum(v[3] for v in latest.values()),
                    )
                elif msg[0] == "done":
                    parts[i] = WorkerResult.from_dict(msg[1])
                elif msg[0] == "fatal":
                    lost = WorkerResult(connections=shares[i])
                    lost.add_error("worker", str(msg[1]))
                    parts[i] = lost
        for i in range(len(pipes)):
            if i not in parts:
                lost = WorkerResult(connections=shares[i])
                lost.add_error("worker", f"bench worker {i + 1} did not report in time")
                parts[i] = lost
        finished = True
        return _result(plan, [parts[i] for i in range(len(pipes))])
    finally:
        if not finished:  # an error or a signal: the workers have nothing more to give
            for p in procs:
                with contextlib.suppress(OSError):
                    p.terminate()
        for end in pipes:
            with contextlib.suppress(OSError):
                end.close()
        for p in procs:
            p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=2.0)


def _recv(end: Any) -> tuple[Any, ...]:
    try:
        return cast(tuple[Any, ...], end.recv())
    except (EOFError, OSError):
        return ("fatal", "a bench worker ended without a result", errno.EIO)
