"""sockcat.core.access: the --allow/--deny policy (AccessPolicy), pure."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockcat import SockcatError, UsageError
from sockcat.core.access import AccessPolicy

SETTINGS = settings(max_examples=200, deadline=None, database=None)


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
