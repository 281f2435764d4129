"""One chat connection: lines in (bounded, paced, in order), lines out (queued for the broker's flush).

A client's lines are handled one at a time, in order. A line whose handling waits (a password being checked, a
message being committed) holds the ones after it; so does the line budget (``--line-rate``), and while anything
holds the client, the broker does not read its socket: lines wait there, never in the broker's memory, and none
is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Awaitable
from typing import Any, cast

from sockcat.core import chatproto as proto
from sockcat.core.address import Address, show
from sockcat.engines.chat import clustered
from sockcat.engines.chat.broker import BEHIND, SLOW_CLIENT, Broker
from sockcat.engines.chat.broker import Client as BrokerClient
from sockcat.engines.chat.passwords import hash_password
from sockcat.engines.chat.store import StoreFull
from sockcat.net.sockets import to_address

MAX_PENDING = 64 << 10  # bytes read ahead and waiting their turn; past this the socket is not read


def origin_of(peer: Address | None) -> str:
    """Who a peer counts as for quotas and back-off: its IPv4 /24 or IPv6 /64; every Unix peer is one origin."""
    if peer is None or not peer.is_ip:
        return "unix"
    try:
        ip = ipaddress.ip_address(peer.host.split("%", 1)[0])
    except ValueError:
        return peer.host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


class Client(asyncio.Protocol):
    __slots__ = (  # (a thousand idle clients: no per-object dict)
        "accepted",
        "ahead",
        "broker",
        "busy",
        "closing",
        "deadline",
        "holds",
        "last_line",
        "lost",
        "more_mail",
        "name",
        "origin",
        "out",
        "peer",
        "reader",
        "refilled",
        "room_from",
        "scheme",
        "step",
        "tokens",
        "transport",
        "unacked",
        "wake",
    )

    def __init__(self, broker: Broker, scheme: str, accepted: float | None = None) -> None:
        self.broker = broker
        self.scheme = scheme
        self.accepted = asyncio.get_running_loop().time() if accepted is None else accepted  # (loop time)
        self.lost = False
        self.reader = proto.LineReader()
        self.transport: asyncio.Transport | None = None
        self.name: str | None = None
        self.peer = "?"
        self.origin = "unix"
        opts = broker.opts
        self.tokens = max(1.0, opts.line_rate * 2.5)  # a burst of 2.5 seconds' budget
        self.refilled = time.monotonic()
        self.last_line = self.refilled
        self.ahead: str | proto.BadLine | None = None  # the next line, cut and waiting for its turn
        self.holds: set[str] = set()  # why reading is paused: "rate", "busy", "broker", "pending"
        self.busy = False  # a line's handling is waiting (a password, a commit)
        self.unacked: list[int] = []  # stored messages written, waiting for the socket to take them
        self.more_mail = False
        self.closing = False
        self.out: list[tuple[int, bytes]] = []  # own lines queued for the next flush, after room[:pos]
        self.room_from = 0  # the first of the room's queued lines that is for this client
        self.deadline: asyncio.TimerHandle | None = None
        self.wake: asyncio.TimerHandle | None = None
        self.step: asyncio.Future[None] | None = None

    # --- asyncio ---------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        b = self.broker
        sock = transport.get_extra_info("socket")
        address = None
        if sock is not None:
            with contextlib.suppress(OSError):
                address = to_address(self.scheme, sock.getpeername())
                self.peer = show(address, sock)
        self.origin = origin_of(address)
        opts = b.opts
        why = b.refuse(address, len(b.clients))
        if why is not None:
            opts.log.info(f"refused {self.peer}: {why}")
            t.close()
            return
        b.clients.add(self)
        opts.log.info(f"connection from {self.peer}")
        loop = asyncio.get_running_loop()
        self.deadline = loop.call_at(self.accepted + opts.name_timeout, self._no_name)
        # high water 0: resume_writing says exactly when the kernel has taken every byte (stored mail is delivered)
        t.set_write_buffer_limits(high=0)
        if b.paused:
            self.hold("broker", True)
        self.send(proto.PROMPT)

    def data_received(self, data: bytes) -> None:
        self.reader.push(data)  # cut into lines one at a time, as their turn comes: bytes, not objects, wait
        if self.reader.pending > MAX_PENDING:
            self.hold("pending", True)
        self._work()

    def eof_received(self) -> bool | None:
        return None  # close

    def pause_writing(self) -> None:
        pass  # (called with anything buffered, high water being 0; flush() checks the amount)

    def resume_writing(self) -> None:
        self._ack()
        self.broker.caught_up(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        b = self.broker
        for timer in (self.deadline, self.wake):
            if timer is not None:
                timer.cancel()
        was = self.name if self.name is not None and b.online.get(proto.name_key(self.name)) is self else None
        b.gone(self)
        if was is not None:
            b.broadcast(proto.notice(f"{was} left"))
        b.opts.log.info(f"closed {self.peer}" + (f" ({self.name})" if self.name else ""))

    # --- reading: paced, in order ------------------------------------------------------------------------------
    def hold(self, why: str, on: bool) -> None:
        """Pause (or resume) reading this client's socket for a reason; it is read while no reason holds it."""
        t = self.transport
        before = bool(self.holds)
        if on:
            self.holds.add(why)
        else:
            self.holds.discard(why)
        if t is None or t.is_closing() or before == bool(self.holds):
            return
        if self.holds:
            t.pause_reading()
        else:
            t.resume_reading()

    def _work(self) -> None:
        """Handle pending lines, in order, while the budget allows and nothing is waiting."""
        rate = self.broker.opts.line_rate
        while not self.busy and not self.closing:
            if self.ahead is None:
                self.ahead = self.reader.take()
                if self.ahead is None:
                    break
            if rate:
                now = time.monotonic()
                burst = max(1.0, rate * 2.5)
                self.tokens = min(burst, self.tokens + (now - self.refilled) * rate)
                self.refilled = now
                if self.tokens < 1:  # over budget: slowed, never dropped
                    self.hold("rate", True)
                    if self.wake is None:
                        delay = (1 - self.tokens) / rate
                        self.wake = asyncio.get_running_loop().call_later(delay, self._refill)
                    return
                self.tokens -= 1
            item, self.ahead = self.ahead, None
            self.last_line = time.monotonic()
            if isinstance(item, proto.BadLine):
                why = f"at most {proto.MAX_LINE} bytes" if item.reason == "too long" else "send UTF-8"
                self.send(proto.error(f"line {item.reason} ({why}); ignored"))
                continue
            try:
                self._line(item)
            except Exception as exc:  # a broker bug must not end the broker
                self.broker.opts.log.warning(f"{self.peer}: {type(exc).__name__}: {exc}")
                self.send(proto.error("internal error; try again"))
        if not self.busy:
            self.hold("rate", False)
        if self.reader.pending <= MAX_PENDING // 2:
            self.hold("pending", False)

    def _refill(self) -> None:
        self.wake = None
        self._work()

    def wait_for(self, step: Awaitable[Any]) -> None:
        """Run a step that waits (a hash, a commit); the lines after this one wait for it."""
        self.busy = True
        self.hold("busy", True)

        async def run() -> None:
            try:
                await step
            except Exception as exc:
                self.broker.opts.log.warning(f"{self.peer}: {type(exc).__name__}: {exc}")
                self.send(proto.error("internal error; try again"))
            finally:
                self.busy = False
                self.hold("busy", False)
                self._work()

        self.step = asyncio.ensure_future(run())  # (kept: a task nobody holds may be collected mid-way)

    # --- writing -----------------------------------------------------------------------------------------------
    def send(self, line: str) -> None:
        self.send_bytes(line.encode() + b"\n")

    def send_bytes(self, data: bytes) -> None:
        """Queue one encoded line (with its ``\\n``) for the broker's next flush."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if not self.out:
            self.broker.queued(self)
        self.out.append((len(self.broker.room), data))

    def flush(
        self, room: list[bytes] | None = None, blob: bytes = b"", skip: dict[int, BrokerClient] | None = None
    ) -> None:
        """Write this client's own lines, merged in order with the room's (``room``, joined as ``blob``; ``skip``:
        lines that are not for some client) if it is online."""
        t, out, start = self.transport, self.out, self.room_from
        self.out, self.room_from = [], 0
        if t is None or t.is_closing():
            return
        b = self.broker
        if not room or self.name is None or b.online.get(proto.name_key(self.name)) is not self:
            room = []
        if room and not out and not start and skip is None:  # (skip: only for clients some lines are not for)
            t.write(blob)  # the common case: the room's lines as they are, shared by everyone
        else:
            pieces: list[bytes] = []
            i = start
            for pos, data in [*out, (len(room), b"")]:
                for k in range(i, min(pos, len(room))):
                    if skip is None or skip.get(k) is not self:
                        pieces.append(room[k])
                i = max(i, pos)
                pieces.append(data)
            joined = b"".join(pieces)
            if not joined:
                return
            t.write(joined)
        self.backlog()

    def backlog(self) -> None:
        """After a write: a client this far behind is disconnected, or holds the broker back; one that took
        everything has its stored messages delivered."""
        t = self.transport
        if t is None:
            return
        size = t.get_write_buffer_size()
        if size > SLOW_CLIENT:
            self.broker.opts.log.info(f"{self.peer}: not reading; disconnected")
            self.abort()
        elif size > BEHIND:
            self.broker.fell_behind(self)
        elif size == 0:
            self._ack()

    def _ack(self) -> None:
        """Stored messages whose lines the kernel has taken are delivered: deleted, and the next page sent."""
        t = self.transport
        if self.unacked and t is not None and t.get_write_buffer_size() == 0:
            cluster = self.broker.cluster
            if cluster is not None and self.name is not None:
                cluster.later(cluster.mail.delivered(proto.name_key(self.name), len(self.unacked)))
            else:
                self.broker.store.delivered(self.unacked)
            self.unacked = []
            if self.more_mail:
                self.deliver_mail()

    def quit(self, line: str) -> None:
        self.send(line)
        self.broker.flush()  # (everything queued, the room's lines for this client included, before it goes)
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # --- lines -------------------------------------------------------------------------------------------------
    def _no_name(self) -> None:
        if self.name is None:
            self.quit(proto.error(f"no name within {self.broker.opts.name_timeout:g} s; bye"))

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        cmd = proto.parse(line)
        if self.name is None:
            if cmd.verb == "nick" and cmd.args:
                self._take(cmd.args[0], cmd.args[1] if len(cmd.args) > 1 else None)
            elif cmd.verb == "nick":
                self._ask("/nick needs a NAME")
            elif cmd.verb == "say":
                self._take(line.strip(), None)
            elif cmd.verb == "quit":
                self.quit(proto.notice("bye"))
            else:
                self._ask("first, your name")
            return
        getattr(self, f"_cmd_{cmd.verb}")(*cmd.args)

    def _ask(self, why: str) -> None:
        self.send(proto.error(f"{why}; your name?"))

    def _take(self, name: str, password: str | None) -> None:
        """Join as ``name`` (or rename to it): checked now, its password (if protected) off the event loop."""
        b = self.broker
        why = b.refuse_name(name, self)
        if why is not None:
            self._refused(why)
            return
        if b.cluster is not None:
            self.wait_for(clustered.take(self, name, password))
            return
        key = proto.name_key(name)
        credentials = b.store.credentials(key)
        if credentials is None:
            self._took(name)
            return
        if password is None:
            self._refused(f"{name} is protected: /nick {name} PASSWORD")
            return

        async def check() -> None:
            ok = await b.guard.check(password, credentials, key, self.origin)
            if not ok:
                self._refused(f"wrong password for {name}")
                return
            again = b.refuse_name(name, self)  # someone may have taken it meanwhile
            if again is not None:
                self._refused(again)
                return
            self._took(name)

        self.wait_for(check())

    def _refused(self, why: str) -> None:
        if self.name is None:
            self._ask(why)
        else:
            self.send(proto.error(why))

    def _took(self, name: str, everyone: int | None = None) -> None:
        """Take ``name``; ``everyone``: how many are online in the whole cluster, this user included."""
        b, old = self.broker, self.name
        if self.lost or self.closing:  # closed while its password was checked: it takes nothing
            return
        b.take_name(self, name)
        if old is None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None
            others = (everyone if everyone is not None else len(b.online)) - 1
            self.send(
                proto.notice(
                    f"hello {name}; {others} other{'s' if others != 1 else ''} online; /help lists the commands"
                )
            )
            b.broadcast(proto.notice(f"{name} joined"), exclude=self)
            b.opts.log.info(f"{self.peer} is {name}")
        else:
            b.broadcast(proto.notice(f"{old} is now {name}"))
        self.deliver_mail()

    def deliver_mail(self) -> None:
        """A page of the messages stored for this name, oldest first, exactly as live /msg lines; the next page once
        the kernel has taken this one (a full mailbox never floods the connection)."""
        assert self.name is not None
        if self.unacked:  # a page is on its way: the next one follows once it is taken, never the same one twice
            self.more_mail = True
            return
        store = self.broker.store
        cluster = self.broker.cluster
        if cluster is not None:
            cluster.later(clustered.mail_page(self, cluster, proto.name_key(self.name), store.quotas.page))
            return
        page = store.page(proto.name_key(self.name))
        for _id, sender, text in page:
            self.send(proto.msg_line(sender, text))
        self.unacked += [row[0] for row in page]
        self.more_mail = len(page) >= store.quotas.page

    def _cmd_say(self, text: str) -> None:
        assert self.name is not None
        self.broker.broadcast(proto.say_line(self.name, proto.clean_text(text)), exclude=self)

    def _cmd_msg(self, name: str = "", text: str = "") -> None:
        assert self.name is not None
        if not name or not text:
            self.send(proto.error("usage: /msg NAME TEXT"))
            return
        problem = proto.name_problem(name)
        if problem is not None:
            self.send(proto.error(f"no such name: {problem}"))
            return
        clean = proto.clean_text(text)
        target = self.broker.online.get(proto.name_key(name))
        if target is not None:
            target.send(proto.msg_line(self.name, clean))
            return
        sender = self.name
        cluster = self.broker.cluster

        async def keep() -> None:
            if cluster is not None:
                await clustered.keep(self, cluster, name, sender, clean)
                return
            try:  # committed before the sender hears it is stored
                await self.broker.store.store(proto.name_key(name), sender, proto.name_key(sender), self.origin, clean)
            except StoreFull as exc:
                self.send(proto.error(f"not stored: {exc}"))
                return
            self.send(proto.notice(f"{name} is offline; message stored"))

        self.wait_for(keep())

    def _cmd_nick(self, name: str = "", password: str | None = None, *_extra: str) -> None:
        if not name:
            self.send(proto.error("usage: /nick NAME [PASSWORD]"))
            return
        self._take(name, password)

    def _cmd_register(self, password: str = "") -> None:
        assert self.name is not None
        if not password:
            self.send(proto.error("usage: /register PASSWORD (the rest of the line; spaces are part of it)"))
            return
        name = self.name

        async def register() -> None:
            salt, hashed = await hash_password(password)
            if self.broker.cluster is not None:
                await clustered.register(self, name, salt, hashed)
                return
            await self.broker.store.register(proto.name_key(name), proto.skeleton(name), salt, hashed)
            self.send(proto.notice(f"{name} is protected: next time, /nick {name} PASSWORD"))

        self.wait_for(register())

    def _cmd_who(self) -> None:
        local = [c.name for c in self.broker.online.values() if c.name]
        cluster = self.broker.cluster
        if cluster is None:
            self._who(local)
            return

        async def ask() -> None:
            everyone = await cluster.who()
            self._who(everyone if everyone is not None else local, "" if everyone is not None else " (this broker)")

        self.wait_for(ask())

    def _who(self, names: list[str], where: str = "") -> None:
        names = sorted(set(names), key=str.casefold)
        self.send(proto.notice(f"online{where} ({len(names)}): {', '.join(names)}"))

    def _cmd_help(self) -> None:
        self.send(proto.notice(proto.HELP))

    def _cmd_quit(self) -> None:
        self.quit(proto.notice("bye"))

    def _cmd_unknown(self, word: str = "") -> None:
        self.send(
            proto.error(f"unknown command /{proto.clean_text(word)[:40]}; /help lists them (// starts a line with /)")
        )
