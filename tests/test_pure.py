"""Pure pieces: AccessPolicy, SockOpt.parse, HexDumper, and the errno -> exception mapping."""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sockcat
from sockcat import NetworkError, SockcatError, UsageError
from sockcat.core.access import AccessPolicy
from sockcat.core.errors import describe, network_error
from sockcat.core.hexdump import HexDumper
from sockcat.net.options import NAMES, SockOpt, apply_sockopts, parse_sockopts

SETTINGS = settings(max_examples=200, deadline=None, database=None)

# --- AccessPolicy -----------------------------------------------------------------------------------


def test_empty_policy_permits_everyone() -> None:
    p = AccessPolicy.parse()
    assert not p.active
    for host in ("127.0.0.1", "::1", "10.1.2.3", "", "/tmp/x.sock"):
        assert p.permits(host)


def test_allow_only_listed_networks() -> None:
    p = AccessPolicy.parse(allow=["10.0.0.0/8", "192.168.1.7"])
    assert p.active
    assert p.permits("10.200.3.4")
    assert p.permits("192.168.1.7")
    assert not p.permits("192.168.1.8")
    assert not p.permits("11.0.0.1")
    assert not p.permits("::1")  # an IPv6 peer matches no IPv4 allow rule


def test_deny_only() -> None:
    p = AccessPolicy.parse(deny=["127.0.0.2/32"])
    assert p.permits("127.0.0.1")
    assert not p.permits("127.0.0.2")


def test_deny_wins_over_allow() -> None:
    p = AccessPolicy.parse(allow=["127.0.0.0/8"], deny=["127.0.0.2"])
    assert p.permits("127.0.0.1")
    assert not p.permits("127.0.0.2")
    p6 = AccessPolicy.parse(allow=["::/0"], deny=["::1"])
    assert not p6.permits("::1")
    assert p6.permits("2001:db8::1")


def test_ipv4_mapped_ipv6_peer_is_judged_as_ipv4() -> None:
    deny = AccessPolicy.parse(deny=["127.0.0.1"])
    assert not deny.permits("::ffff:127.0.0.1")
    assert deny.permits("::ffff:127.0.0.9")
    allow = AccessPolicy.parse(allow=["127.0.0.0/8"])
    assert allow.permits("::ffff:127.0.0.5")
    assert not allow.permits("::ffff:10.0.0.1")


def test_rules_written_as_ipv4_mapped_ipv6_mean_ipv4() -> None:
    deny = AccessPolicy.parse(deny=["::ffff:127.0.0.1"])
    assert not deny.permits("127.0.0.1") and not deny.permits("::ffff:127.0.0.1")
    assert deny.permits("127.0.0.2")
    allow = AccessPolicy.parse(allow=["::ffff:10.0.0.0/104"])
    assert allow.permits("10.9.8.7") and not allow.permits("11.0.0.1")
    assert AccessPolicy.parse(deny=["::/0"]).permits("127.0.0.1")  # a plain IPv6 rule stays IPv6


def test_ipv6_with_zone_id() -> None:
    p = AccessPolicy.parse(allow=["fe80::/10"])
    assert p.permits("fe80::1%eth0")
    assert not p.permits("2001:db8::1%eth0")


def test_unix_peers() -> None:
    assert AccessPolicy.parse(deny=["0.0.0.0/0"]).permits("")
    assert AccessPolicy.parse(deny=["0.0.0.0/0"]).permits("/tmp/peer.sock")
    assert not AccessPolicy.parse(allow=["127.0.0.1"]).permits("")
    assert not AccessPolicy.parse(allow=["127.0.0.1"]).permits("\0abstract")


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-an-ip", "1.2.3.4/x", "::1/129", ""])
def test_bad_cidr_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        AccessPolicy.parse(allow=[bad])
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, SockcatError)


def test_cidr_host_bits_are_tolerated() -> None:
    p = AccessPolicy.parse(allow=["10.1.2.3/8"])
    assert p.allow == (ipaddress.ip_network("10.0.0.0/8"),)


ipv4s = st.integers(0, 2**32 - 1).map(lambda n: ipaddress.IPv4Address(n))
nets4 = st.tuples(ipv4s, st.integers(0, 32)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))


@SETTINGS
@given(st.lists(nets4, max_size=3), st.lists(nets4, max_size=3), ipv4s, st.booleans())
def test_policy_property(
    allow: list[ipaddress.IPv4Network],
    deny: list[ipaddress.IPv4Network],
    ip: ipaddress.IPv4Address,
    mapped: bool,
) -> None:
    p = AccessPolicy.parse([str(n) for n in allow], [str(n) for n in deny])
    want = not any(ip in n for n in deny) and (not allow or any(ip in n for n in allow))
    host = f"::ffff:{ip}" if mapped else str(ip)
    assert p.permits(host) is want


# --- SockOpt.parse ----------------------------------------------------------------------------------


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


# --- HexDumper --------------------------------------------------------------------------------------


def test_hexdump_exact_format() -> None:
    h = HexDumper(">")
    lines = h.lines(b"0123456789abcdefXY\x00\x7f")
    assert lines == [
        "> 00000000  30 31 32 33 34 35 36 37  38 39 61 62 63 64 65 66  |0123456789abcdef|",
        "> 00000010  58 59 00 7f                                       |XY..|",
    ]


def test_hexdump_offsets_continue_across_chunks() -> None:
    h = HexDumper("<")
    assert h.lines(b"A" * 20)[-1].startswith("< 00000010  ")
    second = h.lines(b"hello world\n")
    assert second[0].startswith("< 00000014  68 65 6c 6c 6f 20 77 6f  72 6c 64 0a")
    assert second[0].endswith("|hello world.|")
    assert h.offset == 32
    assert h.lines(b"") == []
    assert h.offset == 32
    assert h.lines(b"\xff")[0].startswith("< 00000020  ff ")


LINE_RE = re.compile(r"^(.) ([0-9a-f]{8})  (.{49}) \|(.*)\|$")


@SETTINGS
@given(st.lists(st.binary(max_size=70), max_size=6))
def test_hexdump_roundtrip_property(chunks: list[bytes]) -> None:
    h = HexDumper(">")
    offset = 0
    for chunk in chunks:
        lines = h.lines(chunk)
        assert len(lines) == (len(chunk) + 15) // 16
        for i, line in enumerate(lines):
            m = LINE_RE.match(line)
            assert m, line
            assert int(m.group(2), 16) == offset + 16 * i
            row = chunk[16 * i : 16 * i + 16]
            assert bytes.fromhex(m.group(3)) == row
            assert m.group(4) == "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        offset += len(chunk)
        assert h.offset == offset


# --- errno -> exception mapping ---------------------------------------------------------------------


def test_refused_maps_to_connection_refused() -> None:
    orig = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    err = network_error(orig, "connect tcp://127.0.0.1:9")
    assert isinstance(err, ConnectionRefusedError)
    assert isinstance(err, sockcat.SockcatError)
    assert isinstance(err, NetworkError)
    assert isinstance(err, OSError)
    assert err.errno == errno.ECONNREFUSED
    assert str(err) == "connect tcp://127.0.0.1:9: connection refused"
    assert err.__cause__ is orig


@pytest.mark.parametrize("exc", [TimeoutError(), TimeoutError("timed out"), TimeoutError(errno.ETIMEDOUT, "x")])
def test_timeout_maps_to_timeout_error(exc: OSError) -> None:
    err = network_error(exc, "recv from x")
    assert isinstance(err, TimeoutError)
    assert isinstance(err, SockcatError)
    assert err.errno == errno.ETIMEDOUT
    assert str(err) == "recv from x: timed out"


@pytest.mark.parametrize(
    ("code", "builtin"),
    [
        (errno.ECONNRESET, ConnectionResetError),
        (errno.ECONNABORTED, ConnectionAbortedError),
        (errno.EPIPE, BrokenPipeError),
        (errno.ENOENT, FileNotFoundError),
        (errno.EACCES, PermissionError),
        (errno.EPERM, PermissionError),
        (errno.ETIMEDOUT, TimeoutError),
    ],
)
def test_errno_maps_to_builtin_subclass(code: int, builtin: type[OSError]) -> None:
    err = network_error(OSError(code, "whatever"), "op")
    assert isinstance(err, builtin)
    assert isinstance(err, SockcatError)
    assert err.errno == code


def test_address_in_use_and_unknown_errno() -> None:
    err = network_error(OSError(errno.EADDRINUSE, "Address already in use"), "listen tcp://:80")
    assert type(err) is NetworkError
    assert err.errno == errno.EADDRINUSE
    assert str(err) == "listen tcp://:80: address in use"
    other = network_error(OSError(errno.EIO, "Input/output error"), "recv")
    assert type(other) is NetworkError
    assert str(other) == "recv: input/output error"


def test_network_error_passes_through() -> None:
    e = NetworkError(errno.EPROTO, "tls: bad")
    assert network_error(e, "ignored") is e


def test_eagain_maps_to_blocking_io_error() -> None:
    err = network_error(BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"), "recv")
    assert isinstance(err, BlockingIOError)


@pytest.mark.parametrize(
    "code", [errno.EAGAIN, errno.EINPROGRESS, errno.EALREADY, errno.EINTR, errno.EEXIST, errno.ESHUTDOWN, errno.ENOTDIR]
)
def test_network_errors_keep_the_builtin_subclass_python_picks(code: int) -> None:
    """Whatever builtin OSError subclass Python raises for an errno, the mapped error is one too."""
    builtin = type(OSError(code, "x"))
    assert builtin is not OSError
    err = network_error(builtin(code, "x"), "op")
    assert isinstance(err, builtin) and isinstance(err, NetworkError) and isinstance(err, SockcatError)
    assert err.errno == code


# --- start-up: `import sockcat` and the command line load only what they use ---------------------------


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return set(out.decode().split())


HEAVY = {
    "ssl",
    "asyncio",
    "sockcat.streams.sync",
    "sockcat.engines.relay",
    "sockcat.engines.bench",
    "sockcat.engines.services",
    "sockcat.aio",
}


def test_import_sockcat_is_lazy() -> None:
    assert not HEAVY & _modules_after("import sockcat")


def test_cli_parser_loads_no_socket_tls_or_asyncio_code() -> None:
    """`sockcat --help` / `--version` build the parser only: no socket engine, TLS or asyncio."""
    assert not HEAVY & _modules_after("import sockcat.cli\nsockcat.cli.build_parser()")


def test_every_public_name_still_imports() -> None:
    loaded = _modules_after(f"from sockcat import {', '.join(sockcat.__all__)}\nfrom sockcat import aio")
    assert {"sockcat.streams.sync", "sockcat.engines.relay", "sockcat.aio"} <= loaded
    assert set(sockcat.__all__) <= set(dir(sockcat))
    with pytest.raises(AttributeError):
        sockcat.no_such_name  # noqa: B018


def test_describe() -> None:
    assert describe(TimeoutError()) == "timed out"
    assert describe(OSError(errno.ECONNREFUSED, "Connection refused")) == "connection refused"
    assert describe(OSError(errno.EHOSTUNREACH, "No route")) == "host unreachable"


def test_describe_ssl_error_is_clean_and_not_an_errno() -> None:
    """An SSLError's errno is an SSL_ERROR_* code (1 = SSL_ERROR_SSL): it must not read as EPERM."""
    import socket
    import ssl

    from sockcat.core.errors import describe

    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"HTTP/1.0 200 OK\r\n\r\n" * 4)
        with pytest.raises(ssl.SSLError) as info:
            ssl.create_default_context().wrap_socket(a, server_hostname="example.test")
    text = describe(info.value)
    assert text == "wrong version number"
    assert "_ssl.c" not in describe(ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)"))
