"""Sessions on the socket itself, with no asyncio transport: a connected datagram socket (udp, unixgram;
tagged requests) and unixpacket (a small coroutine per connection, records kept whole)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from time import perf_counter_ns

from sockcat.engines.bench.plan import RECV_SIZE, _classify
from sockcat.engines.bench.sessions import _Session, _settle, _WorkerLike


class _DatagramSession(_Session):
    """A connected datagram socket; rtt: tagged requests, throughput: send as fast as the socket takes."""

    __slots__ = ("closed", "expired", "fd", "out", "sock", "w", "writing")

    def __init__(self, w: _WorkerLike, sock: socket.socket, closed: asyncio.Future[BaseException | None]) -> None:
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

    def __init__(self, w: _WorkerLike, sock: socket.socket, closed: asyncio.Future[BaseException | None]) -> None:
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
