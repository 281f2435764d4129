"""``sockcat send`` / ``sockcat recv``: verified, atomic, resumable file transfer that is safe to leave listening.

The wire format (version 2) is in ``docs/transfer.md``; in short, over any stream connection:

1. send: ``SOCKCAT-TRANSFER 2`` and a hello: a SPAKE2 message for the one-time code (or "no code");
2. recv: its answer and key confirmation; from here on, with a code, everything is sealed (AES-256-GCM);
3. send: the manifest, one line per file (path, size, mode) and directory, announced and bounded up front;
4. recv: what it already holds (a final file of that size, or a part left by an interrupted run), then the
   SHA-256 of those bytes; send: for each, whether its own bytes match; recv: go, or why not (an existing
   different file without ``--overwrite``, a link in the way, no room, ``--max-size``);
5. send: the missing bytes of each file, each followed by the SHA-256 of the whole file, hashed while sending;
6. recv: the result.

What lands is confined to the receiving directory (:mod:`._xfer_fs`); what a peer sends is checked by type and
bound (:mod:`._xfer_proto`) and escaped wherever it is shown (:mod:`._untrusted`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import NetworkError, UsageError, describe
from ._log import SILENT, Log
from ._sockets import Stream
from ._untrusted import escape
from ._xfer_channel import Channel, Hash, PeerClosed, PlainChannel, Progress, SealedChannel, hash_range, hash_read
from ._xfer_code import CodeError, ReceiverHandshake, SenderHandshake
from ._xfer_fs import (
    Refused,
    Tree,
    current_umask,
    install,
    open_existing,
    open_part,
    remove_part,
    usable_part,
)
from ._xfer_proto import (
    DIGEST,
    FINAL,
    HELLO,
    LINE,
    LIST_LINE,
    MAGIC,
    MAX_ENTRIES,
    PART,
    FileEntry,
    Header,
    Manifest,
    Offer,
    ProtocolError,
    b64,
    check_digest_hex,
    check_path,
    dump_line,
    get_bytes,
    get_list,
    parse_offers,
    part_name,
    peer_text,
    shown_path,
)

IDLE_TIMEOUT = 30.0  # seconds a peer may send nothing (recv's -i default; send's too)
KEPT_PARTS = 64  # part files of failed sessions a receiver keeps for resuming; the oldest go first


class TransferError(NetworkError):
    """The transfer failed: the peer's report, a refused manifest, a hash that does not match, a wrong code."""


class CodeMismatch(TransferError):
    """The two sides do not hold the same code."""


def _fail(message: str) -> TransferError:
    return TransferError(0, message)


@dataclass
class Report:
    """What one session did. ``bytes``: file bytes that travelled; ``skipped``: bytes already there."""

    files: int = 0
    bytes: int = 0
    skipped: int = 0
    seconds: float = 0.0
    ok: bool = False
    error: str | None = None
    total: int = 0  # the files' sizes
    skipped_files: int = 0
    paths: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "files": self.files,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 6),
            "ok": self.ok,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


# --- the sender's side -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    entry: FileEntry
    path: Path


def build_manifest(paths: list[str | Path]) -> tuple[list[Source], list[tuple[str, ...]]]:
    """The files and directories ``send PATH...`` moves (nothing is read yet); UsageError for what cannot go."""
    if not paths:
        raise UsageError("send needs at least one PATH")
    sources: list[Source] = []
    dirs: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set()

    def name_of(parts: tuple[str, ...], where: Path) -> tuple[str, ...]:
        try:
            return check_path("/".join(parts))
        except ProtocolError as exc:
            raise UsageError(f"send: cannot send {escape(str(where))}: {str(exc).split(': ', 1)[-1]}") from None

    def add(source: Path, parts: tuple[str, ...]) -> None:
        parts = name_of(parts, source)
        if parts in seen:
            raise UsageError(f"send: two sources would both land as {shown_path(parts)}")
        seen.add(parts)
        st = source.stat()
        sources.append(Source(FileEntry(parts, st.st_size, stat.S_IMODE(st.st_mode)), source))

    for raw in paths:
        p = Path(raw)
        try:
            if p.is_dir():  # D lands as D/…, like `scp -r`
                base = p.resolve().name
                if not base:
                    raise UsageError(f"send: cannot send {escape(str(raw))} (no name to land under)")
                for dirpath, dirnames, filenames in os.walk(p):
                    dirnames.sort()
                    rel = (base, *Path(dirpath).relative_to(p).parts)
                    dirs.append(name_of(rel, Path(dirpath)))
                    for name in sorted(filenames):
                        source = Path(dirpath) / name
                        if source.is_file():  # a link to a file counts; sockets, fifos, dangling links do not
                            add(source, (*rel, name))
            elif p.is_file():
                add(p, (p.name,))
            else:
                raise UsageError(f"send: {escape(str(raw))}: no such file or directory")
        except OSError as exc:
            raise UsageError(f"send: {escape(str(raw))}: {describe(exc)}") from None
        if len(sources) + len(dirs) > MAX_ENTRIES:
            raise UsageError(f"send: more than {MAX_ENTRIES:,} files and directories; send them in several sessions")
    return sources, sorted(set(dirs))


def _sender_channel(stream: Stream, code: str | None, idle: float | None) -> Channel:
    """Say hello and, with a code, run the key exchange; the channel everything else travels on."""
    hs = SenderHandshake(code) if code is not None else None
    hello = {"auth": "code", "pake": b64(hs.start())} if hs is not None else {"auth": "none"}
    plain = PlainChannel(stream, idle)
    plain.send_bytes(HELLO + b"\n" + dump_line(hello))
    try:
        reply = plain.recv_msg("answer to the hello")
    except PeerClosed:
        raise _fail(f"{plain.where} closed the connection without answering (not a sockcat recv, or too old)") from None
    if "error" in reply:
        raise _fail(f"the receiver refused: {peer_text(reply)}")
    if hs is None:
        if reply.get("auth") != "none":
            raise _fail("bad answer to the hello")
        return plain
    try:
        keys = hs.finish(get_bytes(reply, "pake", "answer to the hello"), get_bytes(reply, "confirm", "answer", 32))
    except CodeError:
        with contextlib.suppress(OSError):
            plain.send_msg({"error": "wrong code"})
        raise CodeMismatch(0, "wrong code: the receiver does not hold that code") from None
    plain.send_msg({"confirm": b64(keys.sender_confirm)})
    return SealedChannel(stream, idle, keys.send_to_recv, keys.recv_to_send)


def send_files(
    stream: Stream,
    paths: list[str | Path],
    *,
    code: str | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    log: Log = SILENT,
    progress: Progress | None = None,
    manifest: tuple[list[Source], list[tuple[str, ...]]] | None = None,
) -> Report:
    """Send files and directories over a connected stream to a ``recv``; returns what moved.

    ``code``: the receiver's one-time code (None: a receiver started with ``--no-code``).
    ``manifest``: what :func:`build_manifest` made of ``paths`` already."""
    started = time.monotonic()
    sources, dirs = manifest if manifest is not None else build_manifest(paths)
    report = Report(files=len(sources), total=sum(s.entry.size for s in sources))
    chan = _sender_channel(stream, code, idle_timeout)
    header = Header(len(sources), len(dirs), report.total)
    chan.send_bytes(
        b"".join([dump_line(header.to_json())])
        + b"".join(dump_line({"dir": "/".join(d)}) for d in dirs)
        + b"".join(dump_line(s.entry.to_json()) for s in sources)
    )
    reply = _reply(chan, "answer to the manifest", LIST_LINE)
    offers = parse_offers(reply, [s.entry for s in sources])
    mine: dict[int, Hash] = {}
    with chan.keepalive():  # the receiver hashes what it holds meanwhile; compare once both are done
        for offer in offers:
            mine[offer.index] = _prefix_hash(sources[offer.index], offer.length)
    theirs = get_list(_reply(chan, "hashes", LIST_LINE), "hashes", "hashes", len(offers))
    plan = [mine[o.index].copy().digest() == check_digest_hex(t, "hashes") for o, t in zip(offers, theirs, strict=True)]
    chan.send_msg({"plan": plan})
    _reply(chan, "answer to the plan")
    kept = {o.index: o for o, ok in zip(offers, plan, strict=True) if ok}
    try:
        for i, source in enumerate(sources):
            entry = source.entry
            matched = kept.get(i)
            if matched is not None and matched.kind == FINAL:
                report.skipped += entry.size
                report.skipped_files += 1
                continue
            start = matched.length if matched is not None else 0
            if start:
                log.info(f"{shown_path(entry.parts)}: resuming at byte {start} of {entry.size}")
                report.skipped += start
            _send_one(chan, source, start, mine[i] if matched is not None else hashlib.sha256(), progress)
            report.bytes += entry.size - start
    except (OSError, ProtocolError) as exc:
        raise _receiver_reason(chan, exc) from None
    result = _reply(chan, "result")
    if result.get("ok") is not True:
        raise _fail(f"the receiver failed: {peer_text(result)}")
    report.ok = True
    report.seconds = time.monotonic() - started
    return report


def _reply(chan: Channel, what: str, max_size: int = LINE) -> dict[str, Any]:
    obj = chan.recv_msg(what, max_size)
    if "error" in obj:
        raise _fail(f"the receiver refused: {peer_text(obj)}")
    return obj


def _receiver_reason(chan: Channel, exc: BaseException) -> TransferError:
    """A send that failed mid-way: the receiver usually said why before it closed; report that if so."""
    with contextlib.suppress(Exception):
        chan.stream.settimeout(2.0)
        obj = chan.recv_msg("result")
        if "error" in obj:
            return _fail(f"the receiver failed: {peer_text(obj)}")
    if isinstance(exc, TransferError):
        return exc
    return _fail(str(exc) if isinstance(exc, (NetworkError, ProtocolError)) else describe(exc))


def _open_source(source: Source) -> int:
    fd = os.open(source.path, os.O_RDONLY | os.O_CLOEXEC)
    if os.fstat(fd).st_size != source.entry.size:
        os.close(fd)
        raise _fail(f"{escape(str(source.path))} changed size since the transfer began; send it again")
    return fd


def _prefix_hash(source: Source, length: int) -> Hash:
    h = hashlib.sha256()
    fd = _open_source(source)
    try:
        hash_read(fd, 0, length, h)
    finally:
        os.close(fd)
    return h


def _send_one(chan: Channel, source: Source, start: int, h: Hash, progress: Progress | None) -> None:
    fd = _open_source(source)
    try:
        chan.send_file(fd, start, source.entry.size - start, h, progress)
    finally:
        os.close(fd)
    chan.send_bytes(h.digest())


# --- the receiver's side -----------------------------------------------------------------------------------------


class CodeGuard:
    """One receiver's defence against guessing: every key exchange answered is one guess at the code. After a
    wrong one, answers are spaced out (0.25 s, doubling up to 30 s), so a listener cannot be brute-forced."""

    MAX_DELAY = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures = 0
        self._next = 0.0

    def delay(self) -> float:
        return 0.0 if not self.failures else min(self.MAX_DELAY, 0.25 * 2 ** min(self.failures - 1, 16))

    def wait_turn(self) -> None:
        with self._lock:
            now = time.monotonic()
            turn = max(now, self._next)
            self._next = turn + self.delay()
        if turn > now:
            time.sleep(turn - now)

    def failed(self) -> None:
        with self._lock:
            self.failures += 1
            self._next = max(self._next, time.monotonic() + self.delay())


class PartKeeper:
    """Parts left by failed sessions, kept for resuming up to :data:`KEPT_PARTS`; past that the oldest is
    removed (by its exact name, relative to the receiving directory)."""

    def __init__(self, limit: int = KEPT_PARTS) -> None:
        self.limit = limit
        self._parts: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, tree: Tree, parts: tuple[str, ...]) -> None:
        with self._lock:
            self._parts[parts] = None
            self._parts.move_to_end(parts)
            drop = []
            while len(self._parts) > self.limit:
                drop.append(self._parts.popitem(last=False)[0])
        for old in drop:
            with contextlib.suppress(Refused, OSError):
                d = tree.directory(old[:-1], create=False)
                if d is not None:
                    remove_part(d, old[-1])

    def done(self, parts: tuple[str, ...]) -> None:
        with self._lock:
            self._parts.pop(parts, None)


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
        from ._xfer_fs import open_root

        try:
            fd = open_root(str(outdir))
        except OSError as exc:
            raise _fail(f"{escape(str(outdir))}: {describe(exc)}") from None
        return cls(fd, str(outdir), **kw)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.root_fd)


def _receiver_channel(stream: Stream, rx: Receiver) -> Channel:
    plain = PlainChannel(stream, rx.idle_timeout)
    try:
        magic = stream.recv_line(max_size=64)
    except Exception:
        magic = b""
    words = magic.split()
    if len(words) != 2 or words[0] != MAGIC:
        raise _fail(f"{plain.where} is not a sockcat send (no {MAGIC.decode()} line)")
    if words[1] != b"2":
        with contextlib.suppress(OSError):  # in the form version 1 senders read: they show it and exit 1
            plain.send_msg({"error": "this receiver speaks transfer version 2: upgrade the sending sockcat"})
        raise _fail(f"{plain.where} speaks transfer version {escape(words[1].decode(errors='replace'))}, not 2")
    hello = plain.recv_msg("hello")
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
    rx.guard.wait_turn()
    hs = ReceiverHandshake(rx.code)
    try:
        reply, confirm = hs.respond(pake)
        plain.send_msg({"auth": "code", "pake": b64(reply), "confirm": b64(confirm)})
        answer = plain.recv_msg("key confirmation")
        if "error" in answer:
            raise CodeError("wrong code")
        keys = hs.check(get_bytes(answer, "confirm", "key confirmation", 32))
    except (CodeError, ProtocolError, OSError):
        rx.guard.failed()
        raise CodeMismatch(0, f"wrong code from {plain.where} ({rx.guard.failures} so far)") from None
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
    chan = _receiver_channel(stream, rx)
    with Tree(rx.root_fd) as tree:
        try:
            _receive(chan, rx, tree, report, progress)
        except (Refused, ProtocolError, TransferError, OSError) as exc:
            message = _session_error(exc)
            with contextlib.suppress(Exception):
                chan.send_msg({"ok": False, "error": message})
            raise _fail(message) from None
    report.ok = True
    report.seconds = time.monotonic() - started
    return report


def _session_error(exc: BaseException) -> str:
    if isinstance(exc, (Refused, ProtocolError, TransferError, NetworkError)):
        return str(exc)
    return describe(exc) + (f": {escape(str(exc.filename))}" if isinstance(exc, OSError) and exc.filename else "")


def _read_manifest(chan: Channel) -> Manifest:
    manifest = Manifest(Header.parse(chan.recv_msg("manifest")))
    while not manifest.complete:
        manifest.add(chan.recv_msg("manifest entry"))
    manifest.finish()
    return manifest


def _survey(tree: Tree, rx: Receiver, manifest: Manifest) -> list[_Plan]:
    """What the receiving directory already holds for each file; Refused for what forbids the session."""
    for dir_parts in manifest.dirs:
        tree.directory(dir_parts, create=False)  # a link or a file in the way: refused before anything is written
    plans = []
    for entry in manifest.files:
        plan = _Plan(entry)
        plans.append(plan)
        d = tree.directory(entry.parts[:-1], create=False)
        if d is None:
            continue
        name = entry.parts[-1]
        there = tree.lookup(d, name)
        if there is not None:
            if not there.regular:
                raise Refused(f"{shown_path(entry.parts)}: exists and is not a regular file; refused")
            if there.st.st_size == entry.size:
                plan.final = there.st
                continue
            if not rx.overwrite:
                raise Refused(
                    f"{shown_path(entry.parts)}: exists with different content; not replaced (recv --overwrite)"
                )
            plan.replace = True
        part = tree.lookup(d, part_name(name))
        if part is not None and usable_part(part.st) and 0 < part.st.st_size <= entry.size:
            plan.part = part.st
    return plans


def _hash_offered(tree: Tree, plan: _Plan) -> Hash:
    d = tree.directory(plan.entry.parts[:-1], create=False)
    name = plan.entry.parts[-1]
    st = plan.final or plan.part
    assert d is not None and st is not None
    fd = open_existing(d, name if plan.final is not None else part_name(name), st)
    if fd is None:
        raise Refused(f"{shown_path(plan.entry.parts)}: changed during the session")
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
    offers = [Offer(i, FINAL if p.final is not None else PART, (p.final or p.part).st_size) for i, p in offered]  # type: ignore[union-attr]
    chan.send_msg({"offers": [o.to_json() for o in offers]})
    with chan.keepalive():
        for _i, p in offered:
            p.hash = _hash_offered(tree, p)
    chan.send_msg({"hashes": [p.hash.hexdigest() for _i, p in offered]})  # type: ignore[union-attr]
    answer = chan.recv_msg("plan", LIST_LINE)
    if "error" in answer:
        raise _fail(f"the sender gave up: {peer_text(answer)}")
    keep = get_list(answer, "plan", "plan", len(offered))
    for (_i, p), ok in zip(offered, keep, strict=True):
        if type(ok) is not bool:
            raise ProtocolError("bad plan: each answer must be true or false")
        p.keep = ok
        if p.final is not None and not ok:
            if not rx.overwrite:
                raise Refused(
                    f"{shown_path(p.entry.parts)}: exists with different content; not replaced (recv --overwrite)"
                )
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
    for dir_parts in manifest.all_dirs():
        tree.directory(dir_parts, create=True)
    touched: set[tuple[str, ...]] = set()
    for p in plans:
        if p.final is not None and p.keep:
            report.skipped += p.entry.size
            report.skipped_files += 1
            continue
        report.skipped += p.start
        _receive_one(chan, rx, tree, p, progress)
        report.bytes += p.entry.size - p.start
        report.paths.append(p.entry.path)
        touched.add(p.entry.parts[:-1])
    for parts in touched:  # the new names themselves survive a crash too
        d = tree.directory(parts, create=False)
        if d is not None:
            with contextlib.suppress(OSError):
                os.fsync(d)
    chan.send_msg({"ok": True, "files": report.files, "bytes": report.bytes, "skipped": report.skipped})


def _receive_one(chan: Channel, rx: Receiver, tree: Tree, p: _Plan, progress: Progress | None) -> None:
    entry = p.entry
    shown = shown_path(entry.parts)
    d = tree.directory(entry.parts[:-1], create=True)
    assert d is not None
    name = entry.parts[-1]
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
            remove_part(d, name)
            complete = True  # nothing of it is kept
            raise _fail(f"{shown}: SHA-256 does not match; the file was not kept")
        install(d, name, fd, entry.mode, rx.umask, replace=p.replace and rx.overwrite, shown=shown)
        complete = True
        rx.parts.done(entry.parts)
        rx.log.info(f"received {shown} ({entry.size} bytes, sha256 {h.hexdigest()[:16]}…)")
    finally:
        if not complete:
            if os.fstat(fd).st_size == 0:
                remove_part(d, name)
            else:
                rx.parts.keep(tree, entry.parts)
        os.close(fd)


# --- progress on a terminal -------------------------------------------------------------------------------------


class Bar:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, total: int | None, what: str) -> None:
        self.progress: Any = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            self.progress = Progress(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn()
            )
            self.progress.start()
            self.task = self.progress.add_task(what, total=total)

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
