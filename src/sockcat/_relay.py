"""``relay``: forward between any two endpoints, both directions, until both have ended.

Design (the reasoning the issue asks for):

* One asyncio loop (uvloop when installed) owns every socket, so an idle relayed connection costs two
  sockets and a few small objects: no thread, no pipe, no buffer.
* Plain stream sockets on both sides move bytes with ``os.splice`` through a kernel pipe. A short burst is
  spliced right in the loop's read callback through the loop's own pipe. A flow that keeps coming (a full
  chunk) or meets a full destination is handed, with its pipe, to a worker thread that splices until the
  source has been quiet for a moment, then hands the flow back to the loop and its pipe back to a small pool.
  So threads and pipes belong to moving flows only (pipes count against ``fs.pipe-user-pages-soft``).
* TLS, ``--hexdump``, ``--trace`` and packet sockets take the buffered path: 64 KiB per active direction,
  awaited sends, so a slow reader slows the writer and memory stays bounded.
* EOF on one side becomes shutdown(SHUT_WR) on the other; the opposite direction keeps flowing.
  A reset is passed on as a reset (SO_LINGER 0, then close).
* Datagram kinds (udp*, unixgram): one upstream socket per client address, closed after the idle time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import select
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import _trace
from . import aio as _aio
from ._access import AccessPolicy
from ._address import Address
from ._copy import Counter, grow_pipe
from ._errors import NetworkError, UsageError, describe
from ._hexdump import HexDumper
from ._log import SILENT, Log
from ._options import SockOpt
from ._sockets import Listener, Stream, bind_socket, to_address

CHUNK = 1 << 20  # bytes one splice may move; also the size of a flow's pipe
BULK = 1 << 18  # a burst this large in the loop means a bulk flow: give it a thread
QUIET_MS = 200  # a worker hands its flow back to the loop after this long without data
POLL_MS = 200  # worker threads re-check for shutdown this often while waiting
DEFAULT_UDP_IDLE = 60.0
_LINGER0 = struct.pack("ii", 1, 0)
_HAVE_SPLICE = hasattr(os, "splice")


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


def raise_nofile_limit() -> int:
    """Raise the open-files limit as far as the OS allows; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = hard
    for want in (max(hard, min(ceiling, 1 << 20)), hard):
        if want == resource.RLIM_INFINITY or want <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft


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


class _Flow:
    """One direction of a spliced connection: src socket -> dst socket."""

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
    def watch(self) -> None:
        self.in_loop = True
        self.conn.loop.add_reader(self.src_fd, self.on_readable)

    def unwatch(self) -> bool:
        """Stop watching the source; True if it was watched (uvloop's remove_reader returns None)."""
        was, self.in_loop = self.in_loop, False
        if was:
            self.conn.loop.remove_reader(self.src_fd)
        return was

    def on_readable(self) -> None:
        conn = self.conn
        pipe = conn.relay.loop_pipe
        try:
            n = os.splice(self.src_fd, pipe[1], CHUNK, flags=os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            return
        except OSError as exc:
            self.unwatch()
            self.finish(exc)
            return
        if n == 0:
            self.unwatch()
            self.finish(None)
            return
        moved = 0
        failure: OSError | None = None
        try:
            while moved < n:
                moved += os.splice(pipe[0], self.dst_fd, n - moved, flags=os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            pass
        except OSError as exc:
            failure = exc
        self.counter.add(moved)
        if failure is not None:
            # The destination failed with bytes still in the loop's pipe: that pipe goes with this flow.
            conn.relay.loop_pipe = conn.relay.pipes.get()
            self.pipe = pipe
            self.unwatch()
            self.finish(failure)
            return
        if moved < n or n >= BULK:
            self.unwatch()
            if moved < n:
                self.pipe, self.pending = pipe, n - moved
                conn.relay.loop_pipe = conn.relay.pipes.get()
            fut = conn.loop.run_in_executor(conn.relay.executor, self.pump)
            fut.add_done_callback(self._pumped)

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
        """Splice until EOF (None), an error (the OSError) or a quiet source (True: hand back)."""
        pipe = self.pipe or self.conn.relay.pipes.get()
        self.pipe = None
        pending = self.pending
        self.pending = 0
        r, w = pipe
        try:
            while True:
                if self.conn.closing:
                    return None
                if pending == 0:
                    try:
                        n = os.splice(self.src_fd, w, CHUNK, flags=os.SPLICE_F_NONBLOCK)
                    except BlockingIOError:
                        if not _wait(self.src_fd, select.POLLIN, QUIET_MS):
                            return True
                        continue
                    if n == 0:
                        return None
                    pending = n
                try:
                    m = os.splice(r, self.dst_fd, pending, flags=os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    _wait(self.dst_fd, select.POLLOUT, POLL_MS)
                    continue
                pending -= m
                self.counter.add(m)
        except OSError as exc:
            return exc
        finally:
            if pending == 0:
                self.conn.relay.pipes.put(pipe)
            else:
                for fd in pipe:
                    os.close(fd)


class _SpliceConn:
    def __init__(
        self, relay: _Relay, client: socket.socket, upstream: socket.socket, done: asyncio.Future[None]
    ) -> None:
        self.relay = relay
        self.loop = relay.loop
        self.client = client
        self.upstream = upstream
        self.closing = False
        self.reset = False
        self.done = done
        self.up = _Flow(self, client, upstream, "up")
        self.down = _Flow(self, upstream, client, "down")

    def start(self) -> None:
        for flow in (self.up, self.down):
            flow.watch()

    def flow_done(self, flow: _Flow, exc: BaseException | None) -> None:
        if exc is not None:
            self.relay.opts.log.debug(f"{flow.name}: {describe(exc)}")
            self.abort()
        elif not self.reset:
            with contextlib.suppress(OSError):
                flow.dst.shutdown(socket.SHUT_WR)  # half-close passes through
        if self.up.done and self.down.done and not self.done.done():
            self.done.set_result(None)

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
        self.closing = True
        for flow in (self.up, self.down):
            if not flow.done and flow.unwatch():
                flow.finish(None)


# --- the relay server ----------------------------------------------------------------------------


class _Relay:
    def __init__(self, target: Address, opts: RelayOptions) -> None:
        self.target = target
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.pipes = _PipePool()
        self.loop_pipe = self.pipes.get()
        self.executor = ThreadPoolExecutor(max_workers=512, thread_name_prefix="splice")
        self.active: set[Any] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.count = 0

    def splice_ok(self, a: socket.socket, b: socket.socket) -> bool:
        return (
            _HAVE_SPLICE
            and not self.opts.hexdump
            and not _trace.tracing()
            and self.opts.server_ssl is None
            and self.opts.client_ssl is None
            and a.type == socket.SOCK_STREAM
            and b.type == socket.SOCK_STREAM
        )

    async def connect_upstream(self) -> socket.socket:
        return await _aio.connect_socket(
            self.target, timeout=self.opts.connect_timeout, source=self.opts.source, sockopts=self.opts.sockopts
        )

    def admit(self, sock: socket.socket, peer: Address | None) -> bool:
        log = self.opts.log
        if self.opts.access.active and not self.opts.access.permits(peer.host if peer else ""):
            log.info(f"refused {peer}: not allowed by --allow/--deny")
            return False
        if self.opts.max_conns is not None and len(self.tasks) >= self.opts.max_conns:
            log.info(f"refused {peer}: --max-conns {self.opts.max_conns} reached")
            return False
        return True

    async def handle(self, client: socket.socket, peer: Address | None, local: Address | None) -> None:
        log = self.opts.log
        client.setblocking(False)
        upstream: socket.socket | None = None
        try:
            try:
                upstream = await self.connect_upstream()
            except (OSError, UsageError) as exc:
                log.info(f"{peer}: {exc}")
                return
            up_local = _name(upstream, self.target.scheme, False)
            log.info(f"connection from {peer} on {local} -> {self.target} from {up_local}")
            started = time.monotonic()
            try:
                if self.splice_ok(client, upstream):
                    sent, received = await self._splice(client, upstream)
                else:
                    sent, received = await self._buffered(client, upstream, peer)
            except OSError as exc:  # a TLS handshake on either side
                log.info(f"{peer}: {exc}")
                return
            log.info(
                f"closed {peer}: {sent} bytes to {self.target}, {received} bytes back, "
                f"{time.monotonic() - started:.3f} s"
            )
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    async def _splice(self, client: socket.socket, upstream: socket.socket) -> tuple[int, int]:
        done: asyncio.Future[None] = self.loop.create_future()
        conn = _SpliceConn(self, client, upstream, done)
        self.active.add(conn)
        watchdog = self._watch_idle(conn, (conn.up.counter, conn.down.counter)) if self.opts.idle_timeout else None
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
            if watchdog is not None:
                watchdog.cancel()
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
        a = await self._wrap(client, self.opts.server_ssl, True, str(peer))
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
        for conn in list(self.active):
            conn.stop()


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
        from ._sockets import resolve

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
            self.opts.log.info(f"refused {peer}: not allowed by --allow/--deny")
            return None
        if self.opts.max_conns is not None and len(self.sessions) >= self.opts.max_conns:
            self.opts.log.info(f"refused {peer}: --max-conns {self.opts.max_conns} reached")
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
            self.opts.log.info(f"{peer}: connect {self.target}: {describe(exc)}")
            return None
        session = (up, [time.monotonic()])
        self.sessions[sa] = session
        self.loop.add_reader(up.fileno(), self._from_upstream, sa, up, session[1])
        self.opts.log.info(f"session from {peer} on {self.bound} -> {self.target}")
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


def run_relay(listen_address: Address, target: Address, opts: RelayOptions) -> int:
    """``sockcat relay LISTEN TARGET`` (CLI entry): bind, print the listening line, serve until a signal."""
    _check_kinds(listen_address, target)
    if opts.workers < 1:
        raise UsageError("--workers must be at least 1")
    raise_nofile_limit()
    sock, bound = bind_socket(listen_address, sockopts=opts.sockopts)
    listener = Listener(sock, bound)
    with listener:
        if not bound.is_datagram:
            try:
                sock.listen(4096)
            except OSError as exc:
                raise NetworkError(exc.errno or 0, f"listen {bound}: {describe(exc)}") from None
        opts.log.always(f"listening on {bound}")
        if opts.fingerprint:
            opts.log.always(f"certificate sha256 {opts.fingerprint}")
        children: list[int] = []
        if opts.workers > 1:
            for _ in range(opts.workers - 1):
                pid = os.fork()
                if pid == 0:  # a worker: the same listening socket, its own loop
                    code = 1
                    try:
                        code = _serve_in_process(sock, bound, target, opts, is_child=True)
                    finally:
                        os._exit(code)
                children.append(pid)
        try:
            return _serve_in_process(sock, bound, target, opts, is_child=False, children=children)
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for pid in children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def _serve_in_process(
    sock: socket.socket,
    bound: Address,
    target: Address,
    opts: RelayOptions,
    *,
    is_child: bool,
    children: list[int] | None = None,
) -> int:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(_serve(sock, bound, target, opts, children or []))


async def _serve(sock: socket.socket, bound: Address, target: Address, opts: RelayOptions, children: list[int]) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    code = [0]

    def on_signal(signum: int) -> None:
        code[0] = 130 if signum == signal.SIGINT else 0
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if bound.is_datagram:
        dgram = _DgramRelay(sock, bound, target, opts)
        await dgram.start()
        await stopping.wait()
        dgram.stop()
        return code[0]
    relay = _Relay(target, opts)
    sock.setblocking(False)
    accepting = asyncio.ensure_future(_accept_loop(relay, sock, bound))
    await stopping.wait()
    accepting.cancel()
    # Graceful: no new connections; the ones under way get --grace seconds.
    if relay.tasks:
        opts.log.info(f"stopping: {len(relay.tasks)} connection(s) get {opts.grace:g} s to finish")
        _done, pending = await asyncio.wait(set(relay.tasks), timeout=opts.grace)
        if pending:
            relay.stop_all()
            await asyncio.wait(pending, timeout=2.0)
            for t in pending:
                t.cancel()
    relay.executor.shutdown(wait=False, cancel_futures=True)
    return code[0]


async def _accept_loop(relay: _Relay, sock: socket.socket, bound: Address) -> None:
    loop = relay.loop
    log = relay.opts.log
    while True:
        try:
            client, sa = await loop.sock_accept(sock)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning(f"accept on {bound}: {describe(exc)}")
                await asyncio.sleep(0.1)
            continue
        peer = to_address(bound.scheme, sa) if sa else None
        if not relay.admit(client, peer):
            client.close()
            continue
        local = _name(client, bound.scheme, False)
        task = asyncio.ensure_future(relay.handle(client, peer, local))
        relay.tasks.add(task)
        task.add_done_callback(_forget(relay.tasks))


def _forget(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            pass

    return done


# --- the library functions -----------------------------------------------------------------------


def relay(a: Stream, b: Stream) -> tuple[int, int]:
    """Copy ``a`` -> ``b`` and ``b`` -> ``a`` until both directions end; half-close and resets propagate.

    Returns (bytes a->b, bytes b->a). Plain sockets move through ``os.splice``; bytes already buffered
    by ``recv_line``/``recv_until`` go first.
    """
    from ._copy import StreamEnd, copy

    counters = (Counter(), Counter())

    def one(src: Stream, dst: Stream, counter: Counter) -> None:
        try:
            copy(StreamEnd(src), StreamEnd(dst), counter)
        except OSError:
            for s in (a, b):  # pass the reset on, and wake the other direction
                with contextlib.suppress(OSError):
                    s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(s.socket, socket.SHUT_RDWR)

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
