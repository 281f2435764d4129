"""Plain stream connections relayed with splice: the relay's own epoll set (:class:`_Mux`), a
connection's two directions (:class:`_Flow`) and the worker threads that copy a moving flow."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sockcat.core.address import Address, show
from sockcat.core.errors import describe, network_error
from sockcat.core.log import Log
from sockcat.engines.pump import Counter, grow_pipe
from sockcat.engines.relay.common import _LINGER0, RelayOptions, _name

COPY_MIN, COPY_MAX = 1 << 18, 1 << 22  # a moving flow's copy buffer: grows while reads fill it
CHUNK = 1 << 20  # bytes one splice may move; also the size of a flow's pipe
BULK = 1 << 18  # a burst this large in the loop means a bulk flow: give it a thread
QUIET_MS = 200  # a worker hands its flow back to the loop after this long without data
POLL_MS = 200  # worker threads re-check for shutdown this often while waiting
_HAVE_SPLICE = hasattr(os, "splice") and hasattr(select, "epoll")  # Linux: the spliced path and its epoll set


class _PipePool:
    """Pipes for moving flows only; returned empty, a few kept for reuse."""

    def __init__(self, keep: int = 16) -> None:
        self._free: list[tuple[int, int]] = []
        self._keep = keep
        self._lock = threading.Lock()

    def get(self) -> tuple[int, int]:
        with self._lock:
            if self._free:
                return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        grow_pipe(w, CHUNK)
        return r, w

    def put(self, pipe: tuple[int, int]) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(pipe)
                return
        for fd in pipe:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            for pipe in self._free:
                for fd in pipe:
                    os.close(fd)
            self._free.clear()


def _wait(fd: int, events: int, ms: int) -> bool:
    p = select.poll()
    p.register(fd, events)
    return bool(p.poll(ms))


_EV_IN = getattr(select, "EPOLLIN", 0x1) | getattr(select, "EPOLLRDHUP", 0x2000)
# An end (FIN, RST) is queued: read until it is seen.
_EV_DRAIN = getattr(select, "EPOLLERR", 0x8) | getattr(select, "EPOLLHUP", 0x10) | getattr(select, "EPOLLRDHUP", 0x2000)


class _Mux:
    """The connections' sockets in an epoll set of the relay's own, which the asyncio loop watches as one reader.

    uvloop re-registers a descriptor with the kernel on every add_reader/remove_reader (an epoll_ctl DEL and
    ADD, and a new libuv handle with its ioctl); here a socket is registered once and its events go straight
    to a bound method. Level-triggered: a handler may do one step per event and be called again.
    """

    __slots__ = ("ep", "handlers", "log", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, log: Log) -> None:
        self.loop = loop
        self.log = log
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        loop.add_reader(self.ep.fileno(), self.dispatch)

    def add(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        self.ep.register(fd, events)
        self.handlers[fd] = handler

    def change(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        self.ep.modify(fd, events)
        self.handlers[fd] = handler

    def remove(self, fd: int) -> None:
        """Stop watching a descriptor that stays open."""
        if self.handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self.ep.unregister(fd)

    def forget(self, fd: int) -> None:
        """A descriptor about to be closed: closing it takes it out of the epoll set (nobody else holds it)."""
        self.handlers.pop(fd, None)

    def dispatch(self) -> None:
        handlers = self.handlers
        for fd, events in self.ep.poll(0, 256):
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler(events)
            except Exception as exc:  # a bug: never let one descriptor spin the loop
                self.log.warning(f"relay: {type(exc).__name__}: {exc}")
                self.remove(fd)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.ep.fileno())
        self.ep.close()


class _RelayLike(Protocol):
    """What a spliced connection and its flows use of the relay that owns them (``server._Relay``)."""

    loop: asyncio.AbstractEventLoop
    opts: RelayOptions
    target: Address
    listen_scheme: str
    mux: _Mux
    pipes: _PipePool
    loop_pipe: tuple[int, int]
    executor: ThreadPoolExecutor
    connecting: dict[_SpliceConn, float]

    def peer(self, sa: Any) -> Address | None: ...

    def _watch_idle(self, conn: Any, counters: tuple[Counter, Counter]) -> asyncio.Task[None]: ...

    def closed(self, conn: _SpliceConn) -> None: ...


class _Flow:
    """One direction of a spliced connection: src socket -> dst socket."""

    __slots__ = ("conn", "counter", "done", "dst", "dst_fd", "in_loop", "name", "pending", "pipe", "src", "src_fd")

    def __init__(self, conn: _SpliceConn, src: socket.socket, dst: socket.socket, name: str) -> None:
        self.conn = conn
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.name = name
        self.counter = Counter()
        self.done = False
        self.pipe: tuple[int, int] | None = None
        self.pending = 0
        self.in_loop = False

    # In the loop.
    def watch(self, registered: bool = False) -> None:
        """Watch the source for reading (``registered``: it is in the epoll set already, for connecting)."""
        self.in_loop = True
        mux = self.conn.relay.mux
        if registered:
            mux.change(self.src_fd, _EV_IN, self.on_event)
        else:
            mux.add(self.src_fd, _EV_IN, self.on_event)

    def unwatch(self) -> bool:
        """Stop watching the source; True if it was watched."""
        was, self.in_loop = self.in_loop, False
        if was:
            self.conn.relay.mux.remove(self.src_fd)
        return was

    def on_event(self, events: int) -> None:
        # One splice per event while only data waits (the set is level-triggered); when an end (FIN, RST) is
        # queued too, splice until it is read, so a peer's last bytes and its reset are both passed on.
        # A burst of BULK bytes or a full destination hands the flow to a worker thread instead.
        conn = self.conn
        relay = conn.relay
        pipe = relay.loop_pipe
        src_fd = self.src_fd
        dst_fd = self.dst_fd
        drain = events & _EV_DRAIN
        total = 0
        while True:
            try:
                n = os.splice(src_fd, pipe[1], CHUNK, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                return
            except OSError as exc:
                self._ended(exc)
                return
            if n == 0:
                self._ended(None)
                return
            moved = 0
            try:
                while moved < n:
                    moved += os.splice(pipe[0], dst_fd, n - moved, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                pass
            except OSError as exc:
                # The destination failed with bytes still in the loop's pipe: that pipe goes with this flow.
                self.counter.add(moved)
                relay.loop_pipe = relay.pipes.get()
                self.pipe = pipe
                self._ended(exc)
                return
            self.counter.add(moved)
            if moved < n:  # the destination is full: a worker waits for it, with the bytes left in this pipe
                self.pipe, self.pending = pipe, n - moved
                relay.loop_pipe = relay.pipes.get()
                break
            total += n
            if total >= BULK:
                break
            if not drain:
                return
        self.unwatch()
        fut = conn.loop.run_in_executor(relay.executor, self.pump)
        fut.add_done_callback(self._pumped)

    def _ended(self, exc: OSError | None) -> None:
        """The source ended (EOF) or failed, seen in the loop."""
        self.in_loop = False
        other = self.conn.down if self is self.conn.up else self.conn.up
        if other.done:
            self.conn.relay.mux.forget(self.src_fd)  # both done: the connection closes right away
        else:
            self.conn.relay.mux.remove(self.src_fd)
        self.finish(exc)

    def _pumped(self, fut: asyncio.Future[OSError | bool | None]) -> None:
        result = fut.exception() or fut.result()
        if result is True:  # quiet: back to the loop
            if self.conn.closing:
                self.finish(None)
            else:
                self.watch()
            return
        self.finish(result if isinstance(result, OSError) else None)

    def finish(self, exc: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None
        self.conn.flow_done(self, exc)

    # In a worker thread.
    def pump(self) -> OSError | bool | None:
        """Move a bulk flow until EOF (None), an error (the OSError) or a quiet source (True: hand back).

        Bytes the loop left in a pipe go out first (splice); then the flow is copied with recv_into/send through
        one buffer that starts at COPY_MIN bytes and doubles, up to COPY_MAX, while reads fill it. On Linux
        loopback this measured faster than splicing through a pipe (docs/benchmarks.md, relay): a 4 MiB copy
        1.2x socat -b 262144, splice 0.8x. The buffer lives while the flow moves; an idle flow holds none.
        """
        try:
            if self.pipe is not None:
                self._flush_pipe()
            return self._copy()
        except OSError as exc:
            return exc

    def _flush_pipe(self) -> None:
        pipe, pending = self.pipe, self.pending
        assert pipe is not None
        while pending and not self.conn.closing:
            try:
                m = os.splice(pipe[0], self.dst_fd, pending, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                _wait(self.dst_fd, select.POLLOUT, POLL_MS)
                continue
            pending -= m
            self.counter.add(m)
        self.pending = pending
        if pending == 0:  # otherwise finish() closes it
            self.pipe = None
            self.conn.relay.pipes.put(pipe)

    def _copy(self) -> bool | None:
        size, n_full = COPY_MIN, 0
        buf = bytearray(size)
        view = memoryview(buf)
        conn, src_fd, dst_fd = self.conn, self.src_fd, self.dst_fd
        recv_into, send, add = self.src.recv_into, self.dst.send, self.counter.add
        while not conn.closing:
            if size < COPY_MAX and n_full >= 2:
                size *= 2
                buf = bytearray(size)
                view = memoryview(buf)
                n_full = 0
            try:
                n = recv_into(buf)
            except BlockingIOError:
                if not _wait(src_fd, select.POLLIN, QUIET_MS):
                    return True
                continue
            if n == 0:
                return None
            n_full = n_full + 1 if n == size else 0
            sent = 0
            while sent < n:
                try:
                    sent += send(view[sent:n])
                except BlockingIOError:
                    if conn.closing:
                        return None
                    _wait(dst_fd, select.POLLOUT, POLL_MS)
            add(n)
        return None


class _SpliceConn:
    """A plain stream connection relayed with splice: from accept (or connect) to the close of both sockets."""

    __slots__ = (
        "client",
        "client_fd",
        "closed",
        "closing",
        "connecting",
        "done",
        "down",
        "loop",
        "peer_sa",
        "relay",
        "reset",
        "started",
        "up",
        "up_fd",
        "upstream",
        "watchdog",
    )

    def __init__(
        self,
        relay: _RelayLike,
        client: socket.socket,
        upstream: socket.socket,
        peer_sa: Any = None,
        done: asyncio.Future[None] | None = None,
    ) -> None:
        self.relay = relay
        self.loop = relay.loop
        self.client = client
        self.upstream = upstream
        self.client_fd = client.fileno()
        self.up_fd = upstream.fileno()
        self.peer_sa = peer_sa
        self.closing = False
        self.reset = False
        self.closed = False
        self.connecting = False
        self.done = done  # the slow path awaits it (and logs); the fast path logs in close()
        self.up = _Flow(self, client, upstream, "up")
        self.down = _Flow(self, upstream, client, "down")
        self.started = 0.0
        self.watchdog: asyncio.Task[None] | None = None

    # Connecting (fast path): the upstream socket waits in the epoll set for writability.
    def on_connect(self, events: int) -> None:
        try:
            err = self.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err:
            self.connect_failed(OSError(err, os.strerror(err)))
        elif events & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
            self.relay.connecting.pop(self, None)
            self.start(registered=True)

    def connect_failed(self, exc: OSError) -> None:
        self.relay.connecting.pop(self, None)
        log = self.relay.opts.log
        if log.verbose:
            log.info(f"{show(self.relay.peer(self.peer_sa))}: {network_error(exc, f'connect {self.relay.target}')}")
        self.close()

    def start(self, registered: bool = False) -> None:
        """Connected: watch both sources."""
        self.connecting = False
        relay = self.relay
        if relay.opts.log.verbose and self.done is None:
            self.started = time.monotonic()
            who = show(relay.peer(self.peer_sa), self.client)
            relay.opts.log.info(
                f"connection from {who} on {_name(self.client, relay.listen_scheme, False)}"
                f" -> {relay.target} from {_name(self.upstream, relay.target.scheme, False)}"
            )
        if relay.opts.idle_timeout:
            self.watchdog = relay._watch_idle(self, (self.up.counter, self.down.counter))
        self.down.watch(registered)
        self.up.watch()

    def flow_done(self, flow: _Flow, exc: BaseException | None) -> None:
        if exc is not None:
            self.relay.opts.log.debug(f"{flow.name}: {describe(exc)}")
            self.abort()
        elif not self.reset and not (self.up.done and self.down.done):
            with contextlib.suppress(OSError):
                flow.dst.shutdown(socket.SHUT_WR)  # half-close passes through
        # (When both have ended, close() right below sends that FIN: the other source was read to its end.)
        if self.up.done and self.down.done:
            self.close()

    def abort(self) -> None:
        """A reset or failure on one side: reset both (SO_LINGER 0 makes close() send RST), stop both."""
        if self.reset:
            return
        self.reset = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
        self.stop()

    def stop(self) -> None:
        """End both directions now (idle time-out, grace period over); workers notice ``closing`` themselves."""
        if self.connecting:
            self.relay.connecting.pop(self, None)
            self.close()
            return
        self.closing = True
        for flow in (self.up, self.down):
            if not flow.done and flow.unwatch():
                flow.finish(None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        mux = self.relay.mux
        mux.forget(self.client_fd)
        mux.forget(self.up_fd)
        self.client.close()
        self.upstream.close()
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.relay.closed(self)
