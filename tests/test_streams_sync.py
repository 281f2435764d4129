"""sockcat.streams.sync (docs/reference.md#library-api): connect, listen, Stream and Listener on real loopback and Unix
sockets, no mocks."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import pytest
from helpers_streams import (
    Bg,
    T,
    abstract_name,
    pair,
    read_to_eof,
    tcp_listener_fixture,  # noqa: F401  (the tcp_listener fixture)
)
from helpers_streams import closed_port as _closed_port

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

pytestmark = pytest.mark.timeout(30)


# --- connect / listen / accept ------------------------------------------------------------------------


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


# --- reading ------------------------------------------------------------------------------------------


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


# --- Unix sockets -------------------------------------------------------------------------------------


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


# --- errors -------------------------------------------------------------------------------------------


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
