"""sockcat serve as an attacker meets it: connections past the cap, TLS handshakes that never finish or trickle a
byte at a time, silent and non-reading clients, UDP reflection attempts, forged sources, a stop signal mid-attack.

Every case runs a real ``sockcat serve`` process on loopback and plays the attacker with raw sockets. Each checks the
service's promise (README, "Security"; ``src/sockcat/engines/services/__init__.py``), that its descriptors
(``/proc/PID/fd``) and memory (``VmRSS``) stay bounded (measured before and after), and that it still serves an
honest client.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    TIMEOUT,
    Proc,
    accept_queue,
    closed_by_peer,
    ended,
    established,
    fd_count,
    port_of,
    reset,
    sockcat,
    wait_until,
)

MB = 1 << 20
MEMORY_GROWTH = 32 * MB  # what an attack may add to the server's resident memory
LINE = 74  # a chargen line: 72 characters and CRLF


# --- measuring the server ---------------------------------------------------------------------------------------


def rss(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS), in bytes."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settled(p: Proc, fds: int, mem: int, what: str, growth: int = MEMORY_GROWTH) -> None:
    """Wait until the server is back to ``fds`` descriptors; check its memory grew less than ``growth``."""
    pid = p.p.pid
    wait_until(lambda: fd_count(pid) <= fds, f"{what}: back to {fds} descriptors (now {fd_count(pid)})")
    grown = rss(pid) - mem
    assert grown < growth, f"{what}: resident memory grew by {grown // 1024} KiB"
    assert p.p.poll() is None, f"{what}: the server died"


# --- raw clients ------------------------------------------------------------------------------------------------


def start(procs: list[Proc], *args: str) -> tuple[Proc, str]:
    p = Proc(sockcat("serve", *args), stdout=subprocess.DEVNULL)
    procs.append(p)
    return p, p.read_listening()


def target(addr: str) -> tuple[int, str | tuple[str, int]]:
    """(family, connect address) for a listening line's address (tcp, tls, udp, unix)."""
    if addr.startswith("unix:"):
        return socket.AF_UNIX, addr[5:]
    host, port = addr.rsplit("//", 1)[1].rsplit(":", 1)
    host = host.strip("[]")
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, int(port))


def connect(addr: str, rcvbuf: int | None = None) -> socket.socket:
    fam, where = target(addr)
    s = socket.socket(fam)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(TIMEOUT)
    s.connect(where)
    return s


def refused_at_once(addr: str) -> bool:
    with connect(addr) as s:
        return ended(s, 5.0)


def echo_round_trip(addr: str, data: bytes = b"honest\r\n", ctx: ssl.SSLContext | None = None) -> None:
    """An honest client's bytes come back from an echo service."""
    s = connect(addr)
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    with s:
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(65536)
            assert chunk, f"EOF after {got!r}"
            got += chunk
        assert got == data


def chargen_lines(data: bytes) -> None:
    """``data`` (from the start of a stream) is whole chargen lines: 72 printable characters and CRLF each."""
    whole = data[: len(data) - len(data) % LINE]
    for i in range(0, len(whole), LINE):
        line = whole[i : i + LINE]
        assert line.endswith(b"\r\n") and line[:72].isascii() and bytes(line[:72]).decode().isprintable(), line


def client_tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the throwaway certificate: what is tested here is not its trust
    return ctx


def client_hello() -> bytes:
    """A real TLS ClientHello, as the first bytes a client sends."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_tls().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100
    return hello


def baseline(p: Proc, addr: str, service: str) -> tuple[int, int]:
    """(descriptors, resident memory) of the server once it has served one connection and let it go (its loop
    fully up), measured after that connection's descriptor is released."""
    pid = p.p.pid
    with connect(addr) as warm:
        if service == "echo":
            warm.sendall(b"warm")
            assert warm.recv(4) == b"warm"
        elif service == "chargen":
            assert warm.recv(LINE)
        else:
            wait_until(lambda: accept_queue(port_of(addr)) == 0 and established(port_of(addr)) > 0, "accepted")
        held = fd_count(pid)
    wait_until(lambda: fd_count(pid) < held, "the warm-up connection released")
    return fd_count(pid), rss(pid)


# --- connection caps ----------------------------------------------------------------------------------------------


def test_the_default_cap_is_10000_connections(procs: list[Proc]) -> None:
    """10,020 idle connections to ``serve echo`` with no --max-conns: 10,000 held, 20 closed at once; one
    descriptor each, memory within bounds; every descriptor back once they go, and an honest client served."""
    p, addr = start(procs, "echo", "tcp://127.0.0.1:0")
    port, pid = port_of(addr), p.p.pid
    fds, mem = baseline(p, addr, "echo")
    conns: list[socket.socket] = []
    deadline = time.monotonic() + 120
    try:
        for batch in range(21):  # in batches the accept queue holds, each taken before the next
            for _ in range(500 if batch < 20 else 20):
                conns.append(connect(addr))
            assert time.monotonic() < deadline, f"only {len(conns)} connections within 120 s"
            wait_until(lambda: accept_queue(port) == 0, "the batch accepted")
        closed = closed_by_peer(conns, 20)
        assert len(closed) == 20, f"{len(closed)} of 10,020 closed"
        assert refused_at_once(addr)  # (taken after every earlier one: none more was closed meanwhile)
        assert len(closed_by_peer(conns, 21, timeout=0.5)) == 20
        assert fd_count(pid) <= fds + 10_000 + 2
        assert rss(pid) - mem < 128 * MB, f"{(rss(pid) - mem) // MB} MB for 10,000 idle connections"
    finally:
        for c in conns:
            reset(c)
    settled(p, fds, mem, "10,020 connections gone", growth=128 * MB)
    echo_round_trip(addr)


@pytest.mark.parametrize(
    ("service", "args", "scheme"),
    [
        ("echo", [], "tcp"),
        ("echo", ["-v"], "tcp"),  # the counted path: admission in the protocol, per-connection bookkeeping
        ("discard", ["-i", "60"], "tcp"),
        ("chargen", [], "tcp"),
        ("echo", [], "unix"),
        ("chargen", ["-v"], "unix"),
    ],
    ids=["echo", "echo-verbose", "discard-idle", "chargen", "echo-unix", "chargen-unix-verbose"],
)
def test_max_conns_closes_the_extra_connections_at_once(
    procs: list[Proc], short_tmp: Path, service: str, args: list[str], scheme: str
) -> None:
    """``--max-conns 5`` and 25 connections: 5 served, 20 closed at once (a newcomer too, while they are held);
    one descriptor per held connection; all back after, and an honest client served."""
    where = f"unix:{short_tmp}/s.sock" if scheme == "unix" else "tcp://127.0.0.1:0"
    p, addr = start(procs, *args, "--max-conns", "5", service, where)
    pid = p.p.pid
    fds, mem = baseline(p, addr, service)
    conns: list[socket.socket] = []
    try:
        for _ in range(25):
            conns.append(connect(addr, rcvbuf=4096 if service == "chargen" else None))
        closed = closed_by_peer(conns, 20)
        assert len(closed) == 20, f"{len(closed)} of 25 closed past --max-conns 5"
        assert refused_at_once(addr)  # still full; and every earlier connection was handled before it
        assert len(closed_by_peer(conns, 21, timeout=0.3)) == 20
        kept = [conns[i] for i in range(25) if i not in closed]
        assert fd_count(pid) <= fds + 5
        for c in kept:  # the held ones are served
            if service == "echo":
                c.sendall(b"ping")
                assert c.recv(4) == b"ping"
            elif service == "chargen":
                chargen_lines(c.recv(LINE * 4))
            else:
                c.sendall(b"into the void" * 1000)
    finally:
        for c in conns:
            reset(c)
    settled(p, fds, mem, "the capped connections gone")
    if service == "echo":
        echo_round_trip(addr)
    else:
        with connect(addr) as honest:
            assert not ended(honest, 0.3) if service == "discard" else len(honest.recv(LINE)) > 0
    if "-v" in args:
        p.wait_stderr("--max-conns 5 reached", 21)


# --- TLS handshakes -----------------------------------------------------------------------------------------------


def test_tls_handshakes_trickled_a_byte_at_a_time_end_at_the_handshake_timeout(procs: list[Proc]) -> None:
    """``serve echo tls://… --max-conns 3``: three clients trickle a real ClientHello a byte every half second (it
    would take minutes). They fill the cap (a newcomer is closed at once, handshakes under way count) and are ended
    by the 10 s handshake timeout, not kept alive by the trickle; then an honest TLS client is served."""
    p, addr = start(procs, "--max-conns", "3", "echo", "tls://127.0.0.1:0")
    pid = p.p.pid
    ctx = client_tls()
    echo_round_trip(addr, ctx=ctx)
    wait_until(lambda: established(port_of(addr)) == 0, "the warm-up connection gone")
    fds, mem = fd_count(pid), rss(pid)
    hello = client_hello()
    slow = [connect(addr) for _ in range(3)]
    t0 = time.monotonic()
    ends: dict[int, float] = {}
    stop = threading.Event()

    def trickle() -> None:
        for i in range(len(hello)):  # one byte per socket every 0.5 s: pacing the attack
            for n, s in enumerate(slow):
                if n in ends:
                    continue
                try:
                    s.send(hello[i : i + 1])
                except OSError:
                    ends.setdefault(n, time.monotonic() - t0)
            if stop.wait(0.5):
                return

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        assert refused_at_once(addr)  # the cap is full of handshakes under way
        for n, s in enumerate(slow):
            assert ended(s, 20.0), f"trickling client {n} still connected after 20 s"
            ends.setdefault(n, time.monotonic() - t0)
    finally:
        stop.set()
        sender.join(5)
        for s in slow:
            reset(s)
    assert all(8.0 <= t <= 16.0 for t in ends.values()), f"ended after {ends} s (the handshake timeout is 10 s)"
    settled(p, fds, mem, "trickled handshakes")
    echo_round_trip(addr, ctx=ctx)


# --- idle timeout -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["echo", "discard", "chargen"])
def test_idle_timeout_ends_a_silent_client_but_not_a_talking_one(procs: list[Proc], service: str) -> None:
    """``-i 1``: a client that connects and says nothing is closed after about a second; one that sends a byte
    every 0.3 s for 2.5 s is not. (chargen: a client that reads is not idle; see the non-reader case below.)"""
    p, addr = start(procs, "-v", "-i", "1", service, "tcp://127.0.0.1:0")
    fds, mem = baseline(p, addr, service)
    talker = connect(addr)
    silent = None if service == "chargen" else connect(addr)
    t0 = time.monotonic()
    try:
        end = t0 + 2.5
        while time.monotonic() < end:  # pacing a slow but live client
            talker.sendall(b".")
            if service == "echo":
                assert talker.recv(1) == b"."
            elif service == "chargen":
                assert talker.recv(65536)
            time.sleep(0.3)
        if silent is not None:
            assert ended(silent, 10.0)
            assert 0.9 <= time.monotonic() - t0 <= 10.0
        talker.sendall(b".")  # still served after 2.5 s, well past the idle time
        if service == "echo":
            assert talker.recv(1) == b"."
        # and the server never took it for idle (a chargen reply still buffered would hide a close under way)
        talker_port = talker.getsockname()[1]
        assert not [x for x in p.stderr_all(0.1) if f":{talker_port}: idle" in x]
    finally:
        talker.close()
        if silent is not None:
            silent.close()
    settled(p, fds, mem, "idle clients")


@pytest.mark.parametrize("service", ["chargen", "echo"])
def test_idle_timeout_ends_a_client_that_never_reads(procs: list[Proc], service: str) -> None:
    """``-i 1`` and a client that never reads (chargen: it connects; echo: it sends 8 MB): nothing moves for a
    second, so the server closes it, and its descriptor goes, however full the client's window."""
    p, addr = start(procs, "-v", "-i", "1", service, "tcp://127.0.0.1:0")
    fds, mem = baseline(p, addr, service)
    s = connect(addr, rcvbuf=4096)
    try:
        if service == "echo":
            s.setblocking(False)
            sent, deadline = 0, time.monotonic() + 5
            while sent < 8 * MB and time.monotonic() < deadline:
                try:
                    sent += s.send(b"x" * 65536)
                except BlockingIOError:
                    select.select([], [s], [], 0.1)
        p.wait_stderr("idle for 1 s: closing")
        # the server said it closes it: its descriptor must go, though the client still reads nothing
        wait_until(lambda: fd_count(p.p.pid) <= fds, f"the non-reader's descriptor released ({fd_count(p.p.pid)})", 5)
    finally:
        reset(s)
    assert p.stderr_count("idle for 1 s: closing") == 1, "one close, logged once"
    settled(p, fds, mem, "a non-reader timed out")


# --- UDP ------------------------------------------------------------------------------------------------------------


def udp_ask(port: int, data: bytes, host: str = "127.0.0.1", source: str | None = None) -> bytes:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        if source is not None:
            s.bind((source, 0))
        s.sendto(data, (host, port))
        return s.recv(70000)


def test_udp_chargen_amplifies_little_and_echo_returns_exactly_the_request(procs: list[Proc]) -> None:
    """A spoofed source gets what its datagram provoked: chargen's reply to a 0-byte datagram is one line; to any
    datagram, no more than max(one line, the request) and never above 512 bytes. Echo returns the request exactly,
    0 bytes and 65,507 included; daytime one line."""
    chargen, caddr = start(procs, "chargen", "udp://127.0.0.1:0")
    _, eaddr = start(procs, "echo", "udp://127.0.0.1:0")
    _, daddr = start(procs, "daytime", "udp://127.0.0.1:0")
    cport, eport, dport = port_of(caddr), port_of(eaddr), port_of(daddr)
    fds, mem = fd_count(chargen.p.pid), rss(chargen.p.pid)
    first = udp_ask(cport, b"")
    assert 0 < len(first) <= LINE and first.endswith(b"\r\n") and first.count(b"\n") == 1, first
    for size in (0, 1, 10, 73, 74, 75, 200, 512, 513, 1400, 9000, 65507):
        reply = udp_ask(cport, b"q" * size)
        assert 0 < len(reply) <= min(512, max(LINE, size)), (size, len(reply))
        chargen_lines(reply)
    for _ in range(1000):  # a flood of empty datagrams: each gets one line, memory and descriptors flat
        assert len(udp_ask(cport, b"")) <= LINE
    assert fd_count(chargen.p.pid) <= fds and rss(chargen.p.pid) - mem < MEMORY_GROWTH
    for size in (0, 1, 1000, 65507):
        data = os.urandom(size)
        assert udp_ask(eport, data) == data
    day = udp_ask(dport, b"")
    assert day.endswith(b"\r\n") and day.count(b"\n") == 1 and len(day) < 80, day


def test_udp_allow_deny_per_source(procs: list[Proc]) -> None:
    """``--allow 127.0.0.0/8 --deny 127.0.0.2``: 500 datagrams from 500 ports of the denied address get no reply
    (each refusal is logged before the next datagram is read, so a reply would already be queued); allowed sources
    get theirs."""
    p, addr = start(procs, "-v", "--allow", "127.0.0.0/8", "--deny", "127.0.0.2", "echo", "udp://127.0.0.1:0")
    port, pid = port_of(addr), p.p.pid
    assert udp_ask(port, b"warm") == b"warm"
    fds, mem = fd_count(pid), rss(pid)
    attackers = []
    try:
        for batch in range(10):  # in batches the socket buffer holds, each handled before the next
            for _ in range(50):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.2", 0))
                s.sendto(b"reflect me", ("127.0.0.1", port))
                attackers.append(s)
            p.wait_stderr("refused udp://127.0.0.2", (batch + 1) * 50)  # every one handled
        poller = select.poll()
        for s in attackers:
            poller.register(s, select.POLLIN)
        assert poller.poll(0) == [], "a denied source got a reply"
    finally:
        for s in attackers:
            s.close()
    assert udp_ask(port, b"allowed", source="127.0.0.3") == b"allowed"
    assert udp_ask(port, b"honest") == b"honest"
    assert fd_count(pid) <= fds and rss(pid) - mem < MEMORY_GROWTH


@pytest.mark.parametrize("rule", ["::ffff:127.0.0.1", "127.0.0.1"])
def test_udp_deny_on_a_dual_stack_service_matches_ipv4_sources(procs: list[Proc], rule: str) -> None:
    """On ``udp://[::]:0`` an IPv4 source arrives as ``::ffff:127.0.0.1``: ``--deny`` in either form drops it;
    an IPv6 source is answered."""
    p, addr = start(procs, "-v", "--deny", rule, "echo", "udp://[::]:0")
    port = port_of(addr)
    assert udp_ask(port, b"v6", host="::1") == b"v6"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"v4", ("127.0.0.1", port))
        p.wait_stderr("refused udp://127.0.0.1:")
        assert not select.select([s], [], [], 0)[0], "the denied IPv4 source got a reply"
    assert udp_ask(port, b"v6 again", host="::1") == b"v6 again"


# --- slow readers -------------------------------------------------------------------------------------------------


def test_echo_to_clients_that_send_but_never_read(procs: list[Proc]) -> None:
    """10 clients send flat out for 3 s and read nothing: the server stops reading them (bounded memory), nothing
    is lost (each, reading at last, gets back exactly what it sent), and honest clients are served meanwhile."""
    p, addr = start(procs, "echo", "tcp://127.0.0.1:0")
    pid = p.p.pid
    fds, mem = baseline(p, addr, "echo")
    chunk = b"\xa5" * 65536
    clients = [connect(addr) for _ in range(10)]
    sent = [0] * 10
    peak = mem
    try:
        for c in clients:
            c.setblocking(False)
        end = time.monotonic() + 3
        while time.monotonic() < end:  # the attack: a bounded time, flat out
            _, writable, _ = select.select([], clients, [], 0.1)
            for c in writable:
                try:
                    sent[clients.index(c)] += c.send(chunk)
                except BlockingIOError:
                    pass
            peak = max(peak, rss(pid))
        assert peak - mem < MEMORY_GROWTH, f"{(peak - mem) // MB} MB held for clients that do not read"
        assert sum(sent) < 10 * 64 * MB, f"{sum(sent) // MB} MB taken in: the server never stopped reading"
        echo_round_trip(addr)  # served while the attack holds on
        got = [0] * 10
        for c in clients:
            c.shutdown(socket.SHUT_WR)
        live = list(clients)
        deadline = time.monotonic() + 60
        while live and time.monotonic() < deadline:
            readable, _, _ = select.select(live, [], [], 1.0)
            for c in readable:
                data = c.recv(1 << 20)
                if not data:
                    live.remove(c)
                else:
                    assert data.count(b"\xa5") == len(data)
                    got[clients.index(c)] += len(data)
        assert got == sent, "every byte echoed once read"
    finally:
        for c in clients:
            reset(c)
    settled(p, fds, mem, "non-reading echo clients")


def test_chargen_to_clients_that_never_read(procs: list[Proc]) -> None:
    """20 chargen clients with tiny receive windows never read for 3 s: the server writes only while a transport
    is not paused, so its memory stays flat; the stream, read at last, is still whole lines; honest clients served."""
    p, addr = start(procs, "chargen", "tcp://127.0.0.1:0")
    pid = p.p.pid
    fds, mem = baseline(p, addr, "chargen")
    clients = [connect(addr, rcvbuf=4096) for _ in range(20)]
    peak = mem
    try:
        end = time.monotonic() + 3
        while time.monotonic() < end:  # watching memory while the attack holds on
            peak = max(peak, rss(pid))
            time.sleep(0.05)
        assert peak - mem < MEMORY_GROWTH, f"{(peak - mem) // MB} MB held for clients that do not read"
        assert fd_count(pid) <= fds + 20
        with connect(addr) as honest:
            chargen_lines(honest.recv(LINE * 10))
        for c in clients:
            data = b""
            while len(data) < 256 * 1024:
                chunk = c.recv(256 * 1024 - len(data))
                assert chunk
                data += chunk
            chargen_lines(data)
    finally:
        for c in clients:
            reset(c)
    settled(p, fds, mem, "non-reading chargen clients")


# --- stopping -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_mid_attack_removes_the_socket_file_and_ends_the_workers(
    procs: list[Proc], short_tmp: Path, workers: int
) -> None:
    """SIGHUP while 20 chargen clients do not read and 20 more sit idle: exit 0 without a traceback, the Unix
    socket file removed, every worker gone, and every client sees its connection end."""
    path = short_tmp / "s.sock"
    p, addr = start(procs, "--workers", str(workers), "chargen", f"unix:{path}")
    stuck = [connect(addr, rcvbuf=4096) for _ in range(20)]
    idle = [connect(addr) for _ in range(20)]
    for c in idle:
        assert c.recv(LINE)  # served: accepted by a worker
    kids = [int(k) for k in Path(f"/proc/{p.p.pid}/task/{p.p.pid}/children").read_text().split()]
    assert len(kids) == workers - 1  # (the first process serves too)
    p.p.send_signal(signal.SIGHUP)
    assert p.p.wait(TIMEOUT) == 0
    assert not path.exists()

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    wait_until(lambda: all(gone(k) for k in kids), "every worker ended")
    try:
        for c in stuck + idle:  # each connection ends: EOF after what was queued, or a reset
            c.settimeout(TIMEOUT)
            try:
                while c.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass
    finally:
        for c in stuck + idle:
            c.close()
    lines = p.stderr_all(2.0)
    assert not any("Traceback" in x for x in lines), lines
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(FileNotFoundError):
        s.connect(str(path))
