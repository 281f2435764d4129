"""The chat broker's store: protected names and messages kept for offline users, in SQLite.

A stored message is committed (WAL, ``synchronous=FULL``) before its sender is told it is stored, so a killed
broker loses none. Delivery is at least once: a message is marked delivered only after its line has been written
to the recipient's socket, so a kill between the two delivers it twice at worst; a clean stop marks everything
it wrote. Passwords are kept as scrypt hashes with a random salt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    sender TEXT NOT NULL,
    text TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS waiting ON messages (recipient, delivered, id);
"""


def default_db() -> Path:
    """``$XDG_STATE_HOME/sockcat/chat.sqlite3`` (``~/.local/state`` when the variable is unset)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sockcat" / "chat.sqlite3"


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=1 << 14, r=8, p=1, dklen=32)


def fold(name: str) -> str:
    """The key a name is stored under: case-folded, so ``Wang`` and ``wang`` are one user."""
    return name.casefold()


class ChatStore:
    def __init__(self, path: str | Path) -> None:
        where = str(path)
        if where != ":memory:":
            Path(where).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(where, isolation_level=None)  # autocommit: each statement is durable
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    # --- names ---------------------------------------------------------------------------------------------
    def is_protected(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM users WHERE name = ?", (fold(name),)).fetchone() is not None

    def check(self, name: str, password: str) -> bool:
        row = self.db.execute("SELECT salt, hash FROM users WHERE name = ?", (fold(name),)).fetchone()
        return row is not None and hmac.compare_digest(_hash(password, row[0]), row[1])

    def register(self, name: str, password: str) -> None:
        salt = os.urandom(16)
        self.db.execute(
            "INSERT INTO users (name, salt, hash) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET salt = excluded.salt, hash = excluded.hash",
            (fold(name), salt, _hash(password, salt)),
        )

    # --- messages for offline users -------------------------------------------------------------------------
    def store(self, recipient: str, sender: str, text: str) -> None:
        self.db.execute(
            "INSERT INTO messages (recipient, sender, text) VALUES (?, ?, ?)", (fold(recipient), sender, text)
        )

    def waiting(self, name: str) -> list[tuple[int, str, str]]:
        """(id, sender, text) of every message not yet delivered to ``name``, oldest first."""
        return self.db.execute(
            "SELECT id, sender, text FROM messages WHERE recipient = ? AND delivered = 0 ORDER BY id", (fold(name),)
        ).fetchall()

    def delivered(self, ids: list[int]) -> None:
        self.db.executemany("UPDATE messages SET delivered = 1 WHERE id = ?", [(i,) for i in ids])

    def close(self) -> None:
        self.db.close()
