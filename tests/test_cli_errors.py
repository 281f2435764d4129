"""Every bad input to `sockcat connect` / `sockcat listen`: its exit status and ONE stderr line, never a traceback.

docs/reference.md#exit-statuses: 0 ok, 1 network/runtime failure, 2 usage error; errors are `sockcat: error: WHAT`
naming the address (host and port, or the socket path). docs/reference.md#addresses: malformed addresses quote the
whole address.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    TIMEOUT,
    Proc,
    accept_queue,
    free_port,
    peer_queues,
    queued_to_send,
    read_pipe,
    require,
    run_sockcat,
    sockcat,
    tcp_inodes,
    tcp_states,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


def one_error(result: subprocess.CompletedProcess[bytes], status: int) -> str:
    """Assert ``status`` and exactly one `sockcat: error: ` line on stderr (no traceback); return that line."""
    err = result.stderr.decode(errors="replace")
    assert result.returncode == status, f"status {result.returncode}, stderr: {err!r}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert lines[0].startswith("sockcat: error: "), lines[0]
    assert result.stdout == b""
    return lines[0]


# -- network failures: exit 1 -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_connection_refused(host: str) -> None:
    port = free_port(host=host)
    addr = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
    line = one_error(run_sockcat("connect", addr), 1)
    assert "refused" in line
    assert f"{host}]:{port}" in line if ":" in host else f"{host}:{port}" in line


def test_connection_refused_tls() -> None:
    port = free_port()
    line = one_error(run_sockcat("connect", "--insecure", f"tls://127.0.0.1:{port}"), 1)
    assert "refused" in line and f"127.0.0.1:{port}" in line


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A TCP port whose listener never accepts and whose accept queue is full: new SYNs get no answer."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    # the queue is full: one connection waits in it, and a later SYN went unanswered (SYN_SENT)
    wait_until(lambda: accept_queue(port) >= 1 and "02" in tcp_states(port, side="remote"), "the backlog is full")
    yield port
    for c in fillers:
        c.close()
    srv.close()


def test_connect_timeout(full_backlog: int) -> None:
    started = time.monotonic()
    result = run_sockcat("connect", "-w", "0.5", f"tcp://127.0.0.1:{full_backlog}")
    took = time.monotonic() - started
    line = one_error(result, 1)
    assert "timed out" in line
    assert f"127.0.0.1:{full_backlog}" in line
    assert took < 5.0, f"-w 0.5 took {took:.1f} s"


def test_tls_handshake_timeout_against_silent_server() -> None:
    """A plain TCP server that accepts and never speaks: the TLS handshake gives up after -w."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        started = time.monotonic()
        result = run_sockcat("connect", "--insecure", "-w", "0.7", f"tls://127.0.0.1:{port}")
        took = time.monotonic() - started
    line = one_error(result, 1)
    assert "timed out" in line
    assert f"127.0.0.1:{port}" in line
    assert took < 6.0


def _rst_server(srv: socket.socket, after: bytes | None) -> None:
    conn, _ = srv.accept()
    with conn:
        if after is not None:
            conn.sendall(after)
            # the client has read it (nothing left unacknowledged here, nothing unread there) before the reset
            wait_until(lambda: queued_to_send(conn) == 0 and peer_queues(conn)[1] == 0, "the client reads the data")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("greeting", [None, b"some data first\n"], ids=["at-once", "after-data"])
def test_connection_reset(greeting: bytes | None, procs: list[Proc]) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(10)
        port = srv.getsockname()[1]
        t = threading.Thread(target=_rst_server, args=(srv, greeting), daemon=True)
        t.start()
        client = Proc(sockcat("connect", f"tcp://127.0.0.1:{port}"), stdin=subprocess.PIPE)
        procs.append(client)
        t.join(10)
        # the RST has arrived before our stdin ends (a reset socket leaves the kernel's table)
        wait_until(lambda: not tcp_inodes(remote=port), "the reset reaches the client")
        out, err = client.communicate()
    result = subprocess.CompletedProcess(client.args, client.p.returncode, b"", err.encode())
    assert out == (greeting or b"")
    line = one_error(result, 1)
    assert "reset" in line
    assert f"127.0.0.1:{port}" in line


@pytest.mark.parametrize("kind", ["tcp", "udp", "tcp6"])
def test_port_in_use(kind: str) -> None:
    host = "::1" if kind == "tcp6" else "127.0.0.1"
    fam = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as holder:
        holder.bind((host, 0))
        if kind != "udp":
            holder.listen(1)
        port = holder.getsockname()[1]
        scheme = "udp" if kind == "udp" else "tcp"
        addr = f"{scheme}://[{host}]:{port}" if kind == "tcp6" else f"{scheme}://{host}:{port}"
        line = one_error(run_sockcat("listen", addr), 1)
    assert "address in use" in line
    assert f"{port}" in line and host in line


def test_permission_denied_low_port() -> None:
    """Root bypasses the check: drop CAP_NET_BIND_SERVICE (setpriv) to get a real EACCES on port 80."""
    setpriv = require("setpriv")
    result = subprocess.run(
        [setpriv, "--bounding-set", "-net_bind_service", *sockcat("listen", "tcp://127.0.0.1:80")],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )
    line = one_error(result, 1)
    assert "permission denied" in line
    assert "127.0.0.1:80" in line


def test_permission_denied_unix_directory(short_tmp: Path) -> None:
    """A directory chmod 000 and no CAP_DAC_OVERRIDE: binding a socket inside it is EACCES."""
    setpriv = require("setpriv")
    locked = short_tmp / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        result = subprocess.run(
            [
                setpriv,
                "--bounding-set",
                "-dac_override,-dac_read_search",
                *sockcat("listen", f"unix:{locked}/x.sock"),
            ],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=TIMEOUT,
        )
    finally:
        locked.chmod(0o755)
    line = one_error(result, 1)
    assert "permission denied" in line
    assert f"{locked}/x.sock" in line


def test_no_such_socket_file() -> None:
    line = one_error(run_sockcat("connect", "unix:/nonexistent-sockcat-dir/x.sock"), 1)
    assert "no such file" in line
    assert "/nonexistent-sockcat-dir/x.sock" in line


def test_no_such_socket_file_unixgram(short_tmp: Path) -> None:
    line = one_error(run_sockcat("connect", f"unixgram:{short_tmp}/absent.sock", input=b"x"), 1)
    assert "no such file" in line
    assert f"{short_tmp}/absent.sock" in line


def test_listen_in_missing_directory(short_tmp: Path) -> None:
    line = one_error(run_sockcat("listen", f"unix:{short_tmp}/nodir/x.sock"), 1)
    assert "no such file" in line
    assert f"{short_tmp}/nodir/x.sock" in line


def test_abstract_name_nobody_listens() -> None:
    name = f"sockcat-nobody-{os.getpid()}-{time.monotonic_ns()}"
    line = one_error(run_sockcat("connect", f"unix:@{name}"), 1)
    assert "refused" in line
    assert name in line


def test_connect_to_regular_file_is_refused(short_tmp: Path) -> None:
    f = short_tmp / "regular"
    f.write_text("not a socket")
    line = one_error(run_sockcat("connect", f"unix:{f}"), 1)
    assert str(f) in line


def test_listen_never_clobbers_a_regular_file(short_tmp: Path) -> None:
    f = short_tmp / "precious"
    f.write_text("keep me")
    line = one_error(run_sockcat("listen", f"unix:{f}"), 1)
    assert "address in use" in line and str(f) in line
    assert f.read_text() == "keep me"


def test_name_not_resolved() -> None:
    started = time.monotonic()
    result = run_sockcat("connect", "tcp://nosuchhost.invalid:80", timeout=20)
    took = time.monotonic() - started
    line = one_error(result, 1)
    assert "nosuchhost.invalid" in line
    assert took < 15.0


def test_source_address_not_available() -> None:
    """-s with an address this host does not have: bind fails (EADDRNOTAVAIL), exit 1 naming it."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        line = one_error(
            run_sockcat("connect", "-s", "tcp://192.0.2.1:0", f"tcp://127.0.0.1:{srv.getsockname()[1]}"), 1
        )
    assert "192.0.2.1" in line


# -- usage errors: exit 2 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "problem"),
    [
        ("tcp://[::1:80", "["),
        ("tcp://127.0.0.1:99999", "99999"),
        ("tcp://127.0.0.1", "port"),
        ("tcp://127.0.0.1:", "port"),
        ("bogus://x:1", "bogus"),
        ("tcp://127.0.0.1:nosuchservice", "nosuchservice"),
        ("tcp://127.0.0.1:-1", "-1"),
        ("unix:", "path"),
        ("udp://[::1]x:53", "x:53"),
        ("unix:/tmp/" + "a" * 120, "107"),
        ("tcp4://[::1]:80", "IPv4"),
        ("tcp6://127.0.0.1:80", "IPv6"),
        ("127.0.0.1:80", "scheme"),
    ],
)
@pytest.mark.parametrize("command", ["connect", "listen"])
def test_malformed_address(command: str, addr: str, problem: str) -> None:
    started = time.monotonic()
    line = one_error(run_sockcat(command, addr, timeout=10), 2)
    assert f"'{addr}'" in line, "the message must quote the whole address"
    assert problem in line.split(f"'{addr}'", 1)[1], f"the message must name the bad part ({problem!r})"
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    "args",
    [
        ["bogus-command"],
        ["connect", "tcp://127.0.0.1:1", "--bogus-option"],
        ["listen", "--no-such-flag", "tcp://127.0.0.1:0"],
        ["connect"],
        ["connect", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"],
        ["connect", "-w", "soon", "tcp://127.0.0.1:1"],
        ["connect", "-w", "-1", "tcp://127.0.0.1:1"],
        ["listen", "-i", "abc", "udp://127.0.0.1:0"],
        ["connect", "-"],
        ["listen", "stdio:"],
    ],
    ids=lambda a: " ".join(a),
)
def test_usage_errors(args: list[str]) -> None:
    one_error(run_sockcat(*args, timeout=10), 2)


def test_no_command_is_usage_error() -> None:
    """One line, like every other usage error: what is missing and what the choices are."""
    result = run_sockcat(timeout=10)
    line = one_error(result, 2)
    assert "COMMAND" in line and "connect" in line and "listen" in line and "--help" in line
    assert result.stdout == b""


@pytest.mark.parametrize(
    ("opt", "needle"),
    [("bogus=1", "bogus"), ("nodelay=abc", "abc"), ("rcvbuf=lots", "lots"), ("=1", "socket option")],
)
@pytest.mark.parametrize("command", ["connect", "listen"])
def test_bad_sockopt(command: str, opt: str, needle: str) -> None:
    addr = "tcp://127.0.0.1:1" if command == "connect" else "tcp://127.0.0.1:0"
    line = one_error(run_sockcat(command, "--sockopt", opt, addr, timeout=10), 2)
    assert needle in line


def test_sockopt_not_for_this_socket_kind(short_tmp: Path) -> None:
    line = one_error(run_sockcat("listen", "--sockopt", "nodelay=1", f"unix:{short_tmp}/n.sock", timeout=10), 2)
    assert "nodelay" in line
    assert not (short_tmp / "n.sock").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["connect", "--insecure", "tcp://127.0.0.1:1"],
        ["connect", "--ca", "/nonexistent.pem", "tcp://127.0.0.1:1"],
        ["connect", "--sni", "example.org", "tcp://127.0.0.1:1"],
        ["listen", "--cert", "/nonexistent.pem", "tcp://127.0.0.1:0"],
        ["listen", "--key", "/nonexistent.pem", "unix:/tmp/never-made.sock"],
        ["connect", "--insecure", "udp://127.0.0.1:1"],
    ],
    ids=lambda a: " ".join(a),
)
def test_tls_options_on_non_tls_address(args: list[str]) -> None:
    line = one_error(run_sockcat(*args, timeout=10), 2)
    assert "tls" in line.lower()


def test_listen_peer_resets(procs: list[Proc]) -> None:
    """The one bridged connection is reset by its client: exit 1, one line naming the peer."""
    server = Proc(sockcat("listen", "tcp://127.0.0.1:0"), stdin=subprocess.PIPE)
    procs.append(server)
    port = int(server.read_listening().rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        cport = c.getsockname()[1]
        c.sendall(b"abc")
        early = read_pipe(server.p.stdout, 3)  # the server has bridged the bytes before the reset
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    out, err = server.communicate()
    assert early + out == b"abc"
    lines = [line for line in err.splitlines() if not line.startswith("listening on ")]
    result = subprocess.CompletedProcess(server.args, server.p.returncode, b"", "\n".join(lines).encode())
    line = one_error(result, 1)
    assert "reset" in line
    assert f"127.0.0.1:{cport}" in line


# -- the test harness itself: Proc reads stderr on a thread --------------------------------------------

_CHATTY = (
    "import sys, time\n"
    "sys.stderr.write('warning one\\nlistening on tcp://127.0.0.1:1\\nafter one\\nafter two\\n')\n"
    "sys.stderr.flush()\n"
    "time.sleep(float(sys.argv[1]))\n"
    "sys.stderr.write('last\\n')\n"
)


def test_proc_read_listening_with_many_lines_at_once(procs: list[Proc]) -> None:
    """Several lines in one write: read_listening finds its line, the later ones stay readable, nothing is lost."""
    p = Proc([sys.executable, "-c", _CHATTY, "0.5"])
    procs.append(p)
    assert p.read_listening() == "tcp://127.0.0.1:1"
    assert p.stderr_lines == ["warning one", "listening on tcp://127.0.0.1:1"]
    assert p.p.stderr is not None
    assert p.p.stderr.readline() == b"after one\n"
    _, err = p.communicate()
    assert err.splitlines() == ["warning one", "listening on tcp://127.0.0.1:1", "after one", "after two", "last"]


def test_proc_stderr_pipe_has_everything_without_read_listening(procs: list[Proc]) -> None:
    p = Proc([sys.executable, "-c", _CHATTY, "0"])
    procs.append(p)
    assert p.wait() == 0
    assert p.p.stderr is not None
    assert p.p.stderr.read().decode().splitlines() == [
        "warning one",
        "listening on tcp://127.0.0.1:1",
        "after one",
        "after two",
        "last",
    ]
