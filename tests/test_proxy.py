"""--proxy: connect and relay through real SOCKS5 (microsocks) and HTTP CONNECT (ncat) proxies on loopback.

The two proxies end the whole tunnel at the first EOF (neither passes a half-close on), so these tests read each
reply before they close their side, the way a client of such a proxy has to.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, Proc, free_port, require, run_sockcat, sockcat, wait_port

import sockcat as sc
from sockcat import aio
from sockcat.net.proxy import Proxy

USER, PASSWORD = "wang", "s3cret:pw"  # a colon in the password: it must be percent-encoded in the URL
QUOTED = "s3cret%3Apw"


class LineServer:
    """A TCP server on 127.0.0.1 that answers each line ``L`` with ``echo:L``; ``HASH n`` then n bytes gets the
    SHA-256 of those bytes. One thread per connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            while line := f.readline():
                if line.startswith(b"HASH "):
                    data = f.read(int(line.split()[1]))
                    conn.sendall(hashlib.sha256(data).hexdigest().encode() + b"\n")
                else:
                    conn.sendall(b"echo:" + line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[LineServer]:
    s = LineServer()
    yield s
    s.close()


def _start(procs: list[Proc], argv: list[str], port: int) -> None:
    procs.append(Proc(argv, stdout=subprocess.DEVNULL))
    wait_port(port)


@pytest.fixture
def socks5(procs: list[Proc]) -> Callable[..., str]:
    """A microsocks SOCKS5 proxy; ``socks5(auth=True)`` wants USER/PASSWORD. Returns its host:port."""

    def start(auth: bool = False) -> str:
        port = free_port()
        creds = ["-u", USER, "-P", PASSWORD] if auth else []
        _start(procs, [require("microsocks"), "-i", "127.0.0.1", "-p", str(port), *creds], port)
        return f"127.0.0.1:{port}"

    return start


@pytest.fixture
def http_proxy(procs: list[Proc]) -> Callable[..., str]:
    """An ncat HTTP CONNECT proxy; ``http_proxy(auth=True)`` wants USER/PASSWORD (Basic). Returns host:port."""

    def start(auth: bool = False) -> str:
        port = free_port()
        creds = ["--proxy-auth", f"{USER}:{PASSWORD}"] if auth else []
        _start(procs, [require("ncat"), "-l", "--proxy-type", "http", *creds, "127.0.0.1", str(port)], port)
        return f"127.0.0.1:{port}"

    return start


@pytest.fixture
def dante(procs: list[Proc], tmp_path: Path) -> Callable[[], str]:
    """A Dante SOCKS server (SOCKS4 and SOCKS5, no auth) on loopback. Returns its host:port."""

    def start() -> str:
        port = free_port()
        conf = tmp_path / f"danted-{port}.conf"
        conf.write_text(
            f"logoutput: stderr\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n"
            "socksmethod: none\nclientmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n"
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\nsocks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
        )
        _start(procs, [require("danted"), "-f", str(conf), "-N", "1"], port)
        return f"127.0.0.1:{port}"

    return start


def _ask(procs: list[Proc], *args: str, line: bytes = b"hello\n") -> tuple[int, bytes, list[str]]:
    """``sockcat ARGS``: write one line, read one reply line, then close stdin; (status, reply, stderr lines)."""
    p = Proc(sockcat(*args), stdin=subprocess.PIPE)
    procs.append(p)
    assert p.p.stdin is not None and p.p.stdout is not None
    p.p.stdin.write(line)
    p.p.stdin.flush()
    reply = p.p.stdout.readline()
    p.p.stdin.close()
    p.p.stdin = None
    rc = p.wait(TIMEOUT)
    err = p.stderr_lines + p.p.stderr.read().decode(errors="replace").splitlines()
    return rc, reply, err


# --- sockcat connect --proxy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "scheme", "host"),
    [
        ("socks5", "socks5", "127.0.0.1"),
        ("socks5", "socks5h", "localhost"),  # the proxy resolves the name
        ("socks5", "socks5", "localhost"),  # sockcat resolves it and sends the IP
        ("http", "http", "127.0.0.1"),
        ("http", "http", "localhost"),
    ],
)
def test_connect_through_proxy(
    kind: str,
    scheme: str,
    host: str,
    procs: list[Proc],
    server: LineServer,
    socks5: Callable[..., str],
    http_proxy: Callable[..., str],
) -> None:
    proxy = socks5() if kind == "socks5" else http_proxy()
    rc, reply, err = _ask(procs, "-v", "connect", "--proxy", f"{scheme}://{proxy}", f"tcp://{host}:{server.port}")
    assert (rc, reply) == (0, b"echo:hello\n"), err
    assert any(f"connected to tcp://{host}:{server.port} via {scheme}://{proxy}" in line for line in err), err
    # the server saw the proxy, not sockcat: the connection really went through it
    assert server.peers and all(peer[0] == "127.0.0.1" for peer in server.peers)


@pytest.mark.parametrize(
    ("scheme", "host"),
    [
        ("socks4", "localhost"),  # SOCKS4 carries an IPv4 address: sockcat resolves the name
        ("socks4a", "127.0.0.1"),  # (Dante answers 4a requests that carry an address, not names; curl fails alike)
        ("socks5", "127.0.0.1"),
        ("socks5h", "localhost"),
    ],
)
def test_connect_through_dante(
    scheme: str, host: str, procs: list[Proc], server: LineServer, dante: Callable[[], str]
) -> None:
    proxy = dante()
    rc, reply, err = _ask(procs, "connect", "--proxy", f"{scheme}://{proxy}", f"tcp://{host}:{server.port}")
    assert (rc, reply) == (0, b"echo:hello\n"), err


@pytest.mark.parametrize("kind", ["socks5", "http"])
def test_connect_through_proxy_with_password(
    kind: str, procs: list[Proc], server: LineServer, socks5: Callable[..., str], http_proxy: Callable[..., str]
) -> None:
    proxy = socks5(auth=True) if kind == "socks5" else http_proxy(auth=True)
    scheme = "socks5" if kind == "socks5" else "http"
    target = f"tcp://127.0.0.1:{server.port}"
    rc, reply, err = _ask(procs, "connect", "--proxy", f"{scheme}://{USER}:{QUOTED}@{proxy}", target)
    assert (rc, reply) == (0, b"echo:hello\n"), err
    # a wrong password: one error line that names the proxy (user, never the password), exit 1
    res = run_sockcat("connect", "--proxy", f"{scheme}://{USER}:wrong@{proxy}", target, input=b"x\n")
    lines = res.stderr.decode().splitlines()
    assert res.returncode == 1, lines
    assert len(lines) == 1 and lines[0].startswith("sockcat: error: connect "), lines
    assert f"via {scheme}://{USER}@{proxy}" in lines[0] and "wrong" not in lines[0], lines


def test_tls_through_proxy(procs: list[Proc], socks5: Callable[..., str]) -> None:
    """TLS end to end through the tunnel: the proxy only sees ciphertext."""
    proxy = socks5()
    listener = Proc(sockcat("listen", "-k", "--sh-exec", 'read l; echo "tls:$l"', "tls://127.0.0.1:0"))
    procs.append(listener)
    addr = listener.read_listening()
    rc, reply, err = _ask(procs, "connect", "--insecure", "--proxy", f"socks5://{proxy}", addr)
    assert (rc, reply) == (0, b"tls:hello\n"), err


def test_proxy_errors_are_one_line(procs: list[Proc], server: LineServer, socks5: Callable[..., str]) -> None:
    proxy = socks5()
    dead = free_port()
    cases = [
        # (args, exit status, words in the error line)
        (["--proxy", f"socks5://127.0.0.1:{dead}", f"tcp://127.0.0.1:{server.port}"], 1, "proxy unreachable"),
        (["--proxy", f"socks5://{proxy}", f"tcp://127.0.0.1:{dead}"], 1, "the proxy said"),
        (["--proxy", "ftp://127.0.0.1:21", f"tcp://127.0.0.1:{server.port}"], 2, "bad proxy"),
        (["--proxy", "socks5://", f"tcp://127.0.0.1:{server.port}"], 2, "bad proxy"),
        (["--proxy", "socks5://h:99999", f"tcp://127.0.0.1:{server.port}"], 2, "bad proxy"),
        (["--proxy", f"socks5://{proxy}", "udp://127.0.0.1:53"], 2, "--proxy carries tcp, tls, ws and wss"),
        (["--proxy", f"socks5://{proxy}", "unix:/tmp/nothing.sock"], 2, "--proxy carries tcp, tls, ws and wss"),
    ]
    for args, status, words in cases:
        res = run_sockcat("connect", *args, input=b"x\n")
        lines = res.stderr.decode().splitlines()
        assert res.returncode == status, (args, lines)
        assert len(lines) == 1 and lines[0].startswith("sockcat: error: ") and words in lines[0], (args, lines)


def test_trace_shows_the_proxy(procs: list[Proc], server: LineServer, socks5: Callable[..., str]) -> None:
    proxy = socks5()
    rc, reply, err = _ask(procs, "--trace", "connect", "--proxy", f"socks5://{proxy}", f"tcp://127.0.0.1:{server.port}")
    assert (rc, reply) == (0, b"echo:hello\n"), err
    assert any(f"CONNECT 127.0.0.1:{server.port} -> ok" in line for line in err), err


# --- sockcat relay --proxy --------------------------------------------------------------------------------------


def test_relay_through_proxy(procs: list[Proc], server: LineServer, http_proxy: Callable[..., str]) -> None:
    proxy = http_proxy()
    relay = Proc(
        sockcat("-v", "relay", "--proxy", f"http://{proxy}", "tcp://127.0.0.1:0", f"tcp://localhost:{server.port}")
    )
    procs.append(relay)
    port = int(relay.read_listening().rsplit(":", 1)[1])
    for i in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s, s.makefile("rb") as f:
            s.sendall(b"HASH 1000000\n" + bytes([i]) * 1_000_000)
            assert f.readline() == hashlib.sha256(bytes([i]) * 1_000_000).hexdigest().encode() + b"\n"
    relay.p.terminate()
    rc = relay.wait(TIMEOUT)
    err = relay.stderr_lines + relay.p.stderr.read().decode(errors="replace").splitlines()
    assert rc == 0, err
    assert any(f"-> tcp://localhost:{server.port} via http://{proxy}" in line for line in err), err


def test_relay_proxy_needs_a_tcp_target() -> None:
    res = run_sockcat("relay", "--proxy", "socks5://127.0.0.1:1080", "udp://127.0.0.1:0", "udp://127.0.0.1:53")
    assert res.returncode == 2
    assert res.stderr.decode().startswith("sockcat: error: --proxy carries tcp, tls, ws and wss"), res.stderr


# --- the library ------------------------------------------------------------------------------------------------


def test_library_connect_through_proxy(server: LineServer, socks5: Callable[..., str]) -> None:
    proxy = socks5(auth=True)
    url = f"socks5h://{USER}:{QUOTED}@{proxy}"
    data = os.urandom(4 << 20)
    with sc.connect(f"tcp://localhost:{server.port}", timeout=TIMEOUT, proxy=url) as s:
        s.send_line("hi")
        assert s.recv_line() == b"echo:hi\n"
        s.sendall(b"HASH %d\n" % len(data) + data)
        assert s.recv_line(drop=True) == hashlib.sha256(data).hexdigest().encode()

    async def main() -> bytes:
        s = await aio.connect(f"tcp://127.0.0.1:{server.port}", timeout=TIMEOUT, proxy=Proxy.parse(url))
        try:
            await s.send_line("async")
            return await s.recv_line()
        finally:
            await s.aclose()

    assert asyncio.run(main()) == b"echo:async\n"


def test_library_proxy_errors_are_sockcat_errors(server: LineServer) -> None:
    dead = free_port()
    with pytest.raises(sc.NetworkError) as info:
        sc.connect(f"tcp://127.0.0.1:{server.port}", timeout=TIMEOUT, proxy=f"socks5://127.0.0.1:{dead}")
    assert isinstance(info.value, ConnectionRefusedError) and "proxy unreachable" in str(info.value)
    with pytest.raises(ValueError, match="bad proxy"):
        sc.connect(f"tcp://127.0.0.1:{server.port}", proxy="gopher://x")


# --- the URL ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want", "shown"),
    [
        ("socks5://127.0.0.1", ("socks5", "127.0.0.1", 1080, None, None), "socks5://127.0.0.1:1080"),
        ("socks5h://u:p%40ss@proxy:9050", ("socks5h", "proxy", 9050, "u", "p@ss"), "socks5h://u@proxy:9050"),
        ("SOCKS4A://h:1", ("socks4a", "h", 1, None, None), "socks4a://h:1"),
        ("http://[::1]:3128/", ("http", "::1", 3128, None, None), "http://[::1]:3128"),
        ("http://proxy", ("http", "proxy", 8080, None, None), "http://proxy:8080"),
    ],
)
def test_proxy_url(text: str, want: tuple[object, ...], shown: str) -> None:
    p = Proxy.parse(text)
    assert (p.scheme, p.host, p.port, p.username, p.password) == want
    assert str(p) == shown
    assert p.remote_dns == (p.scheme in ("socks5h", "socks4a", "http"))


@pytest.mark.parametrize("text", ["", "proxy:1080", "https://h:1", "socks5://:1080", "socks5://h:x", "socks5://h/p"])
def test_bad_proxy_url(text: str) -> None:
    with pytest.raises(sc.UsageError, match="bad proxy"):
        Proxy.parse(text)
