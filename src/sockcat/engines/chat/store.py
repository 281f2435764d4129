"""The chat broker's store: protected names and messages kept for offline users, in SQLite.

**Durable before "stored".** A message is committed (WAL, ``synchronous=FULL``) before its sender is told it is
stored, so a killed broker loses none. Writes go to one writer thread that commits whatever has queued up in one
transaction (group commit): one fsync for many messages, and never on the event loop.

**Delivered at least once, exactly once across a clean stop.** A message is deleted only after its line has been
written to the recipient's socket (the broker says when); a kill between the two delivers it twice at worst; a
clean stop commits every deletion first. Messages are handed out in pages, so a full mailbox never floods its
owner's connection.

**Bounded.** Quotas per recipient, per sender name, per sender address and in all (:class:`Quotas`), and expiry.

**Private.** A directory the store creates is 0700; the database and its ``-wal``/``-shm`` files are 0600.
Passwords are kept as scrypt hashes with a random salt (hashed by the broker, off its event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sockcat.serving.process import start_thread

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    key TEXT PRIMARY KEY,
    skeleton TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS users_skeleton ON users (skeleton);
CREATE TABLE IF NOT EXISTS mail (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_key TEXT NOT NULL,
    origin TEXT NOT NULL,
    text TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mail_recipient ON mail (recipient, id);
CREATE INDEX IF NOT EXISTS mail_sender ON mail (sender_key);
CREATE INDEX IF NOT EXISTS mail_origin ON mail (origin);
"""


@dataclass(frozen=True)
class Quotas:
    """How much offline mail a broker keeps (the defaults are documented in the README's security section)."""

    per_recipient: int = 200  # waiting for one name
    per_sender: int = 200  # waiting from one sender name
    per_origin: int = 1_000  # waiting from one address (IPv4 /24, IPv6 /64; all Unix peers are one origin)
    total: int = 20_000
    expiry: float = 30 * 86400.0  # seconds a message waits before it is dropped
    page: int = 100  # messages handed out at a time


def default_db() -> Path:
    """``$XDG_STATE_HOME/sockcat/chat.sqlite3`` (``~/.local/state`` when the variable is unset)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sockcat" / "chat.sqlite3"


def _private(where: str) -> None:
    """Create the database file (and a missing directory) readable by this user only, before SQLite opens it:
    SQLite gives the ``-wal`` and ``-shm`` files the database file's permissions."""
    path = Path(where)
    if not path.parent.exists():
        os.makedirs(path.parent, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
    with contextlib.suppress(OSError):
        for suffix in ("", "-wal", "-shm"):
            p = Path(where + suffix)
            if p.exists() and p.stat().st_uid == os.geteuid():
                os.chmod(p, 0o600)


def _connect(where: str) -> sqlite3.Connection:
    db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


class StoreFull(Exception):
    """A quota refused a message: the text says which, for the sender."""


Done = Callable[[Any, BaseException | None], None]


class ChatStore:
    """Reads on the caller's thread (the event loop: indexed, fast); writes through the writer thread."""

    def __init__(self, path: str | Path, quotas: Quotas | None = None) -> None:
        self.where = str(path)
        self.quotas = quotas or Quotas()
        if self.where != ":memory:":
            _private(self.where)
            self._read = _connect(self.where)
            self._write = _connect(self.where)
        else:  # one shared in-memory database for both (serialised by the lock below)
            self._read = self._write = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        # One in-memory database is shared by both sides, so they take turns; a file has two connections, and WAL
        # lets the loop's reads go on while the writer commits (no lock, or a read would wait out an fsync).
        self._lock: Any = threading.Lock() if self.where == ":memory:" else contextlib.nullcontext()
        with self._lock:
            self._write.executescript(_SCHEMA)
        self._gone: set[int] = set()  # delivered, deletion not yet committed: never handed out again
        self._jobs: queue.Queue[tuple[Callable[[sqlite3.Connection], Any], Done] | None] = queue.Queue()
        self._writer = start_thread(self._run, name="sockcat chat store")  # never takes a stop signal
        self.expire()

    # --- the writer thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < 1000:  # everything queued meanwhile goes in the same transaction
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)
                    break
                batch.append(more)
            results: list[tuple[Done, Any, BaseException | None]] = []
            with self._lock:
                try:
                    self._write.execute("BEGIN IMMEDIATE")
                    for work, done in batch:
                        self._write.execute("SAVEPOINT one")
                        try:
                            results.append((done, work(self._write), None))
                            self._write.execute("RELEASE one")
                        except (StoreFull, sqlite3.Error) as refused:
                            self._write.execute("ROLLBACK TO one")
                            self._write.execute("RELEASE one")
                            results.append((done, None, refused))
                    self._write.execute("COMMIT")  # one fsync for the whole batch
                except sqlite3.Error as failed:
                    with contextlib.suppress(sqlite3.Error):
                        self._write.execute("ROLLBACK")
                    results = [(done, None, failed) for _work, done in batch]
            for done, value, error in results:
                done(value, error)

    def submit(self, work: Callable[[sqlite3.Connection], Any], done: Done) -> None:
        """Run ``work(connection)`` in the writer thread's next transaction; ``done(value, error)`` once committed
        (called in the writer thread)."""
        self._jobs.put((work, done))

    async def write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """``work`` committed, from the event loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(value: Any, exc: BaseException | None) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(value)

            loop.call_soon_threadsafe(settle)

        self.submit(work, done)
        return await fut

    def close(self) -> None:
        """Commit everything queued (deliveries included), then close."""
        self._jobs.put(None)
        self._writer.join()
        with contextlib.suppress(sqlite3.Error):
            self._read.close()
        with contextlib.suppress(sqlite3.Error):
            self._write.close()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._read.execute(sql, args).fetchall()

    # --- names --------------------------------------------------------------------------------------------------
    def credentials(self, key: str) -> tuple[bytes, bytes] | None:
        """(salt, scrypt hash) of a protected name, or None."""
        rows = self._query("SELECT salt, hash FROM users WHERE key = ?", (key,))
        return (rows[0][0], rows[0][1]) if rows else None

    def protected_like(self, skeleton: str) -> list[str]:
        """Protected names (their keys) that look like ``skeleton``."""
        return [r[0] for r in self._query("SELECT key FROM users WHERE skeleton = ?", (skeleton,))]

    async def register(self, key: str, skeleton: str, salt: bytes, hashed: bytes) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO users (key, skeleton, salt, hash) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
                "SET skeleton = excluded.skeleton, salt = excluded.salt, hash = excluded.hash",
                (key, skeleton, salt, hashed),
            )

        await self.write(work)

    # --- mail for offline users ---------------------------------------------------------------------------------
    async def store(self, recipient: str, sender: str, sender_key: str, origin: str, text: str) -> None:
        """Keep a message for ``recipient`` (a name key); StoreFull if a quota says no. Committed on return."""
        q = self.quotas

        def work(db: sqlite3.Connection) -> None:
            def count(where: str, arg: str | None = None) -> int:
                sql = f"SELECT COUNT(*) FROM mail{where}"
                return int(db.execute(sql, (arg,) if arg is not None else ()).fetchone()[0])

            if count(" WHERE recipient = ?", recipient) >= q.per_recipient:
                raise StoreFull(f"that mailbox is full ({q.per_recipient} messages wait)")
            if count(" WHERE sender_key = ?", sender_key) >= q.per_sender:
                raise StoreFull(f"you have {q.per_sender} messages waiting to be delivered already")
            if count(" WHERE origin = ?", origin) >= q.per_origin:
                raise StoreFull(f"your address has {q.per_origin} messages waiting to be delivered already")
            if count("") >= q.total:
                raise StoreFull("the broker's store is full")
            db.execute(
                "INSERT INTO mail (recipient, sender, sender_key, origin, text, created) VALUES (?, ?, ?, ?, ?, ?)",
                (recipient, sender, sender_key, origin, text, time.time()),
            )

        await self.write(work)

    def page(self, recipient: str) -> list[tuple[int, str, str]]:
        """The next page of (id, sender, text) waiting for ``recipient``, oldest first."""
        # What is delivered but not yet deleted is copied before the query: the writer thread may commit the
        # deletion and forget those ids between the two, after the query's snapshot was taken (the first page
        # was once handed out twice that way).
        gone = set(self._gone)
        rows = self._query(
            "SELECT id, sender, text FROM mail WHERE recipient = ? ORDER BY id LIMIT ?",
            (recipient, self.quotas.page + len(gone)),
        )
        return [r for r in rows if r[0] not in gone][: self.quotas.page]

    def oldest(self, limit: int) -> list[tuple[int, str, str, str, str, str, float]]:
        """Up to ``limit`` waiting messages, oldest first, whoever they are for: (id, recipient, sender,
        sender_key, origin, text, created)."""
        gone = set(self._gone)  # (before the query: see page)
        rows = self._query(
            "SELECT id, recipient, sender, sender_key, origin, text, created FROM mail ORDER BY id LIMIT ?",
            (limit + len(gone),),
        )
        return [r for r in rows if r[0] not in gone][:limit]

    async def remove(self, ids: list[int]) -> None:
        """Delete these messages (handed over elsewhere), committed on return."""
        await self.write(lambda db: db.executemany("DELETE FROM mail WHERE id = ?", [(i,) for i in ids]))

    def delivered(self, ids: list[int]) -> None:
        """These messages reached their recipient's socket: delete them (committed in the next batch)."""
        self._gone.update(ids)

        def work(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM mail WHERE id = ?", [(i,) for i in ids])

        def done(_value: Any, exc: BaseException | None) -> None:
            if exc is None:
                self._gone.difference_update(ids)

        self.submit(work, done)

    def expire(self) -> None:
        """Drop messages older than the quota's expiry (at start, and hourly)."""
        cutoff = time.time() - self.quotas.expiry
        self.submit(lambda db: db.execute("DELETE FROM mail WHERE created < ?", (cutoff,)), lambda v, e: None)
