"""The serving scaffold, as every listening command shows it: signals, socket files, the workers' bound."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TIMEOUT, Proc, accept_queue, run_sockcat, sockcat, wait_until

SERVERS = {
    "serve": lambda a: ["serve", "echo", a],
    "relay": lambda a: ["relay", a, "tcp://127.0.0.1:9"],
    "chat": lambda a: ["chat", a, "--db", ":memory:"],
    "recv": lambda a: ["recv", "-k", "--no-code", a, "-o", "/tmp"],
    "listen": lambda a: ["listen", "-k", a],
}


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=["HUP", "TERM", "INT"])
@pytest.mark.parametrize("command", list(SERVERS))
def test_a_stop_signal_ends_every_server_and_removes_its_socket_file(
    procs: list[Proc], short_tmp: Path, command: str, sig: signal.Signals
) -> None:
    path = short_tmp / f"{command}.sock"
    p = Proc(sockcat(*SERVERS[command](f"unix:{path}")))
    procs.append(p)
    assert p.read_listening() == f"unix:{path}" and path.exists()
    p.p.send_signal(sig)
    assert p.wait() == (130 if sig == signal.SIGINT else 0)  # closing the terminal (HUP) is a clean stop too
    assert not path.exists()


@pytest.mark.parametrize(
    ("command", "scheme"), [(c, "tcp") for c in SERVERS] + [(c, "tls") for c in ("serve", "relay", "chat")]
)
def test_every_server_listens_with_the_one_backlog(procs: list[Proc], command: str, scheme: str) -> None:
    """One backlog policy (4096, capped by somaxconn) for every server, whoever serves its connections: asyncio's
    create_server lists the socket again with its own default of 100 unless told (chat had 100)."""
    p = Proc(sockcat(*SERVERS[command](f"{scheme}://127.0.0.1:0")))
    procs.append(p)
    port = int(p.read_listening().rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):  # once one is accepted, serving has begun
        wait_until(lambda: accept_queue(port) == 0, "the server accepts")
    ss = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=TIMEOUT)
    backlogs = {int(row.split()[2]) for row in ss.stdout.splitlines()}  # a listener's Send-Q is its backlog
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert backlogs == {min(4096, somaxconn)}, ss.stdout


@pytest.mark.parametrize("command", ["serve", "relay", "bench"])
def test_workers_are_bounded(command: str) -> None:
    args = ["bench", "tcp://127.0.0.1:9"] if command == "bench" else SERVERS[command]("tcp://127.0.0.1:0")
    res = run_sockcat(*args, "--workers", "100000")
    assert res.returncode == 2 and b"--workers must be from 1 to" in res.stderr
    assert res.stderr.count(b"\n") == 1


@pytest.mark.parametrize("command", ["serve", "listen"])
def test_a_busy_udp_port_is_not_shared(procs: list[Proc], command: str) -> None:
    """A second UDP listener on a port another one serves is 'address in use', not a silent datagram thief."""
    args = ["serve", "echo"] if command == "serve" else ["listen"]
    first = Proc(sockcat(*args, "udp://127.0.0.1:0"))
    procs.append(first)
    addr = first.read_listening()
    res = run_sockcat(*args, addr)
    assert res.returncode == 1 and b"address in use" in res.stderr, res.stderr
    assert first.p.poll() is None


@pytest.mark.parametrize("command", list(SERVERS))
def test_allow_deny_on_a_unix_listener_is_a_usage_error(short_tmp: Path, command: str) -> None:
    res = run_sockcat(*SERVERS[command](f"unix:{short_tmp / 'x.sock'}"), "--allow", "10.0.0.0/8")
    assert res.returncode == 2 and b"--allow/--deny match IP addresses" in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("source", "target", "words"),
    [
        ("unix:/tmp/sc-x.sock", "tcp://127.0.0.1:9", b"of the same kind"),
        ("udp://127.0.0.1:0", "tcp://127.0.0.1:9", b"of the same kind"),
        ("tcp://[::1]:0", "tcp://127.0.0.1:9", b"address family"),
        ("tcp://127.0.0.1:0", "unix:/tmp/sc-nothing.sock", b"of the same kind"),
    ],
)
def test_a_source_of_another_kind_is_a_usage_error(source: str, target: str, words: bytes) -> None:
    res = run_sockcat("connect", "-s", source, target)
    assert res.returncode == 2 and words in res.stderr, res.stderr


def test_a_datagram_listener_applies_allow_deny_to_every_source_and_stops_on_hup(procs: list[Proc]) -> None:
    p = Proc(sockcat("-v", "listen", "udp://127.0.0.1:0", "--deny", "127.0.0.1"))
    procs.append(p)
    port = int(p.read_listening().rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"denied", ("127.0.0.1", port))
    deadline = time.monotonic() + 10
    while not any("refused datagrams from" in x for x in p.stderr_all(0.05)):
        assert time.monotonic() < deadline
    p.p.send_signal(signal.SIGHUP)
    assert p.wait() == 0
    assert p.p.stdout is not None and p.p.stdout.read() == b""  # the denied datagram never reached stdout


@pytest.mark.parametrize("command", list(SERVERS))
def test_connections_that_never_start_tls_count_against_max_conns(procs: list[Proc], command: str) -> None:
    """An attacker opens 30 TCP connections to a TLS listener with --max-conns 3 and never sends a ClientHello.
    Three are held (each until the 10 s handshake timeout); every other one is closed at once, whatever the
    listener: the cap counts connections from accept, not from the end of their handshake."""
    p = Proc(sockcat(*SERVERS[command]("tls://127.0.0.1:0"), "--max-conns", "3"))
    procs.append(p)
    host, port = p.read_listening().rsplit("/", 1)[1].rsplit(":", 1)
    silent = [socket.create_connection((host, int(port)), timeout=5) for _ in range(30)]
    try:
        closed = 0
        deadline = time.monotonic() + 3.0
        for s in silent:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
    finally:
        for s in silent:
            s.close()
    assert closed >= 27, f"{command}: only {closed} of 30 silent TLS connections closed past --max-conns 3"
    assert p.p.poll() is None


@pytest.mark.parametrize("extra", [[], ["--exec", "cat"]], ids=["hub", "exec"])
def test_listen_keep_open_times_out_silent_peers(procs: list[Proc], extra: list[str]) -> None:
    """``listen -k -i S`` closes a peer that sends nothing for S seconds (each connection on its own clock), also
    when an --exec child serves it; a peer that keeps talking stays."""
    p = Proc(sockcat("listen", "-k", "-i", "0.5", *extra, "tcp://127.0.0.1:0"), stdin=subprocess.PIPE)  # stdin open
    procs.append(p)
    host, port = p.read_listening().rsplit("/", 1)[1].rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as silent,
        socket.create_connection((host, int(port)), timeout=5) as talker,
    ):
        t0 = time.monotonic()
        closed_at = None
        while time.monotonic() - t0 < 3.0:  # the talker sends every 0.1 s: a paced client, not a wait
            talker.sendall(b"x\n")
            if extra:
                assert talker.recv(16) == b"x\n"  # cat answers: the talker is served
            if closed_at is not None:
                time.sleep(0.1)  # pacing the talker, not waiting for anything
                continue
            silent.settimeout(0.1)  # (also paces the talker while the silent one is open)
            try:
                if silent.recv(1) == b"":
                    closed_at = time.monotonic() - t0
            except TimeoutError:
                pass
            if closed_at is not None and time.monotonic() - t0 > closed_at + 1.0:
                break
        assert closed_at is not None and 0.4 <= closed_at <= 2.5, closed_at
        talker.sendall(b"still here\n")
        if extra:
            assert talker.recv(16) == b"still here\n"
    assert p.p.poll() is None


# A signal that lands after the main thread's last bytecode and before its blocking call interrupts nothing: Python's
# handler is pending while the call blocks. PyErr_SetInterruptEx, called from another thread once the main thread
# blocks, leaves a process in exactly that state (the C-level handler's work done, no system call cut short).
_PENDING_WHILE_BLOCKED = """
import ctypes, signal, socket, sys, threading
from sockcat.serving.process import handled_promptly
from sockcat.serving.scaffold import stopped_by_signals

CALLS = {"accept": (43, 288), "lock": (202,)}[sys.argv[1]]

def in_call():  # the system call the main thread is blocked in ("running" when it is not in one)
    call = open(f"/proc/self/task/{threading.main_thread().native_id}/syscall").read().split()[0]
    return int(call) if call.isdigit() else None

def pend_when_blocked():
    while not (blocking.is_set() and in_call() in CALLS):
        threading.Event().wait(0.01)
    ctypes.pythonapi.PyErr_SetInterruptEx(ctypes.c_int(signal.SIGTERM))

class Ended(BaseException):
    pass

def end(signum, frame):
    raise Ended()

blocking = threading.Event()
threading.Thread(target=pend_when_blocked, daemon=True).start()
if sys.argv[1] == "accept":
    with stopped_by_signals():
        with socket.create_server(("127.0.0.1", 0)) as s:
            blocking.set()
            s.accept()
else:
    try:
        with handled_promptly({signal.SIGTERM: end}):
            lock = threading.Lock()
            lock.acquire()
            blocking.set()
            lock.acquire()
    except Ended:
        pass
print("ended")
"""


@pytest.mark.parametrize("blocked_in", ["accept", "lock"])
def test_a_stop_signal_pending_while_the_main_thread_blocks_still_ends_it(blocked_in: str) -> None:
    p = subprocess.run(
        [sys.executable, "-c", _PENDING_WHILE_BLOCKED, blocked_in],
        capture_output=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert (p.returncode, p.stdout, p.stderr) == (0, b"ended\n", b"")
