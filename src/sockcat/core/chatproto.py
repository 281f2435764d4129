"""The chat protocol (docs/chat.md), pure: no sockets, no clock, no storage.

Lines are UTF-8, ending ``\\n`` or ``\\r\\n``. :class:`LineReader` cuts bytes into lines and reports what cannot be a
line (too long, not UTF-8); :func:`parse` turns a line into a command; the ``*_line`` functions write what the
broker sends. Server notices start with ``* ``, errors with ``! ``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from sockcat.core.untrusted import unsafe_char

MAX_LINE = 4096  # bytes, without the line end
MAX_NAME = 32


# --- bytes -> lines ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadLine:
    """Something that is not a usable line: ``reason`` is ``"too long"`` or ``"not UTF-8"``."""

    reason: str


class LineReader:
    """Feed bytes, get complete lines (``str``, line end removed) and :class:`BadLine` markers.

    A line longer than ``max_line`` bytes is reported once and its bytes are dropped up to its end, so memory
    stays bounded whatever a client sends."""

    __slots__ = ("_buf", "_skipping", "max_line")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line: drop until its end

    def feed(self, data: bytes) -> list[str | BadLine]:
        """Every line ``data`` completes."""
        self.push(data)
        out: list[str | BadLine] = []
        while (item := self.take()) is not None:
            out.append(item)
        return out

    def push(self, data: bytes) -> None:
        """Keep ``data``; lines are cut from it one at a time by :meth:`take` (bytes waiting cost no objects)."""
        self._buf += data

    def take(self) -> str | BadLine | None:
        """The next complete line, or None until more bytes come."""
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line + 1:  # +1: room for a '\r' before the '\n'
                    self._buf.clear()
                    if not self._skipping:
                        self._skipping = True
                        return BadLine("too long")
                return None
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._skipping:
                self._skipping = False
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self.max_line:
                return BadLine("too long")
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return BadLine("not UTF-8")

    @property
    def pending(self) -> int:
        """Bytes held waiting for a line end."""
        return len(self._buf)


# --- names ---------------------------------------------------------------------------------------------------

# Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties): characters that show as nothing. A name made of
# them, or hiding one (the Hangul filler U+3164 looks blank), could pass for another name or for none.
_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip

# Scripts that may share a name (Unicode TR 39's "highly restrictive" profile); any other mix is refused.
_SCRIPT_SETS = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)


def _ignorable(ch: str) -> bool:
    n = ord(ch)
    return any(lo <= n <= hi for lo, hi in _IGNORABLE)


def name_key(name: str) -> str:
    """The key a name is known by: NFKC, then case-folded (``Wang`` and ``wang`` are one user)."""
    return unicodedata.normalize("NFKC", name).casefold()


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a chat name (None if it can).

    1–32 characters: letters of any script (with their combining marks), digits, ``_`` or ``-``; written in
    Unicode's normal form NFKC (so a full-width ``ａｌｉｃｅ`` or ``²`` is refused, not quietly read as ``alice``);
    no character that shows as nothing; letters of one script, or of a mix Unicode TR 39 allows (Latin with Han
    and Japanese kana, or Bopomofo, or Hangul)."""
    if not name:
        return "a name needs at least one character"
    if len(name) > MAX_NAME:
        return f"a name has at most {MAX_NAME} characters"
    for ch in name:
        if _ignorable(ch):
            return f"{escape_char(ch)} shows as nothing; not allowed in a name"
    normal = unicodedata.normalize("NFKC", name)
    if normal != name:
        return f"write the name as {normal!r} (Unicode's normal form)" if normal else "not a usable name"
    scripts = set()
    for i, ch in enumerate(name):
        cat = unicodedata.category(ch)
        if ch in "_-" or cat == "Nd":
            continue
        if cat.startswith("M") and i > 0:  # a combining mark after a letter (Devanagari, Thai…)
            continue
        if not cat.startswith("L"):
            return f"{escape_char(ch)} is not allowed in a name (letters, digits, _ and - are)"
        scripts.add(_script(ch))
    scripts.discard("COMMON")
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in _SCRIPT_SETS):
        return f"a name mixes scripts ({', '.join(sorted(s.lower() for s in scripts))}); use one"
    return None


def escape_char(ch: str) -> str:
    """One character for an error line: quoted if it shows, else as ``\\u3164``."""
    return repr(ch) if ch.isprintable() and not ch.isspace() and not _ignorable(ch) else f"\\u{ord(ch):04x}"


def _script(ch: str) -> str:
    from confusable_homoglyphs import categories  # type: ignore[import-untyped]  # loaded with the first name

    return str(categories.alias(ch))


_prototypes: tuple[dict[str, str], dict[str, str]] | None = None


def _confusable_prototypes() -> tuple[dict[str, str], dict[str, str]]:
    """Each character that Unicode's confusables data (TR 39, via confusable-homoglyphs) says looks like others,
    mapped to one representative of its look-alike class (the smallest code point); and the classes that look like
    several characters (``m`` like ``rn``, ``w`` like ``vv``, ``d`` like ``cl``), mapped to what they look like."""
    global _prototypes
    if _prototypes is None:
        import json
        import os

        import confusable_homoglyphs

        with open(os.path.join(os.path.dirname(confusable_homoglyphs.__file__), "confusables.json")) as f:
            data = json.load(f)
        parent: dict[str, str] = {}

        def find(c: str) -> str:
            while parent.get(c, c) != c:
                parent[c] = parent.get(parent[c], parent[c])
                c = parent[c]
            return c

        several: list[tuple[str, str]] = []
        for ch, glyphs in data.items():
            ch = ch.strip("\u200e")
            for g in glyphs:
                other = g["c"].strip("\u200e")
                if len(ch) == 1 and len(other) == 1:
                    a, b = find(ch), find(other)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
                elif len(ch) == 1 and len(other) > 1:
                    several.append((ch, other))
                elif len(ch) > 1 and len(other) == 1:
                    several.append((other, ch))
        one = {c: find(c) for c in list(parent)}
        wide: dict[str, str] = {}
        for ch, text in several:
            root, looks = one.get(ch, ch), "".join(one.get(c, c) for c in text)
            if root not in wide or looks < wide[root]:
                wide[root] = looks
        _prototypes = (one, wide)
    return _prototypes


def skeleton(name: str) -> str:
    """What a name looks like: every character replaced by its look-alike class (or the characters it looks like),
    case-folded, and again. Two names with one skeleton (``alice``, ``аlice`` with a Cyrillic а, ``aIice``;
    ``mary``, ``rnary``) are confusable."""
    one, wide = _confusable_prototypes()

    def looks(text: str) -> str:
        return "".join(wide.get(r, r) for r in (one.get(c, c) for c in text))

    text = looks(unicodedata.normalize("NFKC", name)).casefold()
    return unicodedata.normalize("NFKC", looks(text)).casefold()


# --- text that reaches other people's terminals ----------------------------------------------------------------


def clean_text(text: str) -> str:
    """A line as others will see it: control characters (C0 but TAB, DEL, C1), bidi controls and line separators
    shown escaped (``\x1b``), so no line can rewrite another's screen, retitle a window or pass for a line of
    someone else."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c == "\t" or not unsafe_char(c):
            out.append(c)
        else:
            n = ord(c)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}")
    return "".join(out)


# --- lines -> commands ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A parsed line. ``verb`` is ``say`` for a plain line, else the command without its slash."""

    verb: str
    args: tuple[str, ...] = ()


COMMANDS = ("nick", "msg", "register", "who", "help", "quit")
HELP = (
    "commands: /msg NAME TEXT (direct, stored if NAME is offline), /who, /nick NAME [PASSWORD], "
    "/register PASSWORD (protect your name), /help, /quit; any other line goes to everyone"
)


def parse(line: str) -> Command:
    """A line as a command. Unknown commands come back as verb ``unknown`` with the word as argument;
    a line starting ``//`` is a plain line starting ``/`` (the way IRC clients escape it).

    A password is the rest of the line after the name (``/nick NAME PASSWORD``, ``/register PASSWORD``): spaces
    inside it are part of it; spaces around it are not."""
    if not line.startswith("/") or line.startswith("//"):
        return Command("say", (line[1:] if line.startswith("//") else line,))
    word, _, rest = line[1:].partition(" ")
    verb = word.lower()
    rest = rest.strip()
    if verb == "msg":
        name, _, text = rest.partition(" ")
        return Command("msg", (name, text.strip()))
    if verb == "nick":
        name, _, password = rest.partition(" ")
        password = password.strip()
        return Command("nick", tuple(x for x in (name, password) if x))
    if verb == "register":
        return Command("register", (rest,) if rest else ())
    if verb in ("who", "help", "quit"):
        return Command(verb)
    return Command("unknown", (word,))


# --- what the broker sends ------------------------------------------------------------------------------------


def notice(text: str) -> str:
    return f"* {text}"


def error(text: str) -> str:
    return f"! {text}"


def say_line(sender: str, text: str) -> str:
    return f"<{sender}> {text}"


def msg_line(sender: str, text: str) -> str:
    return f"*{sender}* {text}"


PROMPT = notice("welcome to sockcat chat: your name? (or /nick NAME PASSWORD)")
