"""What every connection of one chat broker shares: who is online, the writes waiting to go out, backpressure.

**Writes are batched.** A line for one client is queued on it; a line for the room is queued once, on the broker
(cost: one list append, however many are online). One flush at the end of the loop iteration joins the room's lines
into one buffer, written as is to every client that has nothing else queued and sent none of them (one system call
each, no copy); the others get their own lines merged in order.

**Nothing is dropped, and nobody is flooded.** A sender over its line budget is slowed: the broker stops reading
it until the budget refills (``--line-rate``). When some client falls behind (more than :data:`BEHIND` bytes wait
for it), the broker stops reading every client until it catches up, so lines wait in the senders' sockets, not in
memory. A client that makes no progress for :data:`STUCK` seconds, or lets :data:`SLOW_CLIENT` bytes pile up, is
disconnected: it is not reading at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sockcat.core import chatproto as proto
from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address
from sockcat.core.log import SILENT, Log
from sockcat.core.wsoptions import WsOptions
from sockcat.engines.chat.cluster import Cluster
from sockcat.engines.chat.passwords import Guard
from sockcat.engines.chat.store import ChatStore, Quotas


class Client(Protocol):
    """What the broker needs of a connection (:class:`sockcat.engines.chat.client.Client`)."""

    name: str | None
    peer: str
    last_line: float

    def send(self, line: str) -> None: ...

    room_from: int
    unacked: list[int]
    transport: asyncio.Transport | None

    def backlog(self) -> None: ...

    def send_bytes(self, data: bytes) -> None: ...

    def _ack(self) -> None: ...

    def flush(
        self, room: list[bytes] | None = None, blob: bytes = b"", skip: dict[int, Client] | None = None
    ) -> None: ...

    def hold(self, why: str, on: bool) -> None: ...

    def quit(self, line: str) -> None: ...

    def abort(self) -> None: ...


BEHIND = 256 << 10  # bytes waiting for one client before the broker stops reading everyone
SLOW_CLIENT = 4 << 20  # bytes waiting for one client before it is disconnected at once
STUCK = 10.0  # seconds a client may stay behind without catching up before it is disconnected
LINE_RATE = 20.0  # lines a second a client may send (--line-rate; 0: no limit)
NAME_TIMEOUT = 30.0  # seconds from connecting to a name: an absolute deadline
MAX_CONNS = 10_000


@dataclass
class ChatOptions:
    log: Log = SILENT
    db: str | Path | None = None  # None: default_db(); ":memory:" for a throwaway broker
    max_conns: int | None = MAX_CONNS
    access: AccessPolicy = field(default_factory=AccessPolicy)
    ssl_context: ssl.SSLContext | None = None
    fingerprint: str | None = None
    line_rate: float = LINE_RATE
    idle_timeout: float | None = None  # for joined users (-i); None: never
    ws: WsOptions = field(default_factory=WsOptions)  # WebSocket addresses: --origin, --max-message
    cluster: str | None = None  # --cluster URL: brokers sharing one Redis (cluster.py)
    cluster_tls: dict[str, str] = field(default_factory=dict)  # rediss://: ca_certs, certfile, keyfile
    name_timeout: float = NAME_TIMEOUT
    quotas: Quotas = field(default_factory=Quotas)


class Broker:
    def __init__(self, store: ChatStore, opts: ChatOptions) -> None:
        self.store = store
        self.opts = opts
        self.guard = Guard()
        self.online: dict[str, Client] = {}  # name key -> client
        self.looks: dict[str, str] = {}  # skeleton -> the key of the online name that looks like that
        self.clients: set[Client] = set()
        self.dirty: set[Client] = set()  # clients with lines queued for the next flush
        self.room: list[bytes] = []  # lines for everyone online, queued for the next flush
        self.room_skip: dict[int, Client] = {}  # index in room -> the one client that line is not for (its sender)
        self.behind: dict[Client, float] = {}  # clients past BEHIND, and since when
        self.paused = False
        self._sweeper: asyncio.Task[None] | None = None
        self.cluster: Cluster | None = None

    def start(self) -> None:
        proto.skeleton("")  # the confusables table (a few MB, 30 ms): loaded now (if not yet), not on the first join
        self._sweeper = asyncio.ensure_future(self._sweep())
        if self.opts.cluster is not None:
            self.cluster = Cluster(
                self.opts.cluster,
                self.opts.log,
                self._from_room,
                self._direct,
                self._cluster_state,
                self._lost,
                self.opts.cluster_tls,
            )
            self.cluster.start()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    # --- the cluster (other brokers' lines) ----------------------------------------------------------------------
    def _from_room(self, line: str) -> None:
        self.broadcast(line, local=True)

    def _direct(self, key: str, line: str) -> None:
        client = self.online.get(key)
        if client is not None:
            client.send(line)
        else:  # (gone between the sender's look-up and now: a live line to nobody, as on one broker)
            self.opts.log.info("cluster: a direct line for a name no longer here was dropped")

    def _lost(self, key: str) -> None:
        """Another broker took a name of ours while we were cut off (its lease had lapsed): its user here goes."""
        client = self.online.get(key)
        if client is not None:
            client.quit(proto.error("another broker gave your name to someone while this one was cut off; bye"))

    async def _hand_over_mail(self, cluster: Cluster) -> None:
        """Mail in this broker's own store (kept before it ran with ``--cluster``) moves into Redis, where the
        broker its recipient joins hands it out: stored there, then deleted here (a broker killed in between hands
        a message over twice, never loses one). What Redis's quotas refuse stays here, for the next try."""
        moved_all = 0
        while rows := self.store.oldest(500):
            moved = await cluster.mail.adopt(rows, self.store.quotas)
            if moved:
                await self.store.remove(moved)
                moved_all += len(moved)
            if moved is None or len(moved) < len(rows):
                if moved is not None:
                    self.opts.log.info(
                        f"cluster: {len(rows) - len(moved)} stored messages stay in this broker's own store: "
                        "Redis's quotas refused them"
                    )
                break
        if moved_all:
            self.opts.log.info(f"cluster: {moved_all} stored messages handed over to Redis")

    def _cluster_state(self, up: bool) -> None:
        if up:
            text = "the cluster is reachable again: lines reach users on every broker"
        else:
            text = "the cluster is unreachable: lines reach only users on this broker until it is back"
        self.broadcast(proto.notice(text), local=True)

    # --- who may connect --------------------------------------------------------------------------------------------
    def refuse(self, address: Address | None, count: int) -> str | None:
        """Why a connection from ``address`` is refused, with ``count`` connections already held (None: it is not)."""
        opts = self.opts
        if opts.access.active and not opts.access.permits(address.host if address is not None else ""):
            return "not allowed by --allow/--deny"
        if opts.max_conns is not None and count >= opts.max_conns:
            return f"--max-conns {opts.max_conns} reached"
        return None

    # --- names ---------------------------------------------------------------------------------------------------
    def refuse_name(self, name: str, client: Client) -> str | None:
        """Why ``client`` cannot have ``name`` (None: it can, as far as can be told without its password)."""
        problem = proto.name_problem(name)
        if problem is not None:
            return problem
        key = proto.name_key(name)
        holder = self.online.get(key)
        if holder is not None and holder is not client:
            return f"{name} is taken"
        look = proto.skeleton(name)
        other = self.looks.get(look)
        if other is not None and other != key:
            return f"{name} looks too much like {self.online[other].name}, who is online"
        if any(k != key for k in self.store.protected_like(look)):
            return f"{name} looks too much like a protected name"
        return None

    def take_name(self, client: Client, name: str) -> None:
        if client.name is not None:
            self.drop_name(client)
        key = proto.name_key(name)
        if client.name is None:
            client.room_from = len(self.room)  # lines queued for the room before it joined are not for it
        client.name = name
        self.online[key] = client
        self.looks[proto.skeleton(name)] = key

    def drop_name(self, client: Client) -> None:
        if client.name is None:
            return
        key = proto.name_key(client.name)
        if self.online.get(key) is client:
            del self.online[key]
            if self.cluster is not None:
                self.cluster.later(self.cluster.release(key))
            look = proto.skeleton(client.name)
            if self.looks.get(look) == key:
                del self.looks[look]

    # --- writing -------------------------------------------------------------------------------------------------
    def broadcast(self, line: str, exclude: Client | None = None, *, local: bool = False) -> None:
        """A line for everyone online (but ``exclude``), written at the next flush; in a cluster, published for the
        other brokers' users too (unless ``local``)."""
        if self.cluster is not None and not local:
            self.cluster.publish_room(line)
        if not self.room and not self.dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        if exclude is not None:
            self.room_skip[len(self.room)] = exclude
        self.room.append(line.encode() + b"\n")  # encoded once for everyone

    def queued(self, client: Client) -> None:
        """``client`` has lines of its own to write: one flush at the end of this loop iteration writes them all."""
        if not self.dirty and not self.room:
            asyncio.get_running_loop().call_soon(self.flush)
        self.dirty.add(client)

    def flush(self) -> None:
        """Write everything queued: the room's lines to everyone online, each client's own lines to it, in order."""
        dirty, self.dirty = self.dirty, set()
        room, skip = self.room, self.room_skip
        if not room:
            for client in dirty:
                client.flush()
            return
        self.room, self.room_skip = [], {}
        blob = b"".join(room)
        senders = set(skip.values())
        general = dirty.union(senders) if senders else dirty
        for client in general:
            client.flush(room, blob, skip if client in senders else None)
        # Everyone else online gets the room's lines as they are, shared: one write each, nothing else on the way
        # (what Client.flush would do, without its checks that cannot apply here), and the write buffer looked at
        # only when the kernel did not take it all. The last clients of a line wait for everyone before them.
        for client in self.online.values():
            if client in general:
                continue
            t = client.transport
            if t is None:
                continue
            if client.room_from or client.unacked:
                client.flush(room, blob)
                continue
            t.write(blob)
            if t.get_write_buffer_size():
                client.backlog()

    # --- backpressure --------------------------------------------------------------------------------------------
    def fell_behind(self, client: Client) -> None:
        if client not in self.behind:
            self.behind[client] = time.monotonic()
            if not self.paused:
                self.paused = True
                for c in self.clients:
                    c.hold("broker", True)

    def caught_up(self, client: Client) -> None:
        if self.behind.pop(client, None) is not None and not self.behind and self.paused:
            self.paused = False
            for c in list(self.clients):
                c.hold("broker", False)

    def gone(self, client: Client) -> None:
        self.clients.discard(client)
        self.dirty.discard(client)
        self.caught_up(client)
        self.drop_name(client)

    async def _sweep(self) -> None:
        """Once a second: clients stuck behind, joined users idle past -i, expired mail (hourly)."""
        last_expiry = time.monotonic()
        cluster_expiry = 0.0  # when Redis's mail is next expired: once reachable, then hourly
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for client, since in list(self.behind.items()):
                if now - since > STUCK:
                    self.opts.log.info(f"{client.peer}: not reading for {STUCK:g} s; disconnected")
                    client.abort()
            idle = self.opts.idle_timeout
            if idle is not None:
                for client in list(self.online.values()):
                    if now - client.last_line > idle:
                        client.quit(proto.notice(f"idle for {idle:g} s; bye"))
            cluster = self.cluster
            if cluster is not None and cluster.up and now >= cluster_expiry:
                cluster_expiry = now + 3600
                cluster.later(cluster.mail.expire(self.store.quotas.expiry))
                cluster.later(self._hand_over_mail(cluster))
            if now - last_expiry > 3600:
                last_expiry = now
                with contextlib.suppress(Exception):
                    self.store.expire()
