"""The receiving side of a transfer (``docs/transfer.md``): who may send, what may land, and where.

Every check that can refuse a session runs before anything is written: the code, the manifest's types and
bounds, what is already on disk under each name (links, directories, different files), free space and
``--max-size``. Files are then written only through :mod:`sockcat.engines.transfer.fs`, relative to the receiving
directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sockcat.core.errors import ProtocolError, SockcatError, Timeout, describe
from sockcat.core.log import SILENT, Log
from sockcat.core.transfer import (
    DIGEST,
    FINAL,
    MAGIC,
    PART,
    FileEntry,
    Header,
    Manifest,
    Offer,
    b64,
    get_bytes,
    get_list,
    part_name,
    peer_text,
)
from sockcat.core.untrusted import escape
from sockcat.engines.transfer.channel import Channel, Hash, PlainChannel, Progress, SealedChannel, hash_range
from sockcat.engines.transfer.common import IDLE_TIMEOUT, CodeMismatch, Report, fail
from sockcat.engines.transfer.fs import (
    Refused,
    Tree,
    current_umask,
    install,
    open_existing,
    open_part,
    open_root,
    part_in_use,
    remove_idle_part,
    remove_part,
    usable_part,
)
from sockcat.streams.sync import Stream

KEPT_PARTS = 64  # part files of failed sessions a receiver keeps for resuming; the oldest go first
HASH_RATE = 20 << 20  # bytes a second a sender is granted, at the least, to hash what it is offered


class CodeGuard:
    """One receiver's defence against guessing: every key exchange answered is one guess at the code.

    After a wrong guess the next answers are spaced out (0.25 s, doubling up to 30 s; one failure is forgiven per
    minute without any), and at most :attr:`MAX_WAITING` exchanges wait for their turn; others are refused at
    once. So a guesser gets about 2,880 tries a day at most, and an honest sender is slowed, never stuck."""

    MAX_DELAY = 30.0
    MAX_WAITING = 4
    FORGIVE = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0
        self._last_failure = 0.0
        self._next = 0.0
        self._waiting = 0

    @property
    def failures(self) -> int:
        with self._lock:
            return self._decayed()

    def _decayed(self) -> int:
        if self._failures:
            forgiven = int((time.monotonic() - self._last_failure) // self.FORGIVE)
            if forgiven:
                self._failures = max(0, self._failures - forgiven)
                self._last_failure += forgiven * self.FORGIVE
        return self._failures

    def _delay(self) -> float:
        n = self._decayed()
        return 0.0 if not n else min(self.MAX_DELAY, 0.25 * 2 ** min(n - 1, 16))

    def turn(self) -> float:
        """Reserve the next turn: seconds to wait for it. TransferError if too many already wait."""
        with self._lock:
            now = time.monotonic()
            turn = max(now, self._next)
            if turn > now and self._waiting >= self.MAX_WAITING:
                raise CodeMismatch(0, "too many tries at the code just now; try again later")
            self._next = turn + self._delay()
            self._waiting += 1
            return turn - now

    def done(self, ok: bool) -> None:
        with self._lock:
            self._waiting -= 1
            if not ok:
                self._decayed()
                self._failures += 1
                self._last_failure = time.monotonic()
                self._next = max(self._next, self._last_failure + self._delay())


class PartKeeper:
    """Parts left by failed sessions, kept for resuming up to :data:`KEPT_PARTS`; past that the oldest is
    removed, by its exact name, unless a session is writing it again (it is locked then)."""

    def __init__(self, limit: int = KEPT_PARTS) -> None:
        self.limit = limit
        self._parts: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, tree: Tree, path: str) -> None:
        with self._lock:
            self._parts[path] = None
            self._parts.move_to_end(path)
            drop = []
            while len(self._parts) > self.limit:
                drop.append(self._parts.popitem(last=False)[0])
        for old in drop:
            with contextlib.suppress(SockcatError, OSError):
                parts = tuple(old.split("/"))
                d = tree.directory(parts[:-1], create=False)
                if d is not None:
                    remove_idle_part(d, parts[-1])

    def done(self, path: str) -> None:
        with self._lock:
            self._parts.pop(path, None)


@dataclass
class Receiver:
    """What every session of one ``recv`` shares: where files land and the rules they land by."""

    root_fd: int
    outdir: str = "."
    code: str | None = None
    overwrite: bool = False
    max_size: int | None = None
    idle_timeout: float | None = IDLE_TIMEOUT
    log: Log = SILENT
    umask: int = field(default_factory=current_umask)
    guard: CodeGuard = field(default_factory=CodeGuard)
    parts: PartKeeper = field(default_factory=PartKeeper)

    @classmethod
    def open(cls, outdir: str | Path, **kw: Any) -> Receiver:
        try:
            fd = open_root(str(outdir))
        except OSError as exc:
            raise fail(f"{escape(str(outdir))}: {describe(exc)}") from None
        return cls(fd, str(outdir), **kw)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.root_fd)


def recv_files(
    stream: Stream,
    outdir: str | Path | Receiver,
    *,
    code: str | None = None,
    overwrite: bool = False,
    max_size: int | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    log: Log = SILENT,
    progress: Progress | None = None,
) -> Report:
    """Receive one ``send`` session over a connected stream into ``outdir``; TransferError if it fails (the
    sender is told why). ``code``: the code the sender must hold (None: no code, a trusted network)."""
    if isinstance(outdir, Receiver):
        return _session(stream, outdir, progress)
    rx = Receiver.open(outdir, code=code, overwrite=overwrite, max_size=max_size, idle_timeout=idle_timeout, log=log)
    try:
        return _session(stream, rx, progress)
    finally:
        rx.close()


def _session(stream: Stream, rx: Receiver, progress: Progress | None) -> Report:
    started = time.monotonic()
    report = Report()
    chan: Channel = PlainChannel(stream, rx.idle_timeout)
    with Tree(rx.root_fd) as tree:
        try:
            chan = _channel(chan, rx)
            _receive(chan, rx, tree, report, progress)
        except (SockcatError, OSError) as exc:
            message = str(exc) if isinstance(exc, SockcatError) else describe(exc)
            if not isinstance(exc, CodeMismatch):  # (a wrong code was answered already: nothing more to say)
                with contextlib.suppress(Exception):
                    chan.send_msg({"ok": False, "error": message})
            _linger(stream)
            if isinstance(exc, CodeMismatch):
                raise
            raise fail(message) from None
    report.ok = True
    report.seconds = time.monotonic() - started
    return report


def _linger(stream: Stream, seconds: float = 2.0, limit: int = 64 << 20) -> None:
    """End a refused session so that the sender reads why: stop writing, then read and drop what it is still
    sending (for a bounded time and amount). Closing with unread bytes would send a reset, and a reset makes the
    sender's system drop the reason before the sender reads it."""
    with contextlib.suppress(Exception):
        stream.shutdown_write()
    deadline = time.monotonic() + seconds
    buf = bytearray(1 << 16)
    with contextlib.suppress(Exception):
        while limit > 0 and (left := deadline - time.monotonic()) > 0:
            stream.socket.settimeout(left)
            n = stream.socket.recv_into(buf)
            if not n:
                return
            limit -= n


def _channel(plain: Channel, rx: Receiver) -> Channel:
    """The hello and, with a code, the key exchange: the channel the rest travels on."""
    stream = plain.stream
    try:
        magic = stream.recv_line(max_size=64)
    except Timeout:
        raise fail(f"{plain.where} sent nothing for {rx.idle_timeout:g} s") from None
    except (SockcatError, OSError):
        magic = b""
    words = magic.split()
    if len(words) != 2 or words[0] != MAGIC:
        raise fail(f"{plain.where} is not a sockcat send (no {MAGIC.decode()} line)")
    if words[1] != b"2":
        with contextlib.suppress(OSError):  # in the form version 1 senders read: they show it and exit 1
            plain.send_msg({"error": "this receiver speaks transfer version 2: upgrade the sending sockcat"})
        raise fail(f"{plain.where} speaks transfer version {escape(words[1].decode(errors='replace'))}, not 2")
    hello = plain.recv_msg("hello", busy=False)
    auth = hello.get("auth")
    if rx.code is None:
        if auth != "none":
            plain.send_msg({"error": "this receiver runs without a code (--no-code): send without --code"})
            raise CodeMismatch(0, f"{plain.where} offered a code, but this receiver runs with --no-code")
        plain.send_msg({"auth": "none"})
        return plain
    if auth != "code":
        plain.send_msg({"error": "this receiver needs its code: sockcat send --code CODE (or SOCKCAT_CODE)"})
        raise CodeMismatch(0, f"{plain.where} gave no code")
    pake = get_bytes(hello, "pake", "hello")
    from sockcat.core.pake import CodeError, ReceiverHandshake

    wait = rx.guard.turn()
    ok = False
    try:
        if wait:
            with plain.keepalive():  # the sender hears "busy" while its turn comes
                time.sleep(wait)
        hs = ReceiverHandshake(rx.code)
        reply, confirm = hs.respond(pake)
        plain.send_msg({"auth": "code", "pake": b64(reply), "confirm": b64(confirm)})
        answer = plain.recv_msg("key confirmation", busy=False)
        if "error" in answer:
            raise CodeError("wrong code")
        keys = hs.check(get_bytes(answer, "confirm", "key confirmation", 32))
        ok = True
    except (CodeError, ProtocolError, OSError):
        raise CodeMismatch(0, f"wrong code from {plain.where}") from None
    finally:
        rx.guard.done(ok)
    return SealedChannel(stream, rx.idle_timeout, keys.recv_to_send, keys.send_to_recv)


@dataclass
class _Plan:
    """For one file of the manifest: what is there, and where its bytes start."""

    entry: FileEntry
    final: os.stat_result | None = None  # a regular file of the same size, offered
    part: os.stat_result | None = None  # a usable part, offered
    replace: bool = False  # a different final file is there and --overwrite replaces it
    hash: Hash | None = None  # SHA-256 of the offered bytes
    keep: bool = False  # the sender's bytes match what is offered
    start: int = 0


def _read_manifest(chan: Channel) -> Manifest:
    manifest = Manifest(Header.parse(chan.recv_msg("manifest", busy=False)))
    while not manifest.complete:
        manifest.add(chan.recv_msg("manifest entry", busy=False))
    manifest.finish()
    return manifest


def _survey(tree: Tree, rx: Receiver, manifest: Manifest) -> list[_Plan]:
    """What the receiving directory already holds for each file; Refused for what forbids the session."""
    for listed in manifest.dirs:
        tree.directory(tuple(listed.split("/")), create=False)  # a link or a file in the way: refused now
    plans = []
    for entry in manifest.files:
        plan = _Plan(entry)
        plans.append(plan)
        parts = entry.parts
        d = tree.directory(parts[:-1], create=False)
        if d is None:
            continue
        there = tree.lookup(d, parts[-1])
        if there is not None:
            if not there.regular:
                raise Refused(f"{escape(entry.path)}: exists and is not a regular file; refused")
            if there.st.st_size == entry.size:
                plan.final = there.st
                continue
            if not rx.overwrite:
                raise Refused(f"{escape(entry.path)}: exists with different content; not replaced (recv --overwrite)")
            plan.replace = True
        part = tree.lookup(d, part_name(parts[-1]))
        if part is not None and part.regular and part_in_use(d, parts[-1]):
            raise Refused(f"{escape(entry.path)}: another session is receiving this file; try again later")
        if part is not None and not part.regular and not part.link:
            raise Refused(f"{escape(entry.path)}: something that is not a file holds its part file's name; refused")
        if part is not None and usable_part(part.st) and 0 < part.st.st_size <= entry.size:
            plan.part = part.st
    return plans


def _hash_offered(tree: Tree, plan: _Plan) -> Hash:
    parts = plan.entry.parts
    d = tree.directory(parts[:-1], create=False)
    st = plan.final or plan.part
    assert d is not None and st is not None
    fd = open_existing(d, parts[-1] if plan.final is not None else part_name(parts[-1]), st)
    if fd is None:
        raise Refused(f"{escape(plan.entry.path)}: changed during the session")
    try:
        h = hashlib.sha256()
        hash_range(fd, 0, st.st_size, h)
        return h
    finally:
        os.close(fd)


def _receive(chan: Channel, rx: Receiver, tree: Tree, report: Report, progress: Progress | None) -> None:
    manifest = _read_manifest(chan)
    report.files = len(manifest.files)
    report.total = manifest.header.bytes
    plans = _survey(tree, rx, manifest)
    offered = [(i, p) for i, p in enumerate(plans) if p.final is not None or p.part is not None]
    offers = [Offer(i, FINAL if p.final is not None else PART, _offered(p).st_size) for i, p in offered]
    chan.send_msg({"offers": [o.to_json() for o in offers]})
    with chan.keepalive():
        for _i, p in offered:
            p.hash = _hash_offered(tree, p)
    chan.send_msg({"hashes": [p.hash.hexdigest() for _i, p in offered if p.hash is not None]})
    # The sender hashes its own bytes meanwhile: "busy" lines are welcome for as long as that can take.
    allowed = time.monotonic() + (rx.idle_timeout or 60.0) + sum(o.length for o in offers) / HASH_RATE
    answer = chan.recv_msg("plan", 64 + 6 * len(offers), busy=allowed)
    if "error" in answer:
        raise fail(f"the sender gave up: {peer_text(answer)}")
    keep = get_list(answer, "plan", "plan", len(offered))
    for (_i, p), ok in zip(offered, keep, strict=True):
        if type(ok) is not bool:
            raise ProtocolError("bad plan: each answer must be true or false")
        p.keep = ok
        if p.final is not None and not ok:
            if not rx.overwrite:
                raise Refused(f"{escape(p.entry.path)}: exists with different content; not replaced (recv --overwrite)")
            p.final, p.replace = None, True
        p.start = (p.part.st_size if p.part is not None else 0) if ok else 0
        if not ok:
            p.part, p.hash = None, None
    to_come = sum(p.entry.size - p.start for p in plans if not (p.final is not None and p.keep))
    if rx.max_size is not None and to_come > rx.max_size:
        raise Refused(f"the session would write {to_come:,} bytes; recv --max-size is {rx.max_size:,}")
    vfs = os.statvfs(rx.root_fd)
    free = vfs.f_bavail * vfs.f_frsize
    if to_come > free:
        raise Refused(f"not enough space: {to_come:,} bytes to come, {free:,} free")
    chan.send_msg({"go": True})
    for needed in manifest.all_dirs():
        tree.directory(tuple(needed.split("/")), create=True)
    touched: set[tuple[str, ...]] = set()
    for p in plans:
        if p.final is not None and p.keep:
            report.skipped += p.entry.size
            report.skipped_files += 1
            continue
        report.skipped += p.start
        _receive_one(chan, rx, tree, p, progress)
        report.bytes += p.entry.size - p.start
        touched.add(p.entry.parts[:-1])
    for parts in touched:  # the new names themselves survive a crash too
        d = tree.directory(parts, create=False)
        if d is not None:
            with contextlib.suppress(OSError):
                os.fsync(d)
    chan.send_msg({"ok": True, "files": report.files, "bytes": report.bytes, "skipped": report.skipped})


def _offered(p: _Plan) -> os.stat_result:
    st = p.final if p.final is not None else p.part
    assert st is not None
    return st


def _receive_one(chan: Channel, rx: Receiver, tree: Tree, p: _Plan, progress: Progress | None) -> None:
    entry = p.entry
    shown = escape(entry.path)
    parts = entry.parts
    d = tree.directory(parts[:-1], create=True)
    assert d is not None
    name = parts[-1]
    fd, kept = open_part(d, name, shown, p.part if p.keep else None)
    complete = False
    try:
        if kept != p.start:
            raise Refused(f"{shown}: its part file changed during the session")
        h = p.hash if p.hash is not None else hashlib.sha256()
        chan.recv_file(fd, entry.size - p.start, h, progress, shown)
        digest = chan.recv_exactly(DIGEST, f"SHA-256 of {shown}")
        os.fsync(fd)
        if digest != h.digest():
            remove_part(d, name, fd)
            complete = True  # nothing of it is kept
            raise fail(f"{shown}: SHA-256 does not match; the file was not kept")
        install(d, name, fd, entry.mode, rx.umask, replace=p.replace and rx.overwrite, shown=shown)
        complete = True
        rx.parts.done(entry.path)
        rx.log.info(f"received {shown} ({entry.size} bytes, sha256 {h.hexdigest()[:16]}…)")
    finally:
        if not complete:
            if os.fstat(fd).st_size == 0:
                remove_part(d, name, fd)
            else:
                rx.parts.keep(tree, entry.path)
        os.close(fd)
