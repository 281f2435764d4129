"""sockcat.net.options: --sockopt parsed (SockOpt.parse) and applied to real sockets."""

from __future__ import annotations

import socket
import struct

import pytest

from sockcat import UsageError
from sockcat.net.options import NAMES, SockOpt, apply_sockopts, parse_sockopts


def test_known_names_include_the_documented_ones() -> None:
    for name in ("nodelay", "keepalive", "reuseaddr", "reuseport", "rcvbuf", "sndbuf", "v6only", "broadcast", "ttl"):
        assert name in NAMES


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("nodelay", 1),
        ("nodelay=1", 1),
        ("nodelay=0", 0),
        ("nodelay=on", 1),
        ("nodelay=off", 0),
        ("keepalive=yes", 1),
        ("keepalive=no", 0),
        ("keepalive=TRUE", 1),
        ("reuseaddr=false", 0),
        ("NoDelay=On", 1),
    ],
)
def test_bool_words(text: str, value: int) -> None:
    opt = SockOpt.parse(text)
    assert opt.value == value
    assert opt.name in ("nodelay", "keepalive", "reuseaddr")


def test_nodelay_level_and_option() -> None:
    opt = SockOpt.parse("nodelay=1")
    assert (opt.level, opt.option, opt.name) == (socket.IPPROTO_TCP, socket.TCP_NODELAY, "nodelay")
    assert opt.applies_to(socket.AF_INET, socket.SOCK_STREAM)
    assert opt.applies_to(socket.AF_INET6, socket.SOCK_STREAM)
    assert not opt.applies_to(socket.AF_INET, socket.SOCK_DGRAM)
    assert not opt.applies_to(socket.AF_UNIX, socket.SOCK_STREAM)


@pytest.mark.parametrize(("text", "value"), [("rcvbuf=65536", 65536), ("sndbuf=0x1000", 4096), ("ttl=7", 7)])
def test_ints(text: str, value: int) -> None:
    assert SockOpt.parse(text).value == value


def test_dash_is_underscore() -> None:
    opt = SockOpt.parse("user-timeout=1500")
    assert opt.name == "user_timeout"
    assert opt.value == 1500


def test_linger_packs_struct() -> None:
    opt = SockOpt.parse("linger=5")
    assert (opt.level, opt.option) == (socket.SOL_SOCKET, socket.SO_LINGER)
    assert opt.value == struct.pack("ii", 1, 5)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bogus=1", "unknown socket option"),
        ("rcvbuf", "needs a value"),
        ("rcvbuf=abc", "whole number"),
        ("rcvbuf=-1", ">= 0"),
        ("nodelay=maybe", "0/1"),
        ("linger=x", "whole number"),
    ],
)
def test_bad_options_are_usage_errors(text: str, words: str) -> None:
    with pytest.raises(UsageError) as info:
        SockOpt.parse(text)
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_v6only_applies_to_ipv6_only() -> None:
    opt = SockOpt.parse("v6only=1")
    assert opt.applies_to(socket.AF_INET6, socket.SOCK_STREAM)
    assert not opt.applies_to(socket.AF_INET, socket.SOCK_STREAM)


def test_options_really_apply_to_a_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        apply_sockopts(s, parse_sockopts(["nodelay", "keepalive=on", "rcvbuf=65536", "linger=3"]), "test")
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 65536
        assert struct.unpack("ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (1, 3)


def test_ttl_on_ipv6_socket_sets_hop_limit() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        SockOpt.parse("ttl=9").apply(s)
        assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) == 9


def test_option_that_does_not_fit_the_socket_is_a_usage_error() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, pytest.raises(UsageError) as info:
        apply_sockopts(s, parse_sockopts(["nodelay"]), "unix:/tmp/x")
    assert "does not apply" in str(info.value)
