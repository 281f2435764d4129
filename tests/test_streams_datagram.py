"""sockcat.streams.datagram (docs/reference.md#library-api): open_datagram, connect_datagram and Datagram over udp and
unixgram, on real sockets."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from helpers_streams import T, abstract_name

import sockcat
from sockcat import Address, SockcatError

pytestmark = pytest.mark.timeout(30)


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


def test_unixgram_close_does_not_remove_a_replacement_file(short_tmp: Path) -> None:
    """Closing removes the socket file it bound, but not one another process put there since."""
    path = str(short_tmp / "dg.sock")
    mine = sockcat.open_datagram(f"unixgram:{path}")
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        other.bind(path)
        mine.close()
        assert os.path.exists(path), "close removed a socket file that another socket owns"
    finally:
        other.close()
    with sockcat.open_datagram(f"unixgram:{path}") as again:  # the stale file is taken over...
        assert again.address.path == path
    assert not os.path.exists(path)  # ...and removed on close, being its own
