"""``sockcat send`` / ``sockcat recv``: verified, atomic, resumable file and directory transfer.

The wire format is in ``docs/transfer.md``. In short, over any stream connection (``send`` connects, ``recv``
listens):

1. send: ``SOCKCAT-TRANSFER 1`` and one JSON line, the manifest: every file's relative path, size, SHA-256 and
   mode, and the directories to create;
2. recv: one JSON line, ``{"have": [...]}``: how many leading bytes of each file it already holds (a finished file
   with the same SHA-256: all of them; a part file left by an interrupted run: its length);
3. send: the missing bytes of each file, in manifest order, back to back (``socket.sendfile``);
4. recv: one JSON line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

A file is received into ``.NAME.<sha256 prefix>.part`` beside its final name, hashed as it arrives (a resumed part
is hashed from its start), fsync'ed, checked against the manifest's SHA-256 and only then renamed into place: a
reader never sees a partial file, a finished transfer leaves no part file, and a changed source file (another
SHA-256) never resumes from a stale part.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import ssl
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ._address import Address
from ._errors import IncompleteReadError, LimitOverrunError, NetworkError, UsageError, describe
from ._log import SILENT, Log
from ._sockets import Stream

MAGIC = b"SOCKCAT-TRANSFER 1"
MAX_MANIFEST = 64 << 20  # bytes of manifest JSON accepted
MAX_FILES = 1_000_000
CHUNK = 1 << 20
PART_SUFFIX = ".part"
QUEUE_CHUNKS = 8  # chunks (of at most 4 MiB) waiting for the receiver's writer thread

Progress = Callable[[int], None]  # called with bytes just moved


class TransferError(NetworkError):
    """The transfer failed: the peer's report, a bad manifest, a hash that does not match."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, '/'-separated
    size: int
    sha256: str
    mode: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "mode": self.mode}


@dataclass(frozen=True)
class SendItem:
    entry: FileEntry
    source: Path


# --- the manifest ------------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(paths: list[str | Path]) -> tuple[list[SendItem], list[str]]:
    """The files (with their SHA-256) and directories that ``send PATH...`` moves; UsageError for bad paths."""
    if not paths:
        raise UsageError("send needs at least one PATH")
    items: list[SendItem] = []
    dirs: list[str] = []
    seen: set[str] = set()

    def add(source: Path, name: str) -> None:
        if name in seen:
            raise UsageError(f"send: two sources would both land as {name!r}")
        seen.add(name)
        st = source.stat()
        entry = FileEntry(name, st.st_size, _sha256_file(source), stat.S_IMODE(st.st_mode))
        items.append(SendItem(entry, source))

    for raw in paths:
        p = Path(raw)
        try:
            if p.is_dir():  # D lands as D/…, like `scp -r`
                base = p.resolve().name
                if not base:
                    raise UsageError(f"send: cannot send {raw} (no name to land under)")
                for dirpath, dirnames, filenames in os.walk(p):
                    dirnames.sort()
                    rel = PurePosixPath(base, *Path(dirpath).relative_to(p).parts)
                    dirs.append(str(rel))
                    for name in sorted(filenames):
                        source = Path(dirpath) / name
                        if source.is_file():  # a symlink to a file counts; sockets, fifos, dangling links do not
                            add(source, str(rel / name))
            elif p.is_file():
                add(p, p.name)
            else:
                raise UsageError(f"send: {raw}: no such file or directory")
        except OSError as exc:
            raise UsageError(f"send: {raw}: {describe(exc)}") from None
    return items, sorted(set(dirs))


def safe_relative(path: str) -> PurePosixPath:
    """A manifest path as a safe relative path: no absolute path, ``..``, empty part or NUL."""
    p = PurePosixPath(path)
    if (
        not path
        or "\0" in path
        or "\\" in path
        or p.is_absolute()
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise TransferError(0, f"refused unsafe path {path!r}")
    return p


# --- wire helpers ------------------------------------------------------------------------------------------------


def _send_json(stream: Stream, obj: dict[str, Any]) -> None:
    stream.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def _recv_json(stream: Stream, what: str, max_size: int = 1 << 20) -> dict[str, Any]:
    try:
        line = stream.recv_line(max_size=max_size)
    except IncompleteReadError:
        raise TransferError(0, f"the peer closed the connection before the {what}") from None
    except LimitOverrunError:
        raise TransferError(0, f"the {what} is too long") from None
    try:
        obj = json.loads(line)
    except ValueError:
        raise TransferError(0, f"bad {what} from the peer") from None
    if not isinstance(obj, dict):
        raise TransferError(0, f"bad {what} from the peer")
    return obj


def _part_path(final: Path, sha256: str) -> Path:
    return final.with_name(f".{final.name}.{sha256[:16]}{PART_SUFFIX}")


# --- sending -----------------------------------------------------------------------------------------------------


@dataclass
class SendReport:
    files: int
    bytes_total: int  # the files' sizes
    bytes_sent: int  # what travelled (less after a resume)
    skipped: int  # files the receiver already had whole


def send_files(
    stream: Stream,
    paths: list[str | Path],
    *,
    log: Log = SILENT,
    progress: Progress | None = None,
    manifest: tuple[list[SendItem], list[str]] | None = None,
) -> SendReport:
    """Send files and directories over a connected stream to a ``recv``; returns what moved.
    ``manifest``: what :func:`build_manifest` made of ``paths`` already (it reads and hashes every file)."""
    items, dirs = manifest if manifest is not None else build_manifest(paths)
    stream.sendall(MAGIC + b"\n")
    _send_json(stream, {"files": [i.entry.to_json() for i in items], "dirs": dirs})
    reply = _recv_json(stream, "answer to the manifest")
    if reply.get("error"):
        raise TransferError(0, f"the receiver refused: {reply['error']}")
    have = reply.get("have")
    if not isinstance(have, list) or len(have) != len(items) or not all(isinstance(h, int) for h in have):
        raise TransferError(0, "bad answer to the manifest")
    sent = skipped = 0
    plain = stream.tls_version is None  # TLS bytes go through the stream; plain ones straight from the file
    for item, offset in zip(items, have, strict=True):
        size = item.entry.size
        if not 0 <= offset <= size:
            raise TransferError(0, f"the receiver asked for {item.entry.path} from byte {offset}")
        if offset == size:
            skipped += 1 if size else 0
            continue
        if offset:
            log.info(f"{item.entry.path}: resuming at byte {offset} of {size}")
        with open(item.source, "rb") as f:
            left, pos = size - offset, offset
            while left:
                if plain:
                    n = stream.socket.sendfile(f, pos, min(left, 64 * CHUNK))
                else:
                    f.seek(pos)
                    chunk = f.read(min(left, CHUNK))
                    stream.sendall(chunk)
                    n = len(chunk)
                if n == 0:
                    raise TransferError(0, f"{item.source} shrank while it was sent")
                pos += n
                left -= n
                sent += n
                if progress is not None:
                    progress(n)
    result = _recv_json(stream, "result")
    if not result.get("ok"):
        raise TransferError(0, f"the receiver failed: {result.get('error', 'no reason given')}")
    return SendReport(len(items), sum(i.entry.size for i in items), sent, skipped)


# --- receiving ---------------------------------------------------------------------------------------------------


@dataclass
class RecvReport:
    files: int
    bytes_received: int
    paths: list[Path]


def _offset(final: Path, entry: FileEntry) -> int:
    """How many leading bytes of ``entry`` the receiver already holds."""
    if final.is_file() and final.stat().st_size == entry.size and _sha256_file(final) == entry.sha256:
        return entry.size
    part = _part_path(final, entry.sha256)
    try:
        n = part.stat().st_size
    except FileNotFoundError:
        return 0
    if n > entry.size:
        part.unlink()
        return 0
    return n


def _parse_manifest(obj: dict[str, Any]) -> tuple[list[FileEntry], list[str]]:
    files, dirs = obj.get("files"), obj.get("dirs", [])
    if not isinstance(files, list) or not isinstance(dirs, list) or len(files) > MAX_FILES:
        raise TransferError(0, "bad manifest")
    entries = []
    for f in files:
        try:
            entry = FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"]).lower(), int(f.get("mode", 0o644)))
        except (KeyError, TypeError, ValueError):
            raise TransferError(0, "bad manifest entry") from None
        safe_relative(entry.path)
        if entry.size < 0 or len(entry.sha256) != 64 or any(c not in "0123456789abcdef" for c in entry.sha256):
            raise TransferError(0, f"bad manifest entry for {entry.path!r}")
        entries.append(entry)
    for d in dirs:
        safe_relative(str(d))
    return entries, [str(d) for d in dirs]


def _receive_file(stream: Stream, final: Path, entry: FileEntry, offset: int, progress: Progress | None) -> int:
    """Append the missing bytes to the part file, check the whole file's SHA-256, rename it into place.

    Two threads: this one receives, a second one hashes and writes (hashlib and file writes release the GIL),
    joined by a queue of at most QUEUE_CHUNKS chunks, so memory stays bounded and both CPUs work."""
    part = _part_path(final, entry.sha256)
    h = hashlib.sha256()
    if offset:
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    received = 0
    failure: list[BaseException] = []
    chunks: queue.Queue[bytes | None] = queue.Queue(QUEUE_CHUNKS)
    with open(part, "ab") as out:

        def write_and_hash() -> None:
            try:
                while (data := chunks.get()) is not None:
                    h.update(data)
                    out.write(data)
            except BaseException as exc:  # a full disk: the receiving side stops at its next chunk
                failure.append(exc)
                while chunks.get() is not None:
                    pass

        worker = threading.Thread(target=write_and_hash, name="recv writer", daemon=True)
        worker.start()
        try:
            left = entry.size - offset
            while left and not failure:
                data = stream.recv(min(left, 4 * CHUNK))
                if not data:
                    raise TransferError(0, f"the sender closed the connection inside {entry.path} ({left} bytes short)")
                chunks.put(data)
                left -= len(data)
                received += len(data)
                if progress is not None:
                    progress(len(data))
        finally:
            chunks.put(None)
            worker.join()
            out.flush()
        if failure:
            raise failure[0]
        os.fsync(out.fileno())
    if h.hexdigest() != entry.sha256:
        part.unlink(missing_ok=True)
        raise TransferError(0, f"{entry.path}: SHA-256 does not match; the file was not kept")
    os.chmod(part, entry.mode & 0o7777)
    os.replace(part, final)
    for stale in final.parent.glob(f".{final.name}.*{PART_SUFFIX}"):  # parts of older versions of this file
        stale.unlink(missing_ok=True)
    return received


def recv_files(
    stream: Stream, outdir: str | Path, *, log: Log = SILENT, progress: Progress | None = None
) -> RecvReport:
    """Receive one ``send`` session over a connected stream into ``outdir``."""
    out = Path(outdir)
    try:
        magic = stream.recv_line(max_size=64)
    except (IncompleteReadError, LimitOverrunError):
        magic = b""
    if magic.rstrip(b"\r\n") != MAGIC:
        raise TransferError(0, "the peer is not a sockcat send (no SOCKCAT-TRANSFER 1 line)")
    try:
        entries, dirs = _parse_manifest(_recv_json(stream, "manifest", MAX_MANIFEST))
        out.mkdir(parents=True, exist_ok=True)
        for d in dirs:
            (out / d).mkdir(parents=True, exist_ok=True)
        finals = [out / e.path for e in entries]
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
        have = [_offset(final, e) for final, e in zip(finals, entries, strict=True)]
    except TransferError as exc:
        _send_json(stream, {"error": str(exc)})
        raise
    except OSError as exc:
        _send_json(stream, {"error": describe(exc)})
        raise TransferError(exc.errno or 0, f"{out}: {describe(exc)}") from None
    _send_json(stream, {"have": have})
    received = 0
    try:
        for final, entry, offset in zip(finals, entries, have, strict=True):
            if offset == entry.size and final.is_file():
                continue
            received += _receive_file(stream, final, entry, offset, progress)
            log.info(f"received {final} ({entry.size} bytes, sha256 {entry.sha256[:16]}…)")
    except TransferError as exc:
        with contextlib.suppress(OSError):  # a sender that is gone gets nothing
            _send_json(stream, {"ok": False, "error": str(exc)})
        raise
    except OSError as exc:
        _send_json(stream, {"ok": False, "error": describe(exc)})
        raise TransferError(exc.errno or 0, f"{out}: {describe(exc)}") from None
    _send_json(stream, {"ok": True, "files": len(entries), "bytes": received})
    return RecvReport(len(entries), received, finals)


# --- progress on a terminal -------------------------------------------------------------------------------------


class _Bar:
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


def run_send(
    address: Address,
    paths: list[str],
    *,
    connect_timeout: float | None,
    log: Log,
    ssl_context: ssl.SSLContext | None = None,
    sni: str | None = None,
) -> int:
    """``sockcat send ADDR PATH...`` (CLI entry)."""
    from ._sockets import connect

    if address.is_datagram or address.is_stdio:
        raise UsageError(f"send needs a stream address, not {address}")
    manifest = build_manifest(list(paths))  # bad paths are a usage error before any connection
    with connect(address, connect_timeout=connect_timeout, ssl_context=ssl_context, sni=sni) as stream:
        bar = _Bar(sum(item.entry.size for item in manifest[0]) or None, "send")
        try:
            report = send_files(stream, list(paths), log=log, progress=bar.advance, manifest=manifest)
        finally:
            bar.close()
    log.info(
        f"sent {report.files} files: {report.bytes_sent} of {report.bytes_total} bytes travelled"
        + (f", {report.skipped} already there" if report.skipped else "")
    )
    return 0


def run_recv(
    address: Address, outdir: str, *, keep_open: bool, log: Log, cert: str | None = None, key: str | None = None
) -> int:
    """``sockcat recv ADDR [-o DIR] [-k]`` (CLI entry): one send session (``-k``: one after another)."""
    from ._sockets import listen

    if address.is_datagram or address.is_stdio:
        raise UsageError(f"recv needs a stream address, not {address}")
    with listen(address, cert=cert, key=key) as server:
        log.always(f"listening on {server.address}")
        if server.fingerprint:
            log.always(f"certificate sha256 {server.fingerprint}")
        while True:
            with server.accept() as stream:
                bar = _Bar(None, "recv")
                try:
                    report = recv_files(stream, outdir, log=log, progress=bar.advance)
                except (TransferError, OSError) as exc:
                    if not keep_open:
                        raise
                    log.warning(str(exc))
                    continue
                finally:
                    bar.close()
                log.info(f"received {report.files} files, {report.bytes_received} bytes into {outdir}")
            if not keep_open:
                return 0
