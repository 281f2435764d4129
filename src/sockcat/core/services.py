"""The classic services' RFC logic (pure): chargen's pattern (RFC 864) and daytime's line (RFC 867)."""

from __future__ import annotations

import time

_PRINTABLE = bytes(range(32, 127))  # the 95 printable ASCII characters, space included
_LINE_WIDTH = 72
_FIRST = _PRINTABLE.index(b"!")  # RFC 864's sample pattern starts with '!'


def chargen_line(n: int) -> bytes:
    """Line ``n`` (0-based) of RFC 864's pattern: 72 characters starting one later each line, then CRLF."""
    start = (_FIRST + n) % len(_PRINTABLE)
    doubled = _PRINTABLE + _PRINTABLE
    return doubled[start : start + _LINE_WIDTH] + b"\r\n"


# One full period of the pattern (95 lines); any whole number of periods continues seamlessly.
CHARGEN_PERIOD = b"".join(chargen_line(i) for i in range(len(_PRINTABLE)))
CHARGEN_CHUNK = CHARGEN_PERIOD * 9  # 63,270 bytes: one shared object per write, never copied per client
_LINE_LEN = _LINE_WIDTH + 2
_RECORD_LINES = 4096 // _LINE_LEN  # unixpacket: whole lines, at most 4 KiB per record


def chargen_datagram(first_line: int, length: int) -> bytes:
    """``length`` bytes (1-512) of the pattern starting at line ``first_line``: one UDP chargen reply."""
    length = max(1, min(512, length))
    start = (first_line % len(_PRINTABLE)) * _LINE_LEN
    return (CHARGEN_PERIOD + CHARGEN_PERIOD[:1024])[start : start + length]


def chargen_reply_size(request: int) -> int:
    """How long a UDP chargen reply is: RFC 864 lets it be any length from 0 to 512, but a reply much longer than
    its request makes the service a reflection amplifier (a spoofed source gets the bytes). So one line (74 bytes)
    for a short datagram, and otherwise no longer than the datagram itself."""
    return max(_LINE_LEN, min(512, request))


def daytime_line(now: float | None = None) -> bytes:
    """RFC 867's suggested format, e.g. ``Tuesday, February 22, 1982 17:37:43-PST`` and CRLF."""
    t = time.localtime(now)
    return time.strftime("%A, %B %d, %Y %H:%M:%S-%Z", t).encode("ascii", "replace") + b"\r\n"
