"""sockcat recv against hostile senders, and sockcat send against a hostile receiver, played by an attacker.

Real ``sockcat`` processes on loopback; a raw protocol peer (:class:`transfer_raw.RawSender`) that sends whatever a
test wants at any step; small relays and fake peers in threads for the code-mode and receiver-side attacks.

Every hostile case checks the same promises (docs/transfer.md): the session is refused (the raw peer gets an
``error`` message or a closed connection, never ``go`` or ``ok``), the receiver says so in exactly one warning or
error line with no raw control character in it (escapes are shown as text: ``\\x1b``), nothing changed outside the
receiving directory (nor inside it, for a refused session), and a ``recv -k`` still serves an honest ``sockcat
send`` afterwards, which lands hash-equal.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from conftest import TIMEOUT, Bg, Proc, run_sockcat, sockcat, wait_until
from transfer_raw import HELLO, RawSender, entry, line

from sockcat.core.pake import CodeError, ReceiverHandshake, SenderHandshake

MB = 1 << 20
MEMORY_BOUND = 150 * MB  # the receiver's peak resident memory (VmHWM) after an attack
RAW_CONTROLS = (b"\x1b", b"\r", b"\x07", b"\x00", "\x85".encode(), "\u202e".encode(), "\u2028".encode())
EVIL = "\x1b[2J\x1b]0;pwned\x07evil\r\u202e\u2028"  # clears the screen, retitles the window, rewrites the line
EVIL_SHOWN = "\\x1b[2J\\x1b]0;pwned\\x07evil\\x0d\\u202e\\u2028"


# --- what is on disk -----------------------------------------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path, skip: frozenset[str] = frozenset()) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root``, links not followed: kind and mode, a link's target, a file's inode, mtime, SHA-256."""
    state: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                state[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_ino, st.st_mtime_ns, sha(path))
    return state


@dataclass
class Site:
    """A test's ground: DIR (where files land), beside it what must never change, and honest files to send."""

    base: Path
    out: Path
    outside: Path
    src: Path

    @classmethod
    def make(cls, base: Path) -> Site:
        site = cls(base, base / "out", base / "outside", base / "src")
        for d in (site.out, site.outside, site.src):
            d.mkdir(parents=True, exist_ok=True)
        (site.outside / "victim").write_bytes(b"the victim: must never change\n")
        return site

    def beside(self) -> dict[str, tuple[Any, ...]]:
        """Everything outside DIR (and outside the honest sources), down to the file's inode and mtime."""
        return snapshot(self.base, frozenset({"out", "src"}))


def has_size(path: Path, size: int) -> Callable[[], bool]:
    return lambda: path.exists() and path.stat().st_size == size


def assert_clean(text: bytes | str) -> None:
    """No raw control character, bidi override or line separator: what a peer sent is shown as escapes."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    bad = [c for c in RAW_CONTROLS if c in raw]
    assert not bad, f"raw {bad} in {raw!r}"


# --- the receiver --------------------------------------------------------------------------------------------------


class Recv:
    """A running ``sockcat -v recv``: its address, its code (None with --no-code), its stderr lines as they come."""

    def __init__(self, procs: list[Proc] | None, out: Path, *args: str, address: str = "tcp://127.0.0.1:0") -> None:
        self.out = out
        self.proc = Proc(sockcat("-v", "recv", address, "-o", str(out), *args))
        if procs is not None:
            procs.append(self.proc)
        self.address = self.proc.read_listening()
        codes = [x[len("code: ") :] for x in self.proc.stderr_lines if x.startswith("code: ")]
        self.code = codes[0] if codes else None
        self.tls = address.startswith("tls:")
        self._lines: list[bytes] = []
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, name="recv stderr", daemon=True).start()

    def _read(self) -> None:
        stream = self.proc.p.stderr
        assert stream is not None
        try:
            for raw in stream:
                with self._cond:
                    self._lines.append(raw.rstrip(b"\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def mark(self) -> int:
        with self._cond:
            return len(self._lines)

    def since(self, mark: int) -> list[bytes]:
        with self._cond:
            return self._lines[mark:]

    def problems(self, mark: int = 0) -> list[bytes]:
        """The warning and error lines since ``mark``."""
        return [x for x in self.since(mark) if x.startswith((b"sockcat: warning", b"sockcat: error"))]

    def wait_problem(self, mark: int, count: int = 1, timeout: float = TIMEOUT) -> None:
        """Until ``count`` warning or error lines came after ``mark`` (or stderr ended)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.problems(mark)) >= count or self._eof, timeout)
        assert len(self.problems(mark)) >= count, f"not {count} warnings since line {mark}: {self.since(mark)}"

    def wait(self, timeout: float = TIMEOUT) -> int:
        rc = self.proc.wait(timeout)
        with self._cond:
            self._cond.wait_for(lambda: self._eof, timeout)
        return rc

    def vm_hwm(self) -> int:
        """Peak resident memory of the receiver process so far, in bytes."""
        for row in Path(f"/proc/{self.proc.p.pid}/status").read_text().splitlines():
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def send_args(self) -> list[str]:
        return [*(["--code", self.code] if self.code else []), *(["--insecure"] if self.tls else [])]


def honest(recv: Recv, src: Path, size: int = 100_000) -> None:
    """An honest ``sockcat send`` of a fresh file: it must succeed and land hash-equal."""
    f = src / f"honest-{uuid.uuid4().hex[:12]}.bin"
    f.write_bytes(os.urandom(size))
    res = run_sockcat("send", "-i", "10", *recv.send_args(), recv.address, str(f), timeout=30)
    assert res.returncode == 0, res.stderr
    assert sha(recv.out / f.name) == sha(f)


def refused(recv: Recv, site: Site, attack: Callable[[], str | None]) -> tuple[str, str]:
    """Run one attack; check what every hostile case must keep. Returns (the error text the peer got, or "" if the
    connection just closed; the receiver's one warning line)."""
    inside, beside = snapshot(recv.out), site.beside()
    mark = recv.mark()
    reply = attack()
    if reply is not None:
        assert_clean(reply)
    recv.wait_problem(mark)
    assert snapshot(recv.out) == inside, "a refused session wrote into DIR"
    assert site.beside() == beside, "something outside DIR changed"
    honest(recv, site.src)  # still serving; and by now every line of the attack is out
    lines = recv.problems(mark)
    assert len(lines) == 1, lines
    assert_clean(lines[0])
    assert b"internal error" not in lines[0], lines[0]  # a peer's input is not a bug in sockcat
    assert not [x for x in recv.since(mark) if x.startswith(b"Traceback")], recv.since(mark)
    return reply or "", lines[0].decode()


# --- a hostile sender ----------------------------------------------------------------------------------------------


def push(s: RawSender, data: bytes) -> None:
    """Send, whether or not the receiver still reads (it may have refused and closed already)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.send(data)


def refusal(s: RawSender, *, keep: bool | None = False) -> str | None:
    """The receiver's answers until it refuses: its error text, or None if it just closed. It must never say go or
    ok. ``keep``: how to answer its offers (None: they are not answered)."""
    seen: list[dict[str, Any]] = []
    try:
        while True:
            msg = s.msg()
            if not msg:
                return None
            seen.append(msg)
            assert msg.get("go") is not True and msg.get("ok") is not True, seen
            if "error" in msg:
                assert isinstance(msg["error"], str), msg
                return str(msg["error"])
            if "offers" in msg and keep is not None:
                s.msg()  # the hashes
                push(s, line({"plan": [keep] * len(msg["offers"])}))
    except (ConnectionResetError, BrokenPipeError):
        return None
    finally:
        s.close()


def attempt(
    port: int, files: list[dict[str, Any]], dirs: tuple[str, ...] = (), *, keep: bool = False, code: str | None = None
) -> str | None:
    s = RawSender(port)
    hello = s.hello(code)
    assert "error" not in hello, hello
    s.manifest(files, list(dirs))
    return refusal(s, keep=keep)


def raw(port: int, payload: bytes, *, hello: bool = True) -> str | None:
    """``payload`` after a no-code hello (or as the very first bytes); the receiver's refusal."""
    s = RawSender(port)
    if hello:
        assert s.hello() == {"auth": "none"}
    if payload:
        push(s, payload)
    else:  # nothing at all: the peer closes at once
        s.sock.shutdown(socket.SHUT_WR)
    return refusal(s, keep=None)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recv, Site]]:
    """One ``recv -k --no-code`` that serves many attacks, each followed by an honest send."""
    site = Site.make(tmp_path_factory.mktemp("shared"))
    recv = Recv(None, site.out, "-k", "--no-code", "-i", "5")
    yield recv, site
    recv.proc.kill()
    for stream in (recv.proc.p.stdout, recv.proc.p.stderr):
        if stream is not None:
            stream.close()


# --- 1, 2: what is already in DIR ----------------------------------------------------------------------------------


@pytest.mark.parametrize("same_size", [False, True], ids=["other-size", "same-size"])
def test_an_existing_authorized_keys_is_never_replaced(procs: list[Proc], tmp_path: Path, same_size: bool) -> None:
    site = Site.make(tmp_path)
    keys = site.out / ".ssh" / "authorized_keys"
    keys.parent.mkdir(mode=0o700)
    keys.write_bytes(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwnerOwnerOwner owner@host\n")
    evil = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEvilEvil attacker@evil\n"
    if same_size:  # offered as "final", hashed; the attacker says its bytes differ
        evil = evil.rstrip(b"\n").ljust(keys.stat().st_size - 1, b"x") + b"\n"
        assert len(evil) == keys.stat().st_size
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5")
    reply, warning = refused(recv, site, lambda: attempt(recv.port, [entry(".ssh/authorized_keys", evil)], (".ssh",)))
    for text in (reply, warning):
        assert ".ssh/authorized_keys: exists with different content; not replaced" in text


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_symbolic_link_in_dir_is_never_followed(procs: list[Proc], tmp_path: Path, overwrite: bool) -> None:
    site = Site.make(tmp_path)
    (site.out / "linked").symlink_to("../outside")  # a directory outside DIR
    (site.out / "f").symlink_to("../outside/victim")  # the final name itself
    (site.out / "deep").mkdir()
    (site.out / "deep" / "l").symlink_to("../../outside")
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5", *(["--overwrite"] if overwrite else []))
    victim = (site.outside / "victim").read_bytes()
    cases: list[tuple[list[dict[str, Any]], tuple[str, ...], str]] = [
        ([entry("linked/escaped.txt", b"pwned\n")], (), "linked: exists and is a symbolic link"),
        ([entry("linked/sub/escaped.txt", b"pwned\n")], ("linked", "linked/sub"), "linked: exists and is a symbolic"),
        ([], ("linked/newdir",), "linked: exists and is a symbolic link"),
        ([entry("deep/l/escaped.txt", b"pwned\n")], ("deep",), "deep/l: exists and is a symbolic link"),
        ([entry("f", b"pwned\n")], (), "f: exists and is not a regular file"),
        ([entry("f", b"x" * len(victim))], (), "f: exists and is not a regular file"),  # the size of its target
    ]
    for files, dirs, want in cases:
        reply, warning = refused(recv, site, lambda files=files, dirs=dirs: attempt(recv.port, files, dirs))
        assert want in reply and want in warning, (reply, warning)
    assert sorted(p.name for p in site.outside.iterdir()) == ["victim"]


# --- 3, 4: links planted under the receiver's own names, or while a session runs --------------------------------


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_planted_part_file_is_removed_by_name_never_followed_nor_resumed(
    procs: list[Proc], tmp_path: Path, kind: str
) -> None:
    site = Site.make(tmp_path)
    data = os.urandom(300_000)
    victim = site.outside / "victim2"
    victim.write_bytes(data[:100_000])  # the very bytes the sender starts with: resuming from it would "match"
    part = site.out / ".f.sockcat-part"
    if kind == "symlink":
        part.symlink_to("../outside/victim2")
    else:
        os.link(victim, part)  # same file system, one inode, two names
    (site.src / "f").write_bytes(data)
    beside = site.beside()
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5")
    mark = recv.mark()
    res = run_sockcat("-v", "send", "-i", "10", recv.address, str(site.src / "f"))
    assert res.returncode == 0, res.stderr
    assert b"resuming" not in res.stderr, res.stderr  # never offered: not a regular file with one link
    assert sha(site.out / "f") == sha(site.src / "f")
    assert site.beside() == beside and victim.read_bytes() == data[:100_000]
    assert not part.exists() and not part.is_symlink()
    assert recv.problems(mark) == []


@pytest.mark.parametrize("cached", [True, False], ids=["descriptor-held", "reopened"])
def test_a_directory_swapped_for_a_link_during_the_session(procs: list[Proc], tmp_path: Path, cached: bool) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5")
    beside = site.beside()
    first, data = os.urandom(1000), os.urandom(200_000)
    extra = () if cached else tuple(f"z{i:02d}" for i in range(40))  # more directories than a session keeps open
    s = RawSender(recv.port)
    s.hello()
    s.manifest([entry("b/first.txt", first), entry("a/x.txt", data)], ["a", "b", *extra])
    _offers, go = s.plan_all()
    assert go == {"go": True}
    # every directory is made and the receiver waits for the first file's bytes: now swap a/ for a link outside
    wait_until(lambda: (site.out / "b" / ".first.txt.sockcat-part").exists(), "the first part file")
    os.rename(site.out / "a", site.out / "a-moved")
    (site.out / "a").symlink_to("../outside")
    mark = recv.mark()
    push(s, first + hashlib.sha256(first).digest())
    push(s, data + hashlib.sha256(data).digest())
    try:
        result = s.msg()
    except ConnectionResetError:
        result = {}
    s.close()
    if result.get("ok") is True:  # written through the descriptor it held: the directory, wherever it went in DIR
        assert cached, "a directory that had to be opened again was reached through a link"
        assert sha(site.out / "a-moved" / "x.txt") == hashlib.sha256(data).hexdigest()
        assert recv.problems(mark) == []
    else:
        recv.wait_problem(mark)
        lines = recv.problems(mark)
        assert len(lines) == 1 and b"a: exists and is a symbolic link" in lines[0], lines
        assert_clean(lines[0])
    assert site.beside() == beside and not (site.outside / "x.txt").exists()
    assert sorted(p.name for p in site.outside.iterdir()) == ["victim"]
    honest(recv, site.src)


# --- 5, 6: modes and sizes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o6755, 0o7777, 0o4700, 0o1777])
def test_set_id_and_sticky_bits_never_arrive(procs: list[Proc], tmp_path: Path, mode: int) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5")
    data = os.urandom(5000)
    s = RawSender(recv.port)
    s.hello()
    s.manifest([entry("tool", data, mode)])
    _offers, go = s.plan_all()
    assert go == {"go": True}
    s.file(data)
    assert s.msg()["ok"] is True
    s.close()
    st = (site.out / "tool").stat()
    assert stat.S_IMODE(st.st_mode) & 0o7000 == 0, oct(st.st_mode)
    umask = os.umask(0o022)  # the receiver's: it inherited ours
    os.umask(umask)
    assert stat.S_IMODE(st.st_mode) == mode & 0o777 & ~umask
    assert sha(site.out / "tool") == hashlib.sha256(data).hexdigest()


def test_a_mode_beyond_the_permission_bits_is_refused(procs: list[Proc], tmp_path: Path) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5")
    for mode in (0o100644, 0o10000, -1):
        reply, _warning = refused(recv, site, lambda mode=mode: attempt(recv.port, [entry("m", b"data", mode)]))
        assert "'mode' must be a whole number from 0 to 4095" in reply


def test_a_file_larger_than_the_disk_is_refused_before_anything_is_written(procs: list[Proc], tmp_path: Path) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5")
    files = [entry("d/small.txt", b"small"), entry("d/sub/big.bin", size=10 << 40)]
    reply, warning = refused(recv, site, lambda: attempt(recv.port, files, ("d", "d/sub", "e")))
    assert "not enough space" in reply and "not enough space" in warning


# --- 7: deep and huge manifests ------------------------------------------------------------------------------------


def _names_1k(n: int) -> list[dict[str, Any]]:
    """``n`` files whose paths are about 1 KB each (four names of 250 bytes)."""
    return [entry("/".join(f"{'x' * 244}{i:05d}{j}" for j in range(4))) for i in range(n)]


def test_deep_and_huge_manifests_are_refused_within_bounded_memory(procs: list[Proc], tmp_path: Path) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5")
    deep64 = "/".join(["d"] * 63 + ["f"])
    assert _send_one(recv.port, deep64, b"64 levels is the limit, not past it").get("ok") is True

    def header(files: int, dirs: int) -> bytes:
        return line({"files": files, "dirs": dirs, "bytes": 0})

    attacks: list[tuple[str, Callable[[], str | None], str]] = [
        ("65 levels", lambda: attempt(recv.port, [entry("/".join(["d"] * 64 + ["f"]))]), "deeper than 64 levels"),
        ("200,000 files", lambda: raw(recv.port, header(200_000, 0)), "from 0 to 100000"),
        ("100,001 entries", lambda: raw(recv.port, header(50_001, 50_000)), "more than 100,000"),
        ("a long line", lambda: raw(recv.port, b"[" * 200_000 + b"\n"), "longer than 65,536 bytes"),
        ("nesting", lambda: raw(recv.port, b"[" * 50_000 + b"\n"), "not a JSON line"),
        ("nesting in an entry", lambda: raw(recv.port, header(1, 0) + b'{"file":' + b"[" * 50_000 + b"\n"), "JSON"),
        ("a long path", lambda: attempt(recv.port, [entry("/".join(["p" * 200] * 21))]), "longer than 4096 bytes"),
        ("a long name", lambda: attempt(recv.port, [entry("n" * 256)]), "longer than 255 bytes"),
        ("20 MB of names", lambda: attempt(recv.port, _names_1k(20_000)), "more than 16 MiB of names"),
    ]
    for what, attack, want in attacks:
        reply, warning = refused(recv, site, attack)
        assert not reply or want in reply, (what, reply)  # (a receiver that closes mid-upload may lose its reply)
        assert want in warning, (what, warning)
        assert "RecursionError" not in warning
    assert recv.vm_hwm() < MEMORY_BOUND, f"recv peaked at {recv.vm_hwm() >> 20} MB"


def _send_one(port: int, path: str, data: bytes) -> dict[str, Any]:
    s = RawSender(port)
    try:
        s.hello()
        s.manifest([entry(path, data)])
        _offers, go = s.plan_all()
        if go != {"go": True}:
            return go
        s.file(data)
        return s.msg()
    finally:
        s.close()


# --- 8: types --------------------------------------------------------------------------------------------------------


def _m(head: dict[str, Any] | bytes, *entries: bytes) -> bytes:
    first = head if isinstance(head, bytes) else line(head)
    return first + b"".join(e + b"\n" for e in entries)


H1 = {"files": 1, "dirs": 0, "bytes": 5}
H0D1 = {"files": 0, "dirs": 1, "bytes": 0}
TYPE_CASES: dict[str, tuple[bytes, str]] = {
    "size-1e999": (_m(H1, b'{"file":"a","size":1e999,"mode":420}'), "'size' must be a whole number"),
    "size-float": (_m(H1, b'{"file":"a","size":1.5,"mode":420}'), "'size' must be a whole number"),
    "size-5.0": (_m(H1, b'{"file":"a","size":5.0,"mode":420}'), "'size' must be a whole number"),
    "size-true": (_m(H1, b'{"file":"a","size":true,"mode":420}'), "'size' must be a whole number"),
    "size-string": (_m(H1, b'{"file":"a","size":"5","mode":420}'), "'size' must be a whole number"),
    "size-negative": (_m(H1, b'{"file":"a","size":-1,"mode":420}'), "'size' must be a whole number"),
    "size-2**64": (_m(H1, b'{"file":"a","size":18446744073709551616,"mode":420}'), "'size' must be a whole number"),
    "size-NaN": (_m(H1, b'{"file":"a","size":NaN,"mode":420}'), "not a JSON line"),
    "size-Infinity": (_m(H1, b'{"file":"a","size":Infinity,"mode":420}'), "not a JSON line"),
    "size-missing": (_m(H1, b'{"file":"a","mode":420}'), "'size' must be a whole number"),
    "mode-true": (_m(H1, b'{"file":"a","size":5,"mode":true}'), "'mode' must be a whole number"),
    "mode-float": (_m(H1, b'{"file":"a","size":5,"mode":1.0}'), "'mode' must be a whole number"),
    "mode-string": (_m(H1, b'{"file":"a","size":5,"mode":"0644"}'), "'mode' must be a whole number"),
    "path-list": (_m(H1, b'{"file":["x"],"size":5,"mode":420}'), "a path is not a string"),
    "path-null": (_m(H1, b'{"file":null,"size":5,"mode":420}'), "a path is not a string"),
    "path-object": (_m(H1, b'{"file":{"a":1},"size":5,"mode":420}'), "a path is not a string"),
    "path-lone-surrogate": (_m(H1, b'{"file":"\\ud800","size":5,"mode":420}'), "refused path \\ud800: not valid UTF-8"),
    "dir-null": (_m(H0D1, b'{"dir":null}'), "a path is not a string"),
    "dir-number": (_m(H0D1, b'{"dir":5}'), "a path is not a string"),
    "dir-lone-surrogate": (_m(H0D1, b'{"dir":"d\\udfff"}'), "refused path d\\udfff: not valid UTF-8"),
    "header-missing": (_m(b'{"file":"a","size":5,"mode":420}\n'), "'files' must be a whole number"),
    "header-not-an-object": (_m(b"[1,2,3]\n"), "not a JSON object"),
    "header-files-true": (_m({"files": True, "dirs": 0, "bytes": 0}), "'files' must be a whole number"),
    "header-files-float": (_m(b'{"files":1.0,"dirs":0,"bytes":5}\n'), "'files' must be a whole number"),
    "header-files-negative": (_m({"files": -1, "dirs": 0, "bytes": 0}), "'files' must be a whole number"),
    "header-bytes-NaN": (_m(b'{"files":0,"dirs":0,"bytes":NaN}\n'), "not a JSON line"),
    "header-bytes-1e999": (_m(b'{"files":0,"dirs":0,"bytes":1e999}\n'), "'bytes' must be a whole number"),
    "more-files-than-announced": (
        _m({"files": 1, "dirs": 1, "bytes": 0}, b'{"file":"a","size":0,"mode":420}', b'{"file":"b","size":0,"mode":1}'),
        "more files than announced",
    ),
    "more-dirs-than-announced": (
        _m({"files": 1, "dirs": 1, "bytes": 0}, b'{"dir":"d"}', b'{"dir":"e"}'),
        "more directories than announced",
    ),
    "more-bytes-than-announced": (
        _m({"files": 1, "dirs": 0, "bytes": 3}, b'{"file":"a","size":5,"mode":420}'),
        "more bytes than announced",
    ),
    "fewer-bytes-than-announced": (
        _m({"files": 1, "dirs": 0, "bytes": 10}, b'{"file":"a","size":5,"mode":420}'),
        "do not add up",
    ),
    "same-path-twice": (
        _m(
            {"files": 2, "dirs": 0, "bytes": 10}, b'{"file":"a","size":5,"mode":420}', b'{"file":"a","size":5,"mode":1}'
        ),
        "a is listed twice",
    ),
    "file-and-dir": (
        _m({"files": 1, "dirs": 1, "bytes": 5}, b'{"dir":"a"}', b'{"file":"a","size":5,"mode":420}'),
        "a is both a file and a directory",
    ),
    "file-under-a-file": (
        _m(
            {"files": 2, "dirs": 0, "bytes": 10},
            b'{"file":"a","size":5,"mode":420}',
            b'{"file":"a/b","size":5,"mode":1}',
        ),
        "a is both a file and a directory",
    ),
    "entry-neither": (_m(H1, b'{"link":"a","to":"/etc/passwd"}'), "neither a file nor a dir"),
    "entry-not-an-object": (_m(H1, b'"a"'), "not a JSON object"),
}


@pytest.mark.parametrize("case", list(TYPE_CASES))
def test_a_manifest_of_the_wrong_types_is_refused(shared: tuple[Recv, Site], case: str) -> None:
    recv, site = shared
    payload, want = TYPE_CASES[case]
    reply, warning = refused(recv, site, lambda: raw(recv.port, payload))
    assert want in reply and want in warning, (reply, warning)


# --- 9: names ------------------------------------------------------------------------------------------------------

# (the name, how the receiver must show it; "{outside}" is this test's directory beside DIR)
NAMES: dict[str, tuple[str, str]] = {
    "nul": ("a\x00b", "a\\x00b"),
    "newline": ("a\nb", "a\\x0ab"),
    "cr": ("a\rb.txt", "a\\x0db.txt"),
    "osc-title": ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    "csi": ("x\x1b[2Jy", "x\\x1b[2Jy"),
    "bidi-override": ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
    "line-separator": ("a\u2028b", "a\\u2028b"),
    "c1-control": ("a\x85b", "a\\x85b"),
    "backslash": ("a\\b", "a\\\\b"),
    "dotdot": ("../escaped.txt", "../escaped.txt"),
    "dotdot-inside": ("x/../../escaped.txt", "x/../../escaped.txt"),
    "dotdot-alone": ("..", "refused unsafe path ..:"),
    "empty": ("", "refused path : empty"),
    "absolute": ("{outside}/abs.txt", "{outside}/abs.txt"),
    "double-slash": ("a//b", "a//b"),
    "trailing-slash": ("a/", "a/"),
    "dot": ("./x", "./x"),
    "part-suffix": ("x.sockcat-part", "x.sockcat-part"),
    "part-suffix-deep": ("d/.y.sockcat-part", "d/.y.sockcat-part"),
}


@pytest.mark.parametrize("as_dir", [False, True], ids=["file", "dir"])
@pytest.mark.parametrize("case", list(NAMES))
def test_a_bad_name_is_refused_and_shown_escaped(shared: tuple[Recv, Site], case: str, as_dir: bool) -> None:
    recv, site = shared
    name, shown = (x.replace("{outside}", str(site.outside)) for x in NAMES[case])
    files = [] if as_dir else [entry(name, b"pwned\n")]
    dirs = (name,) if as_dir else ()
    reply, warning = refused(recv, site, lambda: attempt(recv.port, files, dirs))
    assert shown in warning, warning
    assert shown in reply, reply
    assert not (site.base.parent / "escaped.txt").exists() and not (site.outside / "abs.txt").exists()


def test_glob_characters_spaces_and_chinese_are_just_names(procs: list[Proc], tmp_path: Path) -> None:
    site = Site.make(tmp_path)
    notes = site.out / ".notes.bak.part"
    notes.write_text("the receiver's own notes\n")
    before = snapshot(site.out)
    d = site.src / "globs"
    d.mkdir()
    names = ["report**.txt", "[x].txt", "*", "?", "a b?.txt", "报告 2024.txt", "..hidden", "-rf", "{a,b}"]
    for n in names:
        (d / n).write_bytes(os.urandom(1000) + n.encode())
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5")
    mark = recv.mark()
    res = run_sockcat("send", "-i", "10", recv.address, str(d))
    assert res.returncode == 0, res.stderr
    for n in names:
        assert sha(site.out / "globs" / n) == sha(d / n), n
    assert sorted(p.name for p in (site.out / "globs").iterdir()) == sorted(names)  # no glob expanded, no part left
    assert snapshot(site.out)[".notes.bak.part"] == before[".notes.bak.part"]
    assert recv.problems(mark) == []


# --- 10: not a sender ----------------------------------------------------------------------------------------------

GARBAGE = random.Random(7).randbytes(4096) + b"\x1b]0;x\x07\n"
NOT_A_SENDER: dict[str, tuple[bytes, str]] = {
    "http": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl\r\n\r\n", "not a sockcat send"),
    "old-version": (b"SOCKCAT-TRANSFER 1\n" + line({"files": [], "dirs": []}), "speaks transfer version 1, not 2"),
    "control-version": (b"SOCKCAT-TRANSFER \x1b]0;x\x07\n", "speaks transfer version \\x1b]0;x\\x07, not 2"),
    "garbage": (GARBAGE, "not a sockcat send"),
    "immediate-close": (b"", "not a sockcat send"),
    "hello-not-json": (HELLO + b"hello there\n", "bad hello"),
    "hello-deep-nesting": (HELLO + b"[" * 50_000 + b"\n", "bad hello"),
    "hello-not-an-object": (HELLO + b"[]\n", "bad hello"),
    "hello-too-long": (HELLO + b'{"auth":"' + b"n" * 100_000 + b'"}\n', "longer than"),
    "hello-code-to-no-code": (HELLO + line({"auth": "code", "pake": "AAAA"}), "offered a code"),
}


@pytest.mark.parametrize("case", list(NOT_A_SENDER))
def test_not_a_sender_is_turned_away_and_the_receiver_keeps_serving(shared: tuple[Recv, Site], case: str) -> None:
    recv, site = shared
    payload, want = NOT_A_SENDER[case]
    reply, warning = refused(recv, site, lambda: raw(recv.port, payload, hello=False))
    assert want in warning, warning
    if case == "old-version":
        assert "version 2" in reply  # what a version 1 sender shows


@pytest.mark.parametrize("payload", [b"GET / HTTP/1.0\r\n\r\n", HELLO + line({"auth": "none"}), b""])
def test_plain_text_into_a_tls_receiver(procs: list[Proc], tmp_path: Path, payload: bytes) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5", address="tls://127.0.0.1:0")
    reply, warning = refused(recv, site, lambda: raw(recv.port, payload, hello=False))
    assert "TLS handshake" in warning and reply == ""


# --- 11: idle and stalled peers ------------------------------------------------------------------------------------


def test_idle_and_stalled_peers_never_delay_an_honest_one(procs: list[Proc], tmp_path: Path) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "30")
    idle = [socket.create_connection(("127.0.0.1", recv.port), timeout=TIMEOUT) for _ in range(5)]
    idle[0].sendall(b"SOCKCAT-TRANSFER 2\n")  # one stops after its first line, one in the middle of it
    idle[1].sendall(b"SOCKCAT-TRANS")
    stalled = RawSender(recv.port)
    stalled.hello()
    data = os.urandom(4 * MB)
    stalled.manifest([entry("stalled.bin", data)])
    _offers, go = stalled.plan_all()
    assert go == {"go": True}
    stalled.send(data[:MB])
    wait_until(has_size(site.out / ".stalled.bin.sockcat-part", MB), "the stalled part")
    mark = recv.mark()
    big = site.src / "big.bin"
    big.write_bytes(os.urandom(6 * MB))
    started = time.monotonic()
    res = run_sockcat("send", recv.address, str(big), timeout=30)
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    assert took < 10, f"an honest send waited {took:.1f} s behind idle peers"
    assert sha(site.out / "big.bin") == sha(big)
    assert recv.problems(mark) == []
    assert (site.out / ".stalled.bin.sockcat-part").stat().st_size == MB  # the stalled session is left alone
    for s in idle:
        s.close()
    stalled.close()


@pytest.mark.parametrize("phase", ["silent", "after-magic", "after-hello", "mid-file"])
def test_an_idle_peer_ends_a_single_shot_recv_after_its_idle_timeout(
    procs: list[Proc], tmp_path: Path, phase: str
) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "--no-code", "-i", "1")
    s = RawSender(recv.port)
    if phase == "after-magic":
        s.sock.sendall(HELLO)
    elif phase != "silent":
        s.hello()
    if phase == "mid-file":
        data = os.urandom(100_000)
        s.manifest([entry("f", data)])
        _offers, go = s.plan_all()
        assert go == {"go": True}
        s.send(data[:50_000])
    started = time.monotonic()
    rc = recv.wait(10)
    took = time.monotonic() - started
    s.close()
    assert rc == 1
    assert 0.5 < took < 5, took
    lines = recv.problems()
    assert len(lines) == 1 and lines[0].startswith(b"sockcat: error: "), lines
    assert_clean(lines[0])
    assert not [x for x in recv.since(0) if x.startswith(b"Traceback")]
    assert not (site.out / "f").exists()


# --- 12: the code ---------------------------------------------------------------------------------------------------


def _guess(port: int, code: str) -> str | None:
    """A peer with a wrong code that presses on: a forged confirmation, then a forged sealed record."""
    s = RawSender(port)
    hs = SenderHandshake(code)
    s.sock.sendall(HELLO + line({"auth": "code", "pake": b64(hs.start())}))
    answer = s.msg()
    if "error" in answer:
        s.close()
        return str(answer["error"])
    with pytest.raises(CodeError):  # the receiver proved a code that is not ours
        hs.finish(base64.b64decode(answer["pake"]), base64.b64decode(answer["confirm"]))
    push(s, line({"confirm": b64(bytes(32))}))
    push(s, b"\x00\x00\x00\x30" + os.urandom(0x30))
    return refusal(s, keep=None)


def test_a_wrong_code_writes_nothing_and_the_right_one_still_works(procs: list[Proc], tmp_path: Path) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "-i", "5")
    assert recv.code is not None and recv.code != "1-wrong-code"
    _reply, warning = refused(recv, site, lambda: _guess(recv.port, "1-wrong-code"))
    assert "wrong code" in warning
    s = RawSender(recv.port)  # the provided raw client too
    with pytest.raises(CodeError):
        s.hello(code="1-wrong-code")
    s.close()


@pytest.mark.parametrize("pake", ["!!not base64!!", "AAAA", b64(bytes(33)), ""])
def test_a_malformed_key_exchange_is_refused(procs: list[Proc], tmp_path: Path, pake: str) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "-i", "5")
    _reply, warning = refused(
        recv, site, lambda: raw(recv.port, HELLO + line({"auth": "code", "pake": pake}), hello=False)
    )
    assert "wrong code" in warning or "bad hello" in warning, warning


class Relay:
    """A TCP relay for one connection to 127.0.0.1:``upstream``; it records what the client sent, and
    ``tamper(offset, chunk)`` may change the client's bytes on their way (``offset``: where the chunk starts)."""

    def __init__(self, upstream: int, tamper: Callable[[Relay, int, bytes], bytes] | None = None) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.upstream = upstream
        self.tamper = tamper
        self.from_client = bytearray()
        self.done = Bg(self._run)

    def _run(self) -> None:
        with self.server:
            self.server.settimeout(TIMEOUT)
            client, _ = self.server.accept()
        with client, socket.create_connection(("127.0.0.1", self.upstream), timeout=TIMEOUT) as up:
            back = threading.Thread(target=self._pump, args=(up, client, False), daemon=True)
            back.start()
            self._pump(client, up, True)
            back.join(TIMEOUT)

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        offset = 0
        try:
            while chunk := src.recv(65536):
                if from_client:
                    self.from_client += chunk
                    if self.tamper is not None:
                        chunk = self.tamper(self, offset, chunk)
                offset += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


def test_a_recorded_session_replayed_is_refused(procs: list[Proc], tmp_path: Path) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "-i", "5")
    f = site.src / "recorded.bin"
    f.write_bytes(os.urandom(300_000))
    relay = Relay(recv.port)
    res = run_sockcat("send", "--code", recv.code or "", relay.address, str(f))
    assert res.returncode == 0, res.stderr
    relay.done.get(TIMEOUT)
    recorded = bytes(relay.from_client)
    assert recorded.startswith(HELLO) and recorded.count(b'"confirm"') == 1
    (site.out / "recorded.bin").unlink()  # so that a replay that worked would show

    def replay() -> str | None:
        s = RawSender(recv.port)
        push(s, recorded)  # the whole of it: hello, confirmation, the sealed manifest and bytes
        return refusal(s, keep=None)

    _reply, warning = refused(recv, site, replay)
    assert "wrong code" in warning
    assert not (site.out / "recorded.bin").exists()


def test_a_man_in_the_middle_with_a_guessed_code_fails_both_ends(procs: list[Proc], tmp_path: Path) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-i", "5")  # single shot: it exits 1 on a wrong code
    guess = "1-acorn-admiral" if recv.code != "1-acorn-admiral" else "2-acorn-admiral"
    server = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, Any] = {}

    def mitm() -> None:
        with server:
            server.settimeout(TIMEOUT)
            client, _ = server.accept()
        with client, socket.create_connection(("127.0.0.1", recv.port), timeout=TIMEOUT) as up:
            cf, uf = client.makefile("rb"), up.makefile("rb")
            assert cf.readline() == HELLO
            hello = json.loads(cf.readline())
            # toward the receiver: the attacker's own key exchange with its guess, then a forged confirmation
            a = SenderHandshake(guess)
            up.sendall(HELLO + line({"auth": "code", "pake": b64(a.start())}))
            answer = json.loads(uf.readline())
            try:
                a.finish(base64.b64decode(answer["pake"]), base64.b64decode(answer["confirm"]))
                seen["receiver side"] = "keys"
            except CodeError:
                seen["receiver side"] = "wrong code"
            up.sendall(line({"confirm": b64(bytes(32))}))
            seen["receiver says"] = uf.readline()
            # toward the sender: a receiver that holds the guess
            b = ReceiverHandshake(guess)
            pake, confirm = b.respond(base64.b64decode(hello["pake"]))
            client.sendall(line({"auth": "code", "pake": b64(pake), "confirm": b64(confirm)}))
            seen["sender says"] = cf.readline()

    job = Bg(mitm)
    f = site.src / "f.txt"
    f.write_text("for the real receiver only\n")
    res = run_sockcat("send", "--code", recv.code or "", f"tcp://127.0.0.1:{server.getsockname()[1]}", str(f))
    job.get(TIMEOUT)
    lines = res.stderr.decode().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and "wrong code" in lines[0], lines
    assert recv.wait() == 1
    errors = recv.problems()
    assert len(errors) == 1 and b"wrong code" in errors[0], recv.since(0)
    assert seen["receiver side"] == "wrong code" and seen["receiver says"] == b""  # it said nothing it could use
    assert json.loads(seen["sender says"]) == {"error": "wrong code"}
    assert list(site.out.iterdir()) == []


def _flip(sealed_offset: int) -> Callable[[Relay, int, bytes], bytes]:
    """Flip one bit ``sealed_offset`` bytes into the sealed stream (past the hello, its answer, the confirmation)."""
    start: list[int] = []

    def tamper(relay: Relay, offset: int, chunk: bytes) -> bytes:
        if not start:
            data = bytes(relay.from_client)
            if data.count(b"\n") < 3:
                return chunk
            pos = -1
            for _ in range(3):
                pos = data.index(b"\n", pos + 1)
            start.append(pos + 1)
        target = start[0] + sealed_offset
        if offset <= target < offset + len(chunk):
            changed = bytearray(chunk)
            changed[target - offset] ^= 0x10
            return bytes(changed)
        return chunk

    return tamper


@pytest.mark.parametrize("where", [20, 2 * MB + MB // 2], ids=["manifest", "file-bytes"])
def test_a_flipped_bit_in_the_sealed_stream_ends_the_session(procs: list[Proc], tmp_path: Path, where: int) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-i", "5")
    f = site.src / "f.bin"
    f.write_bytes(os.urandom(3 * MB))
    relay = Relay(recv.port, _flip(where))
    res = run_sockcat("send", "--code", recv.code or "", relay.address, str(f))
    assert res.returncode == 1, res.stderr
    sent = res.stderr.decode().splitlines()
    assert len(sent) == 1, sent
    assert recv.wait() == 1
    errors = recv.problems()
    assert len(errors) == 1 and b"does not open" in errors[0], recv.since(0)
    assert not (site.out / "f.bin").exists()  # never kept under its name
    relay.done.get(TIMEOUT)


# --- 13: a hostile receiver -----------------------------------------------------------------------------------------


def _fake_receiver(script: Callable[[socket.socket, BinaryIO], None]) -> tuple[str, Bg]:
    """A fake receiver in a thread: it accepts one connection and plays ``script`` on it."""
    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        with server:
            server.settimeout(TIMEOUT)
            conn, _ = server.accept()
        conn.settimeout(TIMEOUT)
        with conn, conn.makefile("rb") as f:
            script(conn, f)
            with contextlib.suppress(OSError):  # until the sender gives up
                while conn.recv(65536):
                    pass

    return f"tcp://127.0.0.1:{server.getsockname()[1]}", Bg(run)


def _hello_ok(conn: socket.socket, f: BinaryIO) -> None:
    assert f.readline() == HELLO
    assert json.loads(f.readline()) == {"auth": "none"}
    conn.sendall(line({"auth": "none"}))


def _manifest(f: BinaryIO) -> list[dict[str, Any]]:
    head = json.loads(f.readline())
    return [json.loads(f.readline()) for _ in range(head["files"] + head["dirs"])]


def _evil_at_hello(conn: socket.socket, f: BinaryIO) -> None:
    f.readline()
    f.readline()
    conn.sendall(line({"error": EVIL}))


def _evil_after_manifest(conn: socket.socket, f: BinaryIO) -> None:
    _hello_ok(conn, f)
    _manifest(f)
    conn.sendall(line({"ok": False, "error": EVIL}))


def _evil_result(conn: socket.socket, f: BinaryIO) -> None:
    _hello_ok(conn, f)
    files = [e for e in _manifest(f) if "file" in e]
    conn.sendall(line({"offers": []}) + line({"busy": True}) + line({"hashes": []}))
    f.readline()  # the plan
    conn.sendall(line({"go": True}))
    for e in files:
        f.read(e["size"] + 32)
    conn.sendall(line({"ok": False, "error": EVIL * 40}))  # long, too: cut short, still one line


def _not_json(conn: socket.socket, f: BinaryIO) -> None:
    f.readline()
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def _deep_nesting(conn: socket.socket, f: BinaryIO) -> None:
    f.readline()
    f.readline()
    conn.sendall(b"[" * 50_000 + b"\n")


def _bogus_offers(conn: socket.socket, f: BinaryIO) -> None:
    _hello_ok(conn, f)
    _manifest(f)
    conn.sendall(line({"offers": [[5, "final", 1]]}))


def _bogus_hashes(conn: socket.socket, f: BinaryIO) -> None:
    _hello_ok(conn, f)
    _manifest(f)
    conn.sendall(line({"offers": [[0, "part", 1]]}) + line({"hashes": ["zz" * 32]}))


FAKE_RECEIVERS: dict[str, tuple[Callable[[socket.socket, BinaryIO], None], str | None]] = {
    "error-at-hello": (_evil_at_hello, EVIL_SHOWN),
    "error-after-manifest": (_evil_after_manifest, EVIL_SHOWN),
    "error-as-result": (_evil_result, EVIL_SHOWN),
    "not-json": (_not_json, None),
    "deep-nesting": (_deep_nesting, None),
    "bogus-offers": (_bogus_offers, None),
    "bogus-hashes": (_bogus_hashes, None),
}


@pytest.mark.parametrize("case", list(FAKE_RECEIVERS))
def test_a_hostile_receiver_gets_one_escaped_line_from_send(tmp_path: Path, case: str) -> None:
    script, shown = FAKE_RECEIVERS[case]
    f = tmp_path / "f.txt"
    f.write_text("hello\n")
    address, job = _fake_receiver(script)
    res = run_sockcat("send", "-i", "5", address, str(f))
    job.get(TIMEOUT)
    lines = res.stderr.splitlines()
    assert res.returncode == 1, res.stderr
    assert len(lines) == 1 and lines[0].startswith(b"sockcat: error: "), res.stderr.decode(errors="replace")
    assert_clean(lines[0])
    if shown is not None:
        assert shown in lines[0].decode(), lines[0]


def test_a_receiver_that_never_answers_is_given_up_on(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("hello\n")
    address, job = _fake_receiver(lambda conn, rf: None)  # reads, never answers
    started = time.monotonic()
    res = run_sockcat("send", "-i", "1", address, str(f))
    took = time.monotonic() - started
    job.get(TIMEOUT)
    lines = res.stderr.splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert took < 5, took
    assert_clean(lines[0])


# --- more: sessions against sessions, and what the bounds really bound --------------------------------------------


def test_a_second_session_never_puts_unchecked_bytes_under_a_final_name(procs: list[Proc], tmp_path: Path) -> None:
    """Two sessions for one name at once: the part file is locked so that two sessions never write one file. Whatever
    happens to the second, the first must not install bytes that no SHA-256 checked."""
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "10")
    mine, theirs = os.urandom(2 * MB), os.urandom(2 * MB)
    part = site.out / ".f.sockcat-part"
    a = RawSender(recv.port)
    a.hello()
    a.manifest([entry("f", mine)])
    assert a.plan_all()[1] == {"go": True}
    a.send(mine[:MB])
    wait_until(has_size(part, MB), "the first session's part")
    first_inode = part.stat().st_ino
    b = RawSender(recv.port)
    b.hello()
    b.manifest([entry("f", theirs)])
    _offers, go = b.plan_all(keep=False)  # "my bytes differ from that part": start over
    if go != {"go": True}:  # refused before anything is written: the name is being received
        assert "another session is receiving this file" in go.get("error", ""), go
    else:
        push(b, theirs[:100_000])

        def theirs_written() -> bool:  # wherever the receiver put the second session's bytes
            return any(
                p.is_file() and p.stat().st_ino != first_inode and p.stat().st_size == 100_000
                for p in site.out.iterdir()
            )

        wait_until(theirs_written, "the second session's bytes on disk")
    a.send(mine[MB:] + hashlib.sha256(mine).digest())
    result = a.msg()
    a.close()
    final = site.out / "f"
    if result.get("ok") is True:
        assert final.exists() and sha(final) == hashlib.sha256(mine).hexdigest(), (
            f"the first session was told ok, but f holds {final.stat().st_size} bytes that are not its file"
        )
    else:
        assert not final.exists() or sha(final) == hashlib.sha256(mine).hexdigest()
    push(b, theirs[100_000:] + hashlib.sha256(theirs).digest())
    with contextlib.suppress(ConnectionResetError):
        b.msg()
    b.close()
    if final.exists():  # only ever one whole, checked file
        assert sha(final) in (hashlib.sha256(mine).hexdigest(), hashlib.sha256(theirs).hexdigest())


def test_a_resumed_part_survives_other_sessions_failing(procs: list[Proc], tmp_path: Path) -> None:
    """A receiver keeps at most 64 parts of failed sessions; dropping the oldest must never remove the part that a
    live session is writing (here: an honest resume of the oldest one)."""
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "10")
    data = os.urandom(300_000)
    part = site.out / ".f.sockcat-part"
    first = RawSender(recv.port)  # an interrupted first try
    first.hello()
    first.manifest([entry("f", data)])
    assert first.plan_all()[1] == {"go": True}
    first.send(data[:1000])
    wait_until(has_size(part, 1000), "the first try's part")
    mark = recv.mark()
    first.close()
    recv.wait_problem(mark)
    resume = RawSender(recv.port)  # the honest resume, under way
    resume.hello()
    resume.manifest([entry("f", data)])
    offers, go = resume.plan_all(keep=True)
    assert offers["offers"] == [[0, "part", 1000]] and go == {"go": True}
    resume.send(data[1000:100_000])
    wait_until(has_size(part, 100_000), "the resumed part")
    mark = recv.mark()
    for i in range(64):  # 64 other sessions fail, each leaving a part
        s = RawSender(recv.port)
        s.hello()
        s.manifest([entry(f"g{i:02d}", b"xy")])
        assert s.plan_all()[1] == {"go": True}
        s.send(b"x")  # one byte of two, then gone
        s.close()
    recv.wait_problem(mark, 64)
    resume.send(data[100_000:] + hashlib.sha256(data).digest())
    result = resume.msg()
    resume.close()
    assert result.get("ok") is True, result
    assert sha(site.out / "f") == hashlib.sha256(data).hexdigest()


def test_a_huge_plan_line_costs_no_huge_memory(procs: list[Proc], tmp_path: Path) -> None:
    """Lines are bounded (a plan: 8 MiB) so that a peer cannot make the receiver hold much; but 8 MiB of ``[]`` parse
    into 2.7 million lists. A plan needs one boolean per offer: here there are none."""
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "10")

    def attack() -> str | None:
        s = RawSender(recv.port)
        s.hello()
        s.manifest([])
        assert s.msg() == {"offers": []} and s.msg() == {"hashes": []}
        push(s, b'{"plan":[' + b"[]," * 2_700_000 + b"[]]}\n")
        return refusal(s, keep=None)

    reply, _warning = refused(recv, site, attack)
    assert "plan" in reply
    assert recv.vm_hwm() < MEMORY_BOUND, f"recv peaked at {recv.vm_hwm() >> 20} MB after one plan line"


def test_implied_directories_count_toward_the_bounds(procs: list[Proc], tmp_path: Path) -> None:
    """12,000 files 64 levels deep, each under its own top directory: every path within its bounds, 1.6 MB of names
    in all, yet they imply 756,000 directories (the bound is 100,000 files and directories)."""
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "10")
    files = [entry("/".join([f"t{i}", *["d"] * 62, "f"])) for i in range(12_000)]
    files.append(entry("big", size=10 << 40))  # so that nothing is written even if it were accepted
    refused(recv, site, lambda: attempt(recv.port, files))
    assert recv.vm_hwm() < MEMORY_BOUND, f"recv peaked at {recv.vm_hwm() >> 20} MB for 12,000 paths"


def test_the_16_mib_of_names_are_counted_in_bytes(procs: list[Proc], tmp_path: Path) -> None:
    """A manifest holds at most 16 MiB of names: 4,500 paths of 15 names of 63 four-byte characters are 17 MB of
    UTF-8 (but only 4.3 million characters)."""
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "10")
    name = "\U0001f600" * 63
    files = [entry("/".join([*[name] * 15, f"{i}"])) for i in range(4500)]
    files.append(entry("big", size=10 << 40))
    assert sum(len(f["file"].encode()) for f in files) > 16 * MB
    _reply, warning = refused(recv, site, lambda: attempt(recv.port, files))
    assert "MiB of names" in warning, warning


# --- found while playing the attacker ------------------------------------------------------------------------------


def test_sigterm_ends_recv_k_whatever_its_sessions_are_doing(procs: list[Proc], tmp_path: Path) -> None:
    """A signal must reach the thread that can act on it: sessions blocked in a read never swallow SIGTERM."""
    site = Site.make(tmp_path)
    for _ in range(5):
        recv = Recv(procs, site.out, "-k", "--no-code", "-i", "30")
        waiting = []
        for _ in range(3):  # sessions blocked at different steps: the hello, the manifest, the plan
            s = RawSender(recv.port)
            waiting.append(s)
        waiting[1].hello()
        waiting[2].hello()
        waiting[2].manifest([entry("f", b"x" * 10)])
        assert "offers" in waiting[2].msg()
        recv.proc.p.terminate()
        # Cleanly, and without waiting for the sessions (their -i is 30 s; a swallowed signal never ends the
        # process at all). The bound is the suite's: 5 s was once too short in a loaded randomized run.
        assert recv.wait(TIMEOUT) == 0
        for s in waiting:
            s.close()


def test_busy_lines_do_not_keep_a_session_past_its_time(procs: list[Proc], tmp_path: Path) -> None:
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "1")

    def busy_forever() -> str | None:
        s = RawSender(recv.port)
        s.hello()
        s.manifest([entry("f", b"data")])
        assert "offers" in s.msg() and "hashes" in s.msg()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # "still hashing", forever; the receiver must end it (1 s + a margin)
            try:
                s.send(line({"busy": True}))
            except (BrokenPipeError, ConnectionResetError):
                break
            s.sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                if s.sock.recv(1, socket.MSG_PEEK) in (b"", b"{"):
                    break
        assert time.monotonic() < deadline, "the receiver took busy lines for 10 s"
        s.sock.settimeout(TIMEOUT)
        return refusal(s, keep=None)

    reply, warning = refused(recv, site, busy_forever)
    assert "busy" in warning

    def busy_at_the_manifest() -> str | None:  # where nothing can take long, a busy line is not allowed at all
        s = RawSender(recv.port)
        s.hello()
        push(s, line({"busy": True}))
        return refusal(s, keep=None)

    reply, warning = refused(recv, site, busy_at_the_manifest)
    assert "busy" in reply and "busy" in warning


def test_an_idle_connection_is_reported_as_idle(procs: list[Proc], tmp_path: Path) -> None:
    recv = Recv(procs, tmp_path / "out", "-i", "1")
    with socket.create_connection(("127.0.0.1", recv.port), timeout=TIMEOUT):
        assert recv.wait() == 1
    (line_,) = recv.problems()
    assert b"sent nothing for 1 s" in line_, line_


def test_a_directory_at_a_part_name_is_refused_before_go(procs: list[Proc], tmp_path: Path) -> None:
    site = Site.make(tmp_path)
    (site.out / ".f.sockcat-part").mkdir()
    recv = Recv(procs, site.out, "-k", "--no-code")
    reply, warning = refused(recv, site, lambda: attempt(recv.port, [entry("f", b"data")]))
    assert "part file" in reply and "part file" in warning


def test_guesses_at_the_code_are_spaced_out_and_bounded(procs: list[Proc], tmp_path: Path) -> None:
    """Each wrong guess spaces out the next key exchanges; past a few waiting, more are refused at once; the right
    code still gets through (slowed, not stuck)."""
    site = Site.make(tmp_path)
    recv = Recv(procs, site.out, "-k", "-i", "30")
    assert recv.code is not None
    for _ in range(3):
        _guess(recv.port, "1-wrong-guess")
    recv.wait_problem(0, 3)
    started = time.monotonic()
    _guess(recv.port, "1-wrong-guess")  # the fourth waits its turn: 1 s after the third wrong one
    assert time.monotonic() - started >= 0.4
    recv.wait_problem(0, 4)
    assert all(b"wrong code" in x for x in recv.problems())
    f = site.src / "f.bin"
    f.write_bytes(os.urandom(1000))
    res = run_sockcat("send", "--code", recv.code, recv.address, str(f), timeout=60)
    assert res.returncode == 0, res.stderr
    assert sha(site.out / "f.bin") == sha(f)


def _connect(recv: Recv) -> socket.socket:
    """A raw connection to the receiver over its own transport (tcp, unix, or tls without verification)."""
    if recv.address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(recv.address[len("unix:") :])
        return s
    s = socket.create_connection(("127.0.0.1", recv.port), timeout=TIMEOUT)
    if recv.tls:
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        return ctx.wrap_socket(s)
    return s


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_attacks_over_every_transport(procs: list[Proc], tmp_path: Path, short_tmp: Path, kind: str) -> None:
    site = Site.make(tmp_path)
    (site.out / "linked").symlink_to(site.outside)
    address = {"tcp": "tcp://127.0.0.1:0", "unix": f"unix:{short_tmp / f'{kind}.sock'}", "tls": "tls://127.0.0.1:0"}
    recv = Recv(procs, site.out, "-k", "--no-code", "-i", "5", address=address[kind])

    def attack(files: list[dict[str, Any]]) -> Callable[[], str | None]:
        def run() -> str | None:
            s = RawSender(sock=_connect(recv))
            assert s.hello() == {"auth": "none"}
            s.manifest(files)
            return refusal(s)

        return run

    reply, warning = refused(recv, site, attack([entry("linked/escaped.txt", b"out")]))
    assert "symbolic link" in reply and "symbolic link" in warning
    reply, warning = refused(recv, site, attack([entry("a\x1b]0;t\x07b", b"x")]))
    assert "\\x1b]0;t\\x07" in warning
    idle = _connect(recv)  # an idle peer on the same transport delays nobody
    started = time.monotonic()
    honest(recv, site.src, 2 * MB)
    assert time.monotonic() - started < 5
    idle.close()
    assert not (site.outside / "escaped.txt").exists()
