"""A worker: one process's share of the run on one asyncio loop. It opens the connections (the first alone), keeps
each slot connected with a growing back-off, runs connect mode, and owns the window, time-outs, progress and close."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import time
from time import perf_counter_ns
from typing import cast

from sockcat.core.errors import NetworkError, network_error
from sockcat.core.stats import Histogram, WorkerResult
from sockcat.engines.bench.datagram import _DatagramSession, _PacketSession
from sockcat.engines.bench.plan import RECV_SIZE, BenchPlan, Progress, _classify, _window
from sockcat.engines.bench.sessions import _Session, _session_class
from sockcat.net.pin import check_pin, pinned
from sockcat.net.sockets import to_address
from sockcat.streams import aio as _aio
from sockcat.streams.aio_wsproto import WsClient
from sockcat.streams.datagram import connect_datagram

PROGRESS_INTERVAL = 0.25
CONNECT_CONCURRENCY = 256  # connects in flight at once while setting up (a SYN flood helps nobody)


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
        self._ticker: asyncio.TimerHandle | None = None
        self._slice_from: tuple[float, int, list[int]] = (0.0, 0, [])

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
        for session in self.sessions:
            session.window_start()
        self._slice_from = (0.0, 0, list(self.hist.counts))
        if self._loop is not None:  # (a worker driven by hand, as a unit test does, has no loop and no series)
            self._ticker = self._loop.call_later(1.0, self._tick)

    def _moved_so_far(self) -> int:
        """Requests in the window so far (throughput: ``size``-byte messages the peer took)."""
        if self.plan.mode == "throughput":
            return (self.nbytes + sum(s.moved() for s in self.sessions)) // self.size
        return sum(self.hist.counts)

    def _tick(self, final: bool = False) -> None:
        """One second of the window (or its last part): its requests and latencies join ``result.series``."""
        t = time.perf_counter() - self.t0
        then, done_then, counts_then = self._slice_from
        if final and t - then < 0.05:  # (a last sliver would show a rate out of a handful of samples)
            return
        done = self._moved_so_far()
        self.result.series.append((t, done - done_then, self.hist.since(counts_then)))
        self._slice_from = (t, done, list(self.hist.counts))
        if not final:
            self._ticker = self.loop.call_later(1.0, self._tick)

    def finish(self) -> None:
        """End the measured window now (timer, or -n reached); idempotent. Connections stop reading at once."""
        if self.measuring:
            if self._ticker is not None:
                self._ticker.cancel()
                self._tick(final=True)
            for session in self.sessions:
                self.nbytes += session.window_end()
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
            dg = connect_datagram(self.target, source=plan.source, sockopts=plan.sockopts)
            sock = dg.socket
        else:
            sock = await _aio.connect_socket(
                self.target, timeout=plan.connect_timeout, source=plan.source, sockopts=plan.sockopts
            )
        sock.setblocking(False)
        if self.target is plan.address and plan.address.is_ip and plan.address.family == socket.AF_UNSPEC:
            with contextlib.suppress(OSError):
                peer = to_address(plan.address.scheme, sock.getpeername())
                self.target = plan.address.with_host(peer.host, peer.family)
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

                ws: WsClient | None = None
                if plan.address.is_ws:  # the session runs on message payloads, behind the WebSocket's upgrade
                    inner_factory = factory
                    ws = WsClient(inner_factory, plan.address, plan.ws)

                    def factory() -> asyncio.BaseProtocol:
                        assert ws is not None
                        return ws

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
                    if plan.ssl_context is not None and pinned(plan.ssl_context) is not None:
                        der = _t.get_extra_info("ssl_object").getpeercert(binary_form=True)
                        try:
                            check_pin(plan.ssl_context, der, f"TLS handshake with {plan.address}")
                        except NetworkError:
                            _t.abort()
                            raise
                else:
                    _t, proto = await self.loop.create_connection(factory, sock=sock)
                if ws is not None:
                    try:
                        proto = await ws.opened
                    except BaseException:
                        _t.abort()
                        raise
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
        if plan.address.is_tls or plan.address.is_ws:
            stream = await _aio.connect(
                self.target,
                connect_timeout=plan.connect_timeout,
                source=plan.source,
                sockopts=plan.sockopts,
                ssl_context=plan.ssl_context,
                sni=self.sni,
                ws=plan.ws,
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
                progress("warm-up", max(0.0, plan.warmup - (now - start)), 0, 0, None)
            else:
                left = 0.0 if plan.duration is None else max(0.0, plan.duration - (time.perf_counter() - self.t0))
                moved = self.nbytes or self.requests * self.size
                progress("measuring", left, self.requests, moved, self.result.last_p99())
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
