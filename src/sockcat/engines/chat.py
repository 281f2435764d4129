"""``sockcat chat ADDR``: the chat broker of SPEC §3, on any stream address (tcp, unix, tls…).

One asyncio loop, a :class:`_Client` protocol per connection. The protocol itself is pure
(:mod:`sockcat.core.chatproto`); the store is SQLite (:mod:`sockcat.engines.chatstore`). A client that does not read is
dropped once a megabyte waits for it (the broker never blocks on one client); a client that floods gets an error
line, its extra lines are dropped, and it is disconnected if it keeps on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from sockcat.core import chatproto as proto
from sockcat.core.address import Address, show
from sockcat.core.errors import NetworkError, UsageError, describe
from sockcat.core.log import SILENT, Log
from sockcat.engines.chatstore import ChatStore, default_db, fold
from sockcat.net.sockets import to_address
from sockcat.serving.scaffold import Bound, Settings, serve_on_loop
from sockcat.streams.sync import Listener

SLOW_CLIENT = 1 << 20  # bytes waiting for a client that does not read: past this it is dropped
FLOOD_RATE = 20.0  # lines per second a client may send, on average
FLOOD_BURST = 50.0  # ... and in one burst
FLOOD_LIMIT = 200  # lines dropped for flooding before the client is disconnected


@dataclass
class ChatOptions:
    log: Log = SILENT
    db: str | Path | None = None  # None: default_db(); ":memory:" for a throwaway broker
    max_conns: int | None = None
    ssl_context: ssl.SSLContext | None = None
    fingerprint: str | None = None
    flood_rate: float = FLOOD_RATE
    flood_burst: float = FLOOD_BURST


@dataclass
class _Broker:
    store: ChatStore
    opts: ChatOptions
    online: dict[str, _Client] = field(default_factory=dict)  # folded name -> client
    clients: set[_Client] = field(default_factory=set)
    dirty: set[_Client] = field(default_factory=set)  # clients with lines queued for the next flush

    def broadcast(self, line: str, exclude: _Client | None = None) -> None:
        data = line.encode() + b"\n"  # encoded once for everyone
        for client in list(self.online.values()):
            if client is not exclude:
                client.send_bytes(data)

    def queued(self, client: _Client) -> None:
        """``client`` has lines to write: one flush at the end of this loop iteration writes them all, so a
        burst of lines reaches each client in one system call instead of one per line."""
        if not self.dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        self.dirty.add(client)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for client in dirty:
            client.flush()


class _Client(asyncio.Protocol):
    def __init__(self, broker: _Broker, scheme: str) -> None:
        self.broker = broker
        self.scheme = scheme
        self.reader = proto.LineReader()
        self.transport: asyncio.Transport | None = None
        self.name: str | None = None
        self.peer = "?"
        self.tokens = broker.opts.flood_burst
        self.last = time.monotonic()
        self.dropped = 0
        self.unacked: list[int] = []  # stored messages written, waiting for the socket to take them
        self.closing = False
        self.out: list[bytes] = []  # lines queued for the broker's next flush

    # --- asyncio ---------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        b = self.broker
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                self.peer = show(to_address(self.scheme, sock.getpeername()), sock)
            except OSError:
                pass
        # high water 0: pause_writing/resume_writing tell exactly when the kernel has taken every byte
        self.transport.set_write_buffer_limits(high=0)
        if b.opts.max_conns is not None and len(b.clients) >= b.opts.max_conns:
            self.transport.close()
            return
        b.clients.add(self)
        b.opts.log.info(f"connection from {self.peer}")
        self.send(proto.PROMPT)

    def data_received(self, data: bytes) -> None:
        for item in self.reader.feed(data):
            if self.closing:
                return
            if isinstance(item, proto.BadLine):
                why = f"at most {proto.MAX_LINE} bytes" if item.reason == "too long" else "send UTF-8"
                self.send(proto.error(f"line {item.reason} ({why}); ignored"))
                continue
            if not self._admit_line():
                continue
            try:
                self._line(item)
            except Exception as exc:  # a broker bug or a full disk must not end the broker
                self.broker.opts.log.warning(f"{self.peer}: {type(exc).__name__}: {exc}")
                self.send(proto.error("internal error; try again"))

    def eof_received(self) -> bool | None:
        return None  # close

    def resume_writing(self) -> None:
        self._ack()

    def connection_lost(self, exc: Exception | None) -> None:
        b = self.broker
        b.clients.discard(self)
        if self.name is not None and b.online.get(fold(self.name)) is self:
            del b.online[fold(self.name)]
            b.broadcast(proto.notice(f"{self.name} left"))
        b.opts.log.info(f"closed {self.peer}" + (f" ({self.name})" if self.name else ""))

    # --- sending -----------------------------------------------------------------------------------------------
    def send(self, line: str) -> None:
        self.send_bytes(line.encode() + b"\n")

    def send_bytes(self, data: bytes) -> None:
        """Queue one encoded line (with its ``\n``) for the broker's next flush."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if not self.out:
            self.broker.queued(self)
        self.out.append(data)

    def flush(self) -> None:
        """Write the queued lines in one go; drop a client that has stopped reading."""
        t, data = self.transport, b"".join(self.out)
        self.out = []
        if t is None or t.is_closing() or not data:
            return
        t.write(data)
        if t.get_write_buffer_size() > SLOW_CLIENT:
            self.broker.opts.log.info(f"{self.peer}: not reading; dropped")
            t.abort()
            return
        self._ack()

    def _ack(self) -> None:
        """Stored messages whose lines the kernel has taken are delivered."""
        t = self.transport
        if self.unacked and t is not None and t.get_write_buffer_size() == 0:
            self.broker.store.delivered(self.unacked)
            self.unacked = []

    def quit(self, line: str) -> None:
        self.send(line)
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # --- lines -------------------------------------------------------------------------------------------------
    def _admit_line(self) -> bool:
        """Token bucket: FLOOD_RATE lines a second on average, FLOOD_BURST at once."""
        now = time.monotonic()
        opts = self.broker.opts
        self.tokens = min(opts.flood_burst, self.tokens + (now - self.last) * opts.flood_rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 50 == 0:
            self.send(proto.error(f"flooding: at most {opts.flood_rate:g} lines a second; lines dropped"))
        if self.dropped >= FLOOD_LIMIT:
            self.quit(proto.error("flooding: disconnected"))
        return False

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        cmd = proto.parse(line)
        if self.name is None:
            if cmd.verb == "nick" and cmd.args:
                self._join(*cmd.args[:2])
            elif cmd.verb == "nick":
                self._ask("/nick needs a NAME")
            elif cmd.verb == "say":
                self._join(line.strip())
            elif cmd.verb == "quit":
                self.quit(proto.notice("bye"))
            else:
                self._ask("first, your name")
            return
        getattr(self, f"_cmd_{cmd.verb}")(*cmd.args)

    def _ask(self, why: str) -> None:
        self.send(proto.error(f"{why}; your name?"))

    def _name_refused(self, name: str, password: str | None) -> str | None:
        """Why ``name`` cannot be taken by this client now (None: it can)."""
        problem = proto.name_problem(name)
        if problem is not None:
            return problem
        b = self.broker
        holder = b.online.get(fold(name))
        if holder is not None and holder is not self:
            return f"{name} is taken"
        if b.store.is_protected(name):
            if password is None:
                return f"{name} is protected: /nick {name} PASSWORD"
            if not b.store.check(name, password):
                return f"wrong password for {name}"
        return None

    def _join(self, name: str, password: str | None = None) -> None:
        why = self._name_refused(name, password)
        if why is not None:
            self._ask(why)
            return
        b = self.broker
        self.name = name
        b.online[fold(name)] = self
        others = sorted(c.name for c in b.online.values() if c is not self and c.name)
        self.send(proto.notice(f"hello {name}; {len(others)} others online; /help lists the commands"))
        b.broadcast(proto.notice(f"{name} joined"), exclude=self)
        b.opts.log.info(f"{self.peer} is {name}")
        self._deliver_waiting()

    def _cmd_say(self, text: str) -> None:
        assert self.name is not None
        self.broker.broadcast(proto.say_line(self.name, text), exclude=self)

    def _cmd_msg(self, name: str = "", text: str = "") -> None:
        assert self.name is not None
        if not name or not text:
            self.send(proto.error("usage: /msg NAME TEXT"))
            return
        problem = proto.name_problem(name)
        if problem is not None:
            self.send(proto.error(f"no such name {name!r}: {problem}"))
            return
        target = self.broker.online.get(fold(name))
        if target is not None:
            target.send(proto.msg_line(self.name, text))
            return
        self.broker.store.store(name, self.name, text)  # committed before the sender hears it is stored
        self.send(proto.notice(f"{name} is offline; message stored"))

    def _cmd_nick(self, name: str = "", password: str | None = None, *_extra: str) -> None:
        assert self.name is not None
        if not name:
            self.send(proto.error("usage: /nick NAME [PASSWORD]"))
            return
        why = self._name_refused(name, password)
        if why is not None:
            self.send(proto.error(why))
            return
        b, old = self.broker, self.name
        del b.online[fold(old)]
        self.name = name
        b.online[fold(name)] = self
        b.broadcast(proto.notice(f"{old} is now {name}"))
        self._deliver_waiting()

    def _deliver_waiting(self) -> None:
        """Queue the messages stored for this client's name, oldest first, exactly as live /msg lines."""
        assert self.name is not None
        waiting = self.broker.store.waiting(self.name)
        for _id, sender, text in waiting:
            self.send(proto.msg_line(sender, text))
        self.unacked += [row[0] for row in waiting]  # marked delivered by flush(), once written

    def _cmd_register(self, password: str = "") -> None:
        assert self.name is not None
        if not password:
            self.send(proto.error("usage: /register PASSWORD"))
            return
        self.broker.store.register(self.name, password)
        self.send(proto.notice(f"{self.name} is protected: next time, /nick {self.name} PASSWORD"))

    def _cmd_who(self) -> None:
        names = sorted((c.name for c in self.broker.online.values() if c.name), key=str.casefold)
        self.send(proto.notice(f"online ({len(names)}): {', '.join(names)}"))

    def _cmd_help(self) -> None:
        self.send(proto.notice(proto.HELP))

    def _cmd_quit(self) -> None:
        self.quit(proto.notice("bye"))

    def _cmd_unknown(self, word: str = "") -> None:
        self.send(proto.error(f"unknown command /{word}; /help lists them (// starts a line with /)"))


# --- running -----------------------------------------------------------------------------------------------------


def open_store(opts: ChatOptions) -> ChatStore:
    """The store ``--db`` names (default: under the user's state directory); one error line if it cannot open."""
    where = opts.db if opts.db is not None else default_db()
    try:
        return ChatStore(where)
    except Exception as exc:
        raise NetworkError(0, f"chat store {where}: {describe(exc)}") from None


class ChatService:
    """One broker on one or more bound, listening sockets: one room across all of them."""

    def __init__(self, opts: ChatOptions, store: ChatStore) -> None:
        self.opts = opts
        self.broker = _Broker(store, opts)
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self, bound: list[Bound]) -> None:
        loop = asyncio.get_running_loop()
        for b in bound:
            scheme = b.address.scheme

            def factory(scheme: str = scheme) -> asyncio.BaseProtocol:
                return _Client(self.broker, scheme)

            if b.address.is_unix:
                server = await loop.create_unix_server(factory, sock=b.sock)
            else:
                ctx = self.opts.ssl_context if b.address.is_tls else None
                server = await loop.create_server(factory, sock=b.sock, ssl=ctx)
            self.servers.append(server)

    async def stop(self, grace: float) -> None:
        for server in self.servers:
            server.close()
        broker = self.broker
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


def run_chat(address: Address, opts: ChatOptions) -> None:
    """``sockcat chat ADDR`` (CLI entry): bind, print the listening line, serve until a stop signal."""
    if address.is_datagram or address.is_stdio or address.type == socket.SOCK_SEQPACKET:
        raise UsageError(f"chat needs a stream address (tcp, unix, tls…), not {address}")
    store = open_store(opts)  # before binding: a bad --db is one error line, not a half-started broker
    with contextlib.closing(store):
        settings = Settings(log=opts.log, fingerprint=opts.fingerprint)
        serve_on_loop([address], settings, lambda: ChatService(opts, store))
