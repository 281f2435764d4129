"""sockcat.net.sockets through the library: name resolution, binding (source addresses, dual stack) and socket
options on connect, on real loopback sockets."""

from __future__ import annotations

import socket

import pytest
from helpers_streams import (
    Bg,
    T,
    pair_to,
    tcp_listener_fixture,  # noqa: F401  (the tcp_listener fixture)
)

import sockcat
from sockcat import Address, SockcatError

pytestmark = pytest.mark.timeout(30)


# --- resolution ---------------------------------------------------------------------------------------


def test_unresolvable_host() -> None:
    with pytest.raises(SockcatError) as info:
        sockcat.connect("tcp://x.invalid:80", timeout=T)
    assert isinstance(info.value, OSError)
    assert "x.invalid" in str(info.value)


def test_localhost_name_connects(tcp_listener: sockcat.Listener) -> None:
    acc = Bg(tcp_listener.accept)
    with sockcat.connect(f"tcp://localhost:{tcp_listener.address.port}", timeout=T) as c, acc.get() as s:
        c.sendall(b"by name")
        assert s.recv_exactly(7) == b"by name"


# --- binding and options ------------------------------------------------------------------------------


def test_source_address_bind(tcp_listener: sockcat.Listener) -> None:
    acc = Bg(tcp_listener.accept)
    with sockcat.connect(str(tcp_listener.address), timeout=T, source="tcp://127.0.0.1:0") as c, acc.get() as s:
        assert c.getsockname()[0] == "127.0.0.1"
        assert s.peer == c.address


def test_sockopts_on_connect(tcp_listener: sockcat.Listener) -> None:
    acc = Bg(tcp_listener.accept)
    with sockcat.connect(str(tcp_listener.address), timeout=T, sockopts=["nodelay=1"]) as c, acc.get():
        assert c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


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
