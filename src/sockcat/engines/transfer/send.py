"""The sending side of a transfer (``docs/transfer.md``): the manifest, the code's key exchange, the bytes.

A receiver is a peer like any other: its answers are checked by type and bound, its texts escaped, and a line
listing something per file may be no longer than that list can be.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sockcat.core.errors import ProtocolError, SockcatError, UsageError, describe
from sockcat.core.log import SILENT, Log
from sockcat.core.transfer import (
    FINAL,
    HELLO,
    LINE,
    MAX_ENTRIES,
    FileEntry,
    Header,
    b64,
    check_digest_hex,
    check_path,
    dump_line,
    get_bytes,
    get_list,
    parse_offers,
    peer_text,
)
from sockcat.core.untrusted import escape
from sockcat.engines.transfer.channel import Channel, Hash, PeerClosed, PlainChannel, Progress, SealedChannel, hash_read
from sockcat.engines.transfer.common import IDLE_TIMEOUT, CodeMismatch, Report, fail
from sockcat.streams.sync import Stream


@dataclass(frozen=True)
class Source:
    entry: FileEntry
    path: Path


def build_manifest(paths: list[str | Path]) -> tuple[list[Source], list[str]]:
    """The files and directories ``send PATH...`` moves (nothing is read yet); UsageError for what cannot go."""
    if not paths:
        raise UsageError("send needs at least one PATH")
    sources: list[Source] = []
    dirs: list[str] = []
    seen: set[str] = set()

    def name_of(parts: tuple[str, ...], where: Path) -> str:
        try:
            return "/".join(check_path("/".join(parts)))
        except ProtocolError as exc:
            raise UsageError(f"send: cannot send {escape(str(where))}: {str(exc).split(': ', 1)[-1]}") from None

    def add(source: Path, parts: tuple[str, ...]) -> None:
        name = name_of(parts, source)
        if name in seen:
            raise UsageError(f"send: two sources would both land as {escape(name)}")
        seen.add(name)
        st = source.stat()
        sources.append(Source(FileEntry(name, st.st_size, stat.S_IMODE(st.st_mode)), source))

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


def _channel(stream: Stream, code: str | None, idle: float | None) -> Channel:
    """Say hello and, with a code, run the key exchange; the channel everything else travels on."""
    plain = PlainChannel(stream, idle)
    if code is None:
        plain.send_bytes(HELLO + b"\n" + dump_line({"auth": "none"}))
    else:
        from sockcat.core.pake import SenderHandshake

        hs = SenderHandshake(code)
        plain.send_bytes(HELLO + b"\n" + dump_line({"auth": "code", "pake": b64(hs.start())}))
    try:
        reply = plain.recv_msg("answer to the hello")
    except PeerClosed:
        raise fail(f"{plain.where} closed the connection without answering (not a sockcat recv, or too old)") from None
    if "error" in reply:
        raise fail(f"the receiver refused: {peer_text(reply)}")
    if code is None:
        if reply.get("auth") != "none":
            raise ProtocolError("bad answer to the hello")
        return plain
    from sockcat.core.pake import CodeError

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
    manifest: tuple[list[Source], list[str]] | None = None,
) -> Report:
    """Send files and directories over a connected stream to a ``recv``; returns what moved.

    ``code``: the receiver's one-time code (None: a receiver started with ``--no-code``).
    ``manifest``: what :func:`build_manifest` made of ``paths`` already."""
    started = time.monotonic()
    sources, dirs = manifest if manifest is not None else build_manifest(paths)
    report = Report(files=len(sources), total=sum(s.entry.size for s in sources))
    chan = _channel(stream, code, idle_timeout)
    header = Header(len(sources), len(dirs), report.total)
    chan.send_bytes(
        dump_line(header.to_json())
        + b"".join(dump_line({"dir": d}) for d in dirs)
        + b"".join(dump_line(s.entry.to_json()) for s in sources)
    )
    # [index, "final", length] is at most about 50 bytes; a hash 67: lines no longer than their lists can be.
    offers = parse_offers(_reply(chan, "answer to the manifest", 64 + 50 * len(sources)), [s.entry for s in sources])
    mine: dict[int, Hash] = {}
    with chan.keepalive():  # the receiver hashes what it holds meanwhile; compare once both are done
        for offer in offers:
            mine[offer.index] = _prefix_hash(sources[offer.index], offer.length)
    theirs = get_list(_reply(chan, "hashes", 64 + 70 * len(offers)), "hashes", "hashes", len(offers))
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
                log.info(f"{escape(entry.path)}: resuming at byte {start} of {entry.size}")
                report.skipped += start
            _send_one(chan, source, start, mine[i] if matched is not None else hashlib.sha256(), progress)
            report.bytes += entry.size - start
    except (OSError, SockcatError) as exc:
        raise _receiver_reason(chan, exc) from None
    result = _reply(chan, "result")
    if result.get("ok") is not True:
        raise fail(f"the receiver failed: {peer_text(result)}")
    report.ok = True
    report.seconds = time.monotonic() - started
    return report


def _reply(chan: Channel, what: str, max_size: int = LINE) -> dict[str, Any]:
    obj = chan.recv_msg(what, max(max_size, LINE))
    if "error" in obj:
        raise fail(f"the receiver refused: {peer_text(obj)}")
    return obj


def _receiver_reason(chan: Channel, exc: BaseException) -> SockcatError:
    """A send that failed mid-way: the receiver usually said why before it closed; report that if so."""
    with contextlib.suppress(Exception):
        chan.stream.settimeout(2.0)
        obj = chan.recv_msg("result")
        if "error" in obj:
            return fail(f"the receiver failed: {peer_text(obj)}")
    if isinstance(exc, SockcatError):
        return exc
    return fail(describe(exc))


def _open_source(source: Source) -> int:
    fd = os.open(source.path, os.O_RDONLY | os.O_CLOEXEC)
    if os.fstat(fd).st_size != source.entry.size:
        os.close(fd)
        raise fail(f"{escape(str(source.path))} changed size since the transfer began; send it again")
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
