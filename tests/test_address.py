"""The address syntax of docs/reference.md#addresses and the ``Address`` object of #library-api, tested through the
public names only."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import string
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sockcat import Address, AddressError, SockcatError

IP_SCHEMES = ("tcp", "tcp4", "tcp6", "udp", "udp4", "udp6", "tls")
UNIX_SCHEMES = ("unix", "unixgram", "unixpacket")
ALL_SCHEMES = (*IP_SCHEMES, *UNIX_SCHEMES, "stdio")

SOCK_TYPE = {
    "tcp": socket.SOCK_STREAM,
    "tcp4": socket.SOCK_STREAM,
    "tcp6": socket.SOCK_STREAM,
    "tls": socket.SOCK_STREAM,
    "udp": socket.SOCK_DGRAM,
    "udp4": socket.SOCK_DGRAM,
    "udp6": socket.SOCK_DGRAM,
    "unix": socket.SOCK_STREAM,
    "unixgram": socket.SOCK_DGRAM,
    "unixpacket": socket.SOCK_SEQPACKET,
    "stdio": socket.SOCK_STREAM,
}

_NAME_RE = re.compile(r"[\w.-]+")


def parse(text: str) -> Address:
    addr = Address.parse(text)
    assert isinstance(addr, Address)
    return addr


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _loose_ipv4(host: str) -> bool:
    """``inet_aton`` spellings such as ``127.1`` — whether these count as literals the reference leaves open."""
    try:
        socket.inet_aton(host)
    except (OSError, ValueError):
        return False
    return True


def check_invariants(addr: Address) -> None:
    """What every successfully parsed Address must satisfy, whatever the input was."""
    assert addr.scheme in ALL_SCHEMES
    assert type(addr.port) is int
    assert 0 <= addr.port <= 65535
    assert isinstance(addr.host, str)
    assert isinstance(addr.path, str)
    assert addr.type == SOCK_TYPE[addr.scheme]
    if addr.scheme == "stdio":
        assert (addr.host, addr.port, addr.path) == ("", 0, "")
        assert addr.family == socket.AF_UNSPEC
    elif addr.scheme in UNIX_SCHEMES:
        assert (addr.host, addr.port) == ("", 0)
        assert addr.family == socket.AF_UNIX
        assert addr.path
        assert "\0" not in addr.path[1:]
    else:
        assert addr.path == ""
        host = addr.host
        ip = _ip(host) if host else None
        if ":" in host:
            assert isinstance(ip, ipaddress.IPv6Address), host
            if "%" in host:
                zone = host.split("%", 1)[1]
                assert zone, f"empty zone id in {host!r}"
                assert not re.search(r"[\s\x00-\x1f\x7f]", zone), f"white space or control in zone {host!r}"
        elif "%" in host:
            pytest.fail(f"zone id on a non-IPv6 host {host!r}")
        elif host and ip is None:
            assert _NAME_RE.fullmatch(host), f"host {host!r} is not a name"
        if addr.scheme.endswith("4"):
            assert addr.family == socket.AF_INET
            assert not isinstance(ip, ipaddress.IPv6Address)
        elif addr.scheme.endswith("6"):
            assert addr.family == socket.AF_INET6
            assert not isinstance(ip, ipaddress.IPv4Address)
        elif isinstance(ip, ipaddress.IPv4Address):
            assert addr.family == socket.AF_INET
        elif isinstance(ip, ipaddress.IPv6Address):
            assert addr.family == socket.AF_INET6
        elif host and _loose_ipv4(host):
            assert addr.family in (socket.AF_INET, socket.AF_UNSPEC)
        else:
            assert addr.family == socket.AF_UNSPEC


def check_round_trip(addr: Address) -> None:
    canonical = str(addr)
    again = parse(canonical)
    assert again == addr, (canonical, again, addr)
    assert hash(again) == hash(addr)
    assert str(again) == canonical


def fields(addr: Address) -> tuple[object, ...]:
    return (addr.scheme, addr.host, addr.port, addr.family, addr.type, addr.path)


# --------------------------------------------------------------------------------------------------------------
# Examples straight from the reference


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("tcp://127.0.0.1:80", ("tcp", "127.0.0.1", 80, socket.AF_INET, socket.SOCK_STREAM, ""), None),
        ("tcp://[::1]:80", ("tcp", "::1", 80, socket.AF_INET6, socket.SOCK_STREAM, ""), None),
        ("tcp://[::1]:8080", ("tcp", "::1", 8080, socket.AF_INET6, socket.SOCK_STREAM, ""), None),
        (
            "tcp://[fe80::1%eth0]:80",
            ("tcp", "fe80::1%eth0", 80, socket.AF_INET6, socket.SOCK_STREAM, ""),
            None,
        ),
        ("tcp://[2001:db8::1]:443", ("tcp", "2001:db8::1", 443, socket.AF_INET6, socket.SOCK_STREAM, ""), None),
        ("tcp://localhost:80", ("tcp", "localhost", 80, socket.AF_UNSPEC, socket.SOCK_STREAM, ""), None),
        (
            "tcp://example.org:65535",
            ("tcp", "example.org", 65535, socket.AF_UNSPEC, socket.SOCK_STREAM, ""),
            None,
        ),
        ("tcp://host:0", ("tcp", "host", 0, socket.AF_UNSPEC, socket.SOCK_STREAM, ""), None),
        ("tcp://my_host-1.lan:22", ("tcp", "my_host-1.lan", 22, socket.AF_UNSPEC, socket.SOCK_STREAM, ""), None),
        ("tcp://3com.example:22", ("tcp", "3com.example", 22, socket.AF_UNSPEC, socket.SOCK_STREAM, ""), None),
        ("tcp://LocalHost:80", ("tcp", "LocalHost", 80, socket.AF_UNSPEC, socket.SOCK_STREAM, ""), None),
        ("tcp://:8080", ("tcp", "", 8080, socket.AF_UNSPEC, socket.SOCK_STREAM, ""), None),
        ("tcp://:0", ("tcp", "", 0, socket.AF_UNSPEC, socket.SOCK_STREAM, ""), None),
        (
            "tcp://localhost:http",
            ("tcp", "localhost", 80, socket.AF_UNSPEC, socket.SOCK_STREAM, ""),
            "tcp://localhost:80",
        ),
        ("tcp4://127.0.0.1:80", ("tcp4", "127.0.0.1", 80, socket.AF_INET, socket.SOCK_STREAM, ""), None),
        ("tcp4://localhost:80", ("tcp4", "localhost", 80, socket.AF_INET, socket.SOCK_STREAM, ""), None),
        ("tcp4://:80", ("tcp4", "", 80, socket.AF_INET, socket.SOCK_STREAM, ""), None),
        ("tcp6://[::1]:80", ("tcp6", "::1", 80, socket.AF_INET6, socket.SOCK_STREAM, ""), None),
        ("tcp6://localhost:80", ("tcp6", "localhost", 80, socket.AF_INET6, socket.SOCK_STREAM, ""), None),
        ("tcp6://:80", ("tcp6", "", 80, socket.AF_INET6, socket.SOCK_STREAM, ""), None),
        ("udp://127.0.0.1:53", ("udp", "127.0.0.1", 53, socket.AF_INET, socket.SOCK_DGRAM, ""), None),
        ("udp://[::1]:53", ("udp", "::1", 53, socket.AF_INET6, socket.SOCK_DGRAM, ""), None),
        ("udp://localhost:53", ("udp", "localhost", 53, socket.AF_UNSPEC, socket.SOCK_DGRAM, ""), None),
        ("udp://:0", ("udp", "", 0, socket.AF_UNSPEC, socket.SOCK_DGRAM, ""), None),
        (
            "udp://localhost:domain",
            ("udp", "localhost", 53, socket.AF_UNSPEC, socket.SOCK_DGRAM, ""),
            "udp://localhost:53",
        ),
        ("udp4://localhost:53", ("udp4", "localhost", 53, socket.AF_INET, socket.SOCK_DGRAM, ""), None),
        ("udp4://10.0.0.1:53", ("udp4", "10.0.0.1", 53, socket.AF_INET, socket.SOCK_DGRAM, ""), None),
        ("udp6://localhost:53", ("udp6", "localhost", 53, socket.AF_INET6, socket.SOCK_DGRAM, ""), None),
        ("udp6://[::]:53", ("udp6", "::", 53, socket.AF_INET6, socket.SOCK_DGRAM, ""), None),
        ("tls://example.org:443", ("tls", "example.org", 443, socket.AF_UNSPEC, socket.SOCK_STREAM, ""), None),
        ("tls://127.0.0.1:443", ("tls", "127.0.0.1", 443, socket.AF_INET, socket.SOCK_STREAM, ""), None),
        ("tls://[::1]:443", ("tls", "::1", 443, socket.AF_INET6, socket.SOCK_STREAM, ""), None),
        (
            "tls://example.org:https",
            ("tls", "example.org", 443, socket.AF_UNSPEC, socket.SOCK_STREAM, ""),
            "tls://example.org:443",
        ),
        ("unix:/run/app.sock", ("unix", "", 0, socket.AF_UNIX, socket.SOCK_STREAM, "/run/app.sock"), None),
        ("unix:rel.sock", ("unix", "", 0, socket.AF_UNIX, socket.SOCK_STREAM, "rel.sock"), None),
        ("unix:sub/dir/rel.sock", ("unix", "", 0, socket.AF_UNIX, socket.SOCK_STREAM, "sub/dir/rel.sock"), None),
        (
            "unix:///abs/path",
            ("unix", "", 0, socket.AF_UNIX, socket.SOCK_STREAM, "/abs/path"),
            "unix:/abs/path",
        ),
        ("unix:///p", ("unix", "", 0, socket.AF_UNIX, socket.SOCK_STREAM, "/p"), "unix:/p"),
        ("unix:@foo", ("unix", "", 0, socket.AF_UNIX, socket.SOCK_STREAM, "\0foo"), None),
        ("unixgram:/tmp/g.sock", ("unixgram", "", 0, socket.AF_UNIX, socket.SOCK_DGRAM, "/tmp/g.sock"), None),
        ("unixgram:@bar", ("unixgram", "", 0, socket.AF_UNIX, socket.SOCK_DGRAM, "\0bar"), None),
        ("unixgram:rel", ("unixgram", "", 0, socket.AF_UNIX, socket.SOCK_DGRAM, "rel"), None),
        (
            "unixgram:///abs/g",
            ("unixgram", "", 0, socket.AF_UNIX, socket.SOCK_DGRAM, "/abs/g"),
            "unixgram:/abs/g",
        ),
        (
            "unixpacket:/tmp/p.sock",
            ("unixpacket", "", 0, socket.AF_UNIX, socket.SOCK_SEQPACKET, "/tmp/p.sock"),
            None,
        ),
        ("unixpacket:@baz", ("unixpacket", "", 0, socket.AF_UNIX, socket.SOCK_SEQPACKET, "\0baz"), None),
        ("stdio:", ("stdio", "", 0, socket.AF_UNSPEC, socket.SOCK_STREAM, ""), None),
        ("-", ("stdio", "", 0, socket.AF_UNSPEC, socket.SOCK_STREAM, ""), "stdio:"),
    ],
)
def test_parse_fields_and_canonical_form(text: str, expected: tuple[object, ...], canonical: str | None) -> None:
    addr = parse(text)
    assert fields(addr) == expected
    assert str(addr) == (canonical if canonical is not None else text)
    check_invariants(addr)
    check_round_trip(addr)


def test_ipv6_host_has_no_brackets_and_str_adds_them() -> None:
    addr = parse("tcp6://[2001:db8::42]:9000")
    assert "[" not in addr.host and "]" not in addr.host
    assert ipaddress.ip_address(addr.host) == ipaddress.ip_address("2001:db8::42")
    assert str(addr) == f"tcp6://[{addr.host}]:9000"


def test_ipv6_zone_is_kept() -> None:
    addr = parse("udp6://[fe80::abcd%lo]:5353")
    assert addr.host == "fe80::abcd%lo"
    assert addr.family == socket.AF_INET6
    assert str(addr) == "udp6://[fe80::abcd%lo]:5353"
    check_round_trip(addr)


def test_port_is_a_plain_int() -> None:
    addr = parse("tcp://h:8080")
    assert type(addr.port) is int
    assert type(parse("tcp://h:http").port) is int
    assert type(parse("unix:/x").port) is int


def test_service_name_is_resolved_from_local_database() -> None:
    assert parse("tcp://h:ssh").port == socket.getservbyname("ssh", "tcp") == 22
    assert parse("tcp://h:http") == parse("tcp://h:80")


def test_abstract_and_filesystem_paths_differ() -> None:
    assert parse("unix:@sock") != parse("unix:sock")
    assert parse("unix:@sock").path == "\0sock"
    assert parse("unix:sock").path == "sock"


def test_relative_unix_path_stays_relative() -> None:
    addr = parse("unix:./here.sock")
    assert addr.path == "./here.sock"
    assert str(addr) == "unix:./here.sock"
    check_round_trip(addr)


def test_dash_and_stdio_are_the_same_address() -> None:
    assert parse("-") == parse("stdio:")
    assert hash(parse("-")) == hash(parse("stdio:"))
    assert str(parse("-")) == "stdio:"


# --------------------------------------------------------------------------------------------------------------
# The Address object: frozen, hashable, compared by value


def test_address_is_a_frozen_dataclass() -> None:
    addr = parse("tcp://127.0.0.1:80")
    assert dataclasses.is_dataclass(addr)
    names = {f.name for f in dataclasses.fields(addr)}
    assert {"scheme", "host", "port", "family", "type", "path"} <= names
    for name in ("scheme", "host", "port", "family", "type", "path"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(addr, name, getattr(addr, name))
    assert addr.port == 80


def test_equal_spellings_are_equal_and_hash_alike() -> None:
    groups = [
        ["unix:///p", "unix:/p"],
        ["-", "stdio:"],
        ["tcp://localhost:http", "tcp://localhost:80", "tcp://localhost:www"],
        ["tls://h:https", "tls://h:443"],
    ]
    for group in groups:
        addrs = [parse(t) for t in group]
        assert all(a == addrs[0] for a in addrs), group
        assert len({hash(a) for a in addrs}) == 1, group
        assert len(set(addrs)) == 1, group


def test_equal_addresses_are_distinct_objects_compared_by_value() -> None:
    a = parse("tcp://127.0.0.1:80")
    b = parse("tcp://127.0.0.1:80")
    assert a == b
    assert hash(a) == hash(b)
    assert {a: 1}[b] == 1


def test_different_addresses_compare_unequal() -> None:
    texts = [
        "tcp://127.0.0.1:80",
        "tcp4://127.0.0.1:80",
        "udp://127.0.0.1:80",
        "tls://127.0.0.1:80",
        "tcp://127.0.0.1:81",
        "tcp://127.0.0.2:80",
        "tcp://[::1]:80",
        "tcp6://[::1]:80",
        "tcp://localhost:80",
        "tcp://:80",
        "unix:/a",
        "unix:a",
        "unix:@a",
        "unixgram:/a",
        "unixpacket:/a",
        "stdio:",
    ]
    addrs = [parse(t) for t in texts]
    assert len(set(addrs)) == len(texts)
    for i, a in enumerate(addrs):
        for j, b in enumerate(addrs):
            assert (a == b) is (i == j), (texts[i], texts[j])


def test_address_does_not_equal_its_string() -> None:
    addr = parse("tcp://127.0.0.1:80")
    assert addr != "tcp://127.0.0.1:80"


# --------------------------------------------------------------------------------------------------------------
# Malformed addresses


def test_error_hierarchy() -> None:
    assert issubclass(AddressError, SockcatError)
    assert issubclass(AddressError, ValueError)


def test_unclosed_bracket_exact_message() -> None:
    with pytest.raises(AddressError) as info:
        Address.parse("tcp://[::1:80")
    assert str(info.value) == "bad address 'tcp://[::1:80': unclosed '['"
    assert isinstance(info.value, SockcatError)
    assert isinstance(info.value, ValueError)


# (address, words of which at least one must appear, case-insensitively, in the part naming the problem)
MALFORMED = [
    ("foo://x:1", ("scheme", "foo")),
    ("http://example.com:80", ("scheme", "http")),
    ("tcp://host", ("port",)),
    ("tcp://host:", ("port",)),
    ("tcp://[::1]", ("port",)),
    ("tcp://[::1]:", ("port",)),
    ("tcp://[::1]80", ("port", "80", "]", "bracket")),
    ("udp://host", ("port",)),
    ("tls://host", ("port",)),
    ("tcp://h:65536", ("port", "65536", "range")),
    ("tcp://h:99999999999", ("port", "99999999999", "range")),
    ("tcp://h:-1", ("port", "-1", "range")),
    ("udp://h:70000", ("port", "70000", "range")),
    ("tcp://h:nosuchservicexyz", ("service", "nosuchservicexyz", "port")),
    ("tcp://[::1:80", ("unclosed", "[")),
    ("tcp://::1:80", ("bracket", "[", "ipv6", "::1", "port", "host", "colon")),
    ("tcp://fe80::1%eth0:80", ("bracket", "[", "ipv6", "fe80", "port", "host", "colon")),
    ("tcp://[zz::1]:80", ("ipv6", "zz::1", "address", "host")),
    ("tcp://[localhost]:80", ("ipv6", "localhost", "address", "host")),
    ("tcp://[]:80", ("ipv6", "empty", "address", "host", "[]")),
    ("tcp://[fe80::1%a b]:80", ("whitespace", "space", "zone", "ipv6", "address", "character")),
    ("tcp://[fe80::1%eth0\n]:80", ("whitespace", "space", "zone", "ipv6", "address", "character")),
    ("tcp://[fe80::1%a\0b]:80", ("nul", "null", "\\x00", "zone", "ipv6", "address", "character")),
    ("unix:", ("path", "empty")),
    ("unixgram:", ("path", "empty")),
    ("unixpacket:", ("path", "empty")),
    ("", ("empty", "scheme", "missing")),
    ("tcp://h ost:80", ("whitespace", "space", "host", "character", "h ost")),
    ("tcp://host :80", ("whitespace", "space", "host", "character", "host ")),
    ("tcp://host: 80", ("whitespace", "space", "port", "character", " 80")),
    ("tcp://host:8 0", ("whitespace", "space", "port", "character", "8 0")),
    ("tcp://host:8\t0", ("whitespace", "space", "port", "character", "tab", "\\t")),
    ("tcp://[::1 ]:80", ("whitespace", "space", "ipv6", "address", "host", "character")),
    ("tcp ://host:80", ("whitespace", "space", "scheme", "character")),
    ("tcp://h:80/x", ("/x", "path", "trailing", "port", "after")),
    ("tcp://h:80/", ("/", "path", "trailing", "port", "after")),
    ("tcp://h:80?a=1", ("?", "query", "trailing", "port", "after")),
    ("tcp://h:80#frag", ("#", "fragment", "trailing", "port", "after")),
    ("tcp://[::1]:80/x", ("/x", "path", "trailing", "port", "after")),
    ("tcp://h:80:90", ("port", "80:90", "colon", "host", "ipv6", "bracket")),
    ("tcp://user@host:80", ("host", "@", "user", "character")),
    ("tcp://ho$t:80", ("host", "$", "character")),
    ("unix:/tmp/a\0b", ("nul", "null", "\\x00", "\\0", "zero")),
    ("unixgram:/tmp/\0", ("nul", "null", "\\x00", "\\0", "zero")),
    ("tcp4://[::1]:80", ("ipv6", "tcp4", "ipv4", "family")),
    ("udp4://[::1]:53", ("ipv6", "udp4", "ipv4", "family")),
    ("tcp6://127.0.0.1:80", ("ipv4", "tcp6", "ipv6", "family")),
    ("udp6://127.0.0.1:53", ("ipv4", "udp6", "ipv6", "family")),
]


@pytest.mark.parametrize(("text", "words"), MALFORMED, ids=[repr(t) for t, _ in MALFORMED])
def test_malformed_address_is_rejected_quoting_it_and_naming_the_bad_part(text: str, words: tuple[str, ...]) -> None:
    with pytest.raises(AddressError) as info:
        Address.parse(text)
    err = info.value
    assert isinstance(err, SockcatError)
    assert isinstance(err, ValueError)
    message = str(err)
    quoted = repr(text)
    assert quoted in message, message
    problem = message.split(quoted, 1)[1].strip(" :")
    assert problem, f"message names no problem: {message!r}"
    assert any(w.lower() in problem.lower() for w in words), f"{message!r} names none of {words}"


@pytest.mark.parametrize(
    "text",
    ["tcp://h:8_0", "tcp://h:+80", "tcp://h:٨٠", "tcp://h:８０", "tcp://h:0x50", "tcp://h:80.0"],
)
def test_port_must_be_ascii_decimal_digits(text: str) -> None:
    # Python's int() would take all of these; a port is 0–65535 in decimal or a service name.
    with pytest.raises(AddressError) as info:
        Address.parse(text)
    assert repr(text) in str(info.value)


def test_huge_port_number_is_an_address_error() -> None:
    # int() refuses strings of more than 4300 digits with a plain ValueError: it must still be an AddressError.
    text = "tcp://h:" + "1" * 5000
    with pytest.raises(AddressError) as info:
        Address.parse(text)
    assert repr(text) in str(info.value)


def test_service_name_with_nul_or_surrogate_is_an_address_error() -> None:
    for text in ("tcp://h:ht\0tp", "tcp://h:\udcff", "tcp://h\udcff:80"):
        with pytest.raises(AddressError) as info:
            Address.parse(text)
        assert repr(text) in str(info.value)


# --------------------------------------------------------------------------------------------------------------
# Parsing never touches the network


def test_parsing_never_resolves_names(monkeypatch: pytest.MonkeyPatch) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
        if not flags & socket.AI_NUMERICHOST:
            pytest.fail(f"parse resolved {host!r}")
        return real_getaddrinfo(host, port, family, type, proto, flags)

    def forbidden(*args: object, **kwargs: object) -> None:
        pytest.fail(f"parse touched the network: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in ("gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getfqdn", "create_connection"):
        monkeypatch.setattr(socket, name, forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)

    start = time.monotonic()
    addr = Address.parse("tcp://does-not-exist.invalid:80")
    for text in ("tcp6://does-not-exist.invalid:80", "udp://does-not-exist.invalid:domain", "tls://x.invalid:1"):
        Address.parse(text)
    elapsed = time.monotonic() - start
    assert addr.host == "does-not-exist.invalid"
    assert addr.port == 80
    assert addr.family == socket.AF_UNSPEC
    assert elapsed < 1.0


# --------------------------------------------------------------------------------------------------------------
# Properties

ipv4s = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6s = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
zones = st.sampled_from(["eth0", "lo", "en0", "wlan1", "2", "br-lan"])
ports = st.integers(0, 65535)

_label = st.from_regex(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,10}[A-Za-z0-9_])?", fullmatch=True)
_last_label = st.from_regex(r"[A-Za-z]([A-Za-z0-9_-]{0,10}[A-Za-z0-9_])?", fullmatch=True)
names = st.builds(lambda head, last: ".".join([*head, last]), st.lists(_label, max_size=3), _last_label)

_PATH_CHARS = "".join(c for c in string.printable if not c.isspace()) + "éß小Ω"
_path_text = st.text(alphabet=_PATH_CHARS, min_size=1, max_size=30)
unix_paths = _path_text.filter(lambda p: not p.startswith("@") and not p.startswith("//"))
abstract_names = _path_text


@st.composite
def ip_addresses(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    """A valid host:port address and the fields it must parse to (host given as an ipaddress object)."""
    scheme = draw(st.sampled_from(IP_SCHEMES))
    port = draw(ports)
    kinds = ["name", "empty"]
    if not scheme.endswith("6"):
        kinds.append("ipv4")
    if not scheme.endswith("4"):
        kinds.append("ipv6")
    kind = draw(st.sampled_from(kinds))
    family = {"4": socket.AF_INET, "6": socket.AF_INET6}.get(scheme[-1], socket.AF_UNSPEC)
    zone = None
    if kind == "name":
        host: object = draw(names)
        hostpart = str(host)
    elif kind == "empty":
        host = ""
        hostpart = ""
    elif kind == "ipv4":
        host = draw(ipv4s)
        hostpart = str(host)
        family = socket.AF_INET
    else:
        host = draw(ipv6s)
        zone = draw(st.none() | zones)
        hostpart = f"[{host.compressed}{'' if zone is None else '%' + zone}]"
        family = socket.AF_INET6
    text = f"{scheme}://{hostpart}:{port}"
    return text, {
        "scheme": scheme,
        "kind": kind,
        "host": host,
        "zone": zone,
        "port": port,
        "family": family,
        "type": SOCK_TYPE[scheme],
    }


@given(ip_addresses())
@settings(max_examples=300, deadline=None)
def test_property_ip_addresses(case: tuple[str, dict[str, object]]) -> None:
    text, exp = case
    addr = parse(text)
    assert addr.scheme == exp["scheme"]
    assert addr.port == exp["port"]
    assert addr.family == exp["family"]
    assert addr.type == exp["type"]
    assert addr.path == ""
    if exp["kind"] == "ipv6":
        host, _, zone = addr.host.partition("%")
        assert ipaddress.IPv6Address(host) == exp["host"]
        assert (zone or None) == exp["zone"]
        assert str(addr) == f"{exp['scheme']}://[{addr.host}]:{exp['port']}"
    else:
        assert addr.host == str(exp["host"])
        assert str(addr) == text
    check_invariants(addr)
    check_round_trip(addr)


@given(st.sampled_from(UNIX_SCHEMES), unix_paths)
@example("unix", "/tmp/a:b")
@example("unix", "a%20b")
@example("unix", "rel?x#y")
@example("unixgram", "not@first")
@settings(max_examples=300, deadline=None)
def test_property_unix_paths(scheme: str, path: str) -> None:
    text = f"{scheme}:{path}"
    addr = parse(text)
    assert addr.scheme == scheme
    assert addr.path == path
    assert addr.family == socket.AF_UNIX
    assert addr.type == SOCK_TYPE[scheme]
    assert str(addr) == text
    check_invariants(addr)
    check_round_trip(addr)
    if path.startswith("/"):
        triple = parse(f"{scheme}://{path}")
        assert triple == addr
        assert str(triple) == text


@given(st.sampled_from(UNIX_SCHEMES), abstract_names)
@settings(max_examples=200, deadline=None)
def test_property_abstract_names(scheme: str, name: str) -> None:
    text = f"{scheme}:@{name}"
    addr = parse(text)
    assert addr.path == "\0" + name
    assert addr.family == socket.AF_UNIX
    assert str(addr) == text
    check_invariants(addr)
    check_round_trip(addr)


# Inputs that look almost right, to reach deep into the parser.
_tricky = st.text(alphabet="[]:%@/?#.-_ \t\0\udcffaz09AZé٨", max_size=12)
_schemes_any = st.sampled_from([*ALL_SCHEMES, "foo", "TCP", "", "unix/", "-"])
_hosts_any = st.one_of(
    names,
    ipv4s.map(str),
    ipv6s.map(lambda ip: f"[{ip}]"),
    ipv6s.map(str),
    _tricky,
    st.text(max_size=8),
)
_ports_any = st.one_of(
    st.integers(-5, 70000).map(str),
    st.sampled_from(["http", "https", "domain", "", "nosuch", "8_0", "+80", " 80", "٨٠", "0x10"]),
    _tricky,
)
near_addresses = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec=None, exclude_categories=())),
    st.builds(lambda s, h, p: f"{s}://{h}:{p}", _schemes_any, _hosts_any, _ports_any),
    st.builds(lambda s, h: f"{s}://{h}", _schemes_any, _hosts_any),
    st.builds(lambda s, h, p, t: f"{s}://{h}:{p}{t}", _schemes_any, _hosts_any, _ports_any, _tricky),
    st.builds(lambda s, p: f"{s}:{p}", _schemes_any, st.one_of(_tricky, st.text(max_size=10))),
)


@given(near_addresses)
@example("unix:////x")
@example("unix://x")
@example("unix:@")
@example("stdio:x")
@example("tcp://[::1%]:80")
@example("tcp://[fe80::1%a b]:80")
@example("tcp://[fe80::1%eth0%x]:80")
@example("tcp://[::1]]:80")
@example("tcp://127.1:80")
@example("unix:\udcff")
@example("unixgram:@\udcff")
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_parse_returns_address_or_raises_address_error(text: str) -> None:
    try:
        addr = Address.parse(text)
    except AddressError as err:
        assert repr(text) in str(err), (text, str(err))
        return
    assert isinstance(addr, Address)
    assert not re.search(r"\s", text.strip()) or addr.scheme in UNIX_SCHEMES, text
    if ":" in addr.host:
        assert "[" in text, f"IPv6 host accepted without brackets: {text!r}"
    check_invariants(addr)
    check_round_trip(addr)


def test_an_ipv4_mapped_address_is_written_dotted() -> None:
    for text in ("tcp://[::ffff:127.0.0.1]:80", "tcp://[::ffff:7f00:1]:80", "udp6://[0:0:0:0:0:ffff:7f00:1]:53"):
        a = Address.parse(text)
        assert a.host == "::ffff:127.0.0.1"
        assert str(a).endswith("[::ffff:127.0.0.1]:" + str(a.port))
        assert Address.parse(str(a)) == a
