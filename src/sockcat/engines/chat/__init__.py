"""``sockcat chat ADDR [ADDR...]``: the chat broker of SPEC §3, on any stream addresses, one room across them.

One asyncio loop; a :class:`~.client.Client` protocol per connection, sharing a :class:`~.broker.Broker`. The
protocol itself is pure (:mod:`sockcat.core.chatproto`); the store is SQLite (:mod:`.store`); passwords are
hashed off the loop (:mod:`.passwords`).

What a peer cannot do, by default: send control characters or bidi overrides to others (shown escaped), take a
name that looks like another one (TR 39 confusables, mixed scripts, invisible characters), stall the broker with
password guesses (hashes run in a thread pool; wrong guesses slow the answers), fill the store (quotas, expiry),
lock a user out with a full mailbox (mail comes in pages), sit unnamed on a connection (a name within 30 s), or
exceed ``--max-conns`` (10,000). A client over its line budget (``--line-rate``) is slowed, never loses a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Coroutine
from typing import Any

from sockcat.core import chatproto as proto
from sockcat.core.address import Address, show
from sockcat.core.errors import NetworkError, UsageError, describe, tls_reason
from sockcat.engines.chat.broker import Broker, ChatOptions
from sockcat.engines.chat.client import Client
from sockcat.engines.chat.store import ChatStore, Quotas, default_db
from sockcat.net.sockets import to_address
from sockcat.serving.scaffold import Bound, Settings, serve_on_loop
from sockcat.streams.sync import Listener
from sockcat.streams.tlsio import TLS_HANDSHAKE_TIMEOUT

__all__ = ["ChatOptions", "ChatService", "ChatStore", "Quotas", "chat_async", "default_db", "open_store", "run_chat"]


def open_store(opts: ChatOptions) -> ChatStore:
    """The store ``--db`` names (default: under the user's state directory); one error line if it cannot open."""
    where = opts.db if opts.db is not None else default_db()
    try:
        return ChatStore(where, opts.quotas)
    except Exception as exc:
        raise NetworkError(0, f"chat store {where}: {describe(exc)}") from None


class ChatService:
    """One broker on one or more bound, listening sockets: one room across all of them.

    On a TLS address the broker accepts itself and admits (``--allow``/``--deny``, ``--max-conns``) before the
    handshake, so connections that never finish one count against the cap; each has 10 s to finish it."""

    def __init__(self, opts: ChatOptions, store: ChatStore) -> None:
        self.opts = opts
        self.store = store
        self.broker: Broker | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.tasks: set[asyncio.Task[None]] = set()  # TLS accept loops and handshakes
        self.handshaking = 0

    async def start(self, bound: list[Bound]) -> None:
        loop = asyncio.get_running_loop()
        broker = self.broker = Broker(self.store, self.opts)
        broker.start()
        for b in bound:
            if b.address.is_tls and self.opts.ssl_context is not None:
                self._spawn(self._accept_tls(b.sock, b.address.scheme, self.opts.ssl_context))
                continue

            def factory(scheme: str = b.address.scheme) -> asyncio.BaseProtocol:
                return Client(broker, scheme)

            if b.address.is_unix:
                server = await loop.create_unix_server(factory, sock=b.sock)
            else:
                server = await loop.create_server(factory, sock=b.sock)
            self.servers.append(server)

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(step)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _accept_tls(self, sock: socket.socket, scheme: str, ctx: ssl.SSLContext) -> None:
        loop, broker = asyncio.get_running_loop(), self.broker
        assert broker is not None
        sock.setblocking(False)
        while True:
            try:
                conn, where = await loop.sock_accept(sock)
            except OSError as exc:  # (EMFILE and the like: not the end of the broker)
                self.opts.log.warning(f"accept: {describe(exc)}")
                await asyncio.sleep(0.1)
                continue
            address = to_address(scheme, where)
            why = broker.refuse(address, len(broker.clients) + self.handshaking)
            if why is not None:
                self.opts.log.info(f"refused {show(address, conn)}: {why}")
                conn.close()
                continue
            self._spawn(self._handshake(conn, address, scheme, ctx, loop.time()))

    async def _handshake(
        self, conn: socket.socket, address: Address, scheme: str, ctx: ssl.SSLContext, accepted: float
    ) -> None:
        broker = self.broker
        assert broker is not None
        self.handshaking += 1
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: Client(broker, scheme, accepted),
                conn,
                ssl=ctx,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            )
        except (TimeoutError, OSError) as exc:
            conn.close()
            self.opts.log.info(f"{show(address)}: TLS handshake: {tls_reason(exc) or 'timed out'}")
        finally:
            self.handshaking -= 1

    async def stop(self, grace: float) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        broker = self.broker
        if broker is None:
            return
        broker.stop()
        for client in list(broker.clients):
            client.quit(proto.notice("the broker is stopping; bye"))
        await asyncio.sleep(0)
        for client in list(broker.clients):
            client._ack()


async def chat_async(
    sock: socket.socket, bound: Address, opts: ChatOptions, stop: asyncio.Event, store: ChatStore | None = None
) -> None:
    """Serve the chat on a bound, listening socket until ``stop`` is set. ``store``: an open one (kept open),
    else the one ``opts.db`` names (opened and closed here)."""
    owned = store is None
    store = open_store(opts) if store is None else store
    service = ChatService(opts, store)
    try:
        await service.start([Bound(sock, bound, Listener(sock, bound))])
        try:
            await stop.wait()
        finally:
            await service.stop(0.0)
    finally:
        if owned:
            store.close()


def run_chat(addresses: list[Address], opts: ChatOptions) -> None:
    """``sockcat chat ADDR [ADDR...]`` (CLI entry): bind every address, print a listening line for each, serve
    until a stop signal."""
    for address in addresses:
        if address.is_datagram or address.is_stdio or address.type == socket.SOCK_SEQPACKET:
            raise UsageError(f"chat needs stream addresses (tcp, unix, tls…), not {address}")
    store = open_store(opts)  # before binding: a bad --db is one error line, not a half-started broker
    with contextlib.closing(store):
        settings = Settings(log=opts.log, access=opts.access, fingerprint=opts.fingerprint)
        serve_on_loop(addresses, settings, lambda: ChatService(opts, store))
