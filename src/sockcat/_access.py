"""``--allow``/``--deny`` CIDR rules (pure): with any allow rule a peer must match one; deny always wins."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ._errors import UsageError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise UsageError(f"bad CIDR {text!r} (expected e.g. 10.0.0.0/8, 127.0.0.1 or ::1/128)") from None


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
