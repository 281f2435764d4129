"""Pure framing (no I/O): a receive buffer that both the sync and the asyncio streams read through.

A stream feeds it whatever ``recv`` returned and asks it for a delimited record or an exact count;
``None`` means "feed me more". Every delimited read is bounded by ``max_size``: past it,
:class:`~sockcat.LimitOverrunError` is raised and the bytes stay buffered.
"""

from __future__ import annotations

from sockcat.core.errors import IncompleteReadError, LimitOverrunError

DEFAULT_MAX_LINE = 65536


class ReceiveBuffer:
    __slots__ = ("_buf", "_scan_delim", "_scanned")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes already searched for _scan_delim (avoids O(n^2) rescans)
        self._scan_delim = b""

    def __len__(self) -> int:
        return len(self._buf)

    def __bool__(self) -> bool:
        return bool(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def unread(self, data: bytes) -> None:
        """Put bytes back at the front (pwntools' ``unrecv``)."""
        self._buf[:0] = data
        self._scanned = 0

    def take_some(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of what is buffered (``b""`` if nothing is)."""
        out = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        self._scanned = 0
        return out

    def take_all(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return out

    def take_exactly(self, n: int) -> bytes | None:
        if len(self._buf) < n:
            return None
        return self.take_some(n)

    def take_until(self, delim: bytes, max_size: int, *, drop: bool = False) -> bytes | None:
        """The bytes up to and including ``delim`` (without it if ``drop``), or None if not there yet.

        Raises LimitOverrunError if no delimiter lies within the first ``max_size`` bytes
        (``max_size`` counts the delimiter).
        """
        if not delim:
            raise ValueError("empty delimiter")
        if delim != self._scan_delim:
            self._scan_delim, self._scanned = delim, 0
        start = max(0, self._scanned - len(delim) + 1)
        idx = self._buf.find(delim, start)
        if idx < 0 or idx + len(delim) > max_size:
            if len(self._buf) >= max_size or idx >= 0:
                raise LimitOverrunError(max_size, len(self._buf))
            self._scanned = len(self._buf)
            return None
        end = idx + len(delim)
        out = bytes(self._buf[: idx if drop else end])
        del self._buf[:end]
        self._scanned = 0
        return out

    def incomplete(self, expected: int | None) -> IncompleteReadError:
        """The error for a peer that closed mid-record; it carries (and consumes) what did arrive."""
        return IncompleteReadError(self.take_all(), expected)


def to_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    """``str`` is sent as UTF-8; any bytes-like object as is."""
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)
