"""``sockcat chat --cluster URL``: brokers that share one Redis are one chat (docs/chat.md#clusters).

What goes through Redis (with ``redis``' asyncio client and its hiredis parser):
- **names**: a name is held by one connection in the whole cluster. A broker claims it with ``SET … NX PX`` (a
  lease, ``NAME_LEASE`` seconds) and renews the leases of its users every third of that; a broker that dies
  releases its names when their leases end. ``sockcat:online`` (a sorted set scored by lease end) lists them for
  ``/who``;
- **the room**: a broker publishes each room line on ``sockcat:room`` (PUB/SUB); every other broker writes it to
  its own users;
- **direct lines**: ``/msg`` to a name held on another broker is published on that broker's own channel;
- **protected names**: ``/register`` keeps the name's scrypt hash in ``sockcat:users`` (and its look-alike skeleton
  in ``sockcat:skeletons``), so a name registered on one broker is protected on all;
- **offline mail**: ``/msg`` to a name held nowhere is kept in a Redis list per name, under the single broker's
  quotas (Lua scripts check and count atomically), and handed out by whichever broker the name joins next, a page
  at a time, each page removed once the recipient's kernel has taken it.

PUB/SUB delivers at most once, to brokers connected at that moment: a live line is lost if its broker loses
Redis for that instant, which is the promise of a live chat line on one broker too (a client that is gone misses
it). Stored mail goes through Redis's commands, acknowledged before the sender hears "stored".

When Redis cannot be reached, a broker keeps serving its own users: names are checked locally, lines reach only
its own users, and users are told so; it reconnects with back-off (``-v`` logs each change).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from sockcat.core.errors import UsageError
from sockcat.core.log import Log
from sockcat.engines.chat.clustermail import ClusterMail
from sockcat.net.pin import parse_pin, pin_mismatch

NAME_LEASE = 5.0  # seconds a name stays held after its broker stopped renewing it
_RENEW = NAME_LEASE / 3
_CALLS = 32  # Redis calls in flight at once (more wait their turn)
_PREFIX = "sockcat:"
_SEP = "\x00"
_ROOM = f"{_PREFIX}room"  # the channel of every broker's room lines: NODE, _SEP, then lines separated by \n

# Release a name only if this broker still holds it (compare and delete, atomically).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return 1
end
return 0
"""
# Drop the names whose leases ended from the online list and the display names.
_PRUNE = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, key in ipairs(stale) do
  redis.call('ZREM', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
end
return #stale
"""
# Renew the leases this broker holds, taking back those that lapsed while nobody else took them (a broker cut off
# for a while); the names another broker took meanwhile are returned.
_RENEW_SCRIPT = """
local lost = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[1] or not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    redis.call('ZADD', ARGV[3], ARGV[4], ARGV[4 + i])
  else
    table.insert(lost, ARGV[4 + i])
  end
end
return lost
"""


def parse_url(url: str) -> str:
    """A ``--cluster`` URL as redis-py takes it: ``redis://[USER:PASS@]HOST:PORT/DB``, ``rediss://…`` (TLS) or
    ``redis+unix:PATH`` (a Unix socket). Anything else is a usage error naming the URL (without its password)."""
    if url.startswith("redis+unix:"):
        path = url[len("redis+unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise UsageError("bad --cluster URL 'redis+unix:': no socket path")
        return f"unix://{path}"
    parts = urllib.parse.urlsplit(url)
    shown = shown_url(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise UsageError(f"bad --cluster URL {shown!r}: expected redis://HOST:PORT/DB, rediss://… or redis+unix:PATH")
    try:
        parts.port  # noqa: B018 (a bad port raises)
    except ValueError:
        raise UsageError(f"bad --cluster URL {shown!r}: bad port") from None
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise UsageError(f"bad --cluster URL {shown!r}: the database is a number")
    return url


def shown_url(url: str) -> str:
    """The URL for logs and errors: the password left out."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _pinned_connection(pin: bytes) -> type:
    """redis-py's TLS connection class, checking after each handshake that Redis's certificate is the pinned one
    (``--pin``: no chain or host name is verified, as for sockcat's own TLS clients)."""
    from redis.asyncio.connection import SSLConnection
    from redis.exceptions import ConnectionError as RedisConnectionError

    class Pinned(SSLConnection):
        async def _connect(self) -> None:
            await super()._connect()  # type: ignore[no-untyped-call]  # (redis-py leaves it untyped)
            ssl_object = self._writer.get_extra_info("ssl_object") if self._writer is not None else None
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            wrong = pin_mismatch(pin, der)
            if wrong is not None:
                await self.disconnect()
                raise RedisConnectionError(wrong)

    return Pinned


class Cluster:
    """One broker's link to the others. ``on_room(line)`` and ``on_direct(key, line)`` are called for lines
    published by other brokers; ``on_state(up)`` when Redis is reached or lost."""

    def __init__(
        self,
        url: str,
        log: Log,
        on_room: Callable[[str], None],
        on_direct: Callable[[str, str], None],
        on_state: Callable[[bool], None],
        on_lost: Callable[[str], None] = lambda key: None,
        tls: dict[str, str] | None = None,
    ) -> None:
        import redis.asyncio as aredis

        self.url = parse_url(url)
        self.shown = shown_url(url)
        self.log = log
        self.node = secrets.token_hex(6)
        self.on_room, self.on_direct, self.on_state, self.on_lost = on_room, on_direct, on_state, on_lost
        # health checks: an idle connection is pinged every second, so one cut off silently (a partition drops
        # packets, nothing resets) is found dead within ~3 s rather than when TCP gives up
        extra: dict[str, Any] = {}
        if self.url.startswith("rediss:"):  # verified against the system's CAs, or --cluster-ca, or --pin
            given = dict(tls or {})
            pin = given.pop("pin", None)
            extra = {f"ssl_{k}": v for k, v in given.items() if v}
            if pin:
                extra.update(
                    ssl_cert_reqs="none", ssl_check_hostname=False, connection_class=_pinned_connection(parse_pin(pin))
                )
        # A bounded pool that makes a caller wait for a free connection rather than fail ("Too many connections":
        # a burst of 200 joins once made the cluster look unreachable, and names were then given out locally).
        # Calls queue for one of _CALLS slots before their 2 s time-out starts, so waiting behind a burst never
        # counts as Redis being down; the pool has room beyond them for the subscriber, publisher and renewals.
        pool = aredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=_CALLS + 8,
            timeout=None,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=1,
            **extra,
        )
        self.redis: Any = aredis.Redis(connection_pool=pool)
        self._slots = asyncio.Semaphore(_CALLS)
        self.up = False
        self._known = False  # (the first state, up or not, is logged too)
        self._resubscribe = False
        self.held: dict[str, str] = {}  # name key -> display name, the names this broker's users hold
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[Any]] = set()
        # (channel, payload, future for the count of receivers or None): one queue for room and direct lines
        self._outbox: asyncio.Queue[tuple[str, str, asyncio.Future[int] | None]] = asyncio.Queue()
        self._release = self.redis.register_script(_RELEASE)
        self._prune = self.redis.register_script(_PRUNE)
        self.mail = ClusterMail(self.redis, self._call, log)
        self._renew = self.redis.register_script(_RENEW_SCRIPT)

    @staticmethod
    def _name(key: str) -> str:
        return f"{_PREFIX}name:{key}"

    # --- running ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._listen()),
            asyncio.ensure_future(self._keep_leases()),
            asyncio.ensure_future(self._publish()),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            # A task cancelled in the middle of a redis-py pipeline may take long to unwind, or never (seen: the
            # publisher stopped in a pipeline's exit): the stop does not wait for it past a second.
            await asyncio.wait(self._tasks, timeout=1.0)
        if self.up and self.held:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    for key in list(self.held):
                        await self._release(keys=self._release_keys(key), args=[self.node, key])
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.redis.aclose()

    def _state(self, up: bool, why: str = "") -> None:
        if up == self.up and self._known:
            return
        self.up, self._known = up, True
        if not up:
            self._resubscribe = True  # the subscription may be on a dead connection: a fresh one is needed
        self.log.info(f"cluster {self.shown}: {'connected' if up else 'unreachable'}{': ' + why if why else ''}")
        self.on_state(up)

    async def _listen(self) -> None:
        """Subscribe to the room and to this broker's channel; resubscribe with back-off after a loss."""
        backoff = 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(4.0):
                    await pubsub.subscribe(_ROOM, f"{_PREFIX}node:{self.node}")
                self._resubscribe = False
                self._state(True)
                backoff = 0.1
                while not self._resubscribe:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self._message(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._state(False, type(exc).__name__ if not str(exc) else str(exc))
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _message(self, channel: bytes, data: bytes) -> None:
        node, _, rest = data.decode("utf-8", "replace").partition(_SEP)
        if node == self.node:
            return  # our own line, already written to our users
        if channel.endswith(b":room"):
            for line in rest.split("\n"):
                self.on_room(line)
        else:
            key, _, line = rest.partition(_SEP)
            self.on_direct(key, line)

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(_RENEW)
            if not self.held:
                continue
            keys = list(self.held)
            until = int((time.time() + NAME_LEASE) * 1000)
            try:
                lost = await self._renew(
                    keys=[self._name(k) for k in keys],
                    args=[self.node, int(NAME_LEASE * 1000), f"{_PREFIX}online", until, *keys],
                )
            except Exception as exc:
                self._state(False, str(exc) or type(exc).__name__)
                continue
            for key in lost or ():
                k = key.decode() if isinstance(key, bytes) else str(key)
                self.log.info(f"cluster: the lease on {self.held.get(k, k)} lapsed and another broker took it")
                self.held.pop(k, None)
                self.on_lost(k)

    async def _call(self, what: Callable[[], Awaitable[Any]], default: Any) -> Any:
        if not self.up:
            return default
        async with self._slots:  # (queueing behind other calls is not Redis's time)
            if not self.up:
                return default
            try:
                async with asyncio.timeout(2.0):
                    return await what()
            except Exception as exc:
                self._state(False, str(exc) or type(exc).__name__)
                return default

    # --- names -----------------------------------------------------------------------------------------------------
    async def claim(self, key: str, display: str) -> bool | None:
        """Hold ``key`` for this broker: True if held, False if another broker holds it, None if Redis is down."""

        async def run() -> bool:
            name = self._name(key)
            ok = await self.redis.set(name, self.node, nx=True, px=int(NAME_LEASE * 1000))
            if not ok:
                holder = await self.redis.get(name)
                if holder is None or holder.decode() != self.node:
                    return False
            until = int((time.time() + NAME_LEASE) * 1000)
            await self.redis.zadd(f"{_PREFIX}online", {key: until})
            await self.redis.hset(f"{_PREFIX}display", key, display)
            return True

        got = await self._call(run, None)
        if got:
            self.held[key] = display
        return bool(got) if got is not None else None

    async def release(self, key: str) -> None:
        self.held.pop(key, None)
        await self._call(lambda: self._release(keys=self._release_keys(key), args=[self.node, key]), 0)

    def _release_keys(self, key: str) -> list[str]:
        return [self._name(key), f"{_PREFIX}online", f"{_PREFIX}display"]

    async def who(self) -> list[str] | None:
        """Every name held in the cluster (None: Redis is down)."""

        async def run() -> list[str]:
            now = int(time.time() * 1000)
            # names of brokers that died: their leases ended, so they leave the list (atomically: a lease renewed
            # meanwhile is not touched)
            await self._prune(keys=[f"{_PREFIX}online", f"{_PREFIX}display"], args=[now])
            keys = await self.redis.zrangebyscore(f"{_PREFIX}online", now, "+inf")
            if not keys:
                return []
            shown = await self.redis.hmget(f"{_PREFIX}display", keys)
            return [(s or k).decode() for k, s in zip(keys, shown, strict=True)]

        result: list[str] | None = await self._call(run, None)
        return result

    async def online_count(self) -> int | None:
        """How many names are held in the cluster (None: Redis is down): one ZCOUNT, for a join's greeting. (``who``
        fetches every name: a greeting that did so made 10,000 joins cost 10,000 names each.)"""
        now = int(time.time() * 1000)
        result = await self._call(lambda: self.redis.zcount(f"{_PREFIX}online", now, "+inf"), None)
        return None if result is None else int(result)

    # --- lines -----------------------------------------------------------------------------------------------------
    def publish_room(self, line: str) -> None:
        """Queue a room line for the other brokers; one task publishes the queue in order (a pipeline per batch),
        so the lines of one broker, and so of each of its users, arrive in the order they were said."""
        if self.up:
            self._outbox.put_nowait((_ROOM, line, None))

    async def _publish(self) -> None:
        """Publish the outbox in order: room lines and direct lines of one broker keep the order they were said
        in (a /msg said after a line to the room arrives after it)."""
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < 1000:
                batch.append(self._outbox.get_nowait())
            # Room lines in a row go as one message, one line each (a chat line has no newline): every other broker
            # reads one message, not one per line. Direct lines go one by one (each one's count says if it arrived).
            messages: list[tuple[str, str, asyncio.Future[int] | None]] = []
            for channel, payload, future in batch:
                if channel == _ROOM:
                    if messages and messages[-1][0] == _ROOM:
                        messages[-1] = (_ROOM, messages[-1][1] + "\n" + payload, None)
                    else:
                        messages.append((_ROOM, self.node + _SEP + payload, None))
                else:
                    messages.append((channel, payload, future))
            counts: list[Any] = [None] * len(messages)
            if self.up:
                try:
                    async with asyncio.timeout(2.0), self.redis.pipeline(transaction=False) as pipe:
                        for channel, payload, _f in messages:
                            pipe.publish(channel, payload)
                        counts = await pipe.execute()
                except Exception as exc:
                    self._state(False, str(exc) or type(exc).__name__)
            for (_c, _p, future), count in zip(messages, counts, strict=True):
                if future is not None and not future.done():
                    future.set_result(int(count) if count is not None else -1)

    def later(self, step: Awaitable[Any]) -> None:
        """Run ``step`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(step)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def send_to(self, key: str, line: str) -> bool | None:
        """Publish a direct line to the broker holding ``key``: True if one took it, False if nobody holds the
        name, None if Redis is down."""

        async def run() -> bool:
            holder = await self.redis.get(self._name(key))
            if holder is None:
                return False
            payload = self.node + _SEP + key + _SEP + line
            took: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._outbox.put_nowait((f"{_PREFIX}node:{holder.decode()}", payload, took))
            count = await took
            if count < 0:
                raise ConnectionError("not published")
            return count > 0

        result: bool | None = await self._call(run, None)
        return result

    # --- protected names -------------------------------------------------------------------------------------------
    _DOWN = object()

    async def credentials(self, key: str) -> tuple[bytes, bytes] | object | None:
        """(salt, scrypt hash) of a name protected anywhere in the cluster, None if it is not, or ``Cluster._DOWN``
        if Redis cannot say."""

        async def run() -> tuple[bytes, bytes] | None:
            raw = await self.redis.hget(f"{_PREFIX}users", key)
            if raw is None:
                return None
            user = json.loads(raw)
            return bytes.fromhex(user["salt"]), bytes.fromhex(user["hash"])

        result: tuple[bytes, bytes] | object | None = await self._call(run, Cluster._DOWN)
        return result

    async def protected_like(self, skeleton: str) -> str | object | None:
        """The key of a protected name that looks like ``skeleton`` (None: none; ``_DOWN``: Redis cannot say)."""

        async def run() -> str | None:
            raw = await self.redis.hget(f"{_PREFIX}skeletons", skeleton)
            return raw.decode() if raw is not None else None

        result: str | object | None = await self._call(run, Cluster._DOWN)
        return result

    async def register(self, key: str, skeleton: str, salt: bytes, hashed: bytes) -> bool:
        """Protect ``key`` cluster-wide (False: Redis is down, nothing was kept)."""
        user = json.dumps({"salt": salt.hex(), "hash": hashed.hex(), "skeleton": skeleton})

        async def run() -> bool:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(f"{_PREFIX}users", key, user)
                pipe.hset(f"{_PREFIX}skeletons", skeleton, key)
                await pipe.execute()
            return True

        result: bool = await self._call(run, False)
        return result
