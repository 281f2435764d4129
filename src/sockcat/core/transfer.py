"""The transfer protocol's messages and rules, version 2 (pure: no I/O). ``docs/transfer.md`` is the reference.

Everything a peer sends is checked here by type and bound before the engine acts on it: JSON lines must be
objects, numbers must be integers (not floats, not booleans) within their range, paths must be relative,
clean and printable, and a manifest is bounded in entries, bytes of names and depth.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sockcat.core.errors import ProtocolError
from sockcat.core.untrusted import escape, unsafe_char

MAGIC = b"SOCKCAT-TRANSFER"
VERSION = 2
HELLO = MAGIC + b" 2"

MAX_ENTRIES = 100_000  # files and directories in one session
MAX_NAME_BYTES = 16 << 20  # bytes of path names in one manifest
MAX_PATH = 4096  # bytes of one path (UTF-8), as Linux's PATH_MAX
MAX_COMPONENT = 255  # bytes of one name, as Linux's NAME_MAX
MAX_DEPTH = 64  # parts of one path
MAX_SIZE = (1 << 63) - 1  # bytes of one file
MAX_MODE = 0o7777
LINE = 64 << 10  # bytes of an ordinary protocol line
LIST_LINE = 8 << 20  # bytes of a line listing something per file (offers, hashes, plan)
MAX_TEXT = 300  # characters of a peer's error text that are shown
DIGEST = 32  # bytes of the SHA-256 that follows each file's bytes

PART_SUFFIX = ".sockcat-part"


# --- names ----------------------------------------------------------------------------------------------------


def check_path(path: object) -> tuple[str, ...]:
    """A manifest path as its parts; ProtocolError unless it is a clean relative path of printable names."""
    if not isinstance(path, str):
        raise ProtocolError("a path is not a string")
    shown = escape(path[:MAX_PATH])
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise ProtocolError(f"refused path {shown}: not valid UTF-8") from None
    if not path or size > MAX_PATH:
        raise ProtocolError(f"refused path {shown}: empty or longer than {MAX_PATH} bytes")
    parts = tuple(path.split("/"))
    if len(parts) > MAX_DEPTH:
        raise ProtocolError(f"refused path {shown}: deeper than {MAX_DEPTH} levels")
    for part in parts:
        if part in ("", ".", ".."):
            raise ProtocolError(f"refused unsafe path {shown}: absolute, or an empty, '.' or '..' part")
        if len(part.encode("utf-8")) > MAX_COMPONENT:
            raise ProtocolError(f"refused path {shown}: a name longer than {MAX_COMPONENT} bytes")
        if "\\" in part or any(unsafe_char(c) for c in part):
            raise ProtocolError(f"refused path {shown}: a backslash or a control character in a name")
        if part.endswith(PART_SUFFIX):
            raise ProtocolError(f"refused path {shown}: names ending {PART_SUFFIX} are the receiver's own")
    return parts


def part_name(name: str) -> str:
    """The name a file is received under, beside its final name, until it is whole and checked."""
    candidate = f".{name}{PART_SUFFIX}"
    if len(candidate.encode("utf-8")) <= MAX_COMPONENT:
        return candidate
    return f".{hashlib.sha256(name.encode('utf-8')).hexdigest()[:40]}{PART_SUFFIX}"


def shown_path(parts: tuple[str, ...]) -> str:
    return escape("/".join(parts))


# --- JSON lines -----------------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


def parse_line(line: bytes, what: str) -> dict[str, Any]:
    """One JSON object from one line; ProtocolError for anything else (deep nesting and NaN included)."""
    try:
        obj = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise ProtocolError(f"bad {what} from the peer (not a JSON line)") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"bad {what} from the peer (not a JSON object)")
    return obj


def dump_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def get_int(obj: dict[str, Any], key: str, what: str, lo: int = 0, hi: int = MAX_SIZE) -> int:
    value = obj.get(key)
    if type(value) is not int or not lo <= value <= hi:  # a bool is an int to isinstance(); not here
        raise ProtocolError(f"bad {what}: {key!r} must be a whole number from {lo} to {hi}")
    return value


def get_list(obj: dict[str, Any], key: str, what: str, length: int | None = None) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise ProtocolError(f"bad {what}: {key!r} must be a list" + (f" of {length}" if length is not None else ""))
    return value


def get_bytes(obj: dict[str, Any], key: str, what: str, size: int | None = None) -> bytes:
    value = obj.get(key)
    try:
        if not isinstance(value, str) or len(value) > 256:
            raise ValueError
        data = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise ProtocolError(f"bad {what}: {key!r} must be base64") from None
    if size is not None and len(data) != size:
        raise ProtocolError(f"bad {what}: {key!r} must be {size} bytes")
    return data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def peer_text(obj: dict[str, Any], key: str = "error") -> str:
    """A peer's free text (its error message), bounded and escaped for a terminal."""
    value = obj.get(key)
    if not isinstance(value, str):
        return "no reason given"
    text = escape(value[:MAX_TEXT])
    return text + ("…" if len(value) > MAX_TEXT else "")


def check_digest_hex(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise ProtocolError(f"bad {what}: a SHA-256 must be 64 hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ProtocolError(f"bad {what}: a SHA-256 must be 64 hex digits") from None


# --- the manifest ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative, "/"-separated, checked by check_path (kept as one string: a few bytes per entry)
    size: int
    mode: int

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path, "size": self.size, "mode": self.mode}


@dataclass(frozen=True, slots=True)
class Header:
    files: int
    dirs: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "dirs": self.dirs, "bytes": self.bytes}

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> Header:
        files = get_int(obj, "files", "manifest", 0, MAX_ENTRIES)
        dirs = get_int(obj, "dirs", "manifest", 0, MAX_ENTRIES)
        if files + dirs > MAX_ENTRIES:
            raise ProtocolError(f"refused manifest: more than {MAX_ENTRIES:,} files and directories in one session")
        return cls(files, dirs, get_int(obj, "bytes", "manifest"))


def _parents(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    out = []
    i = path.find("/")
    while i >= 0:
        out.append(path[:i])
        i = path.find("/", i + 1)
    return out


@dataclass
class Manifest:
    """A manifest as it arrives, entry by entry, checked as a whole by :meth:`finish`.

    Every directory counts toward the bounds, whether listed or only implied by a deeper path, and names count
    in UTF-8 bytes: what the receiver keeps in memory, and the directories it may make, stay bounded."""

    header: Header
    files: list[FileEntry] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)  # as listed
    _all_dirs: set[str] = field(default_factory=set)  # listed and implied
    _file_names: set[str] = field(default_factory=set)
    _name_bytes: int = 0
    _total: int = 0

    @property
    def complete(self) -> bool:
        return len(self.files) == self.header.files and len(self.dirs) == self.header.dirs

    def _count(self, path: str) -> None:
        self._name_bytes += len(path.encode("utf-8"))
        if self._name_bytes > MAX_NAME_BYTES:
            raise ProtocolError(f"refused manifest: more than {MAX_NAME_BYTES >> 20} MiB of names")

    def _add_dir(self, path: str) -> None:
        if path not in self._all_dirs:
            self._count(path)
            self._all_dirs.add(path)
            if len(self._all_dirs) + len(self.files) > MAX_ENTRIES:
                raise ProtocolError(f"refused manifest: more than {MAX_ENTRIES:,} files and directories in one session")

    def add(self, obj: dict[str, Any]) -> None:
        """One entry line: ``{"file": PATH, "size": N, "mode": M}`` or ``{"dir": PATH}``."""
        if "file" in obj:
            check_path(obj["file"])
            path: str = obj["file"]
            size = get_int(obj, "size", "manifest entry")
            entry = FileEntry(path, size, get_int(obj, "mode", "manifest entry", 0, MAX_MODE))
            if len(self.files) >= self.header.files:
                raise ProtocolError("bad manifest: more files than announced")
            self._total += entry.size
            if self._total > self.header.bytes:
                raise ProtocolError("bad manifest: more bytes than announced")
            if path in self._file_names:
                raise ProtocolError(f"bad manifest: {escape(path)} is listed twice")
            self._count(path)
            self._file_names.add(path)
            self.files.append(entry)
            parents = _parents(path)
        elif "dir" in obj:
            check_path(obj["dir"])
            path = obj["dir"]
            if len(self.dirs) >= self.header.dirs:
                raise ProtocolError("bad manifest: more directories than announced")
            self.dirs.append(path)
            parents = [*_parents(path), path]
        else:
            raise ProtocolError("bad manifest entry: neither a file nor a dir")
        for d in parents:
            self._add_dir(d)

    def finish(self) -> None:
        """The whole manifest's checks: sizes add up, no name both a file and a directory."""
        if self._total != self.header.bytes:
            raise ProtocolError("bad manifest: the sizes do not add up to the announced bytes")
        clash = self._file_names & self._all_dirs
        if clash:
            raise ProtocolError(f"bad manifest: {escape(min(clash))} is both a file and a directory")

    def all_dirs(self) -> list[str]:
        """Every directory the session needs, parents before children."""
        return sorted(self._all_dirs, key=lambda p: (p.count("/"), p))


# --- what the receiver has ------------------------------------------------------------------------------------

FINAL, PART = "final", "part"


@dataclass(frozen=True, slots=True)
class Offer:
    """The receiver holds ``length`` leading bytes of file ``index``: the final file (same size), or a part."""

    index: int
    kind: str
    length: int

    def to_json(self) -> list[Any]:
        return [self.index, self.kind, self.length]


def parse_offers(obj: dict[str, Any], files: list[FileEntry]) -> list[Offer]:
    """The receiver's offers, checked against our own manifest (a hostile receiver gets nothing for lying)."""
    offers = []
    last = -1
    for item in get_list(obj, "offers", "answer to the manifest"):
        if not (isinstance(item, list) and len(item) == 3 and item[1] in (FINAL, PART)):
            raise ProtocolError("bad answer to the manifest: an offer is not [index, kind, length]")
        index, kind, length = item
        if type(index) is not int or not last < index < len(files) or type(length) is not int:
            raise ProtocolError("bad answer to the manifest: offers out of order or out of range")
        size = files[index].size
        if not 0 <= length <= size or (kind == FINAL and length != size):
            raise ProtocolError(f"bad answer to the manifest: an offer of {length} bytes of {size}")
        offers.append(Offer(index, kind, length))
        last = index
    return offers
