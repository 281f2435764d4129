"""WebSocket as an address kind (docs/websocket.md): ws://, wss:// and ws+unix: with the library, connect, listen
(websocketd style with --exec) and relay (websockify both ways), against real peers: the Python ``websockets``
client and server, Node's ``ws`` (tests/node), Debian's ``websockify`` and curl."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, Proc, finish, require, run_sockcat, sockcat, wait_until
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.sync.client import unix_connect as ws_unix_connect
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

import sockcat as sc
from sockcat import Address
from sockcat.core.wsoptions import WsOptions

pytestmark = pytest.mark.timeout(60)

NODE_DIR = Path(__file__).parent / "node"
MiB = 1 << 20


def node() -> str:
    require("node")
    assert (NODE_DIR / "node_modules" / "ws").is_dir(), "tests/node has no node_modules: run scripts/test"
    return "node"


def port_of(address: str) -> int:
    return Address.parse(address).port


def start(procs: list[Proc], *args: str, stdin: int | None = subprocess.DEVNULL) -> tuple[Proc, str]:
    p = Proc(sockcat(*args), stdin=stdin)
    procs.append(p)
    return p, p.read_listening()


@pytest.fixture
def echo_tcp(procs: list[Proc]) -> int:
    _p, addr = start(procs, "serve", "echo", "tcp://127.0.0.1:0")
    return port_of(addr)


@pytest.fixture
def ws_echo_server() -> Iterator[int]:
    """Python ``websockets``' own server, echoing every message (text stays text)."""

    def echo(conn: ServerConnection) -> None:
        for message in conn:
            conn.send(message)

    server = ws_serve(echo, "127.0.0.1", 0, compression=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.socket.getsockname()[1]
    server.shutdown()


# --- addresses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical", "resource"),
    [
        ("ws://localhost:8080/chat", "ws://localhost:8080/chat", "/chat"),
        ("ws://127.0.0.1:80", "ws://127.0.0.1:80/", "/"),
        ("wss://example.org/a?b=c", "wss://example.org:443/a?b=c", "/a?b=c"),
        ("ws://[::1]:9/x", "ws://[::1]:9/x", "/x"),
        ("ws://:8080", "ws://:8080/", "/"),
        ("ws://h:1/小王", "ws://h:1/%E5%B0%8F%E7%8E%8B", "/%E5%B0%8F%E7%8E%8B"),
        ("ws+unix:/run/app.sock:/PATH", "ws+unix:/run/app.sock:/PATH", "/PATH"),
        ("ws+unix:/run/app.sock", "ws+unix:/run/app.sock", "/"),
        ("ws+unix:@name:/x", "ws+unix:@name:/x", "/x"),
    ],
)
def test_ws_addresses_parse_to_a_canonical_form(text: str, canonical: str, resource: str) -> None:
    addr = Address.parse(text)
    assert str(addr) == canonical
    assert addr.resource == resource
    assert Address.parse(str(addr)) == addr
    assert addr.is_ws
    assert addr.is_tls == text.startswith("wss:")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ws://h:1/a b", "white space"),
        ("ws://user@h:1/", "user information"),
        ("ws://[::1:80/", "unclosed"),
        ("ws+unix::/x", "empty socket path"),
        ("ws://h:99999/", "out of range"),
    ],
)
def test_bad_ws_addresses_are_one_usage_error(text: str, problem: str) -> None:
    r = run_sockcat("connect", text)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert err.count("\n") == 1 and f"bad address '{text}'" in err and problem in err, err


# --- the library -------------------------------------------------------------------------------------


def test_library_listener_serves_the_websockets_client_binary_and_text() -> None:
    with sc.listen("ws://127.0.0.1:0/") as server:
        seen: dict[str, Any] = {}

        def serve() -> None:
            with server.accept() as conn:
                seen["path"] = conn.request.path
                seen["agent"] = conn.request.headers.get("User-Agent", "")
                while data := conn.recv():
                    conn.sendall(data.upper())
                conn.shutdown_write()

        t = threading.Thread(target=serve)
        t.start()
        with ws_connect(f"ws://127.0.0.1:{server.address.port}/some/path?q=1") as client:
            client.send(b"binary")
            assert client.recv(timeout=TIMEOUT) == b"BINARY"
            client.send("text")
            assert client.recv(timeout=TIMEOUT) == b"TEXT"  # the stream's bytes go out as binary messages
        t.join(TIMEOUT)
    assert seen["path"] == "/some/path?q=1"
    assert "websockets" in seen["agent"].lower() or "python" in seen["agent"].lower()


def test_library_client_against_websockets_server_moves_big_messages_and_half_closes(ws_echo_server: int) -> None:
    payload = os.urandom(3 * MiB)
    with sc.connect(f"ws://127.0.0.1:{ws_echo_server}/", timeout=TIMEOUT) as s:
        s.sendall(payload)
        got = s.recv_exactly(len(payload))
        assert got == payload
        s.shutdown_write()  # our Close: the server answers with its own, which is our EOF
        assert s.recv() == b""


def test_half_close_server_keeps_sending_after_the_clients_close() -> None:
    """A Close is the end of one direction: the side that received it may still send (docs/websocket.md)."""
    with sc.listen("ws://127.0.0.1:0/") as server:

        def serve() -> None:
            with server.accept() as conn:
                data = b""
                while chunk := conn.recv():
                    data += chunk
                conn.sendall(hashlib.sha256(data).hexdigest().encode())  # after the client's Close
                conn.shutdown_write()

        t = threading.Thread(target=serve)
        t.start()
        with sc.connect(f"ws://127.0.0.1:{server.address.port}/", timeout=TIMEOUT) as client:
            client.sendall(b"a" * 100_000)
            client.shutdown_write()
            answer = b""
            while chunk := client.recv():
                answer += chunk
        t.join(TIMEOUT)
    assert answer == hashlib.sha256(b"a" * 100_000).hexdigest().encode()


def test_asyncio_twin_talks_to_the_sync_listener() -> None:
    import asyncio

    from sockcat import aio

    with sc.listen("ws://127.0.0.1:0/echo") as server:

        def serve() -> None:
            with server.accept() as conn:
                while data := conn.recv():
                    conn.sendall(data)
                conn.shutdown_write()

        t = threading.Thread(target=serve)
        t.start()

        async def main() -> bytes:
            s = await aio.connect(f"ws://127.0.0.1:{server.address.port}/echo", timeout=TIMEOUT)
            await s.send_line("héllo 小王")
            line = await s.recv_line()
            await s.shutdown_write()
            assert await s.recv() == b""
            s.close()
            return line

        assert asyncio.run(main()) == "héllo 小王\n".encode()
        t.join(TIMEOUT)


def test_ws_over_unix_socket_with_the_websockets_client(short_tmp: Path) -> None:
    path = short_tmp / "app.sock"
    with sc.listen(f"ws+unix:{path}:/app") as server:
        assert str(server.address) == f"ws+unix:{path}:/app"

        def serve() -> None:
            with server.accept() as conn:
                conn.sendall(conn.recv_line())

        t = threading.Thread(target=serve)
        t.start()
        with ws_unix_connect(str(path), "ws://localhost/app") as client:
            client.send(b"over unix\n")
            assert client.recv(timeout=TIMEOUT) == b"over unix\n"
        t.join(TIMEOUT)


def test_wss_with_a_throwaway_certificate_and_a_pin() -> None:
    with sc.listen("wss://127.0.0.1:0/") as server:
        assert server.fingerprint

        def serve() -> None:
            with server.accept() as conn:
                conn.sendall(conn.recv_line())

        t = threading.Thread(target=serve)
        t.start()
        from sockcat.net.tls import client_context

        ctx = client_context(pin=server.fingerprint)
        with sc.connect(f"wss://127.0.0.1:{server.address.port}/", timeout=TIMEOUT, ssl_context=ctx) as s:
            assert s.tls_version is not None
            s.send_line("secret")
            assert s.recv_line() == b"secret\n"
        t.join(TIMEOUT)


def test_a_listener_on_a_path_refuses_other_paths_with_404() -> None:
    with sc.listen("ws://127.0.0.1:0/only") as server:
        refused: list[BaseException] = []

        def accept() -> None:
            try:
                server.accept()
            except OSError as exc:
                refused.append(exc)

        t = threading.Thread(target=accept)
        t.start()
        with pytest.raises(InvalidStatus) as info:
            ws_connect(f"ws://127.0.0.1:{server.address.port}/other", open_timeout=TIMEOUT)
        assert info.value.response.status_code == 404
        t.join(TIMEOUT)
    assert refused and "HTTP 404" in str(refused[0])


def test_text_mode_sends_lines_as_text_messages_and_checks_utf8() -> None:
    seen: list[str | bytes] = []

    def collect(conn: ServerConnection) -> None:
        for message in conn:
            seen.append(message)
        conn.close()

    server = ws_serve(collect, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.socket.getsockname()[1]
        with sc.connect(f"ws://127.0.0.1:{port}/", timeout=TIMEOUT, ws=WsOptions(text=True)) as s:
            s.sendall("one\ntwo 小王\nthr".encode())
            s.sendall(b"ee\n")
            s.shutdown_write()
            assert s.recv() == b""
        wait_until(lambda: len(seen) == 3, "three messages")
        assert seen == ["one", "two 小王", "three"]
    finally:
        server.shutdown()


# --- the command line: connect, listen, relay ----------------------------------------------------------


def test_connect_is_a_websocket_client_on_stdio(procs: list[Proc]) -> None:
    """sockcat on both ends passes half-close: stdin's end is our Close, and the echo still comes back whole."""
    _e, echo = start(procs, "serve", "echo", "tcp://127.0.0.1:0")
    _r, ws = start(procs, "relay", "ws://127.0.0.1:0/", echo)
    data = os.urandom(2 * MiB)
    r = run_sockcat("connect", ws, input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    assert r.stderr == b""


def test_connect_against_the_websockets_server_with_stdin_open(procs: list[Proc], ws_echo_server: int) -> None:
    """The websockets server (like most) answers a Close at once and sends nothing after it: a client that wants
    every answer keeps its stdin open until the answers are in."""
    p = Proc(sockcat("connect", f"ws://127.0.0.1:{ws_echo_server}/"), stdin=subprocess.PIPE)
    procs.append(p)
    assert p.p.stdin is not None and p.p.stdout is not None
    data = os.urandom(MiB)
    p.p.stdin.write(data)
    p.p.stdin.flush()
    got = b""
    while len(got) < len(data):
        chunk = p.p.stdout.read1(1 << 20)  # type: ignore[attr-defined]
        assert chunk, "connect ended early"
        got += chunk
    p.p.stdin.close()
    p.p.stdin = None
    rc, rest, err = finish(p)
    assert rc == 0, err
    assert got + rest == data


def test_connect_text_mode_against_node_ws_echo(procs: list[Proc]) -> None:
    p = Proc([node(), str(NODE_DIR / "echo-server.js")], stdin=subprocess.DEVNULL)
    procs.append(p)
    assert p.p.stdout is not None
    port = int(p.p.stdout.readline().split()[-1])
    r = run_sockcat("connect", "--text", f"ws://127.0.0.1:{port}/", input="ping\n你好\n".encode())
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "ping\n你好\n"


def test_listen_answers_a_node_ws_client(procs: list[Proc]) -> None:
    p, addr = start(procs, "listen", "ws://127.0.0.1:0/", stdin=subprocess.PIPE)
    assert p.p.stdin is not None
    p.p.stdin.write(b"from sockcat")
    p.p.stdin.close()
    p.p.stdin = None
    out = subprocess.run(
        [node(), str(NODE_DIR / "client.js"), f"ws://127.0.0.1:{port_of(addr)}/x", "from node"],
        capture_output=True,
        timeout=TIMEOUT,
    )
    events = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert {"binary": True, "data": base64.b64encode(b"from sockcat").decode()} in events
    assert events[-1] == {"close": 1000}
    rc, stdout, err = finish(p)
    assert rc == 0, err
    assert stdout == b"from node"


def test_plain_http_to_a_ws_listener_gets_426_not_a_hang(procs: list[Proc]) -> None:
    curl = require("curl")
    _p, addr = start(procs, "relay", "ws://127.0.0.1:0/", "tcp://127.0.0.1:9")
    r = subprocess.run(
        [
            curl,
            "--noproxy",
            "*",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "5",
            f"http://127.0.0.1:{port_of(addr)}/",
        ],
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert r.stdout == b"426"


def test_listen_exec_is_websocketd(procs: list[Proc]) -> None:
    script = 'echo "path=$SOCKCAT_WS_PATH agent=$HTTP_X_TEST proxy=${HTTP_PROXY-unset}"; read line; echo "got $line"'
    _p, addr = start(procs, "listen", "-k", "ws://127.0.0.1:0/", "--sh-exec", script)
    with ws_connect(
        f"ws://127.0.0.1:{port_of(addr)}/cgi?x=1",
        additional_headers={"X-Test": "yes", "Proxy": "http://evil:1"},
        open_timeout=TIMEOUT,
    ) as client:
        first = client.recv(timeout=TIMEOUT)
        client.send(b"hello\n")
        rest = b""
        try:
            while True:
                rest += client.recv(timeout=TIMEOUT)  # type: ignore[operator]
        except ConnectionClosed:
            pass
    assert first == b"path=/cgi?x=1 agent=yes proxy=unset\n"
    assert rest == b"got hello\n"


def test_relay_is_websockify_and_carries_bytes_exactly(procs: list[Proc], echo_tcp: int) -> None:
    _p, ws_addr = start(procs, "relay", "ws://127.0.0.1:0/", f"tcp://127.0.0.1:{echo_tcp}")
    _p, tcp_addr = start(procs, "relay", "tcp://127.0.0.1:0", ws_addr)
    data = os.urandom(8 * MiB)
    r = run_sockcat("connect", tcp_addr, input=data)
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_relay_to_debian_websockify(procs: list[Proc], echo_tcp: int) -> None:
    """sockcat's tcp -> ws relay in front of websockify (ws -> tcp), an echo server behind: the same bytes come back.
    websockify passes no half-close (a Close ends both directions at once), so the client reads every byte back
    before it ends."""
    websockify = require("websockify")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    w = Proc([websockify, f"127.0.0.1:{port}", f"127.0.0.1:{echo_tcp}"], stdin=subprocess.DEVNULL)
    procs.append(w)
    w.wait_stderr("proxying from")
    _p, front = start(procs, "relay", "tcp://127.0.0.1:0", f"ws://127.0.0.1:{port}/")
    data = os.urandom(4 * MiB)
    with sc.connect(front, timeout=TIMEOUT) as s:
        sender = threading.Thread(target=s.sendall, args=(data,))
        sender.start()
        assert s.recv_exactly(len(data)) == data
        sender.join(TIMEOUT)


def test_ws_options_without_a_ws_address_are_usage_errors() -> None:
    for args in (["connect", "--text", "tcp://127.0.0.1:9"], ["listen", "--origin", "https://a.org", "tcp://:0"]):
        r = run_sockcat(*args)
        assert r.returncode == 2
        assert b"needs a WebSocket address" in r.stderr


def test_origin_allow_list_refuses_other_browsers_with_403(procs: list[Proc]) -> None:
    # (stdin stays open: a listener whose stdin ended sends each client its Close at once)
    _p, addr = start(
        procs, "listen", "-k", "ws://127.0.0.1:0/", "--origin", "https://good.example", stdin=subprocess.PIPE
    )
    url = f"ws://127.0.0.1:{port_of(addr)}/"
    with pytest.raises(InvalidStatus) as info:
        ws_connect(url, origin="https://evil.example", open_timeout=TIMEOUT)  # type: ignore[arg-type]
    assert info.value.response.status_code == 403
    with ws_connect(url, origin="https://good.example", open_timeout=TIMEOUT) as ok:  # type: ignore[arg-type]
        ok.send(b"x")
    with ws_connect(url, open_timeout=TIMEOUT) as no_origin:  # not a browser: no hijacking to fear
        no_origin.send(b"y")


# --- serve over WebSocket ----------------------------------------------------------------------------------


def test_serve_echo_over_ws_text_mode_keeps_messages(procs: list[Proc]) -> None:
    _p, addr = start(procs, "serve", "echo", "--text", "ws://127.0.0.1:0/")
    with ws_connect(f"ws://127.0.0.1:{port_of(addr)}/", open_timeout=TIMEOUT) as client:
        client.send("first 小王")
        client.send("second")
        assert client.recv(timeout=TIMEOUT) == "first 小王"  # a text message comes back as one text message
        assert client.recv(timeout=TIMEOUT) == "second"


def test_serve_each_service_over_ws_wss_and_ws_unix(procs: list[Proc], short_tmp: Path) -> None:
    _p, echo = start(procs, "serve", "echo", "ws://127.0.0.1:0/")
    data = os.urandom(3 * MiB)
    r = run_sockcat("connect", echo, input=data)
    assert r.returncode == 0 and r.stdout == data, r.stderr
    _p, day = start(procs, "serve", "daytime", f"ws+unix:{short_tmp}/d.sock")
    r = run_sockcat("connect", day)
    assert r.returncode == 0 and r.stdout.endswith(b"\n") and len(r.stdout.splitlines()) == 1, r
    p, gen = start(procs, "serve", "chargen", "wss://127.0.0.1:0/")
    fingerprint = p.wait_stderr("certificate sha256")[0].split()[-1]
    c = Proc(sockcat("connect", "--pin", fingerprint, gen))
    procs.append(c)
    assert c.p.stdout is not None
    first = c.p.stdout.read(74 * 3)
    lines = first.split(b"\r\n")
    assert lines[0] == bytes(range(33, 33 + 72)) and lines[1] == bytes(range(34, 34 + 72))


def test_serve_ws_drops_a_client_that_never_upgrades_and_keeps_serving(procs: list[Proc]) -> None:
    _p, addr = start(procs, "serve", "echo", "ws://127.0.0.1:0/", "--max-conns", "5")
    port = port_of(addr)
    junk = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    junk[0].sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    )  # a header line over 8 KiB
    junk[1].sendall(b"\x16\x03\x01\x02\x00" + os.urandom(200))  # not HTTP at all (a TLS hello, say)
    for s in junk[:2]:
        s.settimeout(TIMEOUT)
        while s.recv(65536):
            pass  # ended by the server
    with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as client:
        client.send(b"still here")
        assert client.recv(timeout=TIMEOUT) == b"still here"
    for s in junk:
        s.close()


# --- send/recv over WebSocket ----------------------------------------------------------------------------------


def test_send_and_recv_over_wss(procs: list[Proc], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(os.urandom(3 * MiB))
    (src / "名字.txt").write_text("小王\n")
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, SOCKCAT_CODE="7-crane-violin")
    r = Proc(sockcat("recv", "wss://127.0.0.1:0/drop", "-o", str(out)), env=env)
    procs.append(r)
    addr = r.read_listening()
    fingerprint = r.wait_stderr("certificate sha256")[0].split()[-1]
    s = subprocess.run(
        sockcat("send", "--pin", fingerprint, addr, str(src), "--json"), capture_output=True, env=env, timeout=TIMEOUT
    )
    assert s.returncode == 0, s.stderr
    assert json.loads(s.stdout)["ok"] is True
    rc, _out, err = finish(r)
    assert rc == 0, err
    assert (out / "src" / "data.bin").read_bytes() == (src / "data.bin").read_bytes()
    assert (out / "src" / "名字.txt").read_text() == "小王\n"


# --- the options, each against a real peer -------------------------------------------------------------------------


def test_ping_ends_a_connection_to_a_peer_that_went_silent() -> None:
    """A peer that completes the upgrade and then answers nothing, pings included: --ping 0.3 ends the client
    with exit 1 and a line saying why, well before any other time-out."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def mute() -> None:
            conn, _ = srv.accept()
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key")
            )
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            done.wait(TIMEOUT)  # silent: reads nothing, answers nothing
            conn.close()

        done = threading.Event()
        t = threading.Thread(target=mute)
        t.start()
        p = subprocess.Popen(
            sockcat("connect", "--ping", "0.3", f"ws://127.0.0.1:{port}/"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _out, err = p.communicate(timeout=TIMEOUT)
        finally:
            done.set()
            t.join(TIMEOUT)
    assert p.returncode == 1, err
    assert b"nothing heard for 0.6 s (--ping)" in err and err.count(b"\n") == 1, err


def test_serve_ping_ends_a_client_that_went_silent_and_serves_on(procs: list[Proc]) -> None:
    """A client that upgrades and then answers no ping: ``serve --ping 0.3`` ends it after 0.6 s of silence, with
    one line saying why, and goes on serving a client that does answer."""
    p, addr = start(procs, "serve", "echo", "-v", "--ping", "0.3", "ws://127.0.0.1:0/")
    port = port_of(addr)
    with _raw_upgrade(port) as mute:
        head = b""
        while b"\r\n\r\n" not in head:
            head += mute.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        frames = head.partition(b"\r\n\r\n")[2]
        try:
            while chunk := mute.recv(4096):  # pings, unanswered, until the server ends the connection
                frames += chunk
        except ConnectionResetError:
            pass
    assert frames.startswith(b"\x89\x07sockcat"), frames  # unmasked ping frames from the server
    p.wait_stderr("nothing heard for 0.6 s (--ping): closing")
    with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as client:
        client.send(b"still here")
        assert client.recv(timeout=TIMEOUT) == b"still here"


def test_subprotocol_headers_and_message_bound(procs: list[Proc]) -> None:
    script = 'echo "auth=$HTTP_AUTHORIZATION proto=$HTTP_SEC_WEBSOCKET_PROTOCOL"'
    args = ("listen", "-k", "ws://127.0.0.1:0/", "--protocol", "chat.v2", "--sh-exec", script)
    _p, addr = start(procs, *args)
    url = f"ws://127.0.0.1:{port_of(addr)}/"
    with ws_connect(url, subprotocols=["chat.v1", "chat.v2"], open_timeout=TIMEOUT) as client:  # type: ignore[list-item]
        assert client.subprotocol == "chat.v2"
        client.recv(timeout=TIMEOUT)
    r = run_sockcat("connect", "-H", "Authorization: Bearer t0ken", "--protocol", "chat.v2", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"auth=Bearer t0ken proto=chat.v2\n"
    with pytest.raises(InvalidStatus) as refused:  # a listener with --protocol requires one of them
        ws_connect(url, open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 400
    _e, echo = start(procs, "serve", "echo", "ws://127.0.0.1:0/", "--max-message", "1000")
    with ws_connect(echo, open_timeout=TIMEOUT, max_size=None) as big:
        big.send(b"x" * 2000)  # over --max-message: the listener ends the connection with 1009
        with pytest.raises(ConnectionClosed) as info:
            while True:
                big.recv(timeout=TIMEOUT)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_bench_measures_a_ws_echo_server(procs: list[Proc]) -> None:
    _p, addr = start(procs, "serve", "echo", "ws://127.0.0.1:0/")
    r = run_sockcat("bench", addr, "-c", "8", "-d", "0.5", "--warmup", "0.1", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["requests"] > 100 and result["errors"] == 0
    r = run_sockcat("bench", "--mode", "connect", addr, "-c", "2", "-d", "0.5", "--warmup", "0.1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["requests"] > 10


# --- playing the attacker against WebSocket listeners ------------------------------------------------------------


def _raw_upgrade(port: int, extra: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.sendall(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )
    return s


def test_relay_ws_counts_unfinished_upgrades_against_its_cap(procs: list[Proc], echo_tcp: int) -> None:
    _p, addr = start(procs, "relay", "--max-conns", "3", "ws://127.0.0.1:0/", f"tcp://127.0.0.1:{echo_tcp}")
    port = port_of(addr)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(3)]
    for s in silent:
        s.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
    over = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    assert over.recv(100) == b""  # closed at once: the three unfinished upgrades hold the cap
    over.close()
    silent.pop().close()

    def served() -> bool:
        try:
            with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=2) as client:
                client.send(b"ok")
                return client.recv(timeout=TIMEOUT) == b"ok"
        except (OSError, InvalidHandshake, ConnectionClosed):
            return False  # (refused at once while the cap is still full)

    wait_until(served, "an honest client served once a slot is free")
    for s in silent:
        s.close()


@pytest.mark.parametrize(
    ("extra", "wire"),
    [
        (b"".join(b"X-%d: y\r\n" % i for i in range(200)), b""),  # more headers than the parser takes
        (b"", bytes([0x82, 0xFF]) + (1 << 62).to_bytes(8, "big") + b"\0\0\0\0"),  # a 4 EiB frame
        (b"", bytes([0x8F, 0x80, 0, 0, 0, 0])),  # a reserved opcode
        (b"", bytes([0x82, 0x05]) + b"hello"),  # an unmasked client frame
    ],
    ids=["200-headers", "4EiB-frame", "reserved-opcode", "unmasked"],
)
def test_relay_ws_ends_a_broken_client_and_serves_on(
    procs: list[Proc], echo_tcp: int, extra: bytes, wire: bytes
) -> None:
    p, addr = start(procs, "relay", "ws://127.0.0.1:0/", f"tcp://127.0.0.1:{echo_tcp}")
    port = port_of(addr)
    with _raw_upgrade(port, extra) as s:
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := s.recv(4096)):
            answer += chunk
        if wire:
            assert answer.startswith(b"HTTP/1.1 101 "), answer[:80]
            s.sendall(wire)
        rest = b""
        while chunk := s.recv(4096):
            rest += chunk
        if wire:  # an open WebSocket broken by a frame: ended with a Close that names the fault
            assert rest[:1] == b"\x88" and int.from_bytes(rest[2:4], "big") in (1002, 1009), rest[:8]
        else:
            assert answer.startswith(b"HTTP/1.1 4") or answer == b"", answer[:80]
    with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as client:
        client.send(b"still here")
        assert client.recv(timeout=TIMEOUT) == b"still here"
    assert p.p.poll() is None
    assert not [line for line in p.stderr_all(0.1) if "Traceback" in line]
