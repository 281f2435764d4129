"""The chat protocol of SPEC §3, pure: no sockets, no clock, no storage.

Lines are UTF-8, ending ``\\n`` or ``\\r\\n``. :class:`LineReader` cuts bytes into lines and reports what cannot be a
line (too long, not UTF-8); :func:`parse` turns a line into a command; the ``*_line`` functions write what the
broker sends. Server notices start with ``* ``, errors with ``! ``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

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

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line: drop until its end

    def feed(self, data: bytes) -> list[str | BadLine]:
        out: list[str | BadLine] = []
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line + 1:  # +1: room for a '\r' before the '\n'
                    if not self._skipping:
                        out.append(BadLine("too long"))
                        self._skipping = True
                    self._buf.clear()
                return out
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._skipping:
                self._skipping = False
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self.max_line:
                out.append(BadLine("too long"))
                continue
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(BadLine("not UTF-8"))

    @property
    def pending(self) -> int:
        """Bytes held waiting for a line end."""
        return len(self._buf)


# --- names ---------------------------------------------------------------------------------------------------


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a chat name (None if it can): 1–32 letters (any script), digits, ``_`` or ``-``."""
    if not name:
        return "a name needs at least one character"
    if len(name) > MAX_NAME:
        return f"a name has at most {MAX_NAME} characters"
    for ch in name:
        if ch in "_-" or ch.isdigit():
            continue
        if unicodedata.category(ch).startswith("L"):
            continue
        return f"{ch!r} is not allowed in a name (letters, digits, _ and - are)"
    return None


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
    a line starting ``//`` is a plain line starting ``/`` (the way IRC clients escape it)."""
    if not line.startswith("/") or line.startswith("//"):
        return Command("say", (line[1:] if line.startswith("//") else line,))
    word, _, rest = line[1:].partition(" ")
    verb = word.lower()
    rest = rest.strip()
    if verb == "msg":
        name, _, text = rest.partition(" ")
        return Command("msg", (name, text.strip()))
    if verb == "nick":
        parts = rest.split()
        return Command("nick", tuple(parts))
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
