"""``serve``: the classic test services — echo (RFC 862), discard (863), chargen (864), daytime (867).

Design:

* One asyncio loop (uvloop when installed) per process. Stream kinds (tcp*, unix, tls) run as asyncio
  Protocols on ``loop.create_server(sock=…)``/``create_unix_server(sock=…)``: a connection costs a
  transport and one small protocol object (``__slots__``), no task, no buffer of its own.
* The listening socket comes from :func:`sockcat.streams.sync.bind_socket`, so address parsing, stale Unix
  socket files and the ``listening on`` line are the same as for ``listen``.
* Memory stays bounded whatever the client does: echo stops reading while its replies are not being
  read (``pause_writing`` → ``pause_reading``); chargen writes only while the transport is not paused,
  in chunks that are one shared ``bytes`` object; discard reads into one buffer shared by every connection.
* Datagram kinds (udp*, unixgram) read with ``recvfrom_into`` in the loop's reader callback and answer
  with ``sendto`` at once (a reply that does not fit the socket buffer is dropped, as UDP would).
  uvloop's datagram transport is not used: it mangles autobound unixgram peer addresses.
* unixpacket (SOCK_SEQPACKET) has no asyncio transport: a small task per connection with
  ``sock_recv``/``sock_sendall`` keeps every record whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address
from sockcat.core.errors import UsageError, describe, network_error
from sockcat.core.log import SILENT, Log
from sockcat.net.options import SockOpt
from sockcat.serving.process import new_runner
from sockcat.serving.scaffold import Bound, Settings, serve_on_loop
from sockcat.streams.sync import Listener, SockOpts, _opts, bind_socket, to_address

SERVICES = ("echo", "discard", "chargen", "daytime")
BACKLOG = 4096
RECV_BUFFER = 256 * 1024
DATAGRAM_MAX = 65536 * 4  # unixgram datagrams may exceed UDP's 64 KiB
WRITE_HIGH_WATER = 64 * 1024  # per-connection bytes queued in user space before chargen/echo pause
TLS_HANDSHAKE_TIMEOUT = 10.0


# --- RFC 864 and RFC 867 (pure) ----------------------------------------------------------------------

_PRINTABLE = bytes(range(32, 127))  # the 95 printable ASCII characters, space included
_LINE_WIDTH = 72
_FIRST = _PRINTABLE.index(b"!")  # RFC 864's sample pattern starts with '!'


def chargen_line(n: int) -> bytes:
    """Line ``n`` (0-based) of RFC 864's pattern: 72 characters starting one later each line, then CRLF."""
    start = (_FIRST + n) % len(_PRINTABLE)
    doubled = _PRINTABLE + _PRINTABLE
    return doubled[start : start + _LINE_WIDTH] + b"\r\n"


# One full period of the pattern (95 lines); any whole number of periods continues seamlessly.
CHARGEN_PERIOD = b"".join(chargen_line(i) for i in range(len(_PRINTABLE)))
CHARGEN_CHUNK = CHARGEN_PERIOD * 9  # 63,270 bytes: one shared object per write, never copied per client
_LINE_LEN = _LINE_WIDTH + 2
_RECORD_LINES = 4096 // _LINE_LEN  # unixpacket: whole lines, at most 4 KiB per record


def chargen_datagram(first_line: int, length: int) -> bytes:
    """``length`` bytes (1-512) of the pattern starting at line ``first_line``: one UDP chargen reply."""
    length = max(1, min(512, length))
    start = (first_line % len(_PRINTABLE)) * _LINE_LEN
    return (CHARGEN_PERIOD + CHARGEN_PERIOD[:1024])[start : start + length]


def daytime_line(now: float | None = None) -> bytes:
    """RFC 867's suggested format, e.g. ``Tuesday, February 22, 1982 17:37:43-PST`` and CRLF."""
    t = time.localtime(now)
    return time.strftime("%A, %B %d, %Y %H:%M:%S-%Z", t).encode("ascii", "replace") + b"\r\n"


# --- options and shared state ---------------------------------------------------------------------------


@dataclass
class ServeOptions:
    log: Log = SILENT
    max_conns: int | None = None
    access: AccessPolicy = field(default_factory=AccessPolicy)
    sockopts: tuple[SockOpt, ...] = ()
    idle_timeout: float | None = None
    ssl_context: ssl.SSLContext | None = None
    fingerprint: str | None = None
    workers: int = 1
    backlog: int = BACKLOG


class _Shared:
    """What every connection of one server shares: options, the connection set, counters."""

    __slots__ = ("access", "conns", "counting", "guarded", "log", "loop", "max_conns", "scheme", "sockopts")

    def __init__(self, scheme: str, opts: ServeOptions) -> None:
        self.loop = asyncio.get_running_loop()
        self.scheme = scheme
        self.log = opts.log
        self.max_conns = opts.max_conns
        self.access = opts.access
        self.sockopts = tuple(o for o in opts.sockopts if o.name not in ("reuseaddr", "reuseport", "v6only"))
        self.conns: set[_Conn] = set()
        # Per-connection bookkeeping only when asked for (-v, -i): the fast path does none.
        self.counting = opts.log.verbose or opts.idle_timeout is not None
        self.guarded = self.counting or opts.access.active or opts.max_conns is not None or bool(self.sockopts)

    def peer_of(self, transport: asyncio.BaseTransport) -> Address | None:
        sa = transport.get_extra_info("peername")
        return _name(self.scheme, sa)

    def admit(self, conn: _Conn, transport: asyncio.BaseTransport) -> bool:
        """Apply --allow/--deny, --max-conns and --sockopt to a new connection; False = refused (closed)."""
        peer = self.peer_of(transport)
        if self.access.active and not self.access.permits(peer.host if peer else ""):
            self.log.info(f"refused {peer}: not allowed by --allow/--deny")
            transport.close()
            return False
        if self.max_conns is not None and len(self.conns) >= self.max_conns:
            self.log.info(f"refused {peer}: --max-conns {self.max_conns} reached")
            transport.close()
            return False
        if self.sockopts:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                for opt in self.sockopts:
                    if opt.applies_to(sock.family, sock.type):
                        with contextlib.suppress(OSError):
                            opt.apply(sock)
        if self.counting:
            conn.peer = peer
            conn.last = self.loop.time()
            local = _name(self.scheme, transport.get_extra_info("sockname"))
            self.log.info(f"connection from {peer} on {local}")
        return True


def _name(scheme: str, sa: Any) -> Address | None:
    if sa is None or sa == "":
        return None
    try:
        return to_address(scheme, sa)
    except (TypeError, ValueError):
        return None


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


# --- datagram services --------------------------------------------------------------------------------------


class _DatagramService:
    """A reader callback on the bound datagram socket; each datagram gets its reply (if any) at once."""

    def __init__(self, service: str, sock: socket.socket, bound: Address, opts: ServeOptions) -> None:
        self.service = service
        self.sock = sock
        self.bound = bound
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray(DATAGRAM_MAX)
        self.view = memoryview(self.buf)
        self.line = random.randrange(len(_PRINTABLE))
        self.warned_unbound = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def stop(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())

    def _reply(self, n: int) -> bytes | None:
        if self.service == "echo":
            return bytes(self.view[:n])
        if self.service == "chargen":
            self.line += 1
            return chargen_datagram(self.line, random.randint(1, 512))
        if self.service == "daytime":
            return daytime_line()
        return None

    def _readable(self) -> None:
        sock, log, access = self.sock, self.opts.log, self.opts.access
        for _ in range(64):  # drain a burst, then let other callbacks run
            try:
                n, sa = sock.recvfrom_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP error for an earlier reply
                log.debug(f"recvfrom on {self.bound}: {describe(exc)}")
                continue
            peer = _name(self.bound.scheme, sa)
            if access.active and not access.permits(peer.host if peer else ""):
                log.info(f"refused {peer}: not allowed by --allow/--deny")
                continue
            if log.verbose:
                log.info(f"datagram from {peer} on {self.bound}: {n} bytes")
            reply = self._reply(n)
            if reply is None:
                continue
            if not sa:
                if not self.warned_unbound:
                    self.warned_unbound = True
                    log.info(f"datagram from an unbound {self.bound.scheme} client: replies cannot reach it")
                continue
            try:
                sock.sendto(reply, sa)
            except OSError as exc:  # full buffer or gone peer: drop the reply, as UDP would
                log.debug(f"sendto {peer}: {describe(exc)}")


# --- unixpacket (SOCK_SEQPACKET) --------------------------------------------------------------------------


class _PacketService:
    """An accept loop and one task per connection; records stay whole (no coalescing transport)."""

    def __init__(self, service: str, sock: socket.socket, bound: Address, opts: ServeOptions) -> None:
        self.service = service
        self.sock = sock
        self.bound = bound
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.sock.setblocking(False)
        self.accepting = asyncio.ensure_future(self._accept_loop())

    def stop(self) -> None:
        if self.accepting is not None:
            self.accepting.cancel()
        for t in list(self.tasks):
            t.cancel()

    async def _accept_loop(self) -> None:
        log, opts = self.opts.log, self.opts
        while True:
            try:
                conn, _sa = await self.loop.sock_accept(self.sock)
            except OSError as exc:
                log.warning(f"accept on {self.bound}: {describe(exc)}")
                await asyncio.sleep(0.1)
                continue
            if opts.access.active and not opts.access.permits(""):
                log.info(f"refused a connection on {self.bound}: not allowed by --allow/--deny")
                conn.close()
                continue
            if opts.max_conns is not None and len(self.tasks) >= opts.max_conns:
                log.info(f"refused a connection on {self.bound}: --max-conns {opts.max_conns} reached")
                conn.close()
                continue
            conn.setblocking(False)
            log.info(f"connection on {self.bound}")
            task = asyncio.ensure_future(self._handle(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _handle(self, conn: socket.socket) -> None:
        loop = self.loop
        rx = tx = 0
        try:
            if self.service == "daytime":
                line = daytime_line()
                await loop.sock_sendall(conn, line)
                tx += len(line)
            elif self.service == "chargen":
                tx = await self._chargen(conn)
            else:
                while data := await self._recv(conn):
                    rx += len(data)
                    if self.service == "echo":
                        await loop.sock_sendall(conn, data)
                        tx += len(data)
        except OSError as exc:
            self.opts.log.info(f"connection on {self.bound}: {describe(exc)}")
        finally:
            conn.close()
            self.opts.log.info(f"closed a connection on {self.bound}: {tx} bytes sent, {rx} bytes received")

    async def _recv(self, conn: socket.socket) -> bytes:
        if self.opts.idle_timeout is None:
            return await self.loop.sock_recv(conn, RECV_BUFFER)
        try:
            async with asyncio.timeout(self.opts.idle_timeout):
                return await self.loop.sock_recv(conn, RECV_BUFFER)
        except TimeoutError:
            self.opts.log.info(f"idle for {self.opts.idle_timeout:g} s: closing")
            return b""

    async def _chargen(self, conn: socket.socket) -> int:
        async def drain() -> None:
            while await self.loop.sock_recv(conn, RECV_BUFFER):
                pass

        reader = asyncio.ensure_future(drain())
        tx = 0
        line = 0
        try:
            while not reader.done():
                record = b"".join(chargen_line(line + i) for i in range(_RECORD_LINES))
                line += _RECORD_LINES
                await self.loop.sock_sendall(conn, record)
                tx += len(record)
        finally:
            reader.cancel()
        return tx


# --- a running service ----------------------------------------------------------------------------------


class ServiceServer:
    """One process's service on an already bound socket; :meth:`start`, then :meth:`close`."""

    def __init__(self, service: str, sock: socket.socket, address: Address, opts: ServeOptions) -> None:
        if service not in SERVICES:
            raise UsageError(f"unknown service {service!r} (known: {', '.join(SERVICES)})")
        self.service = service
        self.socket = sock
        self.address = address
        self.opts = opts
        self.fingerprint = opts.fingerprint
        self._server: asyncio.AbstractServer | None = None
        self._shared: _Shared | None = None
        self._dgram: _DatagramService | None = None
        self._packet: _PacketService | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        addr = self.address
        if addr.is_datagram:
            self._dgram = _DatagramService(self.service, self.socket, addr, self.opts)
            self._dgram.start()
            return
        if addr.type == socket.SOCK_SEQPACKET:
            self.socket.listen(self.opts.backlog)
            self._packet = _PacketService(self.service, self.socket, addr, self.opts)
            self._packet.start()
            return
        shared = self._shared = _Shared(addr.scheme, self.opts)
        fast, counted = _STREAM[self.service]
        cls = counted if shared.counting else fast

        def factory() -> asyncio.BaseProtocol:
            return cls(shared)

        if addr.is_unix:
            self._server = await loop.create_unix_server(factory, sock=self.socket, backlog=self.opts.backlog)
        else:
            ctx = self.opts.ssl_context if addr.is_tls else None
            self._server = await loop.create_server(
                factory,
                sock=self.socket,
                backlog=self.opts.backlog,
                ssl=ctx,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if ctx is not None else None,
            )
        if self.opts.idle_timeout is not None:
            self._sweeper = asyncio.ensure_future(self._sweep(shared, self.opts.idle_timeout))

    async def _sweep(self, shared: _Shared, idle: float) -> None:
        """Close connections idle for ``idle`` seconds (one timer for all, not one per connection)."""
        while True:
            await asyncio.sleep(max(0.05, min(idle / 4, 1.0)))
            limit = shared.loop.time() - idle
            for conn in [c for c in shared.conns if c.last < limit]:
                shared.log.info(f"{conn.peer}: idle for {idle:g} s: closing")
                conn.stop()

    def close(self) -> None:
        """Stop accepting and close every connection (idempotent)."""
        if self._server is not None:
            self._server.close()
        if self._shared is not None:
            for conn in list(self._shared.conns):
                conn.stop()
        if self._dgram is not None:
            self._dgram.stop()
        if self._packet is not None:
            self._packet.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def connections(self) -> int:
        if self._shared is not None:
            return len(self._shared.conns)
        if self._packet is not None:
            return len(self._packet.tasks)
        return 0


# --- binding, running, the public functions ------------------------------------------------------------------


def _bind(address: Address, opts: ServeOptions) -> tuple[socket.socket, Address]:
    if address.is_stdio:
        raise UsageError("serve needs a socket address, not stdio:")
    return bind_socket(address, sockopts=opts.sockopts)


def _tls_setup(address: Address, opts: ServeOptions, cert: str | None, key: str | None) -> None:
    if address.is_tls and opts.ssl_context is None:
        from sockcat.net.tls import server_context

        opts.ssl_context, opts.fingerprint = server_context(
            cert=cert, key=key, hosts=[address.host] if address.host else []
        )


def _options(
    *,
    log: Log | None,
    max_conns: int | None,
    allow: list[str] | tuple[str, ...],
    deny: list[str] | tuple[str, ...],
    sockopts: SockOpts,
    idle_timeout: float | None,
    ssl_context: ssl.SSLContext | None,
) -> ServeOptions:
    return ServeOptions(
        log=log or SILENT,
        max_conns=max_conns,
        access=AccessPolicy.parse(allow, deny),
        sockopts=_opts(sockopts),
        idle_timeout=idle_timeout,
        ssl_context=ssl_context,
    )


async def serve_async(
    service: str,
    address: Address | str,
    *,
    ready: Callable[[ServiceServer], object] | None = None,
    log: Log | None = None,
    max_conns: int | None = None,
    allow: list[str] | tuple[str, ...] = (),
    deny: list[str] | tuple[str, ...] = (),
    sockopts: SockOpts = None,
    idle_timeout: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> None:
    """Run ``service`` on ``address`` until cancelled; ``ready(server)`` is called once it is bound
    (``server.address`` is the bound address, port 0 resolved; ``server.fingerprint`` a self-signed
    TLS certificate's fingerprint)."""
    addr = Address.parse(address)
    if service not in SERVICES:
        raise UsageError(f"unknown service {service!r} (known: {', '.join(SERVICES)})")
    opts = _options(
        log=log,
        max_conns=max_conns,
        allow=allow,
        deny=deny,
        sockopts=sockopts,
        idle_timeout=idle_timeout,
        ssl_context=ssl_context,
    )
    _tls_setup(addr, opts, cert, key)
    sock, bound = _bind(addr, opts)
    with Listener(sock, bound):
        server = ServiceServer(service, sock, bound, opts)
        try:
            await server.start()
        except OSError as exc:
            raise network_error(exc, f"listen {bound}") from None
        try:
            if ready is not None:
                ready(server)
            await server.wait_closed()
        finally:
            server.close()


def serve(service: str, address: Address | str, **kwargs: Any) -> None:
    """Run ``service`` (echo, discard, chargen, daytime) on ``address`` until interrupted.

    Takes the keyword arguments of :func:`serve_async`; blocks (uvloop when installed).
    """
    with new_runner() as runner:
        runner.run(serve_async(service, address, **kwargs))


class _Serving:
    """The service as the serving scaffold runs it, in each process: one server per bound socket."""

    def __init__(self, service: str, opts: ServeOptions) -> None:
        self.service = service
        self.opts = opts
        self.servers: list[ServiceServer] = []

    async def start(self, bound: list[Bound]) -> None:
        for b in bound:
            server = ServiceServer(self.service, b.sock, b.address, self.opts)
            self.servers.append(server)
            await server.start()

    async def stop(self, grace: float) -> None:
        for server in self.servers:
            server.close()


def run_serve(service: str, address: Address, opts: ServeOptions) -> None:
    """``sockcat serve`` (CLI entry): bind, print the listening line, fork workers, serve until a signal."""
    if service not in SERVICES:
        raise UsageError(f"unknown service {service!r} (known: {', '.join(SERVICES)})")
    if address.is_stdio:
        raise UsageError("serve needs a socket address, not stdio:")
    if address.is_datagram and opts.max_conns is not None:
        raise UsageError("--max-conns is for stream addresses (a datagram service has no connections)")
    settings = Settings(log=opts.log, sockopts=opts.sockopts, fingerprint=opts.fingerprint, workers=opts.workers)
    serve_on_loop([address], settings, lambda: _Serving(service, opts))
