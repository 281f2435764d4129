"""``sockcat chat ADDR [ADDR...]``: the chat broker of docs/chat.md, on any stream addresses, one room across them.

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
import gc
import socket
import urllib.parse
from typing import Any

from sockcat.core import chatproto as proto
from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, UsageError, describe
from sockcat.engines.chat.broker import Broker, ChatOptions
from sockcat.engines.chat.client import Client
from sockcat.engines.chat.store import ChatStore, Quotas, default_db
from sockcat.engines.chat.web import Names, WsGate
from sockcat.serving.loopserver import start_stream_server
from sockcat.serving.scaffold import Bound, Settings, serve_on_loop
from sockcat.serving.tls_accept import TlsAcceptor
from sockcat.streams.sync import Listener

__all__ = ["ChatOptions", "ChatService", "ChatStore", "Quotas", "chat_async", "default_db", "open_store", "run_chat"]


def open_store(opts: ChatOptions) -> ChatStore:
    """The store ``--db`` names (default: under the user's state directory); one error line if it cannot open."""
    where = opts.db if opts.db is not None else default_db()
    try:
        return ChatStore(where, opts.quotas)
    except Exception as exc:
        raise NetworkError(0, f"chat store {where}: {describe(exc)}") from None


class ChatService:
    """One broker on one or more bound, listening sockets: one room across all of them. On a TLS address,
    connections are admitted before their handshake (:class:`~sockcat.serving.tls_accept.TlsAcceptor`), so those
    that never finish one count against ``--max-conns``."""

    def __init__(self, opts: ChatOptions, store: ChatStore) -> None:
        self.opts = opts
        self.store = store
        self.broker: Broker | None = None
        self.servers: list[asyncio.AbstractServer | TlsAcceptor] = []

    async def start(self, bound: list[Bound]) -> None:
        broker = self.broker = Broker(self.store, self.opts)
        broker.start()
        names = Names(
            [b.address.host for b in bound if b.address.host] + [_host_of(o) for o in self.opts.ws.origins or ()]
        )
        cache: list[Any] = [None, b""]
        pending: set[WsGate] = set()

        def refuse(address: Address | None, handshaking: int) -> str | None:
            return broker.refuse(address, len(broker.clients) + handshaking)

        for b in bound:
            ctx = self.opts.ssl_context if b.address.is_tls else None

            def client(
                accepted: float | None,
                scheme: str = b.address.scheme,
                ws: bool = b.address.is_ws,
                tls: bool = ctx is not None,
            ) -> asyncio.BaseProtocol:
                if ws:
                    return WsGate(broker, scheme, self.opts.ws, names, tls, cache, pending)
                return Client(broker, scheme, accepted)

            admit = (ctx, refuse, self.opts.log) if ctx is not None else None  # (TLS: admitted before the handshake)
            self.servers.append(await start_stream_server(b.sock, b.address, client, tls=admit))

    async def stop(self, grace: float) -> None:
        for server in self.servers:
            server.close()
        broker = self.broker
        if broker is None:
            return
        broker.stop()
        if broker.cluster is not None:
            await broker.cluster.stop()
        for client in list(broker.clients):
            client.quit(proto.notice("the broker is stopping; bye"))
        await asyncio.sleep(0)
        for client in list(broker.clients):
            client._ack()


def _host_of(origin: str) -> str:
    return urllib.parse.urlsplit(origin).hostname or ""


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
    proto.skeleton("")  # the confusables table too: loaded before the listening line, not on the first join
    gc.freeze()  # what is loaded by now lives as long as the broker: the collector need not walk it on every pass
    with contextlib.closing(store):
        settings = Settings(log=opts.log, access=opts.access, fingerprint=opts.fingerprint)
        serve_on_loop(addresses, settings, lambda: ChatService(opts, store))
