"""Offline mail in a cluster's Redis (docs/chat.md#clusters): a list per name, quotas checked and counted
atomically by Lua scripts, pages handed out and removed once delivered, expiry, and the hand-over of a broker's
own store. :class:`~sockcat.engines.chat.cluster.Cluster` holds one as ``cluster.mail``; every call goes through
its ``_call`` (None, or the default given, while Redis is unreachable)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sockcat.core.log import Log

Row = tuple[
    int, str, str, str, str, str, float
]  # ChatStore.oldest: id, recipient, sender, sender key, origin, text, time

_MAIL = "sockcat:mail:"
_MAIL_COUNTS = (_MAIL + "by-sender", _MAIL + "by-origin", _MAIL + "total")
_MAILBOX = f"{_MAIL}box:"  # a recipient's mailbox: this and its name key (never one of the keys beside it)
_MAILBOXES = _MAIL + "boxes"  # the names that have a mailbox
# Keep a message for an offline name, within the quotas (KEYS: the mailbox, the sender and origin counts, the total,
# the set of mailboxes; ARGV: the message, sender key, origin, the four quotas, the name). 0: kept; 1-4: which quota
# said no.
_STORE = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
if tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') >= tonumber(ARGV[5]) then return 2 end
if tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0') >= tonumber(ARGV[6]) then return 3 end
if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[7]) then return 4 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[8])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('INCR', KEYS[4])
return 0
"""
# These messages (ARGV, the page as read) reached their recipient: take them out of the head of the mailbox, and
# out of the counts. One the expiry took out meanwhile is no longer at the head, and is passed over.
_DELIVERED = """
local gone = 0
for _, raw in ipairs(ARGV) do
  if redis.call('LINDEX', KEYS[1], 0) == raw then
    redis.call('LPOP', KEYS[1])
    local m = cjson.decode(raw)
    redis.call('HINCRBY', KEYS[2], m.k, -1)
    redis.call('HINCRBY', KEYS[3], m.o, -1)
    redis.call('DECR', KEYS[4])
    gone = gone + 1
  end
end
return gone
"""
# Drop the messages kept since before ARGV[1] (a time), oldest first, from every mailbox (KEYS: the set of
# mailboxes, the sender and origin counts, the total; ARGV[2]: the mailboxes' key prefix). An emptied mailbox leaves
# the set. (The mailbox keys are made here, so this is for one Redis, not a Redis Cluster.)
_EXPIRE = """
local dropped = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local box = ARGV[2] .. name
  while true do
    local head = redis.call('LINDEX', box, 0)
    if not head then
      redis.call('SREM', KEYS[1], name)
      break
    end
    local m = cjson.decode(head)
    if m.c >= tonumber(ARGV[1]) then break end
    redis.call('LPOP', box)
    redis.call('HINCRBY', KEYS[2], m.k, -1)
    redis.call('HINCRBY', KEYS[3], m.o, -1)
    redis.call('DECR', KEYS[4])
    dropped = dropped + 1
  end
end
return dropped
"""


def _keys(recipient: str) -> list[str]:
    return [_MAILBOX + recipient, *_MAIL_COUNTS]


class ClusterMail:
    """The mail calls of one broker, on its Redis client."""

    def __init__(
        self, redis: Any, call: Callable[[Callable[[], Awaitable[Any]], Any], Awaitable[Any]], log: Log
    ) -> None:
        self.redis = redis
        self.call = call
        self.log = log
        self._pages: dict[str, list[Any]] = {}  # the page last read for each recipient, until delivered
        self._store = redis.register_script(_STORE)
        self._delivered = redis.register_script(_DELIVERED)
        self._expire = redis.register_script(_EXPIRE)

    async def store(
        self, recipient: str, sender: str, sender_key: str, origin: str, text: str, quotas: Any
    ) -> int | None:
        """Keep a message for ``recipient`` in Redis: 0 once Redis has it (and, with ``appendfsync always``, its
        disk), 1-4 if a quota says no (recipient, sender, origin, total), None if Redis is down."""
        message = json.dumps({"s": sender, "t": text, "k": sender_key, "o": origin, "c": time.time()})
        limits = [quotas.per_recipient, quotas.per_sender, quotas.per_origin, quotas.total]
        result: int | None = await self.call(
            lambda: self._store(
                keys=[*_keys(recipient), _MAILBOXES], args=[message, sender_key, origin, *limits, recipient]
            ),
            None,
        )
        return None if result is None else int(result)

    async def page(self, recipient: str, size: int) -> list[tuple[str, str]] | None:
        """The oldest ``size`` messages waiting for ``recipient``: (sender, text) pairs; None if Redis is down."""

        async def run() -> list[tuple[str, str]]:
            raw = await self.redis.lrange(_keys(recipient)[0], 0, size - 1)
            self._pages[recipient] = raw
            page = []
            for item in raw:
                m = json.loads(item)
                page.append((str(m["s"]), str(m["t"])))
            return page

        result: list[tuple[str, str]] | None = await self.call(run, None)
        return result

    async def delivered(self, recipient: str, count: int) -> None:
        """The first ``count`` messages of the page reached the recipient's socket: out of Redis."""
        page = self._pages.pop(recipient, [])[:count]
        if page:
            await self.call(lambda: self._delivered(keys=_keys(recipient), args=page), 0)

    async def adopt(self, rows: list[Row], quotas: Any) -> list[int] | None:
        """Keep messages of a broker's own store in Redis (``ChatStore.oldest``'s rows), with the time they were
        first stored: the ids Redis took (a quota may refuse some), None if Redis is down."""
        limits = [quotas.per_recipient, quotas.per_sender, quotas.per_origin, quotas.total]

        async def run() -> list[int]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for _id, recipient, sender, sender_key, origin, text, created in rows:
                    message = json.dumps({"s": sender, "t": text, "k": sender_key, "o": origin, "c": created})
                    keys = [*_keys(recipient), _MAILBOXES]
                    await self._store(keys=keys, args=[message, sender_key, origin, *limits, recipient], client=pipe)
                results = await pipe.execute()
            return [row[0] for row, result in zip(rows, results, strict=True) if int(result) == 0]

        result: list[int] | None = await self.call(run, None)
        return result

    async def expire(self, age: float) -> int | None:
        """Drop the messages kept for longer than ``age`` seconds, in every mailbox: how many (None: Redis is down)."""
        result = await self.call(
            lambda: self._expire(keys=[_MAILBOXES, *_MAIL_COUNTS], args=[time.time() - age, _MAILBOX]),
            None,
        )
        if result:
            self.log.info(f"cluster: {result} stored messages older than {age / 86400:g} days dropped")
        return None if result is None else int(result)
