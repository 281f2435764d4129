"""`sockcat connect` / `sockcat listen` over every stream kind, on real loopback sockets with real peers.

Covers docs/reference.md#addresses (stream addresses, Unix socket files) and #commands (connect/listen, half-close,
-k, signals, -v/--hexdump/--trace, -s, --sockopt). Peers: sockcat itself, socat, OpenBSD nc, ncat and plain sockets.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import (
    TCP_LISTEN,
    TIMEOUT,
    Proc,
    finish,
    free_port,
    held_open,
    port_of,
    queued_to_read,
    read_pipe,
    require,
    run_sockcat,
    sockcat,
    start_listen,
    tcp_sockets,
    wait_port,
    wait_until,
)

import sockcat as sc

pytestmark = pytest.mark.timeout(60)


# -- helpers -------------------------------------------------------------------------------------------


def _proc_net_listening(kind: str, port: int) -> bool:
    for name in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        try:
            rows = Path(name).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and (kind == "udp" or fields[3] == "0A"):
                return True
    return False


def _unix_listening(path: str) -> bool:
    for row in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = row.split()
        if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
            return True
    return False


def wait_peer(proc: Proc, *, port: int | None = None, path: str | None = None, timeout: float = 10.0) -> None:
    """Wait until a one-shot peer listener is listening, without connecting to it (that would use it up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            err = proc.p.stderr.read().decode(errors="replace") if proc.p.stderr else ""
            raise AssertionError(f"{proc.args} exited with {proc.p.returncode}: {err}")
        if (port is not None and _proc_net_listening("tcp", port)) or (path is not None and _unix_listening(path)):
            return
        time.sleep(0.02)  # pacing the checks, not waiting for an event
    raise AssertionError(f"{proc.args} is not listening after {timeout} s")


def stderr_clean(lines: list[str], *allowed: str) -> None:
    """Without -v, stderr holds only the allowed lines."""
    extra = [line for line in lines if not any(line.startswith(a) for a in allowed)]
    assert extra == [], f"unexpected stderr lines: {extra}"
    assert "Traceback" not in "\n".join(lines)


def abstract_name() -> str:
    return f"sockcat-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"


# -- every stream kind, sockcat on both ends -------------------------------------------------------------


STREAM_KINDS = ["tcp", "tcp4", "tcp6", "unix", "unix-abstract", "unixpacket", "tls"]


def _listen_spec(kind: str, tmp: Path) -> tuple[str, str, list[str]]:
    """(address to listen on, regex the `listening on` address must match, extra connect options)."""
    if kind == "tcp":
        return "tcp://127.0.0.1:0", r"tcp://127\.0\.0\.1:\d+", []
    if kind == "tcp4":
        return "tcp4://127.0.0.1:0", r"tcp4?://127\.0\.0\.1:\d+", []
    if kind == "tcp6":
        return "tcp6://[::1]:0", r"tcp6?://\[::1\]:\d+", []
    if kind == "unix":
        path = str(tmp / "s.sock")
        return f"unix:{path}", re.escape(f"unix:{path}"), []
    if kind == "unix-abstract":
        name = abstract_name()
        return f"unix:@{name}", re.escape(f"unix:@{name}"), []
    if kind == "unixpacket":
        path = str(tmp / "p.sock")
        return f"unixpacket:{path}", re.escape(f"unixpacket:{path}"), []
    if kind == "tls":
        return "tls://127.0.0.1:0", r"tls://127\.0\.0\.1:\d+", ["--insecure"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_connect_listen_both_ways(kind: str, procs: list[Proc], short_tmp: Path) -> None:
    listen_addr, pattern, extra = _listen_spec(kind, short_tmp)
    server_data = f"server says hi over {kind}\n".encode()
    client_data = f"client says hello over {kind}\n".encode() * 3
    server, bound = start_listen(procs, listen_addr, data=server_data)
    assert re.fullmatch(pattern, bound), bound
    if kind.startswith(("tcp", "tls")):
        port_of(bound)

    client = run_sockcat("connect", bound, *extra, input=client_data)

    assert client.returncode == 0, client.stderr
    assert client.stdout == server_data
    assert client.stderr == b""
    rc, out, err = finish(server)
    assert rc == 0, err
    assert out == client_data
    allowed = ["listening on ", "certificate sha256 "] if kind == "tls" else ["listening on "]
    stderr_clean(err, *allowed)
    assert sum(line.startswith("listening on ") for line in err) == 1
    if kind in ("unix", "unixpacket"):
        assert not os.path.exists(listen_addr.split(":", 1)[1]), "the listener left its socket file behind"


def test_unix_uri_form_and_relative_path(procs: list[Proc], short_tmp: Path) -> None:
    """`unix:///abs` is accepted and printed canonically; `unix:rel.sock` is relative to the cwd."""
    path = short_tmp / "uri.sock"
    server, bound = start_listen(procs, f"unix://{path}", data=b"uri\n")
    assert bound == f"unix:{path}"
    client = run_sockcat("connect", f"unix://{path}", input=b"x")
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"uri\n"
    assert finish(server)[:2] == (0, b"x")

    p = Proc(sockcat("listen", "unix:rel.sock"), stdin=subprocess.DEVNULL, cwd=short_tmp)
    procs.append(p)
    p.read_listening()
    assert (short_tmp / "rel.sock").exists()
    client2 = subprocess.run(
        sockcat("connect", "unix:rel.sock"), input=b"rel", capture_output=True, timeout=TIMEOUT, cwd=short_tmp
    )
    assert client2.returncode == 0, client2.stderr
    assert finish(p)[:2] == (0, b"rel")


# -- interop: sockcat connect -> real peer listeners -------------------------------------------------


def _peer_listener(tool: str, family: str, port: int, path: str) -> list[str]:
    exe = require(tool)
    if tool == "socat":
        where = {
            "tcp": f"TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr",
            "tcp6": f"TCP6-LISTEN:{port},bind=[::1],reuseaddr",
            "unix": f"UNIX-LISTEN:{path}",
        }[family]
        return [exe, "-t", "5", "-", where]
    if tool == "nc":
        return {
            "tcp": [exe, "-N", "-l", "127.0.0.1", str(port)],
            "tcp6": [exe, "-N", "-6", "-l", "::1", str(port)],
            "unix": [exe, "-N", "-lU", path],
        }[family]
    if tool == "ncat":
        return {
            "tcp": [exe, "-l", "127.0.0.1", str(port)],
            "tcp6": [exe, "-6", "-l", "::1", str(port)],
            "unix": [exe, "-lU", path],
        }[family]
    raise AssertionError(tool)


def _target(family: str, port: int, path: str) -> str:
    return {"tcp": f"tcp://127.0.0.1:{port}", "tcp6": f"tcp://[::1]:{port}", "unix": f"unix:{path}"}[family]


@pytest.mark.parametrize("family", ["tcp", "tcp6", "unix"])
@pytest.mark.parametrize("tool", ["socat", "nc", "ncat"])
def test_connect_to_peer_listener(tool: str, family: str, procs: list[Proc], short_tmp: Path) -> None:
    port = free_port(host="::1" if family == "tcp6" else "127.0.0.1")
    path = str(short_tmp / f"{tool}.sock")
    peer = Proc(_peer_listener(tool, family, port, path), stdin=subprocess.PIPE)
    procs.append(peer)
    assert peer.p.stdin is not None
    peer.p.stdin.write(f"hello from {tool}\n".encode())
    peer.p.stdin.close()
    peer.p.stdin = None
    wait_peer(peer, port=port if family != "unix" else None, path=path if family == "unix" else None)

    client = run_sockcat("connect", _target(family, port, path), input=b"hello from sockcat\n")

    assert client.returncode == 0, client.stderr
    assert client.stdout == f"hello from {tool}\n".encode()
    assert client.stderr == b""
    rc, out, err = finish(peer)
    assert out == b"hello from sockcat\n", err
    assert rc == 0, err


# -- interop: real peer clients -> sockcat listen ----------------------------------------------------


def _peer_client(tool: str, family: str, port: int, path: str) -> list[str]:
    exe = require(tool)
    if tool == "socat":
        where = {"tcp": f"TCP4:127.0.0.1:{port}", "tcp6": f"TCP6:[::1]:{port}", "unix": f"UNIX-CONNECT:{path}"}[family]
        return [exe, "-t", "5", "-", where]
    if tool == "nc":
        return {
            "tcp": [exe, "-N", "127.0.0.1", str(port)],
            "tcp6": [exe, "-N", "::1", str(port)],
            "unix": [exe, "-N", "-U", path],
        }[family]
    if tool == "ncat":
        return {
            "tcp": [exe, "127.0.0.1", str(port)],
            "tcp6": [exe, "-6", "::1", str(port)],
            "unix": [exe, "-U", path],
        }[family]
    raise AssertionError(tool)


@pytest.mark.parametrize("family", ["tcp", "tcp6", "unix"])
@pytest.mark.parametrize("tool", ["socat", "nc", "ncat"])
def test_peer_client_to_listen(tool: str, family: str, procs: list[Proc], short_tmp: Path) -> None:
    path = str(short_tmp / "l.sock")
    addr = {"tcp": "tcp://127.0.0.1:0", "tcp6": "tcp://[::1]:0", "unix": f"unix:{path}"}[family]
    server, bound = start_listen(procs, addr, data=b"hello from sockcat listen\n")
    port = port_of(bound) if family != "unix" else 0

    client = subprocess.run(
        _peer_client(tool, family, port, path),
        input=f"hello from {tool}\n".encode(),
        capture_output=True,
        timeout=TIMEOUT,
    )

    assert client.returncode == 0, client.stderr
    assert client.stdout == b"hello from sockcat listen\n"
    rc, out, err = finish(server)
    assert rc == 0, err
    assert out == f"hello from {tool}\n".encode()
    stderr_clean(err, "listening on ")


# -- bulk ------------------------------------------------------------------------------------------------


def test_64mib_random_payload_arrives_intact(procs: list[Proc], tmp_path: Path) -> None:
    src = tmp_path / "payload.bin"
    dst = tmp_path / "received.bin"
    with src.open("wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()

    with dst.open("wb") as out:
        server, bound = start_listen(procs, "tcp://127.0.0.1:0", stdout=out.fileno())
    with src.open("rb") as f:
        client = subprocess.run(sockcat("connect", bound), stdin=f, capture_output=True, timeout=TIMEOUT)
    assert client.returncode == 0, client.stderr
    assert client.stdout == b""
    rc, _, err = finish(server)
    assert rc == 0, err
    assert dst.stat().st_size == 64 << 20
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == digest


# -- half-close ------------------------------------------------------------------------------------------


def test_connect_half_close_reply_after_eof_from_socat(procs: list[Proc]) -> None:
    """A server that answers only once it has read EOF: the answer must still reach `sockcat connect`."""
    port = free_port()
    peer = Proc([require("socat"), f"TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr", "SYSTEM:sha256sum"])
    procs.append(peer)
    wait_peer(peer, port=port)
    data = os.urandom(200_000)

    client = run_sockcat("connect", f"tcp://127.0.0.1:{port}", input=data)

    assert client.returncode == 0, client.stderr
    assert client.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    peer.wait()


def test_connect_half_close_reply_after_eof_from_exec(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tcp://127.0.0.1:0", "--exec", "wc -c")
    client = run_sockcat("connect", bound, input=b"x" * 12345)
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == b"12345"
    assert finish(server)[0] == 0


def test_listen_with_stdin_at_eof_still_receives(procs: list[Proc]) -> None:
    """`sockcat listen </dev/null`: the client gets EOF at once but may keep sending; all of it arrives."""
    server, bound = start_listen(procs, "tcp://127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", port_of(bound)), timeout=10) as c:
        assert c.recv(100) == b"", "the client must see EOF: the listener's stdin is at EOF"
        for i in range(5):
            c.sendall(b"line %d after the server's EOF\n" % i)
            time.sleep(0.05)  # pacing: lines come one by one, not waiting for an event
        c.shutdown(socket.SHUT_WR)
    rc, out, err = finish(server)
    assert rc == 0, err
    assert out == b"".join(b"line %d after the server's EOF\n" % i for i in range(5))


def test_listen_stdin_eof_client_is_sockcat(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tcp://127.0.0.1:0")
    client = run_sockcat("connect", bound, input=b"payload for a mute server")
    assert client.returncode == 0, client.stderr
    assert client.stdout == b""
    rc, out, _ = finish(server)
    assert (rc, out) == (0, b"payload for a mute server")


# -- -k --------------------------------------------------------------------------------------------------


def test_keep_open_serves_three_clients_in_turn(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tcp://127.0.0.1:0", "-k")
    for i in range(3):
        client = run_sockcat("connect", bound, input=f"client {i}\n".encode())
        assert client.returncode == 0, client.stderr
    # the listener is still there for a fourth
    with socket.create_connection(("127.0.0.1", port_of(bound)), timeout=10) as c:
        c.sendall(b"client 3\n")
        c.shutdown(socket.SHUT_WR)
        assert c.recv(10) == b""
    # the listener is still there after the fourth has gone: a fifth is accepted
    with socket.create_connection(("127.0.0.1", port_of(bound)), timeout=10) as c:
        assert c.recv(10) == b"", "the fifth is served (the listener's stdin is at EOF)"
    assert server.p.poll() is None, "-k must keep accepting"
    server.p.send_signal(signal.SIGTERM)
    rc, out, err = finish(server)
    assert rc == 0, err
    assert out == b"client 0\nclient 1\nclient 2\nclient 3\n"


def test_keep_open_broadcasts_stdin(procs: list[Proc]) -> None:
    p = Proc(sockcat("listen", "-k", "tcp://127.0.0.1:0"), stdin=subprocess.PIPE)
    procs.append(p)
    port = port_of(p.read_listening())
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    try:
        # both are served (each one's bytes reach stdout only once it is among the broadcast's targets)
        for i, c in enumerate(clients):
            c.sendall(b"client %d\n" % i)
        assert sorted(read_pipe(p.p.stdout, 18).splitlines()) == [b"client 0", b"client 1"]
        assert p.p.stdin is not None
        p.p.stdin.write(b"to everyone\n")
        p.p.stdin.flush()
        for c in clients:
            got = b""
            while not got.endswith(b"\n"):
                chunk = c.recv(100)
                assert chunk, got
                got += chunk
            assert got == b"to everyone\n"
    finally:
        for c in clients:
            c.close()
    p.p.stdin.close()
    p.p.stdin = None
    assert p.terminate() == 0


def test_without_keep_open_listener_stops_accepting(procs: list[Proc]) -> None:
    p = Proc(sockcat("listen", "tcp://127.0.0.1:0"), stdin=subprocess.PIPE)
    procs.append(p)
    port = port_of(p.read_listening())
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        wait_until(lambda: not tcp_sockets(port, state=TCP_LISTEN), "the listener closes after its one client")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


# -- Unix socket files ------------------------------------------------------------------------------------


def test_stale_unix_socket_file_is_replaced(procs: list[Proc], short_tmp: Path) -> None:
    path = short_tmp / "stale.sock"
    first, _ = start_listen(procs, f"unix:{path}")
    first.p.kill()
    first.p.wait(5)
    assert path.exists(), "a SIGKILLed listener cannot remove its file"

    second, bound = start_listen(procs, f"unix:{path}", data=b"fresh\n")
    assert bound == f"unix:{path}"
    client = run_sockcat("connect", f"unix:{path}", input=b"hi")
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"fresh\n"
    rc, out, _ = finish(second)
    assert (rc, out) == (0, b"hi")
    assert not path.exists()


def test_live_unix_listener_is_address_in_use(procs: list[Proc], short_tmp: Path) -> None:
    path = short_tmp / "live.sock"
    first, _ = start_listen(procs, f"unix:{path}", "-k")
    second = run_sockcat("listen", f"unix:{path}", timeout=10)
    assert second.returncode == 1, second.stderr
    lines = second.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sockcat: error: ")
    assert "address in use" in lines[0]
    assert str(path) in lines[0]
    # the live listener and its file are untouched
    assert path.exists()
    client = run_sockcat("connect", f"unix:{path}", input=b"still alive")
    assert client.returncode == 0
    first.p.send_signal(signal.SIGTERM)
    rc, out, _ = finish(first)
    assert (rc, out) == (0, b"still alive")


@pytest.mark.parametrize("kind", ["unix", "unixpacket"])
def test_refused_second_listen_does_not_use_up_a_one_shot_listener(
    kind: str, procs: list[Proc], short_tmp: Path
) -> None:
    """The 'address in use' check must not connect: a one-shot listener would take that for its client."""
    path = short_tmp / "one.sock"
    first, _ = start_listen(procs, f"{kind}:{path}", data=b"")
    second = run_sockcat("listen", f"{kind}:{path}", timeout=10)
    assert second.returncode == 1, second.stderr
    lines = second.stderr.decode().splitlines()
    assert len(lines) == 1 and "address in use" in lines[0] and str(path) in lines[0], lines
    assert first.p.poll() is None, "the live listener took the check for a client"
    client = run_sockcat("connect", f"{kind}:{path}", input=b"the real client")
    assert client.returncode == 0, client.stderr
    rc, out, _ = finish(first)
    assert (rc, out) == (0, b"the real client")


# -- signals ----------------------------------------------------------------------------------------------


def test_sigterm_exits_0_and_removes_socket_file(procs: list[Proc], short_tmp: Path) -> None:
    path = short_tmp / "term.sock"
    server, _ = start_listen(procs, f"unix:{path}", "-k")
    assert path.exists()
    server.p.send_signal(signal.SIGTERM)
    rc, _, err = finish(server)
    assert rc == 0, err
    assert not path.exists()
    stderr_clean(err, "listening on ")


def test_sigterm_while_bridging_exits_0(procs: list[Proc], short_tmp: Path) -> None:
    path = short_tmp / "term2.sock"
    server, _ = start_listen(procs, f"unix:{path}")
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(path))
        c.sendall(b"partial")
        early = read_pipe(server.p.stdout, 7)  # the bridge is running: the bytes are through
        server.p.send_signal(signal.SIGTERM)
        rc, out, err = finish(server)
    assert rc == 0, err
    assert early + out == b"partial"
    assert not path.exists()


@pytest.mark.parametrize("addr", ["tcp://127.0.0.1:0", "unix"])
def test_sigint_exits_130(addr: str, procs: list[Proc], short_tmp: Path) -> None:
    if addr == "unix":
        addr = f"unix:{short_tmp / 'int.sock'}"
    server, _ = start_listen(procs, addr)
    server.p.send_signal(signal.SIGINT)
    rc, _, err = finish(server)
    assert rc == 130, err
    assert "Traceback" not in "\n".join(err)
    if addr.startswith("unix:"):
        assert not (short_tmp / "int.sock").exists()


def test_connect_sigterm_exits_0(procs: list[Proc]) -> None:
    # the listener's stdin stays open: its EOF would end the client on its own (after the upload grace)
    server = Proc(sockcat("listen", "-k", "tcp://127.0.0.1:0"), stdin=subprocess.PIPE)
    procs.append(server)
    bound = server.read_listening()
    client = Proc(sockcat("connect", bound), stdin=subprocess.PIPE)
    procs.append(client)
    assert client.p.stdin is not None
    client.p.stdin.write(b"connected\n")
    client.p.stdin.flush()
    assert read_pipe(server.p.stdout, 10) == b"connected\n"  # the client is bridging
    assert client.p.poll() is None
    client.p.send_signal(signal.SIGTERM)
    rc, _, err = finish(client)
    assert rc == 0, err


# -- diagnostics: -v, --hexdump, --trace, global options -------------------------------------------------


def test_verbose_logs_addresses_and_byte_counts(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-v", "tcp://127.0.0.1:0", data=b"0123456789")
    client = run_sockcat("connect", "-v", bound, input=b"abcde")
    assert client.returncode == 0
    cerr = client.stderr.decode()
    assert bound in cerr
    m = re.search(r"tcp://127\.0\.0\.1:(\d+)", cerr.replace(bound, ""))
    assert m, cerr
    client_port = int(m.group(1))
    assert re.search(r"\b5 bytes sent, 10 bytes received", cerr), cerr
    rc, out, err = finish(server)
    serr = "\n".join(err)
    assert rc == 0 and out == b"abcde"
    assert f"tcp://127.0.0.1:{client_port}" in serr, serr
    assert bound in serr.split("\n", 1)[1], "the connection log must name the local address"
    assert re.search(r"\b10 bytes sent, 5 bytes received", serr), serr
    assert "Traceback" not in serr


def test_verbose_names_an_unnamed_unix_peer_in_words(procs: list[Proc], short_tmp: Path) -> None:
    """A Unix client that never bound has no address to print: -v says so (with its pid), never a bare `unix:`."""
    path = short_tmp / "v.sock"
    server, bound = start_listen(procs, "-v", f"unix:{path}", data=b"hi")
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(TIMEOUT)
        c.connect(str(path))
        c.sendall(b"abc")
        c.shutdown(socket.SHUT_WR)
        while c.recv(1 << 16):
            pass
    rc, out, err = finish(server)
    assert (rc, out) == (0, b"abc"), err
    text = "\n".join(err)
    assert f"connection from unnamed unix peer (pid {os.getpid()}) on {bound}" in text, text
    assert f"closed unnamed unix peer (pid {os.getpid()}): 2 bytes sent, 3 bytes received" in text, text
    assert not re.search(r"\bunix:(\s|$|:)", text), text


def test_verbose_connect_from_an_unnamed_unix_socket(procs: list[Proc], short_tmp: Path) -> None:
    path = short_tmp / "vc.sock"
    server, bound = start_listen(procs, f"unix:{path}", data=b"")
    client = run_sockcat("connect", "-v", bound, input=b"x")
    assert client.returncode == 0, client.stderr
    cerr = client.stderr.decode()
    assert f"connected to {bound} from unnamed unix peer" in cerr, cerr
    assert not re.search(r"\bunix:(\s|$|:)", cerr), cerr
    assert finish(server)[0] == 0


@pytest.mark.parametrize("before", [True, False])
def test_global_options_before_or_after_command(before: bool, procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tcp://127.0.0.1:0", data=b"ok")
    args = ["-v", "--trace", "connect", bound] if before else ["connect", bound, "-v", "--trace"]
    client = subprocess.run(sockcat(*args), input=b"hi", capture_output=True, timeout=TIMEOUT)
    assert client.returncode == 0, client.stderr
    err = client.stderr.decode()
    assert "bytes sent" in err  # -v
    assert f"connect(('127.0.0.1', {port_of(bound)}))" in err  # --trace
    assert finish(server)[:2] == (0, b"hi")


def test_quiet_keeps_listening_line(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-q", "-v", "tcp://127.0.0.1:0")
    assert bound.startswith("tcp://127.0.0.1:")
    client = run_sockcat("-q", "connect", bound, input=b"q")
    assert client.returncode == 0
    assert client.stderr == b""
    rc, out, err = finish(server)
    assert (rc, out) == (0, b"q")
    stderr_clean(err, "listening on ")


def test_hexdump_shows_both_directions(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tcp://127.0.0.1:0", data=b"world")
    client = run_sockcat("connect", "--hexdump", bound, input=b"hello")
    assert client.returncode == 0
    assert client.stdout == b"world"  # the dump goes to stderr, never into the data
    err = client.stderr.decode()
    assert "68 65 6c 6c 6f" in err.lower() and "hello" in err
    assert "77 6f 72 6c 64" in err.lower() and "world" in err
    assert finish(server)[:2] == (0, b"hello")


def test_trace_shows_socket_calls(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tcp://127.0.0.1:0", data=b"abc")
    port = port_of(bound)
    client = run_sockcat("--trace", "connect", bound, input=b"xyz")
    assert client.returncode == 0
    err = client.stderr.decode().splitlines()
    assert all(re.match(r"\[fd \d+\] ", line) for line in err), err  # every line names its descriptor
    fd = re.match(r"\[fd (\d+)\] socket\(AF_INET, SOCK_STREAM\)", err[0])
    assert fd, err
    on = f"[fd {fd.group(1)}]"
    assert f"{on} connect(('127.0.0.1', {port}))" in err
    assert f"{on} shutdown(SHUT_WR)" in err
    assert f"{on} getpeername() -> ('127.0.0.1', {port})" in err
    # stdin and stdout are pipes here: the bytes move with splice, shown as that, on their descriptors
    # (into the socket it sends: printed as it starts, its result after)
    sent = next(i for i, line in enumerate(err) if re.fullmatch(rf"\[fd 0\] splice\(0 -> {fd.group(1)}, \d+\)", line))
    assert "[fd 0] splice -> 3 bytes" in err[sent + 1 :], err
    assert any(re.fullmatch(rf"{re.escape(on)} splice\({fd.group(1)} -> 1, \d+\) -> 3 bytes", line) for line in err)
    assert err[-1] == f"{on} close()"
    assert err.index(f"{on} connect(('127.0.0.1', {port}))") < err.index(f"{on} shutdown(SHUT_WR)")
    assert finish(server)[:2] == (0, b"xyz")


def test_trace_prints_a_send_before_the_answer_it_brings(procs: list[Proc]) -> None:
    """A call that sends is printed as it starts: an echo's answer (read by another thread) never comes first."""
    _p, bound = start_listen(procs, "-k", "tcp://127.0.0.1:0", "--sh-exec", "cat")
    for _ in range(5):
        client = run_sockcat("--trace", "connect", bound, input=b"ping\n")
        assert client.returncode == 0 and client.stdout == b"ping\n", client.stderr
        err = client.stderr.decode().splitlines()
        sent = next(i for i, line in enumerate(err) if re.search(r"\] splice\(0 -> \d+, \d+\)$", line))
        assert "[fd 0] splice -> 5 bytes" in err[sent + 1 :], err
        got = next(i for i, line in enumerate(err) if re.search(r"\] splice\(\d+ -> 1, \d+\) -> 5 bytes", line))
        assert sent < got, err


def test_trace_json_is_one_object_per_call(procs: list[Proc]) -> None:
    _server, bound = start_listen(procs, "tcp://127.0.0.1:0", data=b"abc")
    client = run_sockcat("--trace-json", "connect", bound, input=b"")
    assert client.returncode == 0, client.stderr
    calls = [json.loads(line) for line in client.stderr.decode().splitlines()]
    assert calls[0]["call"] == "socket" and calls[0]["args"] == "AF_INET, SOCK_STREAM"
    assert all(isinstance(c["fd"], int) for c in calls)
    assert {"call": "shutdown", "args": "SHUT_WR", "fd": calls[0]["fd"]} in calls
    refused = run_sockcat("--trace-json", "connect", f"tcp://127.0.0.1:{free_port()}", input=b"")
    assert refused.returncode == 1
    lines = refused.stderr.decode().splitlines()
    assert lines[-1].startswith("sockcat: error: ")  # the error line stays a line
    outcomes = [json.loads(line) for line in lines[:-1] if line.startswith("{")]
    assert any(o.get("call") == "connect" and o.get("error") == "ECONNREFUSED" for o in outcomes), outcomes


def test_trace_udp_shows_the_datagram_sent() -> None:
    port = free_port(socket.SOCK_DGRAM)
    r = run_sockcat("--trace", "connect", "-i", "0.5", f"udp://127.0.0.1:{port}", input=b"ping\n")
    err = r.stderr.decode().splitlines()
    assert any(re.fullmatch(r"\[fd \d+\] send\(5 bytes\)", line) for line in err), err


def test_trace_scan_shows_each_connect_ex() -> None:
    closed = free_port()
    r = run_sockcat("--trace", "scan", "127.0.0.1", str(closed))
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode().splitlines()
    assert any(re.fullmatch(rf"\[fd \d+\] connect_ex\(\('127.0.0.1', {closed}\)\)", line) for line in err), err
    assert any(line.endswith("ECONNREFUSED") for line in err), err  # at once, or from SO_ERROR
    assert "1 port scanned in" in r.stdout.decode()


def test_library_trace_block(short_tmp: Path) -> None:
    out = io.StringIO()
    with sc.trace(file=out):
        lst = sc.listen(f"unix:{short_tmp / 't.sock'}")
        with sc.connect(lst.address) as c, lst.accept() as s:
            c.sendall(b"hi")
            assert s.recv_exactly(2) == b"hi"
        lst.close()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("socket(AF_UNIX, SOCK_STREAM)")
    assert any(line.endswith("] sendall(2 bytes)") for line in lines), lines
    assert any(re.search(r"\] accept\(\) -> fd \d+ from '', connection \d+$", line) for line in lines), lines
    before = len(out.getvalue())
    with sc.listen("tcp://127.0.0.1:0"):  # outside the block: nothing more
        pass
    assert len(out.getvalue()) == before


class StderrPump:
    """Reads a process's stderr on a thread (Proc.read_listening stalls when many lines arrive at once)."""

    def __init__(self, p: Proc) -> None:
        self.p = p
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.p.p.stderr is not None
        for raw in self.p.p.stderr:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()

    def listening(self, timeout: float = TIMEOUT) -> str:
        with self.cond:
            found = self.cond.wait_for(
                lambda: any(line.startswith("listening on ") for line in self.lines), timeout=timeout
            )
            assert found, f"no 'listening on' line: {self.lines}"
            return next(line for line in self.lines if line.startswith("listening on "))[len("listening on ") :]

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, list[str]]:
        rc = self.p.wait(timeout)
        self.thread.join(timeout)
        return rc, self.lines


def test_trace_listen_shows_bind_listen_accept(procs: list[Proc]) -> None:
    p = Proc(sockcat("listen", "--trace", "tcp://127.0.0.1:0"))
    procs.append(p)
    pump = StderrPump(p)
    bound = pump.listening()
    port = port_of(bound)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        cport = c.getsockname()[1]
        c.shutdown(socket.SHUT_WR)
        c.recv(10)
    rc, err = pump.finish()
    assert rc == 0
    assert "[fd 3] bind(('127.0.0.1', 0))" in err
    assert any(re.fullmatch(r"\[fd 3\] listen\(\d+\)", line) for line in err), err
    accept = rf"\[fd 3\] accept\(\) -> fd \d+ from \('127.0.0.1', {cport}\), connection 1"
    assert any(re.fullmatch(accept, line) for line in err), err


def test_trace_names_so_reuseaddr(procs: list[Proc]) -> None:
    p = Proc(sockcat("listen", "--trace", "tcp://127.0.0.1:0"))
    procs.append(p)
    pump = StderrPump(p)
    pump.listening()
    p.p.send_signal(signal.SIGTERM)
    rc, err = pump.finish()
    assert rc == 0
    assert "[fd 3] setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)" in err, err


# -- -s/--source, --sockopt ---------------------------------------------------------------------------------


def test_source_address_is_bound_before_connect(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tcp://127.0.0.1:0", "--sh-exec", 'printf "%s" "$SOCKCAT_PEER"')
    source_port = free_port()
    client = run_sockcat("connect", "-s", f"tcp://127.0.0.1:{source_port}", bound, input=b"")
    assert client.returncode == 0, client.stderr
    assert client.stdout.decode() == f"tcp://127.0.0.1:{source_port}"
    assert finish(server)[0] == 0


def test_source_address_seen_by_plain_server() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(10)
        source_port = free_port()
        p = subprocess.Popen(
            sockcat("connect", "--source", f"tcp://127.0.0.1:{source_port}", f"tcp://127.0.0.1:{srv.getsockname()[1]}"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            conn, peer = srv.accept()
            with conn:
                assert peer == ("127.0.0.1", source_port)
        finally:
            p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0


@pytest.mark.parametrize("opt", ["nodelay=1", "keepalive=1", "sndbuf=65536", "rcvbuf=65536"])
def test_sockopt_is_applied(opt: str, procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tcp://127.0.0.1:0", "--sockopt", opt, data=b"pong")
    client = run_sockcat("--trace", "connect", "--sockopt", opt, bound, input=b"ping")
    assert client.returncode == 0, client.stderr
    assert client.stdout == b"pong"
    name = {"nodelay": "TCP_NODELAY", "keepalive": "SO_KEEPALIVE", "sndbuf": "SO_SNDBUF", "rcvbuf": "SO_RCVBUF"}
    key, value = opt.split("=")
    assert re.search(rf"setsockopt\(\w+, {name[key]}, {value}\)", client.stderr.decode()), client.stderr
    assert finish(server)[:2] == (0, b"ping")


# -- both directions at once, peer closing first, idle time-out -----------------------------------------


def test_simultaneous_bulk_both_ways(procs: list[Proc], tmp_path: Path) -> None:
    """8 MiB each way at the same time: no deadlock, nothing lost, on a Unix socket."""
    up, down = tmp_path / "up.bin", tmp_path / "down.bin"
    up.write_bytes(os.urandom(8 << 20))
    down.write_bytes(os.urandom(8 << 20))
    got_up, got_down = tmp_path / "got-up.bin", tmp_path / "got-down.bin"
    path = Path(f"/tmp/sc-bulk-{uuid.uuid4().hex[:10]}.sock")
    with down.open("rb") as sin, got_up.open("wb") as sout:
        server = Proc(sockcat("listen", f"unix:{path}"), stdin=sin.fileno(), stdout=sout.fileno())  # type: ignore[arg-type]
        procs.append(server)
        server.read_listening()
    with up.open("rb") as cin, got_down.open("wb") as cout:
        client = subprocess.run(
            sockcat("connect", f"unix:{path}"), stdin=cin, stdout=cout, stderr=subprocess.PIPE, timeout=TIMEOUT
        )
    assert client.returncode == 0, client.stderr
    assert finish(server)[0] == 0
    assert hashlib.sha256(got_up.read_bytes()).digest() == hashlib.sha256(up.read_bytes()).digest()
    assert hashlib.sha256(got_down.read_bytes()).digest() == hashlib.sha256(down.read_bytes()).digest()
    assert not path.exists()


def test_connect_ends_when_peer_closes_first(procs: list[Proc]) -> None:
    """The server says goodbye and closes while our stdin stays open: the client must not hang."""
    server, bound = start_listen(procs, "--sh-exec", "echo goodbye", "tcp://127.0.0.1:0")
    client = Proc(sockcat("connect", bound), stdin=subprocess.PIPE)
    procs.append(client)
    started = time.monotonic()
    rc = client.wait(10)
    assert rc == 0
    assert time.monotonic() - started < 5.0
    assert client.p.stdout is not None
    assert client.p.stdout.read() == b"goodbye\n"
    assert finish(server)[0] == 0


# -- the peer's EOF first: the upload is never cut ---------------------------------------------------------


EIGHT_MIB = 8 << 20


class SlowReader(threading.Thread):
    """A plain-socket peer that half-closes at once, stops reading for a while, then reads to EOF and hashes.

    Accepts on ``listener`` (server) or uses ``sock`` (client). ``pause`` is far above the 0.5 s a stalled
    upload used to be given after the peer's EOF.
    """

    def __init__(self, *, listener: socket.socket | None = None, sock: socket.socket | None = None) -> None:
        super().__init__(daemon=True)
        self.listener, self.sock = listener, sock
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = self.sock
            if conn is None:
                assert self.listener is not None
                conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                conn.shutdown(socket.SHUT_WR)
                time.sleep(1.5)  # pacing: a stall that outlasts the old 0.5 s grace, not waiting for an event
                while data := conn.recv(1 << 16):
                    self.digest.update(data)
                    self.size += len(data)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def result(self) -> tuple[int, str]:
        self.join(TIMEOUT)
        assert not self.is_alive(), "the peer is still reading"
        if self.error is not None:
            raise self.error
        return self.size, self.digest.hexdigest()


def _payload(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(EIGHT_MIB))
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("stdin", ["pipe", "file"])
def test_connect_upload_survives_the_peers_early_half_close(
    kind: str, stdin: str, procs: list[Proc], tmp_path: Path, short_tmp: Path
) -> None:
    """`cat bigfile | sockcat connect` to a peer that half-closes first and reads later: all 8 MiB arrive."""
    src, digest = _payload(tmp_path)
    if kind == "tcp":
        lsock = socket.create_server(("127.0.0.1", 0))
        target = f"tcp://127.0.0.1:{lsock.getsockname()[1]}"
    else:
        path = str(short_tmp / "half.sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(1)
        target = f"unix:{path}"
    with lsock:
        peer = SlowReader(listener=lsock)
        peer.start()
        with src.open("rb") as f:
            if stdin == "pipe":
                cat = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
                assert cat.stdout is not None
                client = Proc(sockcat("connect", target), stdin=cat.stdout.fileno())
                cat.stdout.close()
            else:
                client = Proc(sockcat("connect", target), stdin=f.fileno())
            procs.append(client)
        out, err = client.communicate(timeout=TIMEOUT)
        assert client.p.returncode == 0, err
        assert (out, err) == (b"", "")
        assert peer.result() == (EIGHT_MIB, digest)
        if stdin == "pipe":
            assert cat.wait(TIMEOUT) == 0


def test_listen_upload_survives_the_clients_early_half_close(procs: list[Proc], tmp_path: Path) -> None:
    """`sockcat listen < bigfile`: a client that half-closes first and reads later gets all 8 MiB."""
    src, digest = _payload(tmp_path)
    with src.open("rb") as f:
        server = Proc(sockcat("listen", "tcp://127.0.0.1:0"), stdin=f.fileno())
    procs.append(server)
    port = port_of(server.read_listening())
    peer = SlowReader(sock=socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
    peer.start()
    rc, out, err = finish(server)
    assert (rc, out) == (0, b""), err
    stderr_clean(err, "listening on ")
    assert peer.result() == (EIGHT_MIB, digest)


def test_connect_upload_to_a_peer_that_closed_is_an_error(procs: list[Proc], tmp_path: Path) -> None:
    """The peer closes (not half-closes) while 8 MiB are still coming: exit 1 with one line, never a silent 0."""
    src, _ = _payload(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]

        def close_early() -> None:
            conn, _ = lsock.accept()
            with conn:
                conn.recv(1000)
                # more of the upload waits unread, so the close resets the connection mid-upload
                wait_until(lambda: queued_to_read(conn) > 0, "more of the upload arrives")

        t = threading.Thread(target=close_early, daemon=True)
        t.start()
        with src.open("rb") as f:
            client = Proc(sockcat("connect", f"tcp://127.0.0.1:{port}"), stdin=f.fileno())
        procs.append(client)
        _, err = client.communicate(timeout=TIMEOUT)
        t.join(TIMEOUT)
    assert client.p.returncode == 1, err
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sockcat: error: ") and f"127.0.0.1:{port}" in lines[0], lines
    assert re.search(r"reset|broken pipe", lines[0]), lines


def test_connect_from_a_terminal_ends_at_the_peers_eof(procs: list[Proc]) -> None:
    """An interactive user (stdin a terminal that never reaches EOF) is not kept once the peer has closed."""
    import pty

    master, slave = pty.openpty()
    try:
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            port = lsock.getsockname()[1]
            client = Proc(sockcat("connect", f"tcp://127.0.0.1:{port}"), stdin=slave)
            procs.append(client)
            conn, _ = lsock.accept()
            with conn:
                conn.sendall(b"bye\n")
            out, err = client.communicate(timeout=TIMEOUT)
        assert client.p.returncode == 0, err
        assert out == b"bye\n"
    finally:
        os.close(slave)
        os.close(master)


def test_connect_slow_piped_upload_after_the_peers_half_close_is_not_cut(procs: list[Proc]) -> None:
    """A producer still writing (a line every 0.2 s) after the peer's half-close: every line arrives."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]
        producer = subprocess.Popen(
            ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i; sleep 0.2; done"], stdout=subprocess.PIPE
        )
        assert producer.stdout is not None
        client = Proc(sockcat("connect", f"tcp://127.0.0.1:{port}"), stdin=producer.stdout.fileno())
        producer.stdout.close()
        procs.append(client)
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            conn.shutdown(socket.SHUT_WR)
            got = b""
            while data := conn.recv(1 << 16):
                got += data
        _, err = client.communicate(timeout=TIMEOUT)
        assert producer.wait(TIMEOUT) == 0
    assert client.p.returncode == 0, err
    assert got == b"".join(b"line%d\n" % i for i in range(1, 11))


@pytest.mark.parametrize("side", ["connect", "listen"])
def test_stream_idle_timeout_closes(side: str, procs: list[Proc]) -> None:
    """-i S: a connection with no traffic either way for S seconds is closed; the command ends by itself."""
    if side == "connect":
        server, bound = start_listen(procs, "-k", "tcp://127.0.0.1:0")
        idle = Proc(sockcat("connect", "-i", "0.7", bound), stdin=subprocess.PIPE)
        procs.append(idle)
        other = server
    else:
        idle, bound = start_listen(procs, "-i", "0.7", "tcp://127.0.0.1:0")
        other = Proc(sockcat("connect", bound), stdin=subprocess.PIPE)
        procs.append(other)
    started = time.monotonic()
    rc = idle.wait(10)
    took = time.monotonic() - started
    assert rc == 0
    assert 0.5 <= took < 5.0, f"-i 0.7 ended after {took:.2f} s"
    assert other.p.poll() is None or other.p.returncode == 0


# -- --max-conns, --allow, --deny ---------------------------------------------------------------------------


def test_max_conns_extra_client_sees_eof(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-k", "--max-conns", "1", "tcp://127.0.0.1:0")
    port = port_of(bound)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
        first.sendall(b"first\n")
        head = read_pipe(server.p.stdout, 6)  # the first is served: it holds the one slot
        with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
            second.settimeout(5)
            try:
                assert second.recv(10) == b"", "past --max-conns a client is closed at once"
            except ConnectionResetError:
                pass
    # the slot is free again once the server closed the first connection (it releases it right after)
    wait_until(lambda: held_open(port) == 0, "the server closes both connections")
    client = run_sockcat("connect", bound, input=b"third\n")
    assert client.returncode == 0
    server.p.send_signal(signal.SIGTERM)
    rc, out, _ = finish(server)
    assert rc == 0
    assert head + out == b"first\nthird\n"


@pytest.mark.parametrize(
    ("rules", "admitted"),
    [
        (["--allow", "127.0.0.0/8"], True),
        (["--allow", "10.0.0.0/8"], False),
        (["--allow", "127.0.0.0/8", "--deny", "127.0.0.1/32"], False),
        (["--deny", "192.0.2.0/24"], True),
    ],
    ids=["allowed", "not-allowed", "deny-wins", "other-denied"],
)
def test_allow_deny(rules: list[str], admitted: bool, procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-k", *rules, "tcp://127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", port_of(bound)), timeout=10) as c:
        c.settimeout(5)
        try:  # a refused peer may be reset before it is done sending
            c.sendall(b"knock knock\n")
            c.shutdown(socket.SHUT_WR)
            assert c.recv(10) == b""
        except (ConnectionResetError, BrokenPipeError, OSError) as exc:
            assert not admitted, exc
    # whatever the server was to write of it is on stdout once it closed its end (it copies up to EOF first)
    wait_until(lambda: held_open(port_of(bound)) == 0, "the server is done with the connection")
    server.p.send_signal(signal.SIGTERM)
    rc, out, _ = finish(server)
    assert rc == 0
    assert out == (b"knock knock\n" if admitted else b"")


def test_listen_any_host_is_dual_stack(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "-k", "tcp://:0")
    port = port_of(bound)
    for host in ("127.0.0.1", "::1"):
        client = run_sockcat(
            "connect", f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}", input=host.encode() + b"\n"
        )
        assert client.returncode == 0, client.stderr
    wait_until(lambda: held_open(port) == 0, "the server is done with both connections")
    server.p.send_signal(signal.SIGTERM)
    rc, out, _ = finish(server)
    assert rc == 0
    assert out == b"127.0.0.1\n::1\n"


@pytest.mark.parametrize("who", ["listen", "connect"])
def test_sigint_while_bridging_exits_130(who: str, procs: list[Proc]) -> None:
    server = Proc(sockcat("listen", "tcp://127.0.0.1:0"), stdin=subprocess.PIPE)
    procs.append(server)
    bound = server.read_listening()
    client = Proc(sockcat("connect", bound), stdin=subprocess.PIPE)
    procs.append(client)
    assert client.p.stdin is not None
    client.p.stdin.write(b"mid-stream\n")
    client.p.stdin.flush()
    assert read_pipe(server.p.stdout, 11) == b"mid-stream\n"  # both are bridging
    target = server if who == "listen" else client
    target.p.send_signal(signal.SIGINT)
    rc = target.wait(10)
    assert rc == 130
    assert target.p.stderr is not None
    assert b"Traceback" not in target.p.stderr.read()


# -- interactive use: what arrives reaches stdout's reader at once, not when the next bytes come ---------------


def _read_with_deadline(stream: object, n: int, seconds: float) -> bytes:
    """Up to ``n`` bytes from a pipe, or b"" if nothing arrived within ``seconds``."""
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(stream.read1(n)), daemon=True)  # type: ignore[attr-defined]
    t.start()
    t.join(seconds)
    return got[0] if got else b""


def test_connect_reply_reaches_a_piped_stdout_while_the_connection_is_idle(procs: list[Proc]) -> None:
    """Splicing socket -> stdout pipe must not hold the pipe while waiting for more: the kernel keeps a
    blocked socket-to-pipe splice holding the pipe's lock, so the reader used to see the reply only when
    more data (or EOF) came. Here nothing more comes until the reply has been read."""
    require("socat")
    port = free_port()
    echo = Proc(["socat", f"TCP-LISTEN:{port},reuseaddr,fork", "PIPE"], stdout=subprocess.DEVNULL)
    procs.append(echo)
    wait_port(port)
    p = Proc(sockcat("connect", f"tcp://127.0.0.1:{port}"), stdin=subprocess.PIPE)
    procs.append(p)
    assert p.p.stdin is not None
    for line in (b"one\n", b"two\n"):
        p.p.stdin.write(line)
        p.p.stdin.flush()
        assert _read_with_deadline(p.p.stdout, 100, 5.0) == line
    p.p.stdin.close()
    p.p.stdin = None
    assert p.wait(TIMEOUT) == 0


def test_listen_data_reaches_a_piped_stdout_while_the_connection_is_idle(procs: list[Proc]) -> None:
    server, bound = start_listen(procs, "tcp://127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", port_of(bound)), timeout=TIMEOUT) as c:
        c.sendall(b"hello\n")
        assert _read_with_deadline(server.p.stdout, 100, 5.0) == b"hello\n"
