"""Passwords for chat names: scrypt off the event loop, and a back-off that slows guessing.

scrypt is slow on purpose (about 50 ms here): run on the event loop, four clients sending wrong passwords stalled
everyone. Hashes run in a small thread pool instead (hashlib releases the GIL), one at a time per client, and one
at a time per origin (an IPv4 /24, an IPv6 /64, all Unix peers): however many connections guess from one network,
they queue behind each other, not in front of everyone else.

After wrong passwords, answers are delayed: 0.25 s after the first failure, doubling, per name and per address
(whichever has more), but never past :data:`MAX_DELAY`, so a correct password is always answered within 2 s. A
correct password is never refused, whatever came before it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from concurrent.futures import ThreadPoolExecutor

MAX_DELAY = 1.5  # seconds added to an answer, at most (the hash itself takes well under 0.5 s)
FORGET = 600.0  # seconds after which failures for a name or an address are forgotten
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sockcat scrypt")


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=1 << 14, r=8, p=1, dklen=32)


async def hash_password(password: str, salt: bytes | None = None) -> tuple[bytes, bytes]:
    """(salt, hash) of ``password``, computed off the event loop."""
    salt = salt if salt is not None else os.urandom(16)
    loop = asyncio.get_running_loop()
    return salt, await loop.run_in_executor(_pool, _scrypt, password, salt)


class Guard:
    """Failed password counts per name and per origin, and the delay they earn."""

    def __init__(self) -> None:
        self._fails: dict[str, tuple[int, float]] = {}
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}  # origin -> (its turn to hash, how many want it)

    async def _hash_in_turn(self, origin: str, password: str, salt: bytes) -> bytes:
        lock, users = self._turns.get(origin, (None, 0))
        lock = lock or asyncio.Lock()
        self._turns[origin] = (lock, users + 1)
        try:
            async with lock:
                return (await hash_password(password, salt))[1]
        finally:
            lock, users = self._turns[origin]
            if users == 1:
                del self._turns[origin]
            else:
                self._turns[origin] = (lock, users - 1)

    def _count(self, who: str) -> int:
        n, when = self._fails.get(who, (0, 0.0))
        if n and time.monotonic() - when > FORGET:
            del self._fails[who]
            return 0
        return n

    def delay(self, key: str, origin: str) -> float:
        n = max(self._count("name " + key), self._count("from " + origin))
        return 0.0 if not n else min(MAX_DELAY, 0.25 * 2 ** min(n - 1, 10))

    def failed(self, key: str, origin: str) -> None:
        now = time.monotonic()
        for who in ("name " + key, "from " + origin):
            self._fails[who] = (self._count(who) + 1, now)
        if len(self._fails) > 100_000:  # bounded: the oldest half goes
            for who, _ in sorted(self._fails.items(), key=lambda kv: kv[1][1])[:50_000]:
                del self._fails[who]

    async def check(self, password: str, credentials: tuple[bytes, bytes], key: str, origin: str) -> bool:
        """Whether ``password`` is right, answered after the back-off this name and origin have earned."""
        started = time.monotonic()
        wait = self.delay(key, origin)
        salt, stored = credentials
        hashed = await self._hash_in_turn(origin, password, salt)
        ok = hmac.compare_digest(hashed, stored)
        if not ok:
            self.failed(key, origin)
        left = wait - (time.monotonic() - started)
        if left > 0:
            await asyncio.sleep(left)
        return ok
