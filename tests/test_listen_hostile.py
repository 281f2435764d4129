"""sockcat listen as an attacker meets it: idle connections by the hundred, connection storms, Unix peers with hostile
names handed to --exec children, IPv4-mapped --allow/--deny rules, forged UDP sources, a stolen UDP port, garbage.

Every case runs a real ``sockcat listen`` process on loopback and plays the attacker with raw sockets. Each checks
the listener's promise (README, "Security"), that its descriptors (``/proc/PID/fd``), memory (``VmRSS``), threads
and child processes stay bounded (measured before and after), and that it still serves an honest client.
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import (
    TCP_ESTABLISHED,
    TIMEOUT,
    Proc,
    accept_queue,
    closed_by_peer,
    ended,
    established,
    fd_count,
    port_of,
    reset,
    run_sockcat,
    sockcat,
    tcp_sockets,
    wait_until,
)

MB = 1 << 20
MEMORY_GROWTH = 32 * MB  # what an attack may add to the listener's resident memory


# --- measuring the listener -------------------------------------------------------------------------------------


def rss(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS), in bytes."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (zombies too), from the ppid field of every /proc/*/stat."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


class Usage:
    """The listener's descriptors, threads, children and memory at one moment."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fds = fd_count(pid)
        self.threads = threads(pid)
        self.children = len(children(pid))
        self.rss = rss(pid)

    def back_to(self, base: Usage) -> bool:
        return self.fds <= base.fds and self.threads <= base.threads and self.children <= base.children

    def __repr__(self) -> str:
        return f"fds={self.fds} threads={self.threads} children={self.children} rss={self.rss // 1024} KiB"


def held_by_listener(port: int) -> int:
    """Connections the listener on ``port`` still holds: established, or closed by the peer but not yet by it."""
    return len(tcp_sockets(port, state=TCP_ESTABLISHED)) + len(tcp_sockets(port, state="08"))  # 08: CLOSE_WAIT


def quiesce(p: Proc, port: int, max_threads: int) -> None:
    """Wait until a warm-up connection is all gone: no socket, no child, its thread ended."""
    pid = p.p.pid
    wait_until(
        lambda: held_by_listener(port) == 0 and not children(pid) and threads(pid) <= max_threads,
        f"the warm-up connection gone (now {Usage(pid)})",
    )


def settled(p: Proc, base: Usage, what: str) -> None:
    """Wait until the listener is back to ``base``'s descriptors, threads and children; check its memory."""
    pid = p.p.pid
    wait_until(lambda: Usage(pid).back_to(base), f"{what}: back to {base} (now {Usage(pid)})")
    assert rss(pid) - base.rss < MEMORY_GROWTH, f"{what}: {Usage(pid)} after {base}"
    assert p.p.poll() is None, f"{what}: the listener died"


# --- raw clients ------------------------------------------------------------------------------------------------


def connect(port: int, host: str = "127.0.0.1", source: str | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(TIMEOUT)
    if source is not None:
        s.bind((source, 0))
    s.connect((host, port))
    return s


def held(socks: Sequence[socket.socket]) -> int:
    """How many of ``socks`` the listener has not closed: nothing to read on them, not even an EOF."""
    ready, _, _ = select.select(socks, [], [], 0)
    return len(socks) - len(ready)


def start(procs: list[Proc], tmp_path: Path, *args: str) -> tuple[Proc, str, Path]:
    """``sockcat listen ARGS`` with a stdin that stays open and unwritten, stdout to a file: (proc, address, file)."""
    out = tmp_path / f"stdout-{len(procs)}"
    with open(out, "wb") as f:
        p = Proc(sockcat("listen", *args), stdin=subprocess.PIPE, stdout=f.fileno())
    procs.append(p)
    return p, p.read_listening(), out


def on_stdout(out: Path, data: bytes) -> Callable[[], bool]:
    return lambda: data in out.read_bytes()


def grown_to(path: Path, size: int) -> Callable[[], bool]:
    return lambda: path.stat().st_size >= size


def honest_line(port: int, out: Path, host: str = "127.0.0.1") -> None:
    """An honest client's line reaches the listener's stdout."""
    token = f"honest {time.monotonic_ns()}\n".encode()
    with connect(port, host) as s:
        s.sendall(token)
        wait_until(lambda: token in out.read_bytes(), f"{token!r} on the listener's stdout")


def through_cat(port: int, data: bytes) -> bytes:
    """What an ``--exec cat`` listener sends back for ``data`` (our side half-closed after it)."""
    with connect(port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := s.recv(1 << 20):
            got += chunk
        return bytes(got)


def refused_at_once(port: int, host: str = "127.0.0.1") -> bool:
    with connect(port, host) as s:
        return ended(s, 5.0)


def no_traceback(p: Proc) -> list[str]:
    lines = p.stderr_all(1.0)
    assert not any("Traceback" in x for x in lines), lines
    return lines


# --- connection caps --------------------------------------------------------------------------------------------


def test_exec_idle_connections_are_capped_at_100_children(procs: list[Proc], tmp_path: Path) -> None:
    """200 idle connections to ``listen -k --exec cat``: 100 children (the default cap with --exec), every other
    connection closed at once; threads, descriptors and memory bounded; all back to the start once they go."""
    p, addr, _ = start(procs, tmp_path, "-k", "--exec", "cat", "tcp://127.0.0.1:0")
    port, pid = port_of(addr), p.p.pid
    t0 = threads(pid)
    assert through_cat(port, b"warm\n") == b"warm\n"  # the accept loop and one child's round trip done
    quiesce(p, port, t0)
    base = Usage(pid)
    conns: list[socket.socket] = []
    try:
        for _ in range(200):
            conns.append(connect(port))
        wait_until(lambda: established(port) >= 100 and accept_queue(port) == 0, "every connection accepted")
        closed = closed_by_peer(conns, 100)
        assert len(closed) == 100, f"{len(closed)} of 200 closed past the cap of 100"
        wait_until(lambda: len(children(pid)) >= 100, "100 children running")
        now = Usage(pid)
        assert now.children == 100, now
        assert held(conns) == 100
        assert now.threads <= base.threads + 100 + 4, (base, now)
        assert now.fds <= base.fds + 8, (base, now)  # each socket went to its child, none kept here
        assert now.rss - base.rss < MEMORY_GROWTH, (base, now)
        assert refused_at_once(port)  # still full: a newcomer is closed at once, never left hanging
        # the held ones are real sessions: a child answers
        survivor = next(i for i in range(200) if i not in closed)
        conns[survivor].sendall(b"alive?\n")
        conns[survivor].settimeout(TIMEOUT)
        assert conns[survivor].recv(100) == b"alive?\n"
    finally:
        for c in conns:
            reset(c)
    settled(p, base, "200 idle --exec connections gone")
    assert through_cat(port, b"honest\n") == b"honest\n"


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_max_conns_on_plain_keep_open(procs: list[Proc], tmp_path: Path, verbose: bool) -> None:
    """``listen -k --max-conns 5``: 25 connections, 5 served (their bytes reach stdout), 20 closed at once, and what
    those 20 send never reaches stdout; descriptors bounded while they are held and back to the start after."""
    p, addr, out = start(procs, tmp_path, *(["-v"] if verbose else []), "-k", "--max-conns", "5", "tcp://127.0.0.1:0")
    port, pid = port_of(addr), p.p.pid
    t0 = threads(pid)
    honest_line(port, out)
    quiesce(p, port, t0 + 1)  # (+ the thread reading stdin, from the first connection on)
    base = Usage(pid)
    conns: list[socket.socket] = []
    try:
        for _ in range(25):
            conns.append(connect(port))
        wait_until(lambda: established(port) >= 5 and accept_queue(port) == 0, "every connection accepted")
        closed = closed_by_peer(conns, 20)
        assert len(closed) == 20 and held(conns) == 5
        for i in closed:
            try:
                conns[i].sendall(f"conn {i}\n".encode())
            except OSError:
                pass  # a closed one may already answer with a reset
        kept = [i for i in range(25) if i not in closed]
        for i in kept:  # one after the other (several connections writing at once to a stdout *file* lose bytes)
            line = f"conn {i}\n".encode()
            conns[i].sendall(line)
            wait_until(on_stdout(out, line), f"{line!r} from a held connection on stdout")
        assert not any(f"conn {i}\n".encode() in out.read_bytes() for i in closed)
        now = Usage(pid)
        # per connection: its socket and a pipe pair (the pump splices through it), and its thread
        assert now.fds <= base.fds + 3 * 5 + 2 and now.threads <= base.threads + 5 + 2, (base, now)
        assert refused_at_once(port)
    finally:
        for c in conns:
            reset(c)
    settled(p, base, "the capped connections gone")
    honest_line(port, out)
    if verbose:
        assert len(p.wait_stderr("--max-conns 5 reached", 21)) == 21


# --- hostile Unix peer names in an --exec child's environment ---------------------------------------------------

# A Unix client picks its own abstract name: any bytes, NUL included. (expected SOCKCAT_PEER, written by hand)
HOSTILE_NAMES = [
    (b"\0ev\nil", "unix:@ev\\x0ail"),
    (b"\0glob*?[x]", "unix:@glob*?[x]"),
    (b"\0\x1b]0;pwned\x07\x1b[2J", "unix:@\\x1b]0;pwned\\x07\\x1b[2J"),
    (b"\0nul\0inside\0", "unix:@nul\\x00inside\\x00"),
    (b"\0\xff\xfe not utf-8 \\", "unix:@\\udcff\\udcfe not utf-8 \\\\"),
    (b"\0$(reboot)`id`;'\"", "unix:@$(reboot)`id`;'\""),
]

PRINT_ENV = 'printf "%s\\n%s\\n" "$SOCKCAT_PEER" "$SOCKCAT_LOCAL"'


def peer_env(server: str, name: bytes) -> list[str]:
    """Connect to the abstract ``server`` from a socket bound to ``name``; the child's two lines (peer, local)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.bind(name)
        s.connect(b"\0" + server.encode())
        got = bytearray()
        while chunk := s.recv(4096):
            got += chunk
    lines = bytes(got).decode("utf-8").split("\n")  # escaped: printable, one line each
    assert len(lines) == 3 and lines[2] == "", got
    return lines[:2]


def test_hostile_unix_peer_names_reach_exec_children_escaped(procs: list[Proc], tmp_path: Path) -> None:
    """A Unix peer bound to a name with a newline, ``*``, ESC, NUL, invalid UTF-8 or shell syntax: the child gets
    SOCKCAT_PEER escaped on one printable line (a NUL would not even fit an environment), and the listener serves on.
    The listener's own name (the operator's, with an ESC and a newline) is escaped the same way in SOCKCAT_LOCAL."""
    stem = f"sc-lh-{os.getpid()}-{time.monotonic_ns()}"
    server, local = f"{stem}\x1b[1m\nx", f"unix:@{stem}\\x1b[1m\\x0ax"
    p, addr, _ = start(procs, tmp_path, "-v", "-k", "--sh-exec", PRINT_ENV, f"unix:@{server}")
    assert addr == local  # the listening line too: one line, escaped
    t0 = threads(p.p.pid)
    assert peer_env(server, b"\0warm") == ["unix:@warm", local]
    wait_until(lambda: not children(p.p.pid) and threads(p.p.pid) <= t0, "the warm-up child reaped")
    base = Usage(p.p.pid)
    for name, shown in HOSTILE_NAMES:
        assert peer_env(server, name) == [shown, local], name
    # a 107-byte name of random bytes (NULs and controls likely): still one printable line
    rng = random.Random(1)
    env = peer_env(server, b"\0" + bytes(rng.randrange(256) for _ in range(107)))
    assert env[0].startswith("unix:@") and env[0].isprintable() and env[1] == local
    # an unbound client has no name to give: an empty SOCKCAT_PEER
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(b"\0" + server.encode())
        assert s.recv(4096).split(b"\n")[0] == b""
    settled(p, base, "hostile names served")
    assert p.stderr_count("connection from unix:@\\x1b]0;pwned\\x07") == 1
    for line in no_traceback(p):
        assert line.isprintable(), line  # the -v log escapes the names too
    assert peer_env(server, b"\0honest") == ["unix:@honest", local]


@pytest.mark.parametrize(("name", "shown"), HOSTILE_NAMES[:4], ids=["newline", "star", "esc", "nul"])
def test_a_hostile_unix_peer_name_does_not_kill_a_one_shot_exec_listener(
    procs: list[Proc], tmp_path: Path, name: bytes, shown: str
) -> None:
    """Without -k: the one connection is served (its child gets the escaped name), the listener exits 0 after it,
    its log is one printable line per event and never a traceback."""
    server = f"sc-lh1-{os.getpid()}-{time.monotonic_ns()}"
    p, _, _ = start(procs, tmp_path, "-v", "--sh-exec", PRINT_ENV, f"unix:@{server}")
    assert peer_env(server, name) == [shown, f"unix:@{server}"]
    assert p.wait() == 0
    lines = no_traceback(p)
    assert all(x.isprintable() for x in lines), lines
    assert sum(f"connection from {shown} on unix:@{server}" in x for x in lines) == 1, lines
    assert sum(x.startswith("sockcat: closed ") for x in lines) == 1, lines


def test_a_unix_peer_path_with_controls_reaches_the_child_escaped(
    procs: list[Proc], tmp_path: Path, short_tmp: Path
) -> None:
    """A client bound to a socket *file* whose name holds a newline and an ESC, on a filesystem listener."""
    d = short_tmp
    p, _, _ = start(procs, tmp_path, "-k", "--sh-exec", PRINT_ENV, f"unix:{d}/srv")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.bind(f"{d}/c\n\x1b[31m*")
        s.connect(f"{d}/srv")
        got = bytearray()
        while chunk := s.recv(4096):
            got += chunk
    assert got.decode("ascii").split("\n")[:2] == [f"unix:{d}/c\\x0a\\x1b[31m*", f"unix:{d}/srv"]
    assert p.p.poll() is None


# --- --allow/--deny ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "served", "refused"),
    [
        (["--deny", "::ffff:127.0.0.1"], "::1", "127.0.0.1"),
        (["--deny", "::ffff:127.0.0.0/104"], "::1", "127.0.0.1"),
        (["--deny", "127.0.0.0/8"], "::1", "127.0.0.1"),
        (["--allow", "::ffff:127.0.0.1"], "127.0.0.1", "::1"),
        (["--allow", "127.0.0.0/8", "--deny", "::ffff:127.0.0.2"], "127.0.0.1", "127.0.0.2"),
    ],
    ids=["deny-mapped", "deny-mapped-net", "deny-v4", "allow-mapped", "deny-mapped-in-allowed"],
)
def test_ipv4_mapped_rules_on_a_dual_stack_listener(
    procs: list[Proc], tmp_path: Path, rules: list[str], served: str, refused: str
) -> None:
    """On ``tcp://[::]:0`` an IPv4 peer arrives as ``::ffff:a.b.c.d``: a rule in either form matches it. 100
    refused connections are closed at once, what they send never reaches stdout, descriptors come back."""
    p, addr, out = start(procs, tmp_path, "-v", "-k", *rules, "tcp://[::]:0")
    port, pid = port_of(addr), p.p.pid
    t0 = threads(pid)
    honest_line(port, out, served)
    quiesce(p, port, t0 + 1)
    base = Usage(pid)
    attackers: list[socket.socket] = []
    try:
        for i in range(100):
            s = socket.socket(socket.AF_INET if ":" not in refused else socket.AF_INET6)
            s.settimeout(TIMEOUT)
            s.bind((refused, 0))
            s.connect(("127.0.0.1" if ":" not in refused else "::1", port))
            attackers.append(s)
            try:
                s.sendall(f"attacker {i}\n".encode())
            except OSError:
                pass
        assert len(closed_by_peer(attackers, 100)) == 100
    finally:
        for s in attackers:
            reset(s)
    p.wait_stderr("not allowed by --allow/--deny", 100)
    assert p.stderr_count("not allowed by --allow/--deny") == 100
    assert b"attacker" not in out.read_bytes()
    settled(p, base, f"100 refused connections from {refused}")
    honest_line(port, out, served)


def test_udp_deny_drops_a_source_and_never_answers_it(procs: list[Proc], tmp_path: Path) -> None:
    """``listen udp://127.0.0.1:P --deny 127.0.0.2``: 200 denied sources send after an honest one. None of their
    payloads reaches stdout, and none of them becomes the peer that stdin answers: the honest sender does."""
    p, addr, out = start(procs, tmp_path, "-v", "--deny", "127.0.0.2", "udp://127.0.0.1:0")
    port, pid = port_of(addr), p.p.pid
    honest = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    honest.settimeout(TIMEOUT)
    honest.bind(("127.0.0.1", 0))
    attackers: list[socket.socket] = []
    try:
        honest.sendto(b"honest\n", ("127.0.0.1", port))
        wait_until(lambda: out.read_bytes() == b"honest\n", "the honest datagram on stdout")
        base = Usage(pid)
        for batch in range(4):  # in batches the socket buffer holds, each handled before the next
            for _ in range(50):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.2", 0))
                s.sendto(b"forged\n" * 10, ("127.0.0.1", port))
                attackers.append(s)
            p.wait_stderr("refused datagrams from udp://127.0.0.2", (batch + 1) * 50)  # every one handled
        assert p.p.stdin is not None
        p.p.stdin.write(b"reply\n")
        p.p.stdin.flush()
        assert honest.recv(100) == b"reply\n"  # the answer goes to the last *allowed* sender
        for s in attackers:
            assert select.select([s], [], [], 0)[0] == []
        now = Usage(pid)
        assert now.fds <= base.fds and now.rss - base.rss < MEMORY_GROWTH, (base, now)
        assert out.read_bytes() == b"honest\n"
        honest.sendto(b"honest again\n", ("127.0.0.1", port))
        wait_until(lambda: out.read_bytes() == b"honest\nhonest again\n", "the second honest datagram")
    finally:
        honest.close()
        for s in attackers:
            s.close()


@pytest.mark.parametrize("second", ["same", "wildcard"])
def test_a_second_udp_listen_on_a_busy_port_is_address_in_use(procs: list[Proc], tmp_path: Path, second: str) -> None:
    """A second ``listen udp://…:P`` (same address, or the wildcard over it) cannot steal the first one's datagrams:
    one error line, exit 1; the first one still gets every datagram."""
    p, addr, out = start(procs, tmp_path, "udp://127.0.0.1:0")
    port = port_of(addr)
    other = addr if second == "same" else f"udp://0.0.0.0:{port}"
    thief = Proc(sockcat("listen", other))
    procs.append(thief)
    assert thief.wait() == 1
    lines = no_traceback(thief)
    assert len(lines) == 1 and "address in use" in lines[0], lines
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"for the first\n", ("127.0.0.1", port))
    wait_until(lambda: out.read_bytes() == b"for the first\n", "the datagram on the first listener's stdout")
    assert p.p.poll() is None


# --- stopping -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exec_cmd", [None, "cat"], ids=["plain", "exec"])
def test_sighup_with_connections_held_removes_the_socket_file(
    procs: list[Proc], tmp_path: Path, short_tmp: Path, exec_cmd: str | None
) -> None:
    """SIGHUP while 20 idle clients are connected (and, with --exec, their children run): exit 0, no traceback,
    the Unix socket file removed, nothing listens any more. (An --exec child is the inetd kind: it lives on with
    its connection, and ends with it.)"""
    path = short_tmp / "l.sock"
    p, _, _ = start(procs, tmp_path, "-k", *(["--exec", exec_cmd] if exec_cmd else []), f"unix:{path}")
    pid = p.p.pid
    conns: list[socket.socket] = []
    kids: list[int] = []
    try:
        for _ in range(20):
            c = socket.socket(socket.AF_UNIX)
            c.settimeout(TIMEOUT)
            c.connect(str(path))
            conns.append(c)
        if exec_cmd:
            wait_until(lambda: len(children(pid)) == 20, "20 children")
            kids = children(pid)
        else:
            wait_until(lambda: threads(pid) >= 22, "20 connection threads (+ main and stdin)")
        p.p.send_signal(signal.SIGHUP)
        assert p.p.wait(TIMEOUT) == 0
        assert not path.exists()
        with socket.socket(socket.AF_UNIX) as s, pytest.raises(FileNotFoundError):
            s.connect(str(path))
    finally:
        for c in conns:
            c.close()  # (an --exec child's cat ends at this EOF)
    no_traceback(p)

    def gone(kid: int) -> bool:
        try:
            return Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    wait_until(lambda: all(gone(k) for k in kids), "the children ended with their connections")


# --- garbage ------------------------------------------------------------------------------------------------------


def test_garbage_binary_and_huge_lines_are_relayed_byte_for_byte(procs: list[Proc], tmp_path: Path) -> None:
    """``listen -k`` is a byte pipe: 8 MB without a newline, binary with every byte value, invalid UTF-8 and
    terminal escapes all reach stdout exactly, one client after another; memory stays bounded (streamed, not
    gathered into lines), and an honest line still gets through."""
    p, addr, out = start(procs, tmp_path, "-k", "tcp://127.0.0.1:0")
    port, pid = port_of(addr), p.p.pid
    honest_line(port, out)
    base = Usage(pid)
    rng = random.Random(7)
    payloads = [
        b"A" * (8 * MB),  # one huge "line"
        rng.randbytes(4 * MB),  # binary
        bytes(range(256)) * 4096,  # every byte value, NULs included
        b"\xff\xfe\xc0\x80\xed\xa0\x80" * 10000 + b"\x1b]0;x\x07\x1b[2J\r" * 10000,  # bad UTF-8, escapes
    ]
    expected = out.read_bytes()
    for data in payloads:
        with connect(port) as s:
            s.sendall(data)
        expected += data
        wait_until(grown_to(out, len(expected)), "the garbage on stdout", timeout=60)
        assert out.read_bytes() == expected
    settled(p, base, "garbage relayed")
    honest_line(port, out)


def test_garbage_instead_of_a_tls_client_hello(procs: list[Proc], tmp_path: Path) -> None:
    """A ``listen -k tls://`` listener fed 1 MB of random bytes, an HTTP request, and a truncated handshake by 20
    clients: each is dropped, nothing reaches stdout, descriptors come back; an honest TLS client then gets through."""
    p, addr, out = start(procs, tmp_path, "-k", "tls://127.0.0.1:0")
    port, pid = port_of(addr), p.p.pid
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def honest_tls() -> None:
        token = f"honest {time.monotonic_ns()}\n".encode()
        with ctx.wrap_socket(connect(port), server_hostname="localhost") as s:
            s.sendall(token)
        wait_until(lambda: token in out.read_bytes(), "the honest TLS line on stdout")

    t0 = threads(pid)
    honest_tls()
    quiesce(p, port, t0 + 1)
    base = Usage(pid)
    rng = random.Random(3)
    garbage = [rng.randbytes(MB), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\xff\xff" + b"\x01" * 100]
    conns = []
    try:
        for i in range(20):
            s = connect(port)
            conns.append(s)
            try:
                s.sendall(garbage[i % 3])
            except OSError:
                pass  # dropped while we still sent: fine
        # the 6 truncated handshakes wait for the rest (until the handshake timeout); the 14 others end at once
        assert len(closed_by_peer(conns, 14)) >= 14
    finally:
        for s in conns:
            reset(s)
    settled(p, base, "garbage instead of TLS")
    assert out.read_bytes().count(b"honest") == 1
    honest_tls()


# --- connection storms --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("exec_cmd", "count"), [(None, 300), ("cat", 100)], ids=["plain", "exec"])
def test_a_storm_of_short_connections_leaves_nothing_behind(
    procs: list[Proc], tmp_path: Path, exec_cmd: str | None, count: int
) -> None:
    """``count`` connections opened and closed as fast as a client can: a third closed politely, a third reset, a
    third after sending a line. Descriptors, threads and children all come back to the start."""
    args = ["-k", *(["--exec", exec_cmd] if exec_cmd else []), "tcp://127.0.0.1:0"]
    p, addr, out = start(procs, tmp_path, *args)
    port, pid = port_of(addr), p.p.pid
    t0 = threads(pid)
    if exec_cmd:
        assert through_cat(port, b"warm\n") == b"warm\n"
    else:
        honest_line(port, out)
    quiesce(p, port, t0 + (0 if exec_cmd else 1))
    base = Usage(pid)
    deadline = time.monotonic() + 60
    for i in range(count):
        assert time.monotonic() < deadline, f"only {i} of {count} connections within 60 s"
        s = connect(port)
        if i % 3 == 0:
            s.close()
        elif i % 3 == 1:
            reset(s)
        else:
            s.sendall(b"x\n")
            s.close()
    settled(p, base, f"{count} short connections")
    if exec_cmd:
        assert through_cat(port, b"honest\n") == b"honest\n"
    else:
        honest_line(port, out)


def test_several_clients_at_once_into_a_regular_file_lose_nothing(procs: list[Proc], tmp_path: Path) -> None:
    """``listen -k > file`` with 8 clients sending 300 lines each at the same time: every line lands whole. (With
    splice() into the shared file, concurrent connections could race on the file offset and overwrite each other:
    every write to a shared stdout now goes through write() under one lock.)"""
    p, addr, out = start(procs, tmp_path, "-k", "tcp://127.0.0.1:0")
    port = int(addr.rsplit(":", 1)[1])
    socks = [connect(port) for _ in range(8)]
    lines = {k: [f"client {k} line {i:04d} {'x' * 40}\n".encode() for i in range(300)] for k in range(8)}
    for i in range(0, 300, 20):  # interleaved batches: every connection has bytes in flight at once
        for k, s in enumerate(socks):
            s.sendall(b"".join(lines[k][i : i + 20]))
    for s in socks:
        s.close()
    total = sum(len(b) for v in lines.values() for b in v)
    wait_until(grown_to(out, total), f"{total} bytes in the file")
    got = out.read_bytes().splitlines(keepends=True)
    assert sorted(got) == sorted(b for v in lines.values() for b in v)
    assert p.p.poll() is None


def test_listen_help_lists_no_option_of_a_connecting_side() -> None:
    helptext = run_sockcat("listen", "--help").stdout.decode()
    for option in ("--connect-timeout", "--source", "--insecure", "--sni", "--pin "):
        assert option not in helptext, option  # ("--pin " : not --ping, a WebSocket option)
    for option in ("-w", "--insecure", "--sni"):
        r = run_sockcat("listen", option, "x", "tcp://127.0.0.1:0")
        assert r.returncode == 2, (option, r)
