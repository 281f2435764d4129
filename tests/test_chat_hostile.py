"""sockcat chat as an attacker meets it: terminal escapes, look-alike names, password guessing, a store filled by
throwaway names, full mailboxes, silent and trickling connections, floods, connection storms, garbage.

Every case runs a real ``sockcat chat`` process on loopback and talks to it with raw sockets (the way nc and telnet
users do). Each checks the defence the chat engine's docstring promises (``src/sockcat/engines/chat/__init__.py``),
then that the broker still serves an honest client, and where it matters that its memory (VmRSS/VmHWM) and its
descriptors (``/proc/PID/fd``) stay bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import select
import selectors
import socket
import sqlite3
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from conftest import TIMEOUT, Bg, Proc, sockcat, wait_until

from sockcat.core import chatproto as proto

MB = 1 << 20

# What must never reach a terminal raw: C0 controls but TAB and LF, DEL, C1 controls, bidi controls, line and
# paragraph separators. (Written out here, not taken from sockcat.core.untrusted: the test must not trust the code.)
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def raw_controls(data: bytes) -> list[str]:
    """Every character in ``data`` (UTF-8, which it must be) that a terminal would act on."""
    text = data.decode("utf-8")
    bad = {
        c
        for c in text
        if (ord(c) < 0x20 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F or c in BIDI or c in "\u2028\u2029"
    }
    return sorted(f"U+{ord(c):04X}" for c in bad)


# --- a raw line client --------------------------------------------------------------------------------------------


class Peer:
    """A line client on a raw socket. ``raw`` keeps every byte the broker sent, for byte-level checks."""

    def __init__(
        self,
        address: str,
        *,
        source: str | None = None,
        rcvbuf: int | None = None,
        prompt: bool = True,
        ctx: ssl.SSLContext | None = None,
    ) -> None:
        if address.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX)
            target: object = address[5:]
        else:
            host, port = address.rsplit("//", 1)[1].rsplit(":", 1)
            self.sock = socket.socket(socket.AF_INET)
            target = (host, int(port))
            if source is not None:
                self.sock.bind((source, 0))
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(target)
        if ctx is not None:
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.raw = bytearray()
        self.buf = bytearray()
        self.eof = False
        self.pace: tuple[int, float] | None = None  # (bytes a read, pause after it): a slow reader
        if prompt:
            assert self.line() == proto.PROMPT

    def send(self, text: str | bytes) -> None:
        self.sock.sendall((text.encode() if isinstance(text, str) else text) + b"\n")

    def _fill(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(self.pace[0] if self.pace else 65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
        self.raw += data
        self.buf += data
        if self.pace:
            time.sleep(self.pace[1])  # pacing a slow reader, not waiting for anything

    def line(self, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            assert not self.eof, f"connection ended: {bytes(self.buf)!r}"
            left = deadline - time.monotonic()
            assert left > 0, f"no line within {timeout} s: {bytes(self.buf)!r}"
            try:
                self._fill(left)
            except TimeoutError:
                continue
        end = self.buf.index(b"\n")
        raw = bytes(self.buf[:end])
        del self.buf[: end + 1]
        return raw.decode("utf-8")

    def until(self, prefix: str, timeout: float = TIMEOUT) -> tuple[str, list[str]]:
        """Lines up to the first that starts with ``prefix``: (that line, the ones before it)."""
        deadline = time.monotonic() + timeout
        skipped = []
        while not (line := self.line(max(0.001, deadline - time.monotonic()))).startswith(prefix):
            skipped.append(line)
        return line, skipped

    def join(self, name: str) -> Peer:
        self.send(name)
        hello = self.line()
        assert hello.startswith(f"* hello {name};"), hello
        return self

    def closed_within(self, timeout: float) -> float | None:
        """Seconds until the broker closed this connection (data before it is kept), or None if it did not."""
        started = time.monotonic()
        while not self.eof:
            left = started + timeout - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError, ssl.SSLError):
                self._fill(left)
        return time.monotonic() - started

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Chat:
    """A ``sockcat chat`` process (``:memory:`` store unless told) and ways to look into it."""

    served = 0

    def __init__(
        self,
        procs: list[Proc],
        *args: str,
        db: Path | str = ":memory:",
        addresses: tuple[str, ...] = ("tcp://127.0.0.1:0",),
    ) -> None:
        self.proc = Proc(sockcat("chat", *addresses, "--db", str(db), *args))
        procs.append(self.proc)
        self.address = self.proc.read_listening()
        self.pid = self.proc.p.pid
        self.db = db

    def peer(self, name: str | None = None, **kw: object) -> Peer:
        p = Peer(self.address, **kw)  # type: ignore[arg-type]
        return p.join(name) if name is not None else p

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def mem(self, key: str = "VmRSS") -> int:
        """Bytes of ``VmRSS`` (resident now) or ``VmHWM`` (resident at the peak) from /proc/PID/status."""
        for row in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if row.startswith(key + ":"):
                return int(row.split()[1]) * 1024
        raise AssertionError(f"no {key} for {self.pid}")

    def serves(self) -> None:
        """The broker is alive and an honest client joins, asks /who and is answered."""
        assert self.proc.p.poll() is None, "the broker died"
        Chat.served += 1
        name = f"honest{Chat.served}"
        p = self.peer(name)
        p.send("/who")
        who, _ = p.until("* online (")
        assert name in who, who
        p.send("/quit")
        p.until("* bye")
        assert p.closed_within(5) is not None  # (the broker closed its descriptor)
        p.close()

    def rows(self, where: str = "", *args: object) -> int:
        """Rows of the mail table (read-only, beside the broker's connections)."""
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return int(db.execute(f"SELECT COUNT(*) FROM mail {where}", args).fetchone()[0])
        finally:
            db.close()


def register(chat: Chat, name: str, password: str) -> None:
    """Protect ``name`` and leave (the broker has seen it go once the connection is closed)."""
    p = chat.peer(name)
    p.send(f"/register {password}")
    assert p.line() == f"* {name} is protected: next time, /nick {name} PASSWORD"
    p.send("/quit")
    p.until("* bye")
    assert p.closed_within(5) is not None
    p.close()


# --- 1. terminal injection ------------------------------------------------------------------------------------------

# (what the attacker sends, what others must see): controls in the middle, so no strip() can hide them
EVIL = [
    (
        "nothing\r<admin> please /msg alice your password\x1b[K",
        "nothing\\x0d<admin> please /msg alice your password\\x1b[K",
    ),
    ("title \x1b]0;pwned\x07 set", "title \\x1b]0;pwned\\x07 set"),
    ("clear \x1b[2J screen", "clear \\x1b[2J screen"),
    ("vt\x0bff\x0cend", "vt\\x0bff\\x0cend"),
    ("c1 \x85 csi \x9b1m end", "c1 \\x85 csi \\x9b1m end"),
    ("bidi \u202eevil\u202c end", "bidi \\u202eevil\\u202c end"),
    ("line \u2028<root> fake end", "line \\u2028<root> fake end"),
    ("nul \x00 del \x7f end", "nul \\x00 del \\x7f end"),
    ("tab\tkept", "tab\tkept"),
]


def test_terminal_escapes_reach_nobody_raw(procs: list[Proc], tmp_path: Path) -> None:
    """Broadcast, /msg online, /msg stored offline and delivered later, /nick attempts, /msg to evil names: every
    control byte arrives escaped as text (``\\x1b``), TAB is kept, and the attacker's own error lines are clean too."""
    chat = Chat(procs, "--line-rate", "0", db=tmp_path / "chat.sqlite3")
    bob = chat.peer("bob")
    mallory = chat.peer("mallory")
    assert bob.line() == "* mallory joined"
    for evil, shown in EVIL:
        mallory.send(evil)
        assert bob.line() == f"<mallory> {shown}"
        mallory.send(f"/msg bob {evil}")
        assert bob.line() == f"*mallory* {shown}"
        mallory.send(f"/msg carol {evil}")
        assert mallory.line() == "* carol is offline; message stored"
    for evil, _ in EVIL[:-1]:
        bare = evil.replace(" ", "")
        for attempt in (f"/nick x{bare}", f"/msg x{bare} hello", f"/msg {evil.split()[0]}\x1b[2J hi"):
            mallory.send(attempt)
            reply = mallory.line()
            assert reply.startswith("! "), (attempt, reply)
    unnamed = chat.peer()
    for evil, _ in EVIL[:-1]:
        unnamed.send(f"x{evil}")  # as a name
        assert unnamed.line().endswith("; your name?")
        unnamed.send(f"/nick {evil.replace(' ', '')}")
        assert unnamed.line().endswith("; your name?")
    mallory.send("sync")
    assert bob.line() == "<mallory> sync"  # nothing reached bob from the refused names
    carol = chat.peer("carol")
    assert [carol.line() for _ in EVIL] == [f"*mallory* {shown}" for _, shown in EVIL]
    assert bob.line() == "* carol joined"
    for who in (bob, carol, mallory, unnamed):
        assert raw_controls(bytes(who.raw)) == [], bytes(who.raw)
    assert b"\t" in bob.raw and b"\tkept" in carol.raw
    chat.serves()


# --- 2. look-alike names ------------------------------------------------------------------------------------------

LOOK_ALIKES = [
    "аlice",  # Cyrillic а
    "aliсe",  # Cyrillic с
    "ａｌｉｃｅ",  # full-width
    "alice\u3164",  # Hangul filler: shows as nothing
    "\u3164",
    "²³",
    "aIice",  # capital I for l
    "a1ice",
    "ALICE",  # the same key
]
HONEST_NAMES = ["小王", "राम", "ひらがなカタカナ"]


def _refused_everywhere(chat: Chat, names: Iterable[str], taken: str) -> Peer:
    p = chat.peer()
    for bad in names:
        for attempt in (bad, f"/nick {bad}"):
            p.send(attempt)
            reply = p.line()
            assert reply.startswith("! ") and reply.endswith("; your name?"), (attempt, reply)
            assert raw_controls(reply.encode()) == [] and "\u3164" not in reply, reply
            if bad == "ALICE":
                assert taken in reply, reply
    return p


def test_look_alikes_of_an_online_name_are_refused(procs: list[Proc]) -> None:
    chat = Chat(procs)
    alice = chat.peer("alice")
    scope = chat.peer("scope")
    p = _refused_everywhere(chat, [*LOOK_ALIKES, "ѕсоре"], "is taken")  # ѕсоре: all Cyrillic
    honest = [chat.peer(name) for name in HONEST_NAMES]
    p.join("mallory")  # the same connection, refused ten times, is still asked and still joins
    p.send("/who")
    everyone = sorted(["alice", "mallory", "scope", *HONEST_NAMES], key=str.casefold)
    assert p.line() == f"* online ({len(everyone)}): {', '.join(everyone)}"
    for q in (alice, scope, *honest):
        q.close()
    chat.serves()


def test_look_alikes_of_a_registered_offline_name_are_refused(procs: list[Proc], tmp_path: Path) -> None:
    chat = Chat(procs, db=tmp_path / "chat.sqlite3")
    register(chat, "alice", "s3cret")
    p = _refused_everywhere(chat, LOOK_ALIKES, "is protected")
    for name in HONEST_NAMES:
        chat.peer(name).close()
    p.send("/nick alice s3cret")
    assert p.line().startswith("* hello alice;")
    chat.serves()


def test_multi_letter_look_alikes_are_refused(procs: list[Proc]) -> None:
    """Unicode's confusables (TR 39) map ``m`` to ``rn``: ``rnary`` reads as ``mary``, and is refused while mary is
    online (the skeleton follows mappings to several characters, not only one-to-one ones)."""
    chat = Chat(procs)
    mary = chat.peer("mary")
    p = chat.peer()
    p.send("rnary")
    reply = p.line()
    mary.close()
    assert reply.startswith("! ") and "looks too much like" in reply, f"rnary accepted beside mary: {reply}"


# --- 3. password guessing -----------------------------------------------------------------------------------------


def test_password_guesses_do_not_stall_the_broker(procs: list[Proc], tmp_path: Path) -> None:
    """Four connections guessing alice's password without pause: /who from someone else is answered within 0.3 s
    throughout (scrypt runs off the event loop)."""
    chat = Chat(procs, db=tmp_path / "chat.sqlite3")
    register(chat, "alice", "right")
    watcher = chat.peer("watcher")
    stop = threading.Event()
    answered = [0] * 4
    guessers = [chat.peer() for _ in range(4)]

    def guess(i: int) -> None:
        p = guessers[i]
        while not stop.is_set():
            p.send("/nick alice WRONGPASSWORD")
            assert p.line() == "! wrong password for alice; your name?"
            answered[i] += 1

    threads = [Bg(guess, i) for i in range(4)]
    latencies = []
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        t0 = time.monotonic()
        watcher.send("/who")
        assert watcher.line() == "* online (1): watcher"
        latencies.append(time.monotonic() - t0)
        time.sleep(0.05)  # pacing the probes over the attack (and under the line rate), not waiting for anything
    stop.set()
    for t in threads:
        t.get(TIMEOUT)
    assert sum(answered) >= 8, answered  # guesses were being hashed throughout
    assert max(latencies) < 0.3, f"/who answered in {max(latencies):.3f} s at worst during the guessing"
    chat.serves()


def test_wrong_passwords_slow_down_and_the_right_one_still_gets_in(procs: list[Proc], tmp_path: Path) -> None:
    chat = Chat(procs, db=tmp_path / "chat.sqlite3")
    register(chat, "alice", "right")
    p = chat.peer()
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        p.send("/nick alice wrong")
        assert p.line() == "! wrong password for alice; your name?"
        times.append(time.monotonic() - t0)
    assert times[0] < 0.5 and times[-1] >= 1.0, times
    assert all(b >= a - 0.1 for a, b in itertools.pairwise(times)), times  # never faster again
    q = chat.peer()
    t0 = time.monotonic()
    q.send("/nick alice right")
    assert q.line().startswith("* hello alice;")
    assert time.monotonic() - t0 < 2.0
    chat.serves()


class Guessers(threading.Thread):
    """Many connections, each sending a wrong password again as soon as the last one is answered (one thread)."""

    def __init__(self, chat: Chat, count: int) -> None:
        super().__init__(daemon=True)
        self.sel = selectors.DefaultSelector()
        self.answers = 0
        self.stop = threading.Event()
        self.peers = [chat.peer(source=f"127.0.{i % 16 + 1}.1") for i in range(count)]  # 16 origins
        for p in self.peers:
            p.sock.setblocking(False)
            p.sock.send(b"/nick alice wrong\n")
            self.sel.register(p.sock, selectors.EVENT_READ, p)
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.1):
                p: Peer = key.data
                with contextlib.suppress(BlockingIOError):
                    data = p.sock.recv(65536)
                    n = data.count(b"\n")
                    self.answers += n
                    if n and not self.stop.is_set():
                        p.sock.send(b"/nick alice wrong\n" * n)


def test_a_right_password_is_answered_within_2_s_under_a_guessing_storm(procs: list[Proc], tmp_path: Path) -> None:
    """passwords.py promises: "a correct password is always answered within 2 s". 128 connections guess (each one
    guess at a time, from 16 addresses); hashes run one at a time per origin, so the right password from another
    address waits behind at most one guess per origin, not behind every queued one, and the 1.5 s back-off."""
    chat = Chat(procs, db=tmp_path / "chat.sqlite3")
    register(chat, "alice", "right")
    storm = Guessers(chat, 128)
    try:
        wait_until(lambda: storm.answers >= 128, "the first guesses answered")
        q = chat.peer()
        t0 = time.monotonic()
        q.send("/nick alice right")
        assert q.line().startswith("* hello alice;")
        took = time.monotonic() - t0
    finally:
        storm.stop.set()
        storm.join(TIMEOUT)
        for p in storm.peers:
            p.close()
    assert took < 2.0, f"the right password was answered after {took:.2f} s"


# --- 4. store permissions -----------------------------------------------------------------------------------------


def test_the_store_is_private(procs: list[Proc], tmp_path: Path) -> None:
    db = tmp_path / "sub" / "chat.sqlite3"
    chat = Chat(procs, db=db)
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    register(chat, "alice", "pw")  # a write: the -wal file exists now
    wait_until(lambda: Path(f"{db}-wal").exists(), "a -wal file")
    for suffix in ("", "-wal", "-shm"):
        f = Path(f"{db}{suffix}")
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
    chat.proc.terminate()
    db.chmod(0o644)  # loosened by someone: made private again on the next start
    chat = Chat(procs, db=db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    chat.serves()


# --- 5 and 6. offline mail: quotas, full mailboxes -----------------------------------------------------------------


def store_burst(
    chat: Chat, groups: list[tuple[str, list[str]]], per_name: int, to: Callable[[str, int], str]
) -> list[str]:
    """Throwaway connections, one per name of each (source address, names) group, all at once, each storing
    ``per_name`` messages (pipelined) for ``to(name, i)``, nobody online; then each leaves (and the broker has seen it
    go). Returns every answer to a /msg, stored or not."""
    peers = []
    for source, names in groups:
        for name in names:
            p = chat.peer(name, source=source)
            p.sock.sendall(b"".join(f"/msg {to(name, i)} m{i}\n".encode() for i in range(per_name)) + b"/quit\n")
            peers.append(p)
    answers: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    for p in peers:
        while (line := p.line(max(0.001, deadline - time.monotonic()))) != "* bye":
            if line.endswith("is offline; message stored") or line.startswith("! not stored: "):
                answers.append(line)
        assert p.closed_within(5) is not None
        p.close()
    assert len(answers) == per_name * len(peers)
    return answers


def test_offline_store_quotas_bound_the_store(procs: list[Proc], tmp_path: Path) -> None:
    """Throwaway names from many addresses hit every quota, one after the other: per recipient (200), per sender
    name (200), per address (1,000 from a /24) and in all (20,000). The store stays at 20,000 messages; a mailbox
    read by its owner is emptied."""
    chat = Chat(procs, "--line-rate", "0", db=tmp_path / "chat.sqlite3")
    # per recipient: 200 for victim, then one more from someone else
    answers = store_burst(chat, [("127.0.0.1", ["filler"])], 200, lambda n, i: "victim")
    assert answers == ["* victim is offline; message stored"] * 200
    other = chat.peer("other")
    other.send("/msg victim one more")
    assert other.line() == "! not stored: that mailbox is full (200 messages wait)"
    # per sender name: filler has 200 waiting
    filler = chat.peer("filler")
    filler.send("/msg someone else")
    assert filler.line() == "! not stored: you have 200 messages waiting to be delivered already"
    # per origin: 127.0.0.0/24 has 200; four more names reach 1,000, the fifth is refused
    names = [f"throw{i}" for i in range(5)]
    answers = store_burst(chat, [("127.0.0.1", names)], 200, lambda n, i: f"r{n}x{i % 5}")
    assert answers.count("! not stored: your address has 1000 messages waiting to be delivered already") == 200
    assert sum(a.endswith("message stored") for a in answers) == 800
    assert chat.rows() == 1000
    # in all: 19 more /24s store 1,000 each, then the store is full for everyone, from anywhere
    groups = [(f"127.0.{net}.1", [f"n{net}t{i}" for i in range(5)]) for net in range(1, 20)]
    answers = store_burst(chat, groups, 200, lambda n, i: f"r{n}x{i % 5}")
    assert all(a.endswith("message stored") for a in answers), {a for a in answers if a.startswith("!")}
    assert chat.rows() == 20_000
    answers = store_burst(chat, [("127.0.99.1", ["late"])], 50, lambda n, i: f"r{n}")
    assert answers == ["! not stored: the broker's store is full"] * 50
    assert chat.rows() == 20_000
    assert os.path.getsize(chat.db) < 64 * MB
    # delivered rows are deleted
    victim = chat.peer("victim")
    assert [victim.line() for _ in range(200)] == [f"*filler* m{i}" for i in range(200)]
    wait_until(lambda: chat.rows("WHERE recipient = ?", "victim") == 0, "victim's rows deleted")
    assert chat.rows() == 19_800
    chat.serves()


def test_a_full_mailbox_never_locks_its_owner_out(procs: list[Proc]) -> None:
    """200 messages of 4 KB wait for owner (the per-recipient quota), who reads slowly but steadily through a small
    receive window: every message arrives once, in order, and owner stays connected; the next time, none again.
    (A memory store: 200 commits one after the other need no fsync each.)"""
    chat = Chat(procs, "--line-rate", "0")
    wang = chat.peer("wang")
    body = "x" * 4000
    wang.sock.sendall(b"".join(f"/msg owner {i:03d} {body}\n".encode() for i in range(200)))
    for _ in range(200):
        assert wang.line() == "* owner is offline; message stored"
    wang.send("/msg owner one too many")
    assert wang.line() == "! not stored: that mailbox is full (200 messages wait)"
    rss = chat.mem()
    owner = chat.peer(rcvbuf=8192)
    owner.pace = (4096, 0.015)  # about 250 KB/s at most: slow, steady
    owner.join("owner")
    got = [owner.line() for _ in range(200)]
    owner.pace = None
    assert got == [f"*wang* {i:03d} {body}" for i in range(200)]
    owner.send("/who")
    assert owner.line() == "* online (2): owner, wang"  # still connected
    assert chat.mem() < rss + 32 * MB
    owner.send("/quit")
    owner.until("* bye")
    assert owner.closed_within(5) is not None
    wang.until("* owner left")
    again = chat.peer("owner")
    again.send("/who")
    assert again.line() == "* online (2): owner, wang"  # nothing delivered twice
    chat.serves()


def test_stored_mail_is_not_delivered_twice_by_taking_ones_own_name_again(procs: list[Proc]) -> None:
    """``/nick dora`` (or ``/nick Dora``) while already dora, with a page of stored mail on its way and not yet
    acknowledged: the store still holds that page, and it must not be handed out a second time."""
    chat = Chat(procs)
    wang = chat.peer("wang")
    for i in range(3):
        wang.send(f"/msg dora m{i}")
        assert wang.line() == "* dora is offline; message stored"
    dora = chat.peer()
    dora.send("dora\n/nick dora\n/nick Dora\n/who")
    _, lines = dora.until("* online (")
    mail = [line for line in lines if line.startswith("*wang* ")]
    assert mail == ["*wang* m0", "*wang* m1", "*wang* m2"], lines


# --- 7. deadlines ---------------------------------------------------------------------------------------------------


def test_a_name_must_come_within_30_s_whatever_trickles_in(procs: list[Proc]) -> None:
    """The one long test (about 31 s): a connection that sends nothing and one that sends a byte a second without a
    line end, opened together, are both closed 30 s after connecting; a joined user is not."""
    chat = Chat(procs)
    patient = chat.peer("patient")
    silent, trickle = chat.peer(), chat.peer()
    started = time.monotonic()
    ended: dict[Peer, float] = {}
    while len(ended) < 2 and time.monotonic() - started < 40:
        if trickle not in ended:
            with contextlib.suppress(OSError):
                trickle.sock.send(b"x")
        open_ = [p for p in (silent, trickle) if p not in ended]
        ready, _, _ = select.select([p.sock for p in open_], [], [], 1.0)  # (and a byte a second)
        for p in open_:
            if p.sock in ready:
                with contextlib.suppress(TimeoutError):
                    p._fill(0.5)
                if p.eof:
                    ended[p] = time.monotonic() - started
    for p in (silent, trickle):
        assert p in ended, "still open after 40 s"
        assert 29.0 <= ended[p] <= 35.0, ended[p]
        assert p.line() == "! no name within 30 s; bye"
        assert p.buf == b""
    patient.send("/who")
    assert patient.line() == "* online (1): patient"  # joined 31 s ago, not timed out by default
    chat.serves()


def test_idle_timeout_applies_to_joined_users(procs: list[Proc]) -> None:
    chat = Chat(procs, "-i", "1")
    p = chat.peer("sleepy")
    t0 = time.monotonic()
    assert p.line(5) == "* idle for 1 s; bye"
    took = p.closed_within(5)
    assert took is not None and 0.9 <= time.monotonic() - t0 <= 3.5
    chat.serves()


def test_a_connection_closed_during_its_password_check_keeps_no_name(procs: list[Proc], tmp_path: Path) -> None:
    """bob asks for alice's name with the right password; the check takes 1.5 s (back-off earned by wrong guesses
    from the same address); meanwhile -i closes bob's connection. When the check completes, the closed connection
    must not take the name: a ghost in the online table would hold alice until the broker restarts."""
    chat = Chat(procs, "-i", "0.3", db=tmp_path / "chat.sqlite3")
    register(chat, "alice", "right")
    guessers = [chat.peer() for _ in range(4)]
    for g in guessers:
        g.send("/nick alice wrong")
    for g in guessers:
        assert g.line() == "! wrong password for alice; your name?"
    bob = chat.peer()
    bob.send("bob\n/nick alice right")
    assert bob.line().startswith("* hello bob;")
    assert bob.closed_within(5) is not None  # idle: closed while its check runs (or just after it, as alice)
    deadline = time.monotonic() + 5  # bob's check ends 1.5 s after it began, at the latest
    replies: list[str] = []
    while not (replies and replies[-1].startswith("* hello alice;")) and time.monotonic() < deadline:
        p = chat.peer()
        p.send("/nick alice right")
        replies.append(p.line())
        p.close()
        time.sleep(0.2)  # pacing the attempts, not waiting for anything
    assert replies[-1].startswith("* hello alice;"), f"alice is held by a closed connection: {sorted(set(replies))}"


# --- 8. passwords with spaces ------------------------------------------------------------------------------------


def test_passwords_may_hold_spaces(procs: list[Proc], tmp_path: Path) -> None:
    chat = Chat(procs, db=tmp_path / "chat.sqlite3")
    register(chat, "horse", "correct horse battery")
    p = chat.peer()
    p.send("/nick horse correct horse")
    assert p.line() == "! wrong password for horse; your name?"
    p.send("/nick horse correct horse battery")
    assert p.line().startswith("* hello horse;")
    chat.serves()


# --- 9. flood control ---------------------------------------------------------------------------------------------


def collect(
    peers: dict[str, Peer], done: Callable[[dict[str, list[str]]], bool], timeout: float
) -> dict[str, list[str]]:
    """Read every peer at once (one selector) until ``done(lines by peer)``; returns the lines."""
    sel = selectors.DefaultSelector()
    got: dict[str, list[str]] = {name: [] for name in peers}
    for name, p in peers.items():
        sel.register(p.sock, selectors.EVENT_READ, name)
    deadline = time.monotonic() + timeout
    while not done(got):
        assert time.monotonic() < deadline, {n: len(v) for n, v in got.items()}
        for key, _ in sel.select(0.2):
            p = peers[key.data]
            with contextlib.suppress(TimeoutError):
                p._fill(0.01)
            assert not p.eof, f"{key.data} was disconnected"
            *whole, rest = bytes(p.buf).split(b"\n")
            p.buf = bytearray(rest)
            got[key.data] += [w.decode() for w in whole]
    sel.close()
    return got


def test_an_unlimited_flood_loses_no_line(procs: list[Proc]) -> None:
    """--line-rate 0: four senders, 2,000 lines each as fast as they can, 50 readers: every reader gets every line of
    every sender, each sender's in order, once; no error line; nobody is disconnected."""
    chat = Chat(procs, "--line-rate", "0")
    readers = {f"r{i}": chat.peer(f"r{i}") for i in range(50)}
    senders = {f"s{k}": chat.peer(f"s{k}") for k in range(4)}
    everyone = {**readers, **senders}
    n = 2000

    def blast(k: int) -> None:
        senders[f"s{k}"].sock.sendall(b"".join(b"%05d\n" % i for i in range(n)))

    def said(lines: list[str]) -> int:
        return sum(line.startswith("<s") for line in lines)

    blasts = [Bg(blast, k) for k in range(4)]
    got = collect(
        everyone, lambda g: all(said(g[r]) == 4 * n for r in readers) and all(said(g[s]) == 3 * n for s in senders), 60
    )
    for b in blasts:
        b.get(TIMEOUT)
    for who, lines in got.items():
        assert not [line for line in lines if line.startswith("!")], who
        for k in range(4):
            if who != f"s{k}":
                mine = [line for line in lines if line.startswith(f"<s{k}> ")]
                assert mine == [f"<s{k}> {i:05d}" for i in range(n)], (who, k, len(mine))
    chat.serves()


def test_a_flood_over_the_line_rate_is_slowed_and_complete(procs: list[Proc]) -> None:
    """--line-rate 100: 500 lines sent at once take at least (500 - 250 burst) / 100 s = 2.5 s, and all arrive."""
    chat = Chat(procs, "--line-rate", "100")
    calm = chat.peer("calm")
    flood = chat.peer("flood")
    assert calm.line() == "* flood joined"
    started = time.monotonic()
    flood.sock.sendall(b"".join(b"line %d\n" % i for i in range(500)))
    got = [calm.line() for _ in range(500)]
    took = time.monotonic() - started
    assert got == [f"<flood> line {i}" for i in range(500)]
    assert took >= 2.2, took
    flood.send("/who")
    assert flood.line() == "* online (2): calm, flood"
    chat.serves()


# --- 10. connection caps and access --------------------------------------------------------------------------------


def test_max_conns_closes_the_extra_connection_at_once(procs: list[Proc]) -> None:
    chat = Chat(procs, "--max-conns", "5")
    five = [chat.peer(f"u{i}") for i in range(5)]
    sixth = chat.peer(prompt=False)
    took = sixth.closed_within(5)
    assert took is not None and took < 1.0 and sixth.raw == b"", (took, sixth.raw)
    five[0].send("/who")
    assert five[0].until("* online (")[0] == "* online (5): u0, u1, u2, u3, u4"
    five[4].send("/quit")
    five[4].until("* bye")
    assert five[4].closed_within(5) is not None
    five[0].until("* u4 left")
    chat.serves()  # a place is free again


def test_allow_refuses_other_peers_at_once(procs: list[Proc]) -> None:
    chat = Chat(procs, "--allow", "10.0.0.0/8")
    p = chat.peer(prompt=False)
    took = p.closed_within(5)
    assert took is not None and took < 1.0 and p.raw == b"", (took, p.raw)
    assert chat.proc.p.poll() is None


def test_hundreds_of_idle_connections_come_and_go(procs: list[Proc]) -> None:
    chat = Chat(procs)
    chat.serves()
    base = chat.fds()
    idle = [chat.peer() for _ in range(300)]  # each got its prompt: accepted
    assert chat.fds() >= base + 300
    chat.serves()
    for p in idle:
        p.close()
    wait_until(lambda: chat.fds() <= base + 2, "the 300 descriptors closed")
    chat.serves()


def test_tls_handshakes_count_against_max_conns(procs: list[Proc]) -> None:
    """--max-conns 5 on tls://: of forty TCP connections that never start the TLS handshake, five are held (until
    the 10 s handshake timeout) and the rest closed at once: the cap counts connections from accept, not from the
    end of the handshake, so a client that never speaks TLS cannot hold descriptors past it."""
    chat = Chat(procs, "--max-conns", "5", addresses=("tls://127.0.0.1:0",))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    warm = chat.peer(ctx=ctx).join("warm")  # TLS works
    warm.send("/quit")
    warm.until("* bye")
    assert warm.closed_within(5) is not None
    base = chat.fds()
    silent = [chat.peer(prompt=False) for _ in range(40)]
    closed = 0
    deadline = time.monotonic() + 2.0
    for p in silent:
        if p.closed_within(max(0.1, deadline - time.monotonic())) is not None:
            closed += 1
    fds = chat.fds()
    for p in silent:
        p.close()
    assert fds <= base + 5 + 2 and closed >= 35, f"{fds - base} connections held open, {closed} of 40 closed"


# --- 11. several addresses ----------------------------------------------------------------------------------------


def test_one_room_across_tcp_and_unix(procs: list[Proc], short_tmp: Path) -> None:
    chat = Chat(procs, addresses=("tcp://127.0.0.1:0", f"unix:{short_tmp / 'chat.sock'}"))
    err = chat.proc.p.stderr
    assert err is not None
    ready, _, _ = select.select([err], [], [], TIMEOUT)
    assert ready, "no second listening line"
    second = err.readline().decode().strip()
    assert chat.address.startswith("tcp://127.0.0.1:") and second == f"listening on unix:{short_tmp / 'chat.sock'}"
    t = chat.peer("t")
    u = Peer(second[len("listening on ") :]).join("u")
    assert t.line() == "* u joined"
    u.send("hi from unix")
    assert t.line() == "<u> hi from unix"
    t.send("hi from tcp")
    assert u.line() == "<t> hi from tcp"
    for p in (t, u):
        p.send("/who")
        assert p.line() == "* online (2): t, u"


# --- 12. garbage ----------------------------------------------------------------------------------------------------


def test_no_input_ends_the_broker(procs: list[Proc]) -> None:
    chat = Chat(procs, "--line-rate", "0")
    chat.serves()
    rss = chat.mem()
    rng = random.Random(12)
    watcher = chat.peer("watcher")
    before = [
        "/who",
        "/msg watcher hi",
        "/register pw",
        "/help",
        "/bogus",
        "/nick",
        "//x",
        "/",
        "",
        " ",
        "\t",
        "/quitx",
    ]
    p = chat.peer()
    for line in before:  # commands before joining: answered (or ignored), never obeyed
        p.send(line)
    p.send("/who")
    p.send("/nick garbage")
    _, lines = p.until("* hello garbage;")
    assert all(line.startswith("! ") for line in lines), lines
    for evil in (
        "/msg \x1b[2J hi",
        "/msg " + "x" * 40 + " hi",
        "/msg ａｌｉｃｅ hi",
        "/msg \u3164 hi",
        "/msg -- --",
        "/nick " + " ".join(["a"] * 2000),  # 2,000 arguments in one line
        "/nick " + " ".join(["b"] * 10_000),  # 10,000: a line too long
        "/nick garbage " + " ".join(["c"] * 1900),
    ):
        p.send(evil)
    p.send(b"a\x00b\xff\xfe\xc3\x28\xed\xa0\x80\xf4\x90\x80\x80")  # NUL, bad bytes, a surrogate, past U+10FFFF
    p.send(b"\x00" * 100_000)
    p.send("/who")
    _, lines = p.until("* online (")
    junk = [chat.peer() for _ in range(4)]
    for q in junk:
        for _ in range(16):
            q.sock.sendall(rng.randbytes(65536))
        q.sock.sendall(b"x" * 3 * MB + b"\n" + bytes(range(256)) * 64 + b"\n")
    for q in junk:
        q.send("/quit")
        assert q.until("* bye")[0] == "* bye"  # read through all of it, in order
        q.close()
    watcher.send("/who")
    who, _ = watcher.until("* online (")
    assert "watcher" in who
    assert raw_controls(bytes(watcher.raw)) == []
    assert chat.mem() < rss + 64 * MB
    chat.serves()


def test_lines_waiting_their_turn_stay_within_max_pending(procs: list[Proc]) -> None:
    """64 connections each send 256 KB of 2-byte bad lines at once (asyncio reads up to 256 KB at a time). Lines
    waiting their turn (--line-rate 20: almost two hours' worth) must wait as bytes, in the socket or a bounded
    buffer, never as 131,072 decoded objects (about 3 MB) per connection: the broker stays within 1 MB each."""
    chat = Chat(procs)
    chat.serves()  # the confusables table is loaded: not counted
    base = chat.mem("VmHWM")
    fds = chat.fds()
    payload = b"\xff\n" * (128 * 1024)
    peers = []
    for _ in range(64):
        p = chat.peer()
        p.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            p.sock.send(payload)
        p.sock.setblocking(True)
        peers.append(p)
    for p in peers:  # the broker has read and started on every one
        assert p.line() == "! line not UTF-8 (send UTF-8); ignored"
    chat.serves()
    grown = chat.mem("VmHWM") - base
    for p in peers:
        p.close()
    wait_until(lambda: chat.fds() <= fds, "the 64 connections closed")
    assert grown < 64 * MB, f"the broker grew by {grown / MB:.0f} MB for 64 connections of short lines"
