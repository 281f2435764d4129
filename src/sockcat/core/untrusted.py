"""Text a peer controls, made safe to show (pure).

Names, paths and error texts from the network can carry terminal escapes (``\\x1b]0;…\\x07`` retitles a
window, ``\\r`` rewrites a line), bidi overrides that reorder what a reader sees, line separators, or lone
surrogates that cannot even be encoded. :func:`escape` shows each such character as a Python-style escape
(``\\x1b``, ``\\u202e``), so the text stays on one line and reads as what it is.
"""

from __future__ import annotations

import unicodedata

# Bidirectional formatting characters (Unicode's Bidi_Control): they reorder the text around them.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})  # controls, surrogates, line/paragraph separators


def unsafe_char(c: str) -> bool:
    """Whether one character must never reach a terminal raw."""
    return c in BIDI_CONTROLS or unicodedata.category(c) in _UNSAFE_CATEGORIES


def _escape_char(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def escape(text: str, *, backslash: bool = True) -> str:
    """``text`` with every unsafe character shown as an escape (and ``\\`` as ``\\\\``, so the result is
    unambiguous, unless ``backslash=False``)."""
    if text.isascii() and text.isprintable() and (not backslash or "\\" not in text):
        return text  # the common case, checked at C speed
    out = []
    for c in text:
        if c == "\\" and backslash:
            out.append("\\\\")
        elif unsafe_char(c):
            out.append(_escape_char(c))
        else:
            out.append(c)
    return "".join(out)


def escape_line(text: str) -> str:
    """One line for a log or a terminal: unsafe characters escaped, backslashes left as they are (for lines
    sockcat composes itself, whose untrusted parts were already escaped with :func:`escape`)."""
    return escape(text, backslash=False)
