"""The stream relay: accepting (in batches, descriptors reserved before each accept), the callback path
for a target that needs no look-up, and a task per connection for the rest; both end in a spliced or a
buffered connection."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import select
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from sockcat.core.address import Address, show
from sockcat.core.errors import UsageError, describe
from sockcat.engines.pump import Counter
from sockcat.engines.relay.buffered import _BufferedConn
from sockcat.engines.relay.common import RelayOptions, _name
from sockcat.engines.relay.splice import _HAVE_SPLICE, _Mux, _PipePool, _SpliceConn
from sockcat.net import trace as _trace
from sockcat.net.sockets import prepare_socket, resolve, to_address
from sockcat.serving.scaffold import DEFAULT_MAX_CONNS
from sockcat.streams import aio as _aio
from sockcat.streams.aio_tls import AioTLS, handshake_async
from sockcat.streams.aio_ws import client_handshake as ws_client_handshake
from sockcat.streams.aio_ws import server_handshake as ws_server_handshake

_NO_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


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
            and self.opts.server_ws is None
            and self.opts.client_ws is None
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
        up = prepare_socket(fam, kind, proto, self.opts.sockopts, self.opts.source, str(self.target))
        up.setblocking(False)
        return up

    def admit(self, sock: socket.socket, sa: Any) -> bool:
        opts = self.opts
        if opts.access.active:
            peer = self.peer(sa)
            if not opts.access.permits(peer.host if peer else ""):
                opts.log.info(f"refused {show(peer)}: not allowed by --allow/--deny")
                return False
        cap = opts.max_conns if opts.max_conns is not None else DEFAULT_MAX_CONNS
        if len(self.conns) + len(self.tasks) >= cap:
            if opts.log.verbose:
                opts.log.info(f"refused {show(self.peer(sa))}: --max-conns {cap} reached")
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
        front: _aio.Stream | None = None
        try:
            if self.opts.server_ws is not None:
                # A WebSocket client is answered first: a plain HTTP request gets its HTTP error, and no request
                # that is not a WebSocket costs a connection to the target.
                try:
                    front = await self._wrap(client, self.opts.server_ssl, True, show(peer))
                except OSError as exc:
                    log.info(f"{show(peer)}: {exc}")
                    return
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
                    sent, received = await self._buffered(client, upstream, peer, front)
            except OSError as exc:  # a TLS handshake on either side
                log.info(f"{show(peer)}: {exc}")
                return
            log.info(
                f"closed {show(peer)}: {sent} bytes to {self.target}, {received} bytes back, "
                f"{time.monotonic() - started:.3f} s"
            )
        finally:
            if front is not None:
                front.close()
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

    async def _buffered(
        self, client: socket.socket, upstream: socket.socket, peer: Address | None, front: _aio.Stream | None = None
    ) -> tuple[int, int]:
        """TLS, WebSockets, hex dumps and packet sockets: awaited copies through 64 KiB, half-close and resets
        kept. ``front``: the client's side, already wrapped."""
        a = front or await self._wrap(client, self.opts.server_ssl, True, show(peer))
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
        """TLS and the WebSocket upgrade, as the listening (``server_side``) or target address says."""
        tls = None
        if ctx is not None:
            hostname = None if server_side else (self.opts.sni or self.target.host or None)
            tls = AioTLS(sock, ctx, server_side, hostname)
            await handshake_async(
                tls, sock, f"TLS handshake {'from' if server_side else 'with'} {where}", self.opts.connect_timeout
            )
        ws = self.opts.server_ws if server_side else self.opts.client_ws
        if ws is None:
            return _aio.Stream(sock, "tls" if tls else "tcp", tls=tls)
        if server_side:
            assert self.bound is not None
            chan, _ans = await ws_server_handshake(sock, tls, where, self.bound.resource, ws)
        else:
            chan = await ws_client_handshake(sock, tls, self.target, ws, timeout=self.opts.connect_timeout)
        return _aio.Stream(sock, "ws", tls=tls, ws=chan)

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
