"""Socket options by friendly name (``--sockopt nodelay=1``), checked before any socket exists."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Literal

from sockcat.core.errors import UsageError

Scope = Literal["any", "ip", "ipv6", "tcp", "udp"]


@dataclass(frozen=True, slots=True)
class _Spec:
    level: int
    name: int
    scope: Scope
    kind: Literal["int", "bool", "str", "linger"] = "int"


def _opt(attr: str, level: int, scope: Scope, kind: Literal["int", "bool", "str", "linger"] = "int") -> _Spec | None:
    value = getattr(socket, attr, None)
    return None if value is None else _Spec(level, value, scope, kind)


_S, _T, _IP, _IP6 = socket.SOL_SOCKET, socket.IPPROTO_TCP, socket.IPPROTO_IP, socket.IPPROTO_IPV6
_TABLE: dict[str, _Spec | None] = {
    "reuseaddr": _opt("SO_REUSEADDR", _S, "any", "bool"),
    "reuseport": _opt("SO_REUSEPORT", _S, "ip", "bool"),
    "keepalive": _opt("SO_KEEPALIVE", _S, "any", "bool"),
    "broadcast": _opt("SO_BROADCAST", _S, "udp", "bool"),
    "rcvbuf": _opt("SO_RCVBUF", _S, "any"),
    "sndbuf": _opt("SO_SNDBUF", _S, "any"),
    "rcvlowat": _opt("SO_RCVLOWAT", _S, "any"),
    "priority": _opt("SO_PRIORITY", _S, "any"),
    "mark": _opt("SO_MARK", _S, "any"),
    "linger": _opt("SO_LINGER", _S, "any", "linger"),
    "bindtodevice": _opt("SO_BINDTODEVICE", _S, "ip", "str"),
    "nodelay": _opt("TCP_NODELAY", _T, "tcp", "bool"),
    "cork": _opt("TCP_CORK", _T, "tcp", "bool"),
    "quickack": _opt("TCP_QUICKACK", _T, "tcp", "bool"),
    "maxseg": _opt("TCP_MAXSEG", _T, "tcp"),
    "keepidle": _opt("TCP_KEEPIDLE", _T, "tcp"),
    "keepintvl": _opt("TCP_KEEPINTVL", _T, "tcp"),
    "keepcnt": _opt("TCP_KEEPCNT", _T, "tcp"),
    "user_timeout": _opt("TCP_USER_TIMEOUT", _T, "tcp"),
    "fastopen": _opt("TCP_FASTOPEN", _T, "tcp"),
    "congestion": _opt("TCP_CONGESTION", _T, "tcp", "str"),
    "notsent_lowat": _opt("TCP_NOTSENT_LOWAT", _T, "tcp"),
    "v6only": _opt("IPV6_V6ONLY", _IP6, "ipv6", "bool"),
    "tos": _opt("IP_TOS", _IP, "ip"),
    "ttl": _opt("IP_TTL", _IP, "ip"),
    "freebind": _opt("IP_FREEBIND", _IP, "ip", "bool"),
    "transparent": _opt("IP_TRANSPARENT", _IP, "ip", "bool"),
}
NAMES = tuple(sorted(k for k, v in _TABLE.items() if v is not None))
_TRUE = {"1", "on", "yes", "true"}
_FALSE = {"0", "off", "no", "false"}


@dataclass(frozen=True, slots=True)
class SockOpt:
    """One parsed ``NAME=VALUE`` socket option."""

    name: str
    level: int
    option: int
    value: int | bytes
    scope: Scope

    @classmethod
    def parse(cls, text: str) -> SockOpt:
        name, eq, raw = text.partition("=")
        key = name.strip().lower().replace("-", "_")
        spec = _TABLE.get(key)
        if spec is None:
            raise UsageError(f"unknown socket option {name!r} (known: {', '.join(NAMES)})")
        if not eq:
            if spec.kind != "bool":
                raise UsageError(f"socket option {key!r} needs a value: {key}=VALUE")
            raw = "1"
        value: int | bytes
        if spec.kind == "str":
            value = raw.encode()
        elif spec.kind == "bool":
            low = raw.strip().lower()
            if low not in _TRUE | _FALSE:
                raise UsageError(f"socket option {key!r} takes 0/1, on/off, yes/no or true/false, not {raw!r}")
            value = 1 if low in _TRUE else 0
        else:
            try:
                number = int(raw, 0)
            except ValueError:
                raise UsageError(f"socket option {key!r} takes a whole number, not {raw!r}") from None
            if number < 0:
                raise UsageError(f"socket option {key!r} takes a number >= 0, not {raw!r}")
            value = struct.pack("ii", 1, number) if spec.kind == "linger" else number
        return cls(key, spec.level, spec.name, value, spec.scope)

    def applies_to(self, family: int, kind: int) -> bool:
        ip = family in (socket.AF_INET, socket.AF_INET6)
        if self.scope == "ip":
            return ip
        if self.scope == "ipv6":
            return family == socket.AF_INET6
        if self.scope == "tcp":
            return ip and kind == socket.SOCK_STREAM
        if self.scope == "udp":
            return ip and kind == socket.SOCK_DGRAM
        return True

    def apply(self, sock: socket.socket) -> None:
        level, option = self.level, self.option
        if self.name == "ttl" and sock.family == socket.AF_INET6:
            level, option = socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS
        if self.name == "tos" and sock.family == socket.AF_INET6:
            level, option = socket.IPPROTO_IPV6, getattr(socket, "IPV6_TCLASS", 67)
        sock.setsockopt(level, option, self.value)


def parse_sockopts(items: list[str] | tuple[str, ...] | None) -> tuple[SockOpt, ...]:
    return tuple(SockOpt.parse(i) for i in items or ())


def apply_sockopts(sock: socket.socket, opts: tuple[SockOpt, ...], where: str) -> None:
    """Set every option on ``sock``; one that does not fit this kind of socket is a usage error."""
    for opt in opts:
        if not opt.applies_to(sock.family, sock.type):
            raise UsageError(f"socket option {opt.name!r} does not apply to {where}")
        try:
            opt.apply(sock)
        except OSError as exc:
            raise UsageError(f"cannot set socket option {opt.name!r} on {where}: {exc.strerror or exc}") from None
