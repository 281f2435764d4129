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

The sender is :mod:`sockcat.engines.transfer.send`, the receiver :mod:`sockcat.engines.transfer.recv`. What
lands is confined to the receiving directory (:mod:`sockcat.engines.transfer.fs`); what a peer sends is checked by
type and bound (:mod:`sockcat.core.transfer`) and escaped wherever it is shown (:mod:`sockcat.core.untrusted`).
This module holds what both sides share.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from sockcat.core.errors import NetworkError

IDLE_TIMEOUT = 30.0  # seconds a peer may send nothing (recv's -i default; send's too)


class TransferError(NetworkError):
    """The transfer failed: the peer's report, a refused manifest, a hash that does not match, a wrong code."""


class CodeMismatch(TransferError):
    """The two sides do not hold the same code."""


def fail(message: str) -> TransferError:
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
