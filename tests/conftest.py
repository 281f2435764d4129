"""Shared fixtures: real processes on real loopback sockets, nothing mocked.

A test that needs a peer program (socat, ncat, nc, openssl…) fails loudly when it is missing:
`.ci/run` installs them, so a missing one is a broken set-up, never a reason to skip.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

SOCKCAT = [sys.executable, "-m", "sockcat"]
TIMEOUT = 20.0
# Hypothesis budgets: fixed in CI; SOCKCAT_FUZZ_SCALE=50 (say) runs every fuzz test 50 times longer.
FUZZ_SCALE = float(os.environ.get("SOCKCAT_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> Any:
    """Settings for a Hypothesis test of a network parser: ``examples`` cases (times SOCKCAT_FUZZ_SCALE)."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=max(1, int(examples * FUZZ_SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def require(tool: str) -> str:
    """Path of a peer program; a missing one fails the test (it is a set-up bug, not a skip)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run the README's test command (it installs the peers)")
    return path


def _ephemeral_ports() -> range:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


_EPHEMERAL = _ephemeral_ports()


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port nothing is bound to, for a peer that must be told its port before it starts. Taken below the kernel's
    ephemeral range: a port from that range, free now, could be any outgoing connection's by the time the peer
    binds it (a proxy in the stream conformance suite once failed so, 'Address already in use')."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = max(1024, _EPHEMERAL.start - 12000) if _EPHEMERAL.start > 13024 else 10000
    for _ in range(200):
        port = random.randrange(low, _EPHEMERAL.start)
        with socket.socket(fam, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)  # pacing the checks, not waiting for an event
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s")


def wait_until(cond: Callable[[], object], what: str, timeout: float = TIMEOUT, interval: float = 0.02) -> None:
    """Poll ``cond`` until it is true; fail with ``what`` (the event awaited) after ``timeout`` seconds.

    Tests wait for events through this, never with a fixed sleep: a loaded machine only makes them slower."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never happened within {timeout} s: {what}"
        time.sleep(interval)  # pacing the checks, not waiting for an event


async def await_until(cond: Callable[[], object], what: str, timeout: float = TIMEOUT, interval: float = 0.01) -> None:
    """:func:`wait_until` inside an asyncio loop: the loop runs between the checks (its tasks may be the event)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never happened within {timeout} s: {what}"
        await asyncio.sleep(interval)  # pacing the checks, not waiting for an event


# TCP states in /proc/net/tcp
TCP_ESTABLISHED = "01"
TCP_FIN_WAIT2 = "05"
TCP_TIME_WAIT = "06"
TCP_CLOSE_WAIT = "08"
TCP_LISTEN = "0A"


class _TcpRow(NamedTuple):
    local: int  # ports
    remote: int
    state: str
    tx: int  # send queue: written, not yet acknowledged (for a listener: 0)
    rx: int  # receive queue: received, not yet read (for a listener: connections not yet accepted)
    inode: int


def _tcp_table() -> list[_TcpRow]:
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(name).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            f = row.split()
            tx, rx = f[4].split(":")
            local, remote = (int(f[i].rsplit(":", 1)[1], 16) for i in (1, 2))
            found.append(_TcpRow(local, remote, f[3], int(tx, 16), int(rx, 16), int(f[9])))
    return found


def _tcp_rows(port: int, side: str) -> list[tuple[str, int, int]]:
    return [(r.state, r.tx, r.rx) for r in _tcp_table() if (r.local if side == "local" else r.remote) == port]


def tcp_sockets(port: int, *, state: str | None = None, side: str = "local") -> list[tuple[int, int]]:
    """(send queue, receive queue) of every TCP socket on this host whose ``side`` ("local" or "remote")
    port is ``port`` (in ``state``, e.g. TCP_ESTABLISHED, if given), from /proc/net/tcp and tcp6.

    For an established socket: bytes written but not yet acknowledged, bytes received but not yet read;
    for a listener, the receive queue is the number of connections waiting for accept()."""
    return [(tx, rx) for st, tx, rx in _tcp_rows(port, side) if state is None or st == state]


def tcp_states(port: int, *, side: str = "local") -> list[str]:
    """The state (TCP_ESTABLISHED…) of every TCP socket whose ``side`` port is ``port``."""
    return [st for st, _, _ in _tcp_rows(port, side)]


def established(port: int, *, side: str = "local") -> int:
    """How many TCP connections whose ``side`` port is ``port`` are established (accepted or not)."""
    return len(tcp_sockets(port, state=TCP_ESTABLISHED, side=side))


def accept_queue(port: int) -> int:
    """Connections established on the listener at ``port`` that its process has not accept()ed yet."""
    return sum(rx for _, rx in tcp_sockets(port, state=TCP_LISTEN))


def accepted(port: int, count: int) -> Callable[[], bool]:
    """A predicate for :func:`wait_until`: ``count`` connections to ``port`` exist (not counting those in
    TIME_WAIT) and none waits in the listener's accept queue (the listening process took them all)."""

    def check() -> bool:
        live = [st for st in tcp_states(port) if st not in (TCP_LISTEN, TCP_TIME_WAIT)]
        return len(live) >= count and accept_queue(port) == 0

    return check


def held_open(port: int) -> int:
    """Connections on local port ``port`` that its process still holds: established, or with the peer's FIN
    not yet acted on (CLOSE_WAIT). Once a server closed its end, the connection no longer counts."""
    return len(tcp_sockets(port, state=TCP_ESTABLISHED)) + len(tcp_sockets(port, state=TCP_CLOSE_WAIT))


def read_pipe(stream: Any, size: int, timeout: float = TIMEOUT) -> bytes:
    """Exactly ``size`` bytes from a pipe such as ``Proc.p.stdout``, read from its descriptor (nothing is
    left buffered: a later ``stream.read()`` gets the rest); fails after ``timeout`` seconds or at EOF."""
    import select

    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    got = b""
    while len(got) < size:
        left = deadline - time.monotonic()
        assert left > 0, f"only {got!r} of {size} bytes came within {timeout} s"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, size - len(got))
            assert chunk, f"EOF after {got!r} ({size} bytes awaited)"
            got += chunk
    return got


def udp_bound(port: int) -> bool:
    """Whether a UDP socket on this host is bound to ``port`` (IPv4 or IPv6), from /proc/net/udp and udp6."""
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        for row in Path(name).read_text().splitlines()[1:]:
            if int(row.split()[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def port_bound(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    """Whether something on this host listens on TCP ``port`` (or has bound UDP ``port``), read from /proc/net.
    Never by binding the port to see: for that moment the port is taken, and a peer binding it then fails."""
    return bool(tcp_sockets(port, state=TCP_LISTEN)) if kind == socket.SOCK_STREAM else udp_bound(port)


def tcp_inodes(*, local: int | None = None, remote: int | None = None) -> list[int]:
    """Inodes of the TCP sockets a process holds (in any state but closed) with this ``local`` and/or ``remote``
    port. Rows no process holds (inode 0: TIME_WAIT, or not accepted yet) are left out: an earlier test's
    TIME_WAIT row can carry the same port number, and once made a relay test wait for a third socket for ever."""
    return [r.inode for r in _tcp_table() if r.inode and local in (None, r.local) and remote in (None, r.remote)]


def peer_queues(sock: socket.socket) -> tuple[int, int]:
    """(send queue, receive queue) of the other end of our own TCP connection ``sock`` (on this host)."""
    ours, theirs = sock.getsockname()[1], sock.getpeername()[1]
    rows = [(r.tx, r.rx) for r in _tcp_table() if (r.local, r.remote) == (theirs, ours)]
    assert rows, f"no other end of {sock}"
    return rows[0]


def epoll_readers(pid: int) -> set[int]:
    """Inodes of the files that process ``pid``'s epoll sets watch for input (from /proc/PID/fdinfo)."""
    import re

    found: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for events, ino in re.findall(r"^tfd:\s*\d+\s+events:\s*([0-9a-f]+).*?ino:([0-9a-f]+)", info, re.M):
            if int(events, 16) & 0x1:  # EPOLLIN
                found.add(int(ino, 16))
    return found


# --- raw clients against a listener under test ------------------------------------------------------------


def reset(s: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): no TIME_WAIT left on this host's ephemeral ports."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def ended(s: socket.socket, timeout: float = TIMEOUT) -> bool:
    """Whether the listener closed ``s`` (EOF or a reset) within ``timeout`` seconds, before sending anything."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def closed_by_peer(socks: Sequence[socket.socket], want: int, timeout: float = TIMEOUT) -> set[int]:
    """Indices of the sockets the listener closed (EOF or reset, nothing sent first): polls until ``want`` of them
    are, or ``timeout``. A socket with data to read (chargen) is being served, not closed."""
    poller = select.poll()
    index = {s.fileno(): i for i, s in enumerate(socks)}
    for fd in index:
        poller.register(fd, select.POLLIN)
    closed: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(closed) < want and index and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            poller.unregister(fd)
            i = index.pop(fd)
            try:
                data = socks[i].recv(1, socket.MSG_PEEK)
            except ConnectionResetError:
                data = b""
            if data == b"":
                closed.add(i)
    return closed


def process_tcp_connections(pid: int) -> int:
    """How many of process ``pid``'s sockets are TCP connections (any state but LISTEN): what a server leaks
    when it forgets to close a client or an upstream, whatever its other sockets."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return sum(1 for r in _tcp_table() if r.inode in inodes and r.state != TCP_LISTEN)


@contextlib.contextmanager
def headless_chromium(profile: Path, *, phone: bool = False, width: int = 900, height: int = 1100) -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Selenium through chromium-driver: a fresh profile in ``profile``, no
    network of its own; ``phone``: a 390 px wide phone screen (a desktop window cannot be made that narrow)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = require("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-proxy-server",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    if phone:
        options.add_experimental_option(
            "mobileEmulation", {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2}}
        )
    driver = webdriver.Chrome(service=Service(require("chromedriver")), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def fd_count(pid: int) -> int:
    """Open descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def queued_to_send(sock: socket.socket) -> int:
    """Bytes written on our own ``sock`` that the peer has not acknowledged yet (SIOCOUTQ)."""
    import fcntl
    import struct
    import termios

    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])


def queued_to_read(sock: socket.socket) -> int:
    """Bytes received on our own ``sock`` that nobody has read yet (SIOCINQ)."""
    import fcntl
    import struct
    import termios

    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


class _StderrView(io.BufferedReader):
    """``Proc.p.stderr`` for tests: a real pipe fed by the reader thread. Touching it (read, readline,
    iteration, fileno…) gives up :meth:`Proc.read_listening`'s claim, so the lines come through here."""

    def __init__(self, fd: int, touched: Callable[[], None]) -> None:
        super().__init__(io.FileIO(fd, "rb"))
        self._touched = touched

    def read(self, size: int | None = -1) -> bytes:
        self._touched()
        return super().read(size)

    def read1(self, size: int = -1) -> bytes:
        self._touched()
        return super().read1(size)

    def readline(self, size: int | None = -1) -> bytes:
        self._touched()
        return super().readline(size)

    def peek(self, size: int = 0) -> bytes:
        self._touched()
        return super().peek(size)

    def fileno(self) -> int:
        self._touched()
        return super().fileno()

    def __iter__(self) -> _StderrView:
        self._touched()
        return self


class Proc:
    """A child process whose stderr a thread reads line by line, from the start (nothing is lost or stalls).

    ``stderr_lines`` holds the lines :meth:`read_listening` consumed (up to the ``listening on`` line);
    ``p.stderr`` is a pipe carrying the lines after those (every line, if ``read_listening`` was never
    called), so ``stderr_lines + p.stderr.read()`` is the whole stderr. :meth:`communicate` returns it all.
    """

    def __init__(
        self,
        args: list[str],
        *,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = subprocess.PIPE,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.args = args
        self.p = subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.stderr_lines: list[str] = []
        self._raw = self.p.stderr
        self._cond = threading.Condition()
        self._record: list[bytes] = []  # every stderr line, in order (a last line may lack its newline)
        self._eof = False
        self._gate: int | None = None  # index just past the first "listening on" line
        self._start: int | None = None  # where the public pipe starts: set once claimed or released
        rfd, self._wfd = os.pipe()
        self.p.stderr = _StderrView(rfd, self._release)
        self._reader = threading.Thread(target=self._read, name=f"stderr {args[-1]}", daemon=True)
        self._writer = threading.Thread(target=self._forward, name=f"stderr fwd {args[-1]}", daemon=True)
        self._reader.start()
        self._writer.start()

    def _read(self) -> None:
        assert self._raw is not None
        try:
            for raw in self._raw:
                with self._cond:
                    if self._gate is None and raw.startswith(b"listening on "):
                        self._gate = len(self._record) + 1
                    self._record.append(raw)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                self._raw.close()
            with self._cond:
                self._eof = True
                if self._start is None:
                    self._start = 0
                self._cond.notify_all()

    def _forward(self) -> None:
        """Copy the unclaimed lines to the public pipe, in order, closing it after the last one."""
        pos = [-1]

        def ready() -> bool:
            return self._start is not None and (pos[0] < 0 or pos[0] < len(self._record) or self._eof)

        try:
            while True:
                with self._cond:
                    self._cond.wait_for(ready)
                    assert self._start is not None
                    if pos[0] < 0:
                        pos[0] = self._start
                    chunk = b"".join(self._record[pos[0] :])
                    pos[0] = len(self._record)
                    done = self._eof
                if chunk:
                    _write_all(self._wfd, chunk)
                if done:
                    return
        except OSError:
            pass  # the test closed its end
        finally:
            os.close(self._wfd)

    def _release(self) -> None:
        with self._cond:
            if self._start is None:
                self._start = 0
                self._cond.notify_all()

    def read_listening(self, timeout: float = TIMEOUT) -> str:
        """Wait for the ``listening on ADDRESS`` line (lines up to it go to ``stderr_lines``); return ADDRESS."""
        with self._cond:
            self._cond.wait_for(lambda: self._gate is not None or self._eof, timeout=timeout)
            gate = self._gate
            if gate is not None:
                line = self._record[gate - 1].decode(errors="replace").rstrip("\n")
                if self._start is None:
                    self._start = gate
                    self.stderr_lines.extend(r.decode(errors="replace").rstrip("\n") for r in self._record[:gate])
                self._cond.notify_all()
                return line[len("listening on ") :].strip()
            seen = [r.decode(errors="replace").rstrip("\n") for r in self._record]
        self.kill()
        raise AssertionError(f"no 'listening on' line from {self.args}: {seen}")

    def stderr_count(self, text: str) -> int:
        """How many stderr lines so far contain ``text`` (claimed or not, read by the test or not)."""
        needle = text.encode()
        with self._cond:
            return sum(needle in r for r in self._record)

    def wait_stderr(self, text: str, count: int = 1, timeout: float = TIMEOUT) -> list[str]:
        """Wait until ``count`` stderr lines contain ``text``; return them. Fails (with every line so far)
        after ``timeout`` seconds or when stderr ends first."""
        needle = text.encode()

        def hits() -> list[bytes]:
            return [r for r in self._record if needle in r]

        with self._cond:
            self._cond.wait_for(lambda: len(hits()) >= count or self._eof, timeout=timeout)
            found = hits()
            if len(found) >= count:
                return [r.decode(errors="replace").rstrip("\n") for r in found]
            seen = [r.decode(errors="replace").rstrip("\n") for r in self._record]
        raise AssertionError(f"{count} stderr line(s) with {text!r} never came from {self.args}: {seen}")

    def stderr_all(self, timeout: float = TIMEOUT) -> list[str]:
        """Every stderr line so far (all of them once the process and its children closed stderr)."""
        self._reader.join(timeout)
        with self._cond:
            return [r.decode(errors="replace").rstrip("\n") for r in self._record]

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            where = where_it_hangs(self.p.pid)
            self.kill()
            raise AssertionError(f"{self.args} still running after {timeout} s; its threads:\n{where}") from None
        # stderr is complete once the reader saw EOF (a grandchild that kept the pipe open may delay that)
        self._reader.join(min(timeout, 2.0))
        return rc

    def communicate(self, data: bytes | None = None, timeout: float = TIMEOUT) -> tuple[bytes, str]:
        """Feed ``data`` to stdin (then close it), read stdout to its end, wait: (stdout, the whole stderr)."""
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        threads = []
        if self.p.stdin is not None:
            stdin = self.p.stdin

            def feed() -> None:
                with contextlib.suppress(OSError):
                    if data:
                        stdin.write(data)
                    stdin.close()

            threads.append(threading.Thread(target=feed, daemon=True))
        if self.p.stdout is not None:
            stdout = self.p.stdout
            threads.append(threading.Thread(target=lambda: out.append(stdout.read()), daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        try:
            self.p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise subprocess.TimeoutExpired(self.args, timeout) from None
        return b"".join(out), "\n".join(self.stderr_all(max(0.1, deadline - time.monotonic())))

    def terminate(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


_SYSCALLS = {
    0: "read",
    1: "write",
    7: "poll",
    23: "select",
    35: "nanosleep",
    43: "accept",
    45: "recvfrom",
    202: "futex",
    230: "clock_nanosleep",
    232: "epoll_wait",
    270: "pselect6",
    271: "ppoll",
    288: "accept4",
}


def where_it_hangs(pid: int) -> str:
    """What each thread of a process that should have ended is doing: its name, state and system call from /proc,
    then every thread's C stack from gdb (a main thread in ``accept`` sleeps through a signal; one in a futex
    is stuck on a lock or the GIL)."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda t: int(t.name)):
        with contextlib.suppress(OSError, ValueError, IndexError):
            comm = (task / "comm").read_text().strip()
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            call = (task / "syscall").read_text().split()[0]
            name = _SYSCALLS.get(int(call), call) if call.lstrip("-").isdigit() else call
            blocked = next(x.split()[1] for x in (task / "status").read_text().splitlines() if x.startswith("SigBlk"))
            lines.append(f"  {task.name} {comm!r} state {state} in {name} (blocked signals {blocked})")
    if shutil.which("gdb"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bt = subprocess.run(
                ["gdb", "-batch", "-nx", "-p", str(pid), "-ex", "thread apply all bt 10"],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            ).stdout
            lines += [ln for ln in bt.splitlines() if ln.startswith(("Thread", "#"))]
    return "\n".join(lines)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Start processes through ``procs.append(Proc(...))``; each is ended (by its PID) after the test."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()
        for stream in (proc.p.stdout, proc.p.stderr, proc.p.stdin):
            if stream is not None:
                stream.close()


def sockcat(*args: str) -> list[str]:
    return [*SOCKCAT, *args]


def run_sockcat(*args: str, input: bytes | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        sockcat(*args),
        input=input,
        capture_output=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short directory for Unix socket paths (sun_path holds 107 bytes)."""
    d = Path(f"/tmp/sc-{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Bg(threading.Thread):
    """Run ``fn`` in a thread; ``get()`` returns its result or re-raises its exception.

    ``get`` waits at most ``TIMEOUT`` seconds unless told otherwise (a test file sets its own bound
    by subclassing)."""

    TIMEOUT = 5.0

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result: Any = None
        self.exc: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:
            self.exc = exc

    def get(self, timeout: float | None = None) -> Any:
        timeout = self.TIMEOUT if timeout is None else timeout
        self.join(timeout)
        assert not self.is_alive(), f"{self.fn} still running after {timeout} s"
        if self.exc is not None:
            raise self.exc
        return self.result


def start_listen(
    procs: list[Proc], *args: str, data: bytes | None = None, stdout: int | None = subprocess.PIPE
) -> tuple[Proc, str]:
    """Start ``sockcat listen ARGS``; ``data`` (if given) is its whole stdin. Returns (proc, bound address)."""
    p = Proc(sockcat("listen", *args), stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL, stdout=stdout)
    procs.append(p)
    if data is not None:
        assert p.p.stdin is not None
        p.p.stdin.write(data)
        p.p.stdin.close()
        p.p.stdin = None
    return p, p.read_listening()


def finish(p: Proc, timeout: float = TIMEOUT) -> tuple[int, bytes, list[str]]:
    """Wait for ``p`` to exit; return (status, all of stdout, every stderr line) — buffered bytes included."""
    results: dict[str, bytes] = {}

    def read(name: str, stream: object) -> None:
        results[name] = stream.read()  # type: ignore[attr-defined]

    threads = [
        threading.Thread(target=read, args=(name, stream), daemon=True)
        for name, stream in (("out", p.p.stdout), ("err", p.p.stderr))
        if stream is not None
    ]
    for t in threads:
        t.start()
    rc = p.wait(timeout)
    for t in threads:
        t.join(timeout)
    err = p.stderr_lines + results.get("err", b"").decode(errors="replace").splitlines()
    return rc, results.get("out", b""), err


def port_of(address: str) -> int:
    port = int(address.rsplit(":", 1)[1])
    assert 0 < port < 65536, address
    return port
