"""``--allow``/``--deny`` CIDR rules (pure): with any allow rule a peer must match one; deny always wins."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from sockcat.core.errors import UsageError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_cidr(text: str) -> Network:
    """A rule as a network; one written in IPv4-mapped IPv6 (``::ffff:10.0.0.0/104``) is the IPv4 network it
    means, since peers' addresses are compared as IPv4 once unmapped."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise UsageError(f"bad CIDR {text!r} (expected e.g. 10.0.0.0/8, 127.0.0.1 or ::1/128)") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> AccessPolicy:
        return cls(tuple(parse_cidr(a) for a in allow), tuple(parse_cidr(d) for d in deny))

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny)

    def permits(self, host: str) -> bool:
        """Whether a peer IP may connect; a non-IP peer (Unix socket) passes only if no allow rule exists."""
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return not self.allow
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.deny if net.version == ip.version):
            return False
        if not self.allow:
            return True
        return any(ip in net for net in self.allow if net.version == ip.version)
