"""relay and listen as an attacker meets them: forged datagram sources, idle connections by the hundred, peers with
hostile names. Each case checks that memory, descriptors and processes stay bounded, and that the listener still
serves an honest peer afterwards."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest
from conftest import TIMEOUT, Proc, sockcat, wait_until


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> int:
    """Child processes of ``pid``, whichever of its threads started them."""
    kids: set[str] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(f.read().split())
        except OSError:
            pass
    return len(kids)


@pytest.fixture
def udp_echo() -> object:
    """A UDP echo target on 127.0.0.1 (a thread), and a counter of what it saw."""
    import threading

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, sa = s.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if data != b"quiet":
                s.sendto(data, sa)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join()
    s.close()


def test_the_udp_relay_caps_sessions_per_source_network(procs: list[Proc], udp_echo: int) -> None:
    """1,500 one-datagram sources (all in 127.0.0.0/24): at most 256 sessions, so at most 256 more descriptors and
    ephemeral ports; an honest client still gets its answer; sessions that never got a reply go after 5 s."""
    relay = Proc(sockcat("-v", "relay", "udp://127.0.0.1:0", f"udp://127.0.0.1:{udp_echo}"))
    procs.append(relay)
    port = int(relay.read_listening().rsplit(":", 1)[1])
    # The relay's loop fully up: one session. The socket stays open to the end: closed, its port could be given to
    # one of the 1,500 sources, whose datagram would then go to this session, neither a new one nor refused.
    warm = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    warm.settimeout(TIMEOUT)
    warm.sendto(b"warm", ("127.0.0.1", port))
    assert warm.recv(10) == b"warm"
    before = fds(relay.p.pid)  # (with that one session)
    sources: list[socket.socket] = [warm]

    def handled() -> tuple[set[int], set[int]]:
        """Source ports the relay logged: a session for it, or a refusal (one line each, per datagram)."""
        opened, refused = set(), set()
        for x in relay.stderr_all(0.05):
            m = re.search(r"(session from|refused) udp://127\.0\.0\.1:(\d+)", x)
            if m and not x.endswith("closed"):
                (opened if m.group(1) == "session from" else refused).add(int(m.group(2)))
        return opened, refused

    try:
        for _batch in range(15):  # in batches the socket buffer holds, each handled before the next
            batch = []
            for _ in range(100):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", 0))
                sources.append(s)
                batch.append(s)
            waiting = batch
            deadline = time.monotonic() + 20
            while waiting:  # UDP may drop a datagram on a loaded machine: a source not yet heard from sends again
                assert time.monotonic() < deadline, f"{len(waiting)} sources never handled"
                for s in waiting:
                    s.sendto(b"quiet", ("127.0.0.1", port))  # the target never answers these
                opened, refused = handled()
                t_end = time.monotonic() + 2.0
                while (pending := [s for s in waiting if s.getsockname()[1] not in opened | refused]) and (
                    time.monotonic() < t_end
                ):
                    time.sleep(0.05)  # polling the log between resends, not waiting for a fixed time
                    opened, refused = handled()
                waiting = pending
        opened, refused = handled()
        assert len(opened) == 256 and len(refused) == 1500 - 255, (len(opened), len(refused))  # the warm one: 256th
        assert len({s.getsockname()[1] for s in sources}) == 1501  # (every source on a port of its own)
        assert fds(relay.p.pid) <= before + 255
    finally:
        for s in sources:
            s.close()
    # sessions whose target never answered are closed after 5 s, not the full 60 s
    wait_until(lambda: fds(relay.p.pid) <= before, "unanswered sessions closed", timeout=15)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as honest:
        honest.settimeout(TIMEOUT)
        honest.sendto(b"ping", ("127.0.0.1", port))
        assert honest.recv(100) == b"ping"


def test_the_udp_relay_total_cap(procs: list[Proc], udp_echo: int) -> None:
    relay = Proc(sockcat("relay", "udp://127.0.0.1:0", f"udp://127.0.0.1:{udp_echo}", "--max-conns", "3"))
    procs.append(relay)
    port = int(relay.read_listening().rsplit(":", 1)[1])
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        answered = 0
        for s in socks:
            s.settimeout(1.0)
            s.sendto(b"hi", ("127.0.0.1", port))
            try:
                answered += s.recv(10) == b"hi"
            except TimeoutError:
                pass
        assert answered == 3
    finally:
        for s in socks:
            s.close()


def test_listen_exec_caps_processes_by_default(procs: list[Proc]) -> None:
    """200 idle connections to `listen -k --exec`: at most 100 children (the default cap), the rest closed at once."""
    p = Proc(sockcat("listen", "-k", "--exec", "sleep 30", "tcp://127.0.0.1:0"))
    procs.append(p)
    port = int(p.read_listening().rsplit(":", 1)[1])
    conns = []
    try:
        for _ in range(200):
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        wait_until(lambda: children(p.p.pid) >= 100, "100 children")
        closed = 0
        for c in conns[100:]:
            c.settimeout(TIMEOUT)
            closed += c.recv(1) == b""  # past the cap: EOF at once, never a hang
        assert closed == 100
        assert children(p.p.pid) == 100
    finally:
        for c in conns:
            c.close()


def test_listen_keep_open_serves_on_after_many_idle_peers(procs: list[Proc], short_tmp: Path) -> None:
    p = Proc(sockcat("listen", "-k", "tcp://127.0.0.1:0"), stdout=None)
    procs.append(p)
    port = int(p.read_listening().rsplit(":", 1)[1])
    conns = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(300)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as honest:
            honest.sendall(b"still here\n")
    finally:
        for c in conns:
            c.close()
    wait_until(lambda: fds(p.p.pid) < 20, "the idle peers' sockets released")
