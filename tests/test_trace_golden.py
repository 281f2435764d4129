"""Golden traces: the whole ``--trace`` of a connection, call by call, in order (docs/reference.md#trace).

Each scenario is made causal, so that its trace has one right order: a peer answers only once it has read what it
answers. Descriptors are named by first appearance (``S1``, ``S2``… for sockets; 0, 1 and 2 stay), ports the same
way (``P1``…; port 0 stays), so a trace that puts a call on the wrong socket, or the wrong port in an address, fails.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TIMEOUT, Proc, port_of, run_sockcat, sockcat

# How every listener here starts: a TCP socket on 127.0.0.1 port 0 (the kernel picks a port, getsockname learns it).
LISTENING = [
    "[fd S1] socket(AF_INET, SOCK_STREAM)",
    "[fd S1] setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)",
    "[fd S1] bind(('127.0.0.1', 0))",
    "[fd S1] getsockname() -> ('127.0.0.1', P1)",
    "[fd S1] listen(4096)",
]


def normalised(text: str) -> list[str]:
    """The ``[fd …]`` lines of ``text``, descriptors and ports named by first appearance."""
    fds = {"0": "0", "1": "1", "2": "2"}
    ports: dict[str, str] = {}

    def fd(n: str) -> str:
        return fds.setdefault(n, f"S{len(fds) - 2}")

    def port(m: re.Match[str]) -> str:
        if m.group(2) == "0":
            return m.group(0)
        return f"{m.group(1)}, {ports.setdefault(m.group(2), f'P{len(ports) + 1}')})"

    out = []
    for line in text.splitlines():
        if line.startswith("[fd "):
            line = re.sub(r"\bfd (\d+)", lambda m: f"fd {fd(m.group(1))}", line)
            line = re.sub(r"splice\((\d+) -> (\d+)", lambda m: f"splice({fd(m.group(1))} -> {fd(m.group(2))}", line)
            out.append(re.sub(r"(\('[0-9a-f.:]+'), (\d+)\)", port, line))
    return out


def serve_one(listener: socket.socket, handle: Callable[[socket.socket], None]) -> threading.Thread:
    """A peer on a thread: accepts one connection, hands it to ``handle``, closes it."""

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            handle(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def answer_after_eof(conn: socket.socket) -> None:
    """Read the connection to its end, then answer ``answer:`` and what was read."""
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    conn.sendall(b"answer:" + data)


def echo(conn: socket.socket) -> None:
    """Echo chunk by chunk, until the end."""
    while chunk := conn.recv(4096):
        conn.sendall(chunk)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_golden_connect_stream(kind: str, short_tmp: Path) -> None:
    if kind == "tcp":
        listener = socket.create_server(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        made = [
            "[fd S1] socket(AF_INET, SOCK_STREAM)",
            "[fd S1] settimeout(None)",
            "[fd S1] connect(('127.0.0.1', P1))",
            "[fd S1] getsockname() -> ('127.0.0.1', P2)",
            "[fd S1] getpeername() -> ('127.0.0.1', P1)",
        ]
    else:
        path = str(short_tmp / "golden.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen()
        address = f"unix:{path}"
        made = [
            "[fd S1] socket(AF_UNIX, SOCK_STREAM)",
            "[fd S1] settimeout(None)",
            f"[fd S1] connect('{path}')",
            "[fd S1] getsockname() -> ''",  # a client's Unix socket has no name
            f"[fd S1] getpeername() -> '{path}'",
        ]
    with listener:
        peer = serve_one(listener, answer_after_eof)
        r = run_sockcat("--trace", "connect", address, input=b"question")
        peer.join(TIMEOUT)
    assert (r.returncode, r.stdout) == (0, b"answer:question"), r.stderr
    assert normalised(r.stderr.decode()) == [
        *made,
        "[fd S1] settimeout(None)",
        # stdin and stdout are pipes: the bytes move by splice, straight from one descriptor to the other
        "[fd 0] splice(0 -> S1, 1048576)",
        "[fd 0] splice -> 8 bytes",
        "[fd 0] splice(0 -> S1, 1048576)",
        "[fd 0] splice -> 0 bytes",
        "[fd S1] shutdown(SHUT_WR)",
        "[fd S1] splice(S1 -> 1, 1048576) -> 15 bytes",
        "[fd S1] splice(S1 -> 1, 1048576) -> 0 bytes",
        "[fd S1] close()",
    ]


def test_golden_connect_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer_sock:
        peer_sock.bind(("127.0.0.1", 0))
        peer_sock.settimeout(TIMEOUT)

        def pong() -> None:
            data, sender = peer_sock.recvfrom(100)
            peer_sock.sendto(b"pong:" + data, sender)

        peer = threading.Thread(target=pong, daemon=True)
        peer.start()
        r = run_sockcat(
            "--trace", "connect", "-i", "1", f"udp://127.0.0.1:{peer_sock.getsockname()[1]}", input=b"ping\n"
        )
        peer.join(TIMEOUT)
    assert (r.returncode, r.stdout) == (0, b"pong:ping\n"), r.stderr
    assert normalised(r.stderr.decode()) == [
        "[fd S1] socket(AF_INET, SOCK_DGRAM)",
        "[fd S1] settimeout(None)",
        "[fd S1] connect(('127.0.0.1', P1))",  # a datagram socket's connect only sets where sends go
        "[fd S1] settimeout(None)",
        "[fd S1] getsockname() -> ('127.0.0.1', P2)",
        "[fd S1] settimeout(None)",
        "[fd S1] send(5 bytes)",  # one line of stdin, one datagram
        "[fd S1] recv(65508) -> 10 bytes",  # the largest datagram IPv4 carries
        "[fd S1] close()",  # after a second with nothing more (-i 1)
    ]


def test_golden_listen_tcp() -> None:
    p = Proc(sockcat("--trace", "listen", "tcp://127.0.0.1:0"), stdin=subprocess.PIPE)
    assert p.p.stdin is not None
    p.p.stdin.close()  # nothing to send: the listener ends its side at once
    port = port_of(p.read_listening())
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
        assert c.recv(100) == b""  # the listener's end first, then ours: one order only
        c.sendall(b"hello")
        c.shutdown(socket.SHUT_WR)
        assert c.recv(100) == b""
    out, err = p.communicate()
    assert (p.p.returncode, out) == (0, b"hello"), err
    assert normalised(err) == [
        *LISTENING,
        "[fd S1] accept() -> fd S2 from ('127.0.0.1', P2), connection 1",
        "[fd S2] settimeout(None)",
        "[fd S2] getsockname() -> ('127.0.0.1', P1)",
        "[fd S1] close()",  # one connection: the listener closes once it has it
        "[fd 0] splice(0 -> S2, 1048576)",
        "[fd 0] splice -> 0 bytes",
        "[fd S2] shutdown(SHUT_WR)",
        "[fd S2] splice(S2 -> 1, 1048576) -> 5 bytes",
        "[fd S2] splice(S2 -> 1, 1048576) -> 0 bytes",
        "[fd S2] close()",
    ]


def test_golden_relayed_connection(procs: list[Proc]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        peer = serve_one(upstream, echo)
        p = Proc(sockcat("--trace", "relay", "tcp://127.0.0.1:0", f"tcp://127.0.0.1:{upstream.getsockname()[1]}"))
        procs.append(p)
        port = port_of(p.read_listening())
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
            c.sendall(b"hello")
            got = b""
            while len(got) < 5:
                got += c.recv(100)
            c.shutdown(socket.SHUT_WR)  # only once the echo came back: one order only
            assert (got, c.recv(100)) == (b"hello", b"")
        p.wait_stderr("close()", count=2)
        peer.join(TIMEOUT)
    assert p.terminate() == 0
    assert normalised("\n".join(p.stderr_all())) == [
        *LISTENING,
        "[fd S1] setblocking(False)",
        "[fd S1] accept() -> fd S2 from ('127.0.0.1', P2), connection 1",
        "[fd S1] accept() -> EAGAIN (Resource temporarily unavailable)",  # nobody else waits: back to the loop
        "[fd S2] setblocking(False)",
        "[fd S3] socket(AF_INET, SOCK_STREAM)",  # the upstream connection, made for this client
        "[fd S3] setblocking(False)",
        "[fd S3] connect(('127.0.0.1', P3))",
        "[fd S3] connect -> EINPROGRESS (Operation now in progress)",
        "[fd S3] getsockopt(SOL_SOCKET, SO_ERROR) -> 0",  # the loop says it is writable: connected
        "[fd S2] setblocking(False)",
        "[fd S2] getsockname() -> ('127.0.0.1', P1)",
        "[fd S2] getpeername() -> ('127.0.0.1', P2)",
        "[fd S3] setblocking(False)",
        "[fd S3] getsockname() -> ('127.0.0.1', P4)",
        "[fd S3] getpeername() -> ('127.0.0.1', P3)",
        "[fd S2] recv(65536) -> 5 bytes",
        "[fd S3] send(5 bytes)",
        "[fd S3] recv(65536) -> 5 bytes",
        "[fd S2] send(5 bytes)",
        "[fd S2] recv(65536) -> 0 bytes",  # the client's end...
        "[fd S3] shutdown(SHUT_WR)",  # ...passed on upstream
        "[fd S3] recv(65536) -> 0 bytes",
        "[fd S2] shutdown(SHUT_WR)",
        "[fd S2] close()",
        "[fd S3] close()",
        "[fd S1] close()",  # SIGTERM
    ]


@pytest.mark.parametrize("ending", ["close_notify", "abrupt"])
def test_golden_served_tls_connection(ending: str, procs: list[Proc]) -> None:
    """A TLS listener accepts on its traced socket itself: one accept line, then the handshake's outcome. The end
    of the stream shows whether or not the client said close_notify first."""
    p = Proc(sockcat("--trace", "serve", "echo", "tls://127.0.0.1:0"))
    procs.append(p)
    port = port_of(p.read_listening())
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, ctx.wrap_socket(raw) as c:
        c.sendall(b"hi")
        assert c.recv(100) == b"hi"
        version, cipher = c.version(), c.cipher()
        plain = c.unwrap() if ending == "close_notify" else c  # (an SSLSocket's shutdown() sends no close_notify)
        plain.shutdown(socket.SHUT_WR)
        while plain.recv(100):  # what the server sends at its end, to its end
            pass
    p.wait_stderr("close()")
    assert p.terminate() == 0
    assert normalised("\n".join(p.stderr_all())) == [
        *LISTENING,
        "[fd S1] setblocking(False)",
        "[fd S1] accept() -> fd S2 from ('127.0.0.1', P2), connection 1",
        "[fd S2] setblocking(False)",
        f"[fd S2] tls handshake -> {version} {cipher}",
        "[fd S2] recv() -> 2 bytes",
        "[fd S2] send(2 bytes)",
        "[fd S2] recv() -> 0 bytes",
        "[fd S2] close()",
        "[fd S1] close()",
    ]
