"""The chat on WebSocket addresses (docs/chat.md#the-chat-in-a-browser): one room across tcp and ws listeners,
the page served on ``GET /``, lines as text messages, and the cross-site defences (Origin and Host checks).
Real peers: OpenBSD nc, the Python websockets client, curl; the browser test is in test_chat_browser.py."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest
from conftest import TIMEOUT, Proc, require, sockcat
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from sockcat import Address

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def chat(procs: list[Proc]) -> Iterator[tuple[int, int]]:
    """A broker on tcp and ws at once: (tcp port, ws port)."""
    p = Proc(sockcat("chat", "--db", ":memory:", "tcp://127.0.0.1:0", "ws://127.0.0.1:0/"))
    procs.append(p)
    p.read_listening()
    lines = p.wait_stderr("listening on", count=2)
    tcp = next(line.split()[-1] for line in lines if "tcp://" in line)
    ws = next(line.split()[-1] for line in lines if "ws://" in line)
    yield Address.parse(tcp).port, Address.parse(ws).port


def nc_join(port: int, name: str) -> tuple[subprocess.Popen[bytes], list[str]]:
    nc = subprocess.Popen([require("nc"), "-N", "127.0.0.1", str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert nc.stdin is not None and nc.stdout is not None
    lines = [nc.stdout.readline().decode()]
    nc.stdin.write(f"{name}\n".encode())
    nc.stdin.flush()
    lines.append(nc.stdout.readline().decode())
    return nc, lines


def ws_join(port: int, name: str, **kw: object) -> ClientConnection:
    ws = ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT, legacy=True, **kw)  # type: ignore[arg-type]
    assert "your name?" in str(ws.recv(timeout=TIMEOUT))
    ws.send(name)
    hello = ws.recv(timeout=TIMEOUT)
    assert isinstance(hello, str) and hello.startswith(f"* hello {name};"), hello
    return ws


def test_browser_user_and_nc_user_share_one_room(chat: tuple[int, int]) -> None:
    tcp, wsp = chat
    wang = ws_join(wsp, "小王")
    nc, lines = nc_join(tcp, "小张")
    assert lines[1].startswith("* hello 小张; 1 other online")
    assert wang.recv(timeout=TIMEOUT) == "* 小张 joined"  # each line is one text message, without its newline
    wang.send("你好，小张")
    assert nc.stdout is not None and nc.stdin is not None
    assert nc.stdout.readline().decode() == "<小王> 你好，小张\n"
    nc.stdin.write("/msg 小王 私聊\n".encode())
    nc.stdin.flush()
    assert wang.recv(timeout=TIMEOUT) == "*小张* 私聊"
    wang.send("/who\n")  # a trailing newline is optional
    assert wang.recv(timeout=TIMEOUT) == "* online (2): 小张, 小王"
    wang.close()
    assert nc.stdout.readline().decode() == "* 小王 left\n"
    nc.stdin.close()
    nc.wait(TIMEOUT)


def test_offline_mail_reaches_a_browser_user_on_join(chat: tuple[int, int]) -> None:
    tcp, wsp = chat
    nc, _lines = nc_join(tcp, "zhang")
    assert nc.stdin is not None and nc.stdout is not None
    nc.stdin.write("/msg wang 晚上见\n".encode())
    nc.stdin.flush()
    assert nc.stdout.readline().decode() == "* wang is offline; message stored\n"
    wang = ws_join(wsp, "wang")
    assert wang.recv(timeout=TIMEOUT) == "*zhang* 晚上见"
    wang.close()
    nc.stdin.close()
    nc.wait(TIMEOUT)


def test_get_slash_serves_the_page_and_nothing_else(chat: tuple[int, int]) -> None:
    _tcp, wsp = chat
    curl = require("curl")

    def get(path: str) -> tuple[str, str]:
        r = subprocess.run(
            [curl, "--noproxy", "*", "-s", "-i", "-m", "5", f"http://127.0.0.1:{wsp}{path}"],
            capture_output=True,
            timeout=TIMEOUT,
        )
        head, _, body = r.stdout.decode(errors="replace").partition("\r\n\r\n")
        return head, body

    head, body = get("/")
    assert head.startswith("HTTP/1.1 200") and "text/html" in head and "Content-Security-Policy" in head
    assert '<script src="chat.js"' in body and "http" not in body.replace("http-equiv", "")  # nothing from elsewhere
    head, body = get("/chat.js")
    assert head.startswith("HTTP/1.1 200") and "textContent" in body and "innerHTML" not in body
    assert get("/../../etc/passwd")[0].startswith("HTTP/1.1 404")
    assert get("/chat.sqlite3")[0].startswith("HTTP/1.1 404")


def test_cross_site_pages_and_rebound_host_names_are_refused(chat: tuple[int, int]) -> None:
    _tcp, wsp = chat
    with pytest.raises(InvalidStatus) as info:
        ws_connect(f"ws://127.0.0.1:{wsp}/", origin="http://evil.example", open_timeout=TIMEOUT)  # type: ignore[arg-type]
    assert info.value.response.status_code == 403
    # DNS rebinding: evil.example resolved to the broker, so Origin and Host agree; the Host is not ours
    for hosts in (["evil.example:1234"], [f"127.0.0.1:{wsp}", "evil.example"]):
        with socket.create_connection(("127.0.0.1", wsp), timeout=TIMEOUT) as raw:
            raw.sendall(
                b"GET / HTTP/1.1\r\n"
                + b"".join(f"Host: {h}\r\n".encode() for h in hosts)
                + b"Origin: http://evil.example:1234\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert raw.recv(100).startswith(b"HTTP/1.1 403 ")
    own = ws_join(wsp, "alice", origin=f"http://127.0.0.1:{wsp}")  # the page's own origin
    own.close()
    plain = ws_join(wsp, "bob")  # no Origin: not a browser page
    plain.close()


def test_a_slow_upgrade_is_dropped_and_counts_against_the_cap(procs: list[Proc]) -> None:
    p = Proc(sockcat("chat", "--db", ":memory:", "--max-conns", "3", "ws://127.0.0.1:0/"))
    procs.append(p)
    port = Address.parse(p.read_listening()).port
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    for s in silent:
        s.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
    extra = socket.create_connection(("127.0.0.1", port))
    extra.settimeout(TIMEOUT)
    assert extra.recv(100) == b""  # over the cap: closed at once
    for s in silent:
        s.close()
    extra.close()
