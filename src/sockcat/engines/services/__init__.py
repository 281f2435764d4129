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
import socket
import ssl
from collections.abc import Callable
from typing import Any

from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address
from sockcat.core.errors import UsageError, network_error
from sockcat.core.log import SILENT, Log
from sockcat.core.services import (
    CHARGEN_PERIOD,
    chargen_datagram,
    chargen_line,
)
from sockcat.engines.services.common import (
    SERVICES,
    ServeOptions,
    _Shared,
)
from sockcat.engines.services.packets import _DatagramService, _PacketService
from sockcat.engines.services.stream import _STREAM
from sockcat.engines.services.websocket import WsService
from sockcat.net.sockets import SockOpts, bind_socket, norm_opts
from sockcat.serving.loopserver import start_stream_server
from sockcat.serving.process import new_runner
from sockcat.serving.scaffold import Bound, Settings, serve_on_loop
from sockcat.serving.tls_accept import TlsAcceptor
from sockcat.streams.sync import Listener

__all__ = [
    "CHARGEN_PERIOD",
    "SERVICES",
    "ServeOptions",
    "ServiceServer",
    "chargen_datagram",
    "chargen_line",
    "run_serve",
    "serve",
    "serve_async",
]

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
        self._server: asyncio.AbstractServer | TlsAcceptor | None = None
        self._shared: _Shared | None = None
        self._dgram: _DatagramService | None = None
        self._packet: _PacketService | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    async def start(self) -> None:
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

        if addr.is_ws:
            service, resource, ws = self.service, addr.resource, self.opts.ws

            def factory() -> asyncio.BaseProtocol:
                return WsService(shared, service, resource, ws)

        tls = None
        if addr.is_tls and self.opts.ssl_context is not None:  # admitted before the handshake, counted during it
            tls = (self.opts.ssl_context, shared.refuse, shared.log)
        self._server = await start_stream_server(
            self.socket, addr, lambda _accepted: factory(), backlog=self.opts.backlog, tls=tls
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
                conn.abort()  # (not close(): that waits for a client that may never read to take what is queued)

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
        sockopts=norm_opts(sockopts),
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
    settings = Settings(
        log=opts.log, access=opts.access, sockopts=opts.sockopts, fingerprint=opts.fingerprint, workers=opts.workers
    )
    serve_on_loop([address], settings, lambda: _Serving(service, opts))
