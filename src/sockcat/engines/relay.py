"""``relay``: forward between any two endpoints, both directions, until both have ended.

Design (the reasoning the issue asks for):

* One asyncio loop (uvloop when installed) owns every socket, so an idle relayed connection costs two
  sockets and a few small objects: no thread, no pipe, no buffer.
* Plain stream sockets on both sides: a short burst is spliced right in the loop's read callback through the
  loop's own pipe (no copy into Python). A flow that keeps coming (a full chunk) or meets a full destination is
  handed to a worker thread that copies it with ``recv_into``/``send`` through a buffer growing from 256 KiB to
  4 MiB (on Linux loopback that measured 1.3-1.5x faster than splicing through a pipe), until the source has
  been quiet for a moment; then the flow goes back to the loop and its buffer is freed. So threads, buffers and
  pipes belong to moving flows only (pipes count against ``fs.pipe-user-pages-soft``).
* TLS, ``--hexdump``, ``--trace`` and packet sockets take the buffered path: 64 KiB per active direction,
  awaited sends, so a slow reader slows the writer and memory stays bounded.
* Set-up cost is what limits connections per second, so a target that needs no look-up (an IP literal, a Unix
  path) takes a callback path: the listener stays registered and accepts in a batch, the upstream socket is made
  non-blocking and connects with ``connect_ex``, and every connection's sockets sit in one epoll set of the
  relay's own (registered once, events dispatched to bound methods), with no Task or future per connection and
  no address formatted unless ``-v``. Connect time-outs share one timer. Targets given by name go through a
  task per connection (resolution, happy eyeballs), then the same splice machinery.
* EOF on one side becomes shutdown(SHUT_WR) on the other; the opposite direction keeps flowing.
  A reset is passed on as a reset (SO_LINGER 0, then close).
* A client refused by ``--max-conns`` or ``--allow``/``--deny``, or whose upstream connect failed, is closed at
  once without being read: it sees EOF, or a reset if its bytes had already arrived (the kernel answers a close
  with unread data with RST).
* ``--workers N`` forks N-1 workers that die with the parent (``PR_SET_PDEATHSIG``), even a SIGKILLed one.
* Datagram kinds (udp*, unixgram): one upstream socket per client address, closed after the idle time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address, show
from sockcat.core.errors import UsageError, describe, network_error
from sockcat.core.hexdump import HexDumper
from sockcat.core.log import SILENT, Log
from sockcat.engines.pump import Counter, grow_pipe
from sockcat.net import trace as _trace
from sockcat.net.options import SockOpt
from sockcat.net.proxy import Proxy
from sockcat.net.proxy import check_target as check_proxy_target
from sockcat.serving.scaffold import Bound, Settings, serve_on_loop
from sockcat.streams import aio as _aio
from sockcat.streams.sync import Stream, _prepare, resolve, to_address

COPY_MIN, COPY_MAX = 1 << 18, 1 << 22  # a moving flow's copy buffer: grows while reads fill it
_NO_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
CHUNK = 1 << 20  # bytes one splice may move; also the size of a flow's pipe
BULK = 1 << 18  # a burst this large in the loop means a bulk flow: give it a thread
QUIET_MS = 200  # a worker hands its flow back to the loop after this long without data
POLL_MS = 200  # worker threads re-check for shutdown this often while waiting
DEFAULT_UDP_IDLE = 60.0
_LINGER0 = struct.pack("ii", 1, 0)
_HAVE_SPLICE = hasattr(os, "splice") and hasattr(select, "epoll")  # Linux: the spliced path and its epoll set


@dataclass
class RelayOptions:
    log: Log = SILENT
    connect_timeout: float | None = 10.0
    idle_timeout: float | None = None
    hexdump: bool = False
    max_conns: int | None = None
    access: AccessPolicy = field(default_factory=AccessPolicy)
    sockopts: tuple[SockOpt, ...] = ()
    source: Address | None = None
    server_ssl: ssl.SSLContext | None = None  # TLS terminated on the listening side
    fingerprint: str | None = None
    client_ssl: ssl.SSLContext | None = None  # TLS originated towards the target
    sni: str | None = None
    grace: float = 5.0
    workers: int = 1
    proxy: Proxy | None = None  # reach the target through this SOCKS / HTTP CONNECT proxy


def _out_of_descriptors(exc: BaseException) -> OSError | None:
    """The error saying this process is out of descriptors (or memory) behind ``exc``, else None.

    A name lookup that cannot open /etc/hosts or a DNS socket reports the name as unknown instead, so any other
    failure is checked with a probe: a pipe that cannot be made for want of descriptors names the real cause."""
    if isinstance(exc, OSError) and exc.errno in _NO_RESOURCES:
        return exc
    try:
        r, w = os.pipe()
    except OSError as probe:
        return probe if probe.errno in _NO_RESOURCES else None
    os.close(r)
    os.close(w)
    return None


# --- the splice path -----------------------------------------------------------------------------


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
        relay: _Relay,
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


# --- the relay server ----------------------------------------------------------------------------


class _Relay:
    def __init__(
        self, target: Address, opts: RelayOptions, listen: socket.socket | None = None, bound: Address | None = None
    ) -> None:
        self.target = target
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.pipes = _PipePool()
        self.loop_pipe = self.pipes.get()
        self.executor = ThreadPoolExecutor(max_workers=512, thread_name_prefix="splice")
        # Only spliced connections use the epoll set, and only Linux has splice and epoll.
        self.mux: _Mux = _Mux(self.loop, opts.log) if _HAVE_SPLICE else cast(_Mux, None)
        self.active: set[Any] = set()  # slow-path connections moving data (stop_all)
        self.tasks: set[asyncio.Task[None]] = set()  # slow-path connections, from accept to close
        self.conns: set[_SpliceConn] = set()  # fast-path connections, from accept to close
        self.connecting: dict[_SpliceConn, float] = {}  # fast-path connects under way -> deadline (in order)
        self._sweeping = False
        self._spare: socket.socket | None = None  # the next client's upstream socket, made before its accept
        # General path: two descriptors held for the next client's name lookup and upstream, made before its accept
        self._reserve: tuple[int, int] | None = None
        self.reserves: set[tuple[int, int]] = set()  # handed to connections that have not used them yet
        self._starved = False  # out of descriptors: accepting paused, warned once
        self._starved_at = -1e9  # loop time of the last shortage
        self.closing = False
        self.listen = listen
        self.bound = bound
        self.listen_scheme = bound.scheme if bound is not None else ""
        self.accepting = False
        self.fast_target = self._static_target(listen.type if listen is not None else 0)
        self.plain_connect = not opts.sockopts and opts.source is None

    def _static_target(self, listen_type: int) -> tuple[int, int, int, Any] | None:
        """The one ``(family, type, proto, sockaddr)`` of a target that needs no look-up per connection
        (a Unix path, an IP literal), when both sides can splice: the fast path; None otherwise."""
        t = self.target
        if not self._can_splice(listen_type, t.type) or self.opts.proxy is not None:
            return None
        if not t.is_unix:
            if not (t.is_ip and t.host):
                return None
            try:
                ipaddress.ip_address(t.host.split("%", 1)[0])
            except ValueError:
                return None  # a name: resolved per connection, happy eyeballs
        try:
            infos = resolve(t)
        except (OSError, UsageError):
            return None
        return infos[0] if len(infos) == 1 else None

    def splice_ok(self, a: socket.socket, b: socket.socket) -> bool:
        return self._can_splice(a.type, b.type)

    def _can_splice(self, a_type: int, b_type: int) -> bool:
        """Plain bytes both ways between two stream sockets: no TLS, hex dump or trace in between."""
        return (
            _HAVE_SPLICE
            and not self.opts.hexdump
            and not _trace.tracing()
            and self.opts.server_ssl is None
            and self.opts.client_ssl is None
            and a_type == socket.SOCK_STREAM
            and b_type == socket.SOCK_STREAM
        )

    def peer(self, sa: Any) -> Address | None:
        return to_address(self.listen_scheme, sa) if sa is not None else None

    def busy(self) -> bool:
        return bool(self.conns or self.tasks)

    # --- accepting -------------------------------------------------------------------------------

    def start_accepting(self) -> None:
        if self.listen is not None and not self.accepting:
            self.accepting = True
            self.loop.add_reader(self.listen.fileno(), self._on_accept)

    def stop_accepting(self) -> None:
        if self.listen is not None and self.accepting:
            self.accepting = False
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.listen.fileno())

    def _on_accept(self) -> None:
        """Accept all that wait (up to a batch; the listener stays registered, level-triggered).

        On the callback path the upstream socket is made *before* accept: out of descriptors, the relay stops
        accepting for a moment and the clients wait in the listen backlog, instead of being accepted only to be
        closed for want of an upstream socket.
        """
        assert self.listen is not None
        accept = self.listen.accept
        fast = self.fast_target is not None
        for _ in range(64):
            failure: OSError | UsageError | None = None
            if fast and self._spare is None:
                try:
                    self._spare = self._new_upstream()
                except (OSError, UsageError) as exc:
                    if isinstance(exc, OSError) and exc.errno in _NO_RESOURCES:
                        self._starve(exc, f"accept on {self.bound}")
                        return
                    failure = exc  # e.g. -s ADDR in use: this client is accepted and closed, with a log line
            elif not fast and self._reserve is None:
                try:
                    self._reserve = os.pipe()
                except OSError as exc:
                    self._starve(exc, f"accept on {self.bound}")
                    return
            try:
                client, sa = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _NO_RESOURCES:
                    self._starve(exc, f"accept on {self.bound}")
                    return
                continue  # ECONNABORTED and the like: that client is gone
            self._starved = False
            if not self.admit(client, sa):
                client.close()  # unread: a FIN, or a RST if the client's bytes had arrived
                continue
            if fast:
                if failure is not None or self._spare is None:
                    self.opts.log.info(f"{show(self.peer(sa))}: {failure}")
                    client.close()
                    continue
                up, self._spare = self._spare, None
                self._start_fast(client, sa, up)
            else:
                peer = self.peer(sa)
                local = _name(client, self.listen_scheme, False) if self.opts.log.verbose else None
                reserve, self._reserve = self._reserve, None
                if reserve is not None:
                    self.reserves.add(reserve)
                task = asyncio.ensure_future(self.handle(client, peer, local, reserve))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    def _starve(self, exc: OSError, what: str) -> None:
        """Out of descriptors or memory: pause accepting briefly (one warning per episode)."""
        self._starved_at = self.loop.time()
        if not self._starved:
            self._starved = True
            self.opts.log.warning(f"{what}: {describe(exc)}; new clients wait until some close")
        self.stop_accepting()
        self.loop.call_later(0.05, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self.closing:
            self.start_accepting()

    def _new_upstream(self) -> socket.socket:
        assert self.fast_target is not None
        fam, kind, proto, _sa = self.fast_target
        if self.plain_connect:
            return socket.socket(fam, kind | socket.SOCK_NONBLOCK, proto)
        up = _prepare(fam, kind, proto, self.opts.sockopts, self.opts.source, str(self.target))
        up.setblocking(False)
        return up

    def admit(self, sock: socket.socket, sa: Any) -> bool:
        opts = self.opts
        if opts.access.active:
            peer = self.peer(sa)
            if not opts.access.permits(peer.host if peer else ""):
                opts.log.info(f"refused {show(peer)}: not allowed by --allow/--deny")
                return False
        if opts.max_conns is not None and len(self.conns) + len(self.tasks) >= opts.max_conns:
            if opts.log.verbose:
                opts.log.info(f"refused {show(self.peer(sa))}: --max-conns {opts.max_conns} reached")
            return False
        return True

    # --- the fast path: plain callbacks, a non-blocking connect watched in the epoll set -------------

    def _start_fast(self, client: socket.socket, sa: Any, up: socket.socket) -> None:
        try:
            client.setblocking(False)
        except OSError as exc:
            self.opts.log.info(f"{show(self.peer(sa))}: {exc}")
            client.close()
            up.close()
            return
        conn = _SpliceConn(self, client, up, sa)
        conn.connecting = True
        self.conns.add(conn)
        self._connect(conn)

    def _connect(self, conn: _SpliceConn) -> None:
        if conn.closed:
            return
        assert self.fast_target is not None
        err = conn.upstream.connect_ex(self.fast_target[3])
        if err == 0:
            self.connecting.pop(conn, None)
            conn.start()
        elif err == errno.EINPROGRESS:
            self._await_connect(conn)
            self.mux.add(conn.up_fd, select.EPOLLOUT, conn.on_connect)
        elif err == errno.EAGAIN:  # a Unix listener's backlog is full: try again shortly
            self._await_connect(conn)
            self.loop.call_later(0.01, self._connect, conn)
        else:
            conn.connect_failed(OSError(err, os.strerror(err)))

    def _await_connect(self, conn: _SpliceConn) -> None:
        timeout = self.opts.connect_timeout
        if timeout is None or conn in self.connecting:
            return
        self.connecting[conn] = time.monotonic() + timeout
        if not self._sweeping:
            self._sweeping = True
            self.loop.call_later(0.05, self._sweep_connecting)

    def _sweep_connecting(self) -> None:
        """Time out connects (one shared timer: deadlines come in the order the connects started)."""
        now = time.monotonic()
        expired = []
        for conn, deadline in self.connecting.items():
            if deadline > now:
                break
            expired.append(conn)
        for conn in expired:
            conn.connect_failed(TimeoutError(errno.ETIMEDOUT, "timed out"))
        if self.connecting:
            self.loop.call_later(0.05, self._sweep_connecting)
        else:
            self._sweeping = False

    def closed(self, conn: _SpliceConn) -> None:
        """A splice connection has closed both its sockets."""
        self.conns.discard(conn)
        if conn.done is not None:
            if not conn.done.done():
                conn.done.set_result(None)
            return
        log = self.opts.log
        if log.verbose and conn.started:
            log.info(
                f"closed {show(self.peer(conn.peer_sa))}: {conn.up.counter.bytes} bytes to {self.target}, "
                f"{conn.down.counter.bytes} bytes back, {time.monotonic() - conn.started:.3f} s"
            )

    # --- the general path: a task per connection ---------------------------------------------------

    async def connect_upstream(self) -> socket.socket:
        opts = self.opts
        return await _aio.connect_socket(
            self.target, timeout=opts.connect_timeout, source=opts.source, sockopts=opts.sockopts, proxy=opts.proxy
        )

    async def _connect_when_possible(self, reserve: tuple[int, int] | None) -> socket.socket:
        """``connect_upstream`` with the descriptors reserved at accept freed first. Out of descriptors anyway
        (a lookup that could not open /etc/hosts says the name is unknown: within a second of a shortage
        that counts as one), the client waits for some to free up, accepting paused, for as long as a
        connect may take (``-w``), instead of being dropped at once."""
        if reserve is not None and reserve in self.reserves:
            self.reserves.discard(reserve)
            os.close(reserve[0])
            os.close(reserve[1])
        limit = self.opts.connect_timeout
        deadline = None if limit is None else self.loop.time() + limit
        while True:
            try:
                return await self.connect_upstream()
            except (OSError, UsageError) as exc:
                starved = _out_of_descriptors(exc)
                lookup_failed = isinstance(exc.__cause__, socket.gaierror)
                if starved is None and lookup_failed and self.loop.time() - self._starved_at < 1.0:
                    starved = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
                if starved is None or self.closing or (deadline is not None and self.loop.time() >= deadline):
                    raise
                self._starve(starved, f"connect to {self.target}")
            await asyncio.sleep(0.05)

    async def handle(
        self, client: socket.socket, peer: Address | None, local: Address | None, reserve: tuple[int, int] | None = None
    ) -> None:
        log = self.opts.log
        client.setblocking(False)
        upstream: socket.socket | None = None
        try:
            try:
                upstream = await self._connect_when_possible(reserve)
            except (OSError, UsageError) as exc:
                log.info(f"{show(peer)}: {exc}")
                return
            if log.verbose:
                up_local = _name(upstream, self.target.scheme, False)
                via = f" via {self.opts.proxy}" if self.opts.proxy is not None else ""
                log.info(f"connection from {show(peer)} on {local} -> {self.target}{via} from {up_local}")
            started = time.monotonic()
            try:
                if self.splice_ok(client, upstream):
                    sent, received = await self._splice(client, upstream)
                else:
                    sent, received = await self._buffered(client, upstream, peer)
            except OSError as exc:  # a TLS handshake on either side
                log.info(f"{show(peer)}: {exc}")
                return
            log.info(
                f"closed {show(peer)}: {sent} bytes to {self.target}, {received} bytes back, "
                f"{time.monotonic() - started:.3f} s"
            )
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    async def _splice(self, client: socket.socket, upstream: socket.socket) -> tuple[int, int]:
        done: asyncio.Future[None] = self.loop.create_future()
        conn = _SpliceConn(self, client, upstream, done=done)
        self.active.add(conn)
        try:
            conn.start()
            await asyncio.shield(done)
        except asyncio.CancelledError:
            conn.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await done
            raise
        finally:
            self.active.discard(conn)
        return conn.up.counter.bytes, conn.down.counter.bytes

    def _watch_idle(self, conn: Any, counters: tuple[Counter, Counter]) -> asyncio.Task[None]:
        idle = self.opts.idle_timeout or 0.0

        async def watch() -> None:
            while True:
                quiet = time.monotonic() - max(c.last for c in counters)
                if quiet >= idle:
                    self.opts.log.info(f"idle for {idle:g} s: closing")
                    conn.stop()
                    return
                await asyncio.sleep(idle - quiet + 0.01)

        return asyncio.ensure_future(watch())

    async def _buffered(self, client: socket.socket, upstream: socket.socket, peer: Address | None) -> tuple[int, int]:
        """TLS, hex dumps and packet sockets: awaited copies through 64 KiB, half-close and resets kept."""
        a = await self._wrap(client, self.opts.server_ssl, True, show(peer))
        b = await self._wrap(upstream, self.opts.client_ssl, False, str(self.target))
        conn = _BufferedConn(a, b, self.opts)
        self.active.add(conn)
        watchdog = self._watch_idle(conn, conn.counters) if self.opts.idle_timeout else None
        try:
            await conn.run()
        finally:
            self.active.discard(conn)
            if watchdog is not None:
                watchdog.cancel()
        return conn.counters[0].bytes, conn.counters[1].bytes

    async def _wrap(
        self, sock: socket.socket, ctx: ssl.SSLContext | None, server_side: bool, where: str
    ) -> _aio.Stream:
        tls = None
        if ctx is not None:
            hostname = None if server_side else (self.opts.sni or self.target.host or None)
            tls = _aio._TLS(sock, ctx, server_side, hostname)
            await _aio._handshake(
                tls, sock, f"TLS handshake {'from' if server_side else 'with'} {where}", self.opts.connect_timeout
            )
        return _aio.Stream(sock, "tls" if tls else "tcp", tls=tls)

    def stop_all(self) -> None:
        for conn in [*self.conns, *self.active]:
            conn.stop()

    def close(self) -> None:
        self.closing = True
        self.stop_accepting()
        if self._spare is not None:
            self._spare.close()
            self._spare = None
        if self._reserve is not None:
            self.reserves.add(self._reserve)
            self._reserve = None
        for r, w in self.reserves:  # connections cancelled before they ran
            os.close(r)
            os.close(w)
        self.reserves.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if _HAVE_SPLICE:
            self.mux.close()


def _name(sock: socket.socket, scheme: str, peer: bool) -> Address | None:
    try:
        return to_address(scheme, sock.getpeername() if peer else sock.getsockname())
    except OSError:
        return None


class _BufferedConn:
    def __init__(self, a: _aio.Stream, b: _aio.Stream, opts: RelayOptions) -> None:
        self.a = a
        self.b = b
        self.opts = opts
        self.counters = (Counter(), Counter())
        self.tasks: list[asyncio.Task[None]] = []
        self.reset = False

    async def run(self) -> None:
        self.tasks = [
            asyncio.ensure_future(self._copy(self.a, self.b, self.counters[0], ">")),
            asyncio.ensure_future(self._copy(self.b, self.a, self.counters[1], "<")),
        ]
        try:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            for t in self.tasks:
                t.cancel()

    async def _copy(self, src: _aio.Stream, dst: _aio.Stream, counter: Counter, mark: str) -> None:
        dump = HexDumper(mark) if self.opts.hexdump else None
        packets = src.socket.type == socket.SOCK_SEQPACKET
        try:
            while data := await (src.recv_packet() if packets else src.recv(65536)):
                if dump is not None:
                    for line in dump.lines(data):
                        self.opts.log.always(line)
                await dst.sendall(data)
                counter.add(len(data))
        except (OSError, ssl.SSLError) as exc:
            self.opts.log.debug(f"relay direction {mark}: {exc}")
            self.abort()
            return
        await dst.shutdown_write()

    def abort(self) -> None:
        """Pass a reset on: SO_LINGER 0 makes the coming close() send RST."""
        if self.reset:
            return
        self.reset = True
        for s in (self.a, self.b):
            with contextlib.suppress(OSError):
                s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
        self.stop()

    def stop(self) -> None:
        for t in self.tasks:
            t.cancel()


# --- datagrams -----------------------------------------------------------------------------------


class _DgramRelay:
    """udp/unixgram <-> udp/unixgram: a session (own upstream socket) per client address."""

    def __init__(self, listen_sock: socket.socket, bound: Address, target: Address, opts: RelayOptions) -> None:
        self.sock = listen_sock
        self.bound = bound
        self.target = target
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.sessions: dict[Any, tuple[socket.socket, list[float]]] = {}
        self.idle = opts.idle_timeout if opts.idle_timeout is not None else DEFAULT_UDP_IDLE
        self.target_sa: Any = None

    async def start(self) -> None:
        from sockcat.streams.sync import resolve

        infos = await self.loop.run_in_executor(None, resolve, self.target)
        self.target_info = infos[0]
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._from_client)
        self.sweeper = asyncio.ensure_future(self._sweep())

    def _from_client(self) -> None:
        for _ in range(64):
            try:
                data, sa = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.opts.log.debug(f"recvfrom on {self.bound}: {describe(exc)}")
                continue
            session = self.sessions.get(sa)
            if session is None:
                session = self._open(sa)
                if session is None:
                    continue
            up, stamp = session
            stamp[0] = time.monotonic()
            with contextlib.suppress(OSError):
                up.send(data)

    def _open(self, sa: Any) -> tuple[socket.socket, list[float]] | None:
        peer = to_address(self.bound.scheme, sa)
        if self.bound.is_ip and not self.opts.access.permits(peer.host):
            self.opts.log.info(f"refused {show(peer)}: not allowed by --allow/--deny")
            return None
        if self.opts.max_conns is not None and len(self.sessions) >= self.opts.max_conns:
            self.opts.log.info(f"refused {show(peer)}: --max-conns {self.opts.max_conns} reached")
            return None
        if self.bound.is_unix and not sa:
            self.opts.log.info(f"datagram from an unbound {self.bound.scheme} client: replies cannot reach it")
        fam, kind, proto, target_sa = self.target_info
        up = socket.socket(fam, kind, proto)
        try:
            if fam == socket.AF_UNIX:
                up.bind("")  # autobind, so the target's replies can come back
            up.setblocking(False)
            up.connect(target_sa)
        except OSError as exc:
            up.close()
            self.opts.log.info(f"{show(peer)}: connect {self.target}: {describe(exc)}")
            return None
        session = (up, [time.monotonic()])
        self.sessions[sa] = session
        self.loop.add_reader(up.fileno(), self._from_upstream, sa, up, session[1])
        self.opts.log.info(f"session from {show(peer)} on {self.bound} -> {self.target}")
        return session

    def _from_upstream(self, sa: Any, up: socket.socket, stamp: list[float]) -> None:
        for _ in range(64):
            try:
                data = up.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.opts.log.debug(f"{self.target}: {describe(exc)}")
                return
            stamp[0] = time.monotonic()
            if sa:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, sa)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle / 2 or 0.1))
            now = time.monotonic()
            for sa, (up, stamp) in list(self.sessions.items()):
                if now - stamp[0] >= self.idle:
                    self._close(sa, up)

    def _close(self, sa: Any, up: socket.socket) -> None:
        self.sessions.pop(sa, None)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(up.fileno())
        up.close()
        self.opts.log.info(f"session from {to_address(self.bound.scheme, sa)} closed")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sweeper.cancel()
        for sa, (up, _stamp) in list(self.sessions.items()):
            self._close(sa, up)


# --- running it ----------------------------------------------------------------------------------


def _check_kinds(listen: Address, target: Address) -> None:
    if listen.is_stdio or target.is_stdio:
        raise UsageError("relay joins two socket addresses; for stdio use connect or listen")
    if listen.is_datagram != target.is_datagram:
        raise UsageError(f"cannot relay between a datagram and a stream address: {listen} and {target}")


def run_relay(listen_address: Address, target: Address, opts: RelayOptions) -> None:
    """``sockcat relay LISTEN TARGET`` (CLI entry): bind, print the listening line, serve until a signal."""
    _check_kinds(listen_address, target)
    if opts.proxy is not None:
        check_proxy_target(target)
    settings = Settings(
        log=opts.log, sockopts=opts.sockopts, fingerprint=opts.fingerprint, workers=opts.workers, grace=opts.grace
    )
    serve_on_loop([listen_address], settings, lambda: _Serving(target, opts))


class _Serving:
    """The relay as the serving scaffold runs it, in each process."""

    def __init__(self, target: Address, opts: RelayOptions) -> None:
        self.target = target
        self.opts = opts
        self.relay: _Relay | None = None
        self.dgram: _DgramRelay | None = None

    async def start(self, bound: list[Bound]) -> None:
        (b,) = bound
        if b.address.is_datagram:
            self.dgram = _DgramRelay(b.sock, b.address, self.target, self.opts)
            await self.dgram.start()
            return
        b.sock.setblocking(False)
        self.relay = _Relay(self.target, self.opts, b.sock, b.address)
        self.relay.start_accepting()

    async def stop(self, grace: float) -> None:
        if self.dgram is not None:
            self.dgram.stop()
        relay = self.relay
        if relay is None:
            return
        try:
            relay.closing = True  # no back-off timer may start accepting again
            relay.stop_accepting()
            # Graceful: no new connections; the ones under way get --grace seconds.
            if relay.busy() and grace:
                self.opts.log.info(
                    f"stopping: {len(relay.conns) + len(relay.tasks)} connection(s) get {grace:g} s to finish"
                )
                await _wait_idle(relay, grace)
            if relay.busy():
                relay.stop_all()
                await _wait_idle(relay, 2.0)
                for t in list(relay.tasks):
                    t.cancel()
        finally:
            relay.close()


async def _wait_idle(relay: _Relay, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while relay.busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


# --- the library functions -----------------------------------------------------------------------


def _disconnect(fd: int) -> bool:
    """``connect(fd, AF_UNSPEC)``: Linux aborts a TCP connection at once (RST) and wakes its blocked callers."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        unspec = (ctypes.c_ubyte * 16)()  # a sockaddr whose sa_family is AF_UNSPEC (0)
        return int(libc.connect(fd, ctypes.byref(unspec), ctypes.sizeof(unspec))) == 0
    except (OSError, AttributeError):
        return False


def _reset_now(sock: socket.socket) -> None:
    """Reset a connection another thread may be blocked on: RST to the peer (never a FIN), the waiter woken.

    SO_LINGER 0 makes the eventual close() send RST; on Linux TCP, ``connect(AF_UNSPEC)`` sends it now and
    wakes a blocked reader or writer. ``shutdown(SHUT_RD)`` sends nothing but wakes a reader elsewhere.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
    if sys.platform == "linux" and sock.family in (socket.AF_INET, socket.AF_INET6) and sock.fileno() >= 0:
        _disconnect(sock.fileno())
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RD)


def relay(a: Stream, b: Stream) -> tuple[int, int]:
    """Copy ``a`` -> ``b`` and ``b`` -> ``a`` until both directions end; half-close and resets propagate.

    Returns (bytes a->b, bytes b->a). Plain sockets move through ``os.splice``; bytes already buffered
    by ``recv_line``/``recv_until`` go first.
    """
    from sockcat.engines.pump import StreamEnd, copy

    counters = (Counter(), Counter())

    def one(src: Stream, dst: Stream, counter: Counter) -> None:
        try:
            copy(StreamEnd(src), StreamEnd(dst), counter)
        except OSError:
            for s in (a, b):  # pass the reset on (no FIN first), and wake the other direction
                _reset_now(s.socket)

    for s in (a, b):
        s.socket.settimeout(None)
    t = threading.Thread(target=one, args=(b, a, counters[1]), daemon=True)
    t.start()
    one(a, b, counters[0])
    t.join()
    return counters[0].bytes, counters[1].bytes


async def relay_async(a: _aio.Stream, b: _aio.Stream) -> tuple[int, int]:
    """The asyncio twin of :func:`relay`."""
    conn = _BufferedConn(a, b, RelayOptions())
    await conn.run()
    return conn.counters[0].bytes, conn.counters[1].bytes
