"""The synchronous library (SPEC §4) on real loopback and Unix sockets: no mocks."""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import Bg as _Bg

import sockcat
from sockcat import (
    Address,
    AddressError,
    IncompleteReadError,
    LimitOverrunError,
    NetworkError,
    SockcatError,
    UsageError,
)
from sockcat.net.sockets import _happy_eyeballs
from sockcat.net.tls import client_context, fingerprint_sha256

T = 5.0  # every blocking call in this file is bounded by this
pytestmark = pytest.mark.timeout(30)


class Bg(_Bg):
    TIMEOUT = T


def insecure() -> ssl.SSLContext:
    return client_context(insecure=True)


def abstract_name() -> str:
    return f"@sockcat-lib-{uuid.uuid4().hex}"


@pytest.fixture
def tcp_listener() -> Iterator[sockcat.Listener]:
    with sockcat.listen("tcp://127.0.0.1:0") as lst:
        lst.settimeout(T)
        yield lst


def pair(lst: sockcat.Listener, **kw: Any) -> tuple[sockcat.Stream, sockcat.Stream]:
    """(client, server) streams connected through ``lst`` (the accept runs in a thread for TLS)."""
    lst.settimeout(T)
    acc = Bg(lst.accept)
    client = sockcat.connect(str(lst.address), timeout=T, **kw)
    server = acc.get()
    server.settimeout(T)
    return client, server


def read_to_eof(s: sockcat.Stream) -> bytes:
    out = bytearray()
    while data := s.recv():
        out += data
    return bytes(out)


# --- connect / listen / accept --------------------------------------------------------------------


def test_listener_address_is_bound_address_with_real_port(tcp_listener: sockcat.Listener) -> None:
    a = tcp_listener.address
    assert isinstance(a, Address)
    assert a.scheme == "tcp"
    assert a.host == "127.0.0.1"
    assert a.port != 0
    assert a.port == tcp_listener.socket.getsockname()[1]
    assert Address.parse(str(a)) == a
    assert str(a) == f"tcp://127.0.0.1:{a.port}"


def test_connect_accept_exchange(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client, server:
        assert isinstance(client, sockcat.Stream)
        assert isinstance(server, sockcat.Stream)
        client.send_line(b"hello")
        assert server.recv_line() == b"hello\n"
        server.sendall(b"world\n")
        assert client.recv_line() == b"world\n"
        # Each side's peer is the other's address.
        assert client.peer == tcp_listener.address
        assert server.peer == client.address
        assert client.address is not None
        assert client.address.port == client.socket.getsockname()[1]


def test_connect_accepts_an_address_object(tcp_listener: sockcat.Listener) -> None:
    acc = Bg(tcp_listener.accept)
    with sockcat.connect(tcp_listener.address, timeout=T) as c, acc.get() as s:
        c.sendall("str data")
        assert s.recv_exactly(8) == b"str data"


def test_iterating_a_listener_is_an_accept_loop(tcp_listener: sockcat.Listener) -> None:
    def serve() -> list[bytes]:
        got = []
        for conn in tcp_listener:
            with conn:
                conn.settimeout(T)
                got.append(conn.recv_line(drop=True))
            if len(got) == 3:
                break
        return got

    bg = Bg(serve)
    for i in range(3):
        with sockcat.connect(str(tcp_listener.address), timeout=T) as c:
            c.send_line(f"client {i}")
            # Wait until the server is done with this one so the order is fixed.
            assert c.recv() == b""
    assert bg.get() == [b"client 0", b"client 1", b"client 2"]


def test_listener_accept_timeout_raises_timeout_error(tcp_listener: sockcat.Listener) -> None:
    tcp_listener.settimeout(0.2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        tcp_listener.accept()
    assert isinstance(info.value, SockcatError)
    assert 0.15 < time.monotonic() - t0 < 3


def test_listen_on_a_datagram_address_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        sockcat.listen("udp://127.0.0.1:0")


# --- reading -----------------------------------------------------------------------------------------


def test_recv_line_until_exactly_and_max_size(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client, server:
        server.sendall(b"one\ntwo\r\nthree--four\n" + b"x" * 100 + b"\nlast")
        assert client.recv_line() == b"one\n"
        assert client.recv_line(drop=True) == b"two\r"
        assert client.recv_until(b"--") == b"three--"
        assert client.recv_until("\n", drop=True) == b"four"
        with pytest.raises(LimitOverrunError) as info:
            client.recv_line(max_size=50)
        assert isinstance(info.value, SockcatError)
        assert isinstance(info.value, ValueError)
        # The bytes stayed buffered.
        assert client.recv_exactly(100) == b"x" * 100
        assert client.recv_line() == b"\n"
        assert client.recv(2) == b"la"
        assert client.recv_exactly(2) == b"st"


def test_recv_line_max_size_counts_the_delimiter(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client, server:
        server.sendall(b"abcd\nabcde\n")
        assert client.recv_line(max_size=5) == b"abcd\n"
        with pytest.raises(LimitOverrunError):
            client.recv_line(max_size=5)
        assert client.recv_line(max_size=6) == b"abcde\n"


def test_recv_exactly_incomplete_carries_partial(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client:
        server.sendall(b"abc")
        server.close()
        with pytest.raises(IncompleteReadError) as info:
            client.recv_exactly(10)
        assert info.value.partial == b"abc"
        assert info.value.expected == 10
        assert isinstance(info.value, EOFError)
        assert isinstance(info.value, SockcatError)
        assert client.recv() == b""


def test_recv_line_incomplete_carries_partial(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client:
        server.sendall(b"no newline")
        server.close()
        with pytest.raises(IncompleteReadError) as info:
            client.recv_line()
        assert info.value.partial == b"no newline"


def test_send_line_str_and_bytes(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client, server:
        client.send_line("héllo 小王")
        client.send_line(b"raw\x00bytes")
        client.send_line(bytearray(b"ba"))
        assert server.recv_line() == "héllo 小王\n".encode()
        assert server.recv_line() == b"raw\x00bytes\n"
        assert server.recv_line() == b"ba\n"


def test_unrecv_puts_bytes_back(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client, server:
        server.sendall(b"world\n")
        assert client.recv_exactly(6) == b"world\n"
        client.unrecv(b"hello ")
        client.unrecv(b">> ")
        server.sendall(b"again\n")
        assert client.recv_line() == b">> hello again\n"


def test_timeout_raises_and_never_returns_empty(tcp_listener: sockcat.Listener) -> None:
    acc = Bg(tcp_listener.accept)
    with sockcat.connect(str(tcp_listener.address), timeout=0.3) as client, acc.get() as server:
        for op in (client.recv, client.recv_line, lambda: client.recv_exactly(3), lambda: client.recv_until(b"!")):
            t0 = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                op()
            assert 0.2 < time.monotonic() - t0 < 3
            assert isinstance(info.value, SockcatError)
            assert isinstance(info.value, OSError)
            assert info.value.errno == errno.ETIMEDOUT
        # A partial line survives a timeout: nothing read so far is lost.
        server.sendall(b"par")
        with pytest.raises(TimeoutError):
            client.recv_line()
        server.sendall(b"tial\n")
        assert client.recv_line() == b"partial\n"
        # The stream still works after timeouts.
        server.sendall(b"late")
        assert client.recv() == b"late"


def test_recv_until_other_delimiter_after_timeout(tcp_listener: sockcat.Listener) -> None:
    acc = Bg(tcp_listener.accept)
    with sockcat.connect(str(tcp_listener.address), timeout=0.3) as client, acc.get() as server:
        server.sendall(b"key: value")
        with pytest.raises(TimeoutError):
            client.recv_line()
        assert client.recv_until(b":") == b"key:"


def test_empty_bytes_means_peer_closed(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client:
        server.sendall(b"bye")
        server.close()
        assert client.recv() == b"bye"
        assert client.recv() == b""
        assert client.recv() == b""


def test_shutdown_write_half_close(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client, server:
        client.sendall(b"request")
        client.shutdown_write()
        assert read_to_eof(server) == b"request"
        server.sendall(b"response")
        server.close()
        assert read_to_eof(client) == b"response"


def test_shutdown_shut_wr_is_a_half_close(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client, server:
        client.shutdown(socket.SHUT_WR)
        assert server.recv() == b""
        server.sendall(b"still flowing")
        assert client.recv_exactly(13) == b"still flowing"


def test_makefile(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client, server:
        f = client.makefile("rwb")
        f.write(b"via file\n")
        f.flush()
        assert server.recv_line() == b"via file\n"
        server.sendall(b"reply line\nsecond\n")
        assert f.readline() == b"reply line\n"
        assert f.readline() == b"second\n"
        f.close()


def test_socket_attribute_is_a_real_socket(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client, server:
        s = client.socket
        assert isinstance(s, socket.socket)
        assert isinstance(tcp_listener.socket, socket.socket)
        assert s.family == socket.AF_INET
        assert s.type == socket.SOCK_STREAM
        assert client.getsockname() == s.getsockname()
        assert client.getpeername() == s.getpeername() == ("127.0.0.1", tcp_listener.address.port)
        assert server.getpeername() == s.getsockname()
        assert client.fileno() == s.fileno() > 2
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        client.settimeout(2.5)
        assert client.gettimeout() == 2.5 == s.gettimeout()
        # Raw socket calls interoperate with the stream.
        s.sendall(b"raw ")
        client.sendall(b"mixed\n")
        assert server.recv_line() == b"raw mixed\n"
        server.socket.send(b"x")
        assert s.recv(1) == b"x"
        client.setblocking(False)
        assert client.gettimeout() == 0.0
        with pytest.raises(BlockingIOError):
            s.recv(10)
        with pytest.raises(OSError) as info:
            client.recv(10)
        assert info.value.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
        client.setblocking(True)
        assert client.gettimeout() is None


def test_context_managers_close(tcp_listener: sockcat.Listener) -> None:
    client, server = pair(tcp_listener)
    with client as c:
        assert c is client
        assert not client.closed
    assert client.closed
    assert client.socket.fileno() == -1
    with server:
        assert server.recv() == b""
    assert server.closed
    with sockcat.listen("tcp://127.0.0.1:0") as lst:
        port = lst.address.port
        assert lst.fileno() > 0
    assert lst.socket.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        sockcat.connect(f"tcp://127.0.0.1:{port}", timeout=T)
    with sockcat.open_datagram("udp://127.0.0.1:0") as dg:
        assert dg.fileno() > 0
    assert dg.socket.fileno() == -1


# --- Unix sockets ------------------------------------------------------------------------------------


def test_unix_stream_and_socket_file_lifecycle(short_tmp: Path) -> None:
    path = str(short_tmp / "app.sock")
    with sockcat.listen(f"unix:{path}") as lst:
        assert lst.address == Address.parse(f"unix:{path}")
        assert lst.address.path == path
        assert os.path.exists(path)
        client, server = pair(lst)
        with client, server:
            assert client.socket.family == socket.AF_UNIX
            client.send_line("over unix")
            assert server.recv_line() == b"over unix\n"
            client.shutdown_write()
            assert server.recv() == b""
            server.sendall(b"back")
            server.close()
            assert read_to_eof(client) == b"back"
    assert not os.path.exists(path), "a listener removes its own socket file on close"


def test_unix_abstract_listener() -> None:
    name = abstract_name()
    with sockcat.listen(f"unix:{name}") as lst:
        assert lst.address.is_abstract
        assert str(lst.address) == f"unix:{name}"
        client, server = pair(lst)
        with client, server:
            client.sendall(b"abstract")
            assert server.recv_exactly(8) == b"abstract"


def test_unix_stale_socket_file_is_replaced(short_tmp: Path) -> None:
    path = str(short_tmp / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.listen(1)
    dead.close()  # the file stays: a connect to it is refused
    assert os.path.exists(path)
    with sockcat.listen(f"unix:{path}") as lst:
        client, server = pair(lst)
        with client, server:
            client.sendall(b"fresh")
            assert server.recv_exactly(5) == b"fresh"
    assert not os.path.exists(path)


def test_unix_live_listener_means_address_in_use(short_tmp: Path) -> None:
    path = str(short_tmp / "live.sock")
    with sockcat.listen(f"unix:{path}") as first:
        with pytest.raises(NetworkError) as info:
            sockcat.listen(f"unix:{path}")
        assert info.value.errno == errno.EADDRINUSE
        assert "address in use" in str(info.value)
        assert path in str(info.value)
        assert isinstance(info.value, OSError)
        assert os.path.exists(path)
        assert first.socket.fileno() != -1


def test_unix_failed_second_listen_leaves_the_live_listener_untouched(short_tmp: Path) -> None:
    path = str(short_tmp / "live2.sock")
    with sockcat.listen(f"unix:{path}") as first:
        with pytest.raises(NetworkError):
            sockcat.listen(f"unix:{path}")
        client, server = pair(first)
        with client, server:
            client.sendall(b"ok")
            assert server.recv_exactly(2) == b"ok"


@pytest.mark.parametrize("backend", ["netlink", "proc"])
def test_unix_liveness_is_read_from_the_kernel_table_without_connecting(backend: str, short_tmp: Path) -> None:
    """Both ways of reading the kernel's socket table tell live from stale, and neither connects."""
    from sockcat.net import unixstale as _unixstale

    probe = _unixstale._by_netlink if backend == "netlink" else _unixstale._by_proc

    def ask(path: str) -> bool | None:
        return probe(os.stat(path)) if backend == "netlink" else probe(path, os.stat(path))  # type: ignore[call-arg]

    live = str(short_tmp / "live.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lst:
        lst.bind(live)
        lst.listen(4)
        assert ask(live) is True
        lst.setblocking(False)
        with pytest.raises(BlockingIOError):
            lst.accept()  # nothing was queued by asking
        # an accepted connection that outlives its listener does not make the file live
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(live)
        lst.setblocking(True)
        accepted, _ = lst.accept()
    with client, accepted:
        assert ask(live) is False

    gram = str(short_tmp / "gram.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as g:
        g.bind(gram)
        assert ask(gram) is True
    assert ask(gram) is False

    rel = "rel-live.sock"
    cwd = os.getcwd()
    os.chdir(short_tmp)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sp:
            sp.bind(rel)  # bound by a relative path: /proc/net/unix shows it so
            sp.listen(1)
            assert ask(str(short_tmp / rel)) is True
    finally:
        os.chdir(cwd)


def test_unix_second_listen_queues_nothing_on_a_one_shot_listener(short_tmp: Path) -> None:
    """The refused second listen must not leave a connection in the live listener's queue."""
    path = str(short_tmp / "oneshot.sock")
    with sockcat.listen(f"unix:{path}") as first:
        with pytest.raises(NetworkError) as info:
            sockcat.listen(f"unix:{path}")
        assert info.value.errno == errno.EADDRINUSE
        first.socket.setblocking(False)
        with pytest.raises(BlockingIOError):
            first.socket.accept()


def test_unixgram_live_is_in_use_and_stale_is_replaced(short_tmp: Path) -> None:
    path = str(short_tmp / "g.sock")
    with sockcat.open_datagram(f"unixgram:{path}"):
        with pytest.raises(NetworkError) as info:
            sockcat.open_datagram(f"unixgram:{path}")
        assert info.value.errno == errno.EADDRINUSE and path in str(info.value)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(path)
    dead.close()  # the file stays
    with sockcat.open_datagram(f"unixgram:{path}") as again:
        assert str(again.address) == f"unixgram:{path}"


def test_unix_stale_check_falls_back_to_a_connect_probe(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel table cannot be read, the connect probe still tells live from stale."""
    from sockcat.net import unixstale as _unixstale

    monkeypatch.setattr(_unixstale, "_by_netlink", lambda st: None)
    monkeypatch.setattr(_unixstale, "_by_proc", lambda path, st: None)
    path = str(short_tmp / "fallback.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.listen(1)
    dead.close()
    with sockcat.listen(f"unix:{path}"):
        with pytest.raises(NetworkError) as info:
            sockcat.listen(f"unix:{path}")
        assert info.value.errno == errno.EADDRINUSE


def test_unix_listen_on_a_regular_file_leaves_it_alone(short_tmp: Path) -> None:
    path = short_tmp / "precious.txt"
    path.write_text("data")
    with pytest.raises(SockcatError) as info:
        sockcat.listen(f"unix:{path}")
    assert isinstance(info.value, OSError)
    assert path.read_text() == "data"


def test_unix_listener_does_not_remove_a_replacement_file(short_tmp: Path) -> None:
    path = str(short_tmp / "replaced.sock")
    lst = sockcat.listen(f"unix:{path}")
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(path)
        lst.close()
        assert os.path.exists(path), "close removed a socket file that another listener owns"
    finally:
        other.close()


def test_connect_missing_unix_path(short_tmp: Path) -> None:
    path = str(short_tmp / "nobody.sock")
    with pytest.raises(FileNotFoundError) as info:
        sockcat.connect(f"unix:{path}", timeout=T)
    assert isinstance(info.value, SockcatError)
    assert path in str(info.value)


# --- datagrams ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_udp_sendto_recvfrom(host: str) -> None:
    with (
        sockcat.open_datagram(f"udp://{host}:0", timeout=T) as a,
        sockcat.open_datagram(f"udp://{host}:0", timeout=T) as b,
    ):
        assert a.address.port != 0
        assert a.address.port == a.socket.getsockname()[1]
        assert a.address.type == socket.SOCK_DGRAM
        assert isinstance(a.socket, socket.socket)
        assert a.sendto(b"ping", b.address) == 4
        data, src = b.recvfrom()
        assert data == b"ping"
        assert isinstance(src, Address)
        assert src == a.address
        b.sendto("pong", str(src))
        assert a.recvfrom() == (b"pong", b.address)


def test_datagram_boundaries_are_kept() -> None:
    with (
        sockcat.open_datagram("udp://127.0.0.1:0", timeout=T) as a,
        sockcat.open_datagram("udp://127.0.0.1:0", timeout=T) as b,
    ):
        for msg in (b"one", b"two two", b""):
            a.sendto(msg, b.address)
        assert [b.recvfrom()[0] for _ in range(3)] == [b"one", b"two two", b""]


def test_datagram_timeout() -> None:
    with sockcat.open_datagram("udp://127.0.0.1:0", timeout=0.2) as a:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            a.recvfrom()
        assert isinstance(info.value, SockcatError)
        assert time.monotonic() - t0 < 3


def test_unixgram_path_and_abstract(short_tmp: Path) -> None:
    path = str(short_tmp / "dg.sock")
    name = abstract_name()
    with (
        sockcat.open_datagram(f"unixgram:{path}", timeout=T) as a,
        sockcat.open_datagram(f"unixgram:{name}", timeout=T) as b,
    ):
        assert a.address == Address.parse(f"unixgram:{path}")
        assert b.address == Address.parse(f"unixgram:{name}")
        a.sendto(b"to abstract", b.address)
        data, src = b.recvfrom()
        assert (data, src) == (b"to abstract", a.address)
        b.sendto(b"to path", str(src))
        assert a.recvfrom() == (b"to path", b.address)
    assert not os.path.exists(path)


def test_connect_datagram_udp() -> None:
    with (
        sockcat.open_datagram("udp://127.0.0.1:0", timeout=T) as server,
        sockcat.connect_datagram(str(server.address), timeout=T) as c,
    ):
        assert c.peer == server.address
        c.send(b"hello")
        data, src = server.recvfrom()
        assert data == b"hello"
        assert src == c.address
        server.sendto(b"reply", src)
        assert c.recv() == b"reply"


def test_connect_datagram_unixgram_autobinds(short_tmp: Path) -> None:
    path = str(short_tmp / "srv.sock")
    with (
        sockcat.open_datagram(f"unixgram:{path}", timeout=T) as server,
        sockcat.connect_datagram(f"unixgram:{path}", timeout=T) as c,
    ):
        c.send(b"q")
        data, src = server.recvfrom()
        assert data == b"q"
        assert src == c.address
        assert src.is_abstract, "an autobound client has an abstract name replies can reach"
        server.sendto(b"a", src)
        assert c.recv() == b"a"


# --- errors ------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused() -> None:
    port = _closed_port()
    with pytest.raises(ConnectionRefusedError) as info:
        sockcat.connect(f"tcp://127.0.0.1:{port}", timeout=T)
    err = info.value
    assert isinstance(err, sockcat.SockcatError)
    assert isinstance(err, NetworkError)
    assert isinstance(err, OSError)
    assert err.errno == errno.ECONNREFUSED
    assert f"127.0.0.1:{port}" in str(err)
    assert "refused" in str(err)


def test_unresolvable_host() -> None:
    with pytest.raises(SockcatError) as info:
        sockcat.connect("tcp://x.invalid:80", timeout=T)
    assert isinstance(info.value, OSError)
    assert "x.invalid" in str(info.value)


@pytest.mark.parametrize(
    ("text", "part"),
    [("tcp://[::1:80", "unclosed '['"), ("tcp://host", ""), ("bogus://h:1", "bogus"), ("tcp://h:99999", "")],
)
def test_malformed_address(text: str, part: str) -> None:
    for call in (sockcat.connect, sockcat.listen, sockcat.open_datagram):
        with pytest.raises(AddressError) as info:
            call(text)
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, SockcatError)
        assert repr(text) in str(info.value)
        assert part in str(info.value)


def test_localhost_name_connects(tcp_listener: sockcat.Listener) -> None:
    acc = Bg(tcp_listener.accept)
    with sockcat.connect(f"tcp://localhost:{tcp_listener.address.port}", timeout=T) as c, acc.get() as s:
        c.sendall(b"by name")
        assert s.recv_exactly(7) == b"by name"


def test_happy_eyeballs_falls_back_past_a_refused_address(tcp_listener: sockcat.Listener) -> None:
    """Two candidates (refused ::1 first, then the live IPv4 listener): the second wins."""
    port = tcp_listener.address.port
    dead6 = socket.socket(socket.AF_INET6)
    dead6.bind(("::1", 0))
    dead_port = dead6.getsockname()[1]
    dead6.close()
    infos = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, ("::1", dead_port, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, ("127.0.0.1", port)),
    ]
    acc = Bg(tcp_listener.accept)
    sock = _happy_eyeballs(infos, Address.parse(f"tcp://localhost:{port}"), T, (), None)
    with sock, acc.get() as server:
        assert sock.getpeername() == ("127.0.0.1", port)
        assert sock.gettimeout() == T
        sock.sendall(b"he")
        assert server.recv_exactly(2) == b"he"


def test_happy_eyeballs_every_address_refused() -> None:
    p4 = _closed_port()
    infos = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, ("::1", p4, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, ("127.0.0.1", p4)),
    ]
    with pytest.raises(ConnectionRefusedError):
        _happy_eyeballs(infos, Address.parse(f"tcp://localhost:{p4}"), T, (), None)


def test_source_address_bind(tcp_listener: sockcat.Listener) -> None:
    acc = Bg(tcp_listener.accept)
    with sockcat.connect(str(tcp_listener.address), timeout=T, source="tcp://127.0.0.1:0") as c, acc.get() as s:
        assert c.getsockname()[0] == "127.0.0.1"
        assert s.peer == c.address


def test_sockopts_on_connect(tcp_listener: sockcat.Listener) -> None:
    acc = Bg(tcp_listener.accept)
    with sockcat.connect(str(tcp_listener.address), timeout=T, sockopts=["nodelay=1"]) as c, acc.get():
        assert c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# --- TLS ---------------------------------------------------------------------------------------------

FINGERPRINT_RE = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


@pytest.fixture
def tls_listener() -> Iterator[sockcat.Listener]:
    with sockcat.listen("tls://127.0.0.1:0") as lst:
        lst.settimeout(T)
        yield lst


def test_tls_self_signed_listener(tls_listener: sockcat.Listener) -> None:
    assert tls_listener.address.scheme == "tls"
    assert tls_listener.address.port != 0
    assert tls_listener.fingerprint is not None
    assert FINGERPRINT_RE.match(tls_listener.fingerprint)
    client, server = pair(tls_listener, ssl_context=insecure())
    with client, server:
        # .socket is the real TCP socket: TLS runs over it (safe for a reading and a writing thread).
        assert type(client.socket) is socket.socket and not isinstance(client.socket, ssl.SSLSocket)
        assert client.tls_version in ("TLSv1.2", "TLSv1.3")
        der = client.getpeercert(binary_form=True)
        assert der is not None
        assert fingerprint_sha256(der) == tls_listener.fingerprint
        client.send_line("secret")
        assert server.recv_line() == b"secret\n"
        server.send_line(b"ack")
        assert client.recv_line(drop=True) == b"ack"


def test_tls_default_verification_fails(tls_listener: sockcat.Listener) -> None:
    def server_side() -> None:
        with pytest.raises(NetworkError):
            tls_listener.accept()

    bg = Bg(server_side)
    with pytest.raises(NetworkError) as info:
        sockcat.connect(str(tls_listener.address), timeout=T)
    assert isinstance(info.value, SockcatError)
    assert isinstance(info.value, OSError)
    assert "certificate verify failed" in str(info.value)
    bg.get()


def test_tls_iteration_skips_a_failed_handshake(tls_listener: sockcat.Listener) -> None:
    def serve() -> bytes:
        for conn in tls_listener:
            with conn:
                conn.settimeout(T)
                return conn.recv_line()
        return b""

    bg = Bg(serve)
    with pytest.raises(NetworkError):
        sockcat.connect(str(tls_listener.address), timeout=T)  # verification fails: server skips it
    with sockcat.connect(str(tls_listener.address), timeout=T, ssl_context=insecure()) as c:
        c.send_line("second")
        assert bg.get() == b"second\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_tls_trustme_ca_verifies(ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with sockcat.listen("tls://127.0.0.1:0", ssl_context=server_ctx) as lst:
        assert lst.fingerprint is None
        port = lst.address.port
        for target in (f"tls://127.0.0.1:{port}", f"tls://localhost:{port}"):
            client, server = pair_to(lst, target, ssl_context=client_context(ca=str(ca_file)))
            with client, server:
                client.sendall(b"verified")
                assert server.recv_exactly(8) == b"verified"
        # Wrong name: verification of the host name fails.
        bg = Bg(_expect_handshake_failure, lst)
        with pytest.raises(NetworkError) as info:
            sockcat.connect(
                f"tls://127.0.0.1:{port}", timeout=T, ssl_context=client_context(ca=str(ca_file)), sni="other.example"
            )
        assert "certificate verify failed" in str(info.value)
        bg.get()


def test_tls_listener_with_cert_and_key_files(ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    with sockcat.listen("tls://127.0.0.1:0", cert=str(cert_file), key=str(key_file)) as lst:
        assert lst.fingerprint is None
        client, server = pair(lst, ssl_context=client_context(ca=str(ca_file)))
        with client, server:
            server.sendall(b"from file cert")
            assert client.recv_exactly(14) == b"from file cert"


def _expect_handshake_failure(lst: sockcat.Listener) -> None:
    with pytest.raises(NetworkError):
        lst.accept()


def pair_to(lst: sockcat.Listener, target: str, **kw: Any) -> tuple[sockcat.Stream, sockcat.Stream]:
    acc = Bg(lst.accept)
    client = sockcat.connect(target, timeout=T, **kw)
    server = acc.get()
    server.settimeout(T)
    return client, server


def test_tls_half_close(tls_listener: sockcat.Listener) -> None:
    client, server = pair(tls_listener, ssl_context=insecure())
    with client, server:
        client.sendall(b"tls request")
        client.shutdown_write()
        assert read_to_eof(server) == b"tls request"
        server.sendall(b"tls reply")
        server.shutdown_write()
        assert read_to_eof(client) == b"tls reply"


def test_tls_timeout(tls_listener: sockcat.Listener) -> None:
    client, server = pair(tls_listener, ssl_context=insecure())
    with client, server:
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recv()
        server.sendall(b"after")
        client.settimeout(T)
        assert client.recv_exactly(5) == b"after"


def test_empty_host_listens_dual_stack() -> None:
    with sockcat.listen("tcp://:0") as lst:
        assert lst.address.host == ""
        port = lst.address.port
        assert port != 0
        for target, peer_host in ((f"tcp://127.0.0.1:{port}", "127.0.0.1"), (f"tcp://[::1]:{port}", "::1")):
            client, server = pair_to(lst, target)
            with client, server:
                assert server.peer is not None
                assert server.peer.host == peer_host, "an IPv4 peer shows as IPv4, not ::ffff:…"
                client.sendall(b"dual")
                assert server.recv_exactly(4) == b"dual"


def test_dual_stack_datagram_talks_to_ipv4() -> None:
    with (
        sockcat.open_datagram("udp://:0", timeout=T) as any_,
        sockcat.open_datagram("udp://127.0.0.1:0", timeout=T) as v4,
    ):
        v4.sendto(b"hi", f"udp://127.0.0.1:{any_.address.port}")
        data, src = any_.recvfrom()
        assert (data, src) == (b"hi", v4.address)
        any_.sendto(b"ho", src)
        assert v4.recvfrom() == (b"ho", Address.parse(f"udp://127.0.0.1:{any_.address.port}"))


def test_tls_handshake_timeout(tcp_listener: sockcat.Listener) -> None:
    """A TLS client facing a server that never answers the handshake gives up with TimeoutError."""
    acc = Bg(tcp_listener.accept)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        sockcat.connect(f"tls://127.0.0.1:{tcp_listener.address.port}", timeout=0.5, ssl_context=insecure())
    assert isinstance(info.value, SockcatError)
    assert time.monotonic() - t0 < 3
    acc.get().close()
