"""One address syntax for every socket kind (docs/reference.md#addresses); parsing is pure and never touches the
network.

The scheme names follow Go's ``net`` package: tcp, tcp4, tcp6, udp, udp4, udp6, unix, unixgram,
unixpacket; plus tls (TCP + TLS) and stdio (``-``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from sockcat.core.errors import AddressError

_IP_SCHEMES: dict[str, tuple[socket.AddressFamily, socket.SocketKind]] = {
    "tcp": (socket.AF_UNSPEC, socket.SOCK_STREAM),
    "tcp4": (socket.AF_INET, socket.SOCK_STREAM),
    "tcp6": (socket.AF_INET6, socket.SOCK_STREAM),
    "udp": (socket.AF_UNSPEC, socket.SOCK_DGRAM),
    "udp4": (socket.AF_INET, socket.SOCK_DGRAM),
    "udp6": (socket.AF_INET6, socket.SOCK_DGRAM),
    "tls": (socket.AF_UNSPEC, socket.SOCK_STREAM),
    "ws": (socket.AF_UNSPEC, socket.SOCK_STREAM),
    "wss": (socket.AF_UNSPEC, socket.SOCK_STREAM),
}
_UNIX_SCHEMES: dict[str, socket.SocketKind] = {
    "unix": socket.SOCK_STREAM,
    "unixgram": socket.SOCK_DGRAM,
    "unixpacket": socket.SOCK_SEQPACKET,
    "ws+unix": socket.SOCK_STREAM,
}
_WS_SCHEMES = frozenset({"ws", "wss", "ws+unix"})
_WS_PORTS = {"ws": 80, "wss": 443}
_SCHEME_RE = re.compile(r"([a-z][a-z0-9+]*):")
# An HTTP request target: printable ASCII, no space (other characters are percent-encoded when parsed).
_RESOURCE_MAX = 2048
# A host name: labels of letters (any script), digits, '_' and '-', joined by dots; a final dot is allowed.
_NAME_RE = re.compile(r"[\w-]+(?:\.[\w-]+)*\.?")
_NUMERIC_RE = re.compile(r"[0-9.]+")
_ZONE_RE = re.compile(r"[\w.-]+")
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL for filesystem paths.
_MAX_UNIX_PATH = 107

_Bad = Callable[[str], AddressError]


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed socket address; ``str()`` gives the canonical form, which parses back to an equal Address."""

    scheme: str
    host: str = ""
    port: int = 0
    family: socket.AddressFamily = socket.AF_UNSPEC
    type: socket.SocketKind = socket.SOCK_STREAM
    path: str = ""
    resource: str = ""  # a WebSocket's request path (``/`` unless given); empty for every other kind

    IP_SCHEMES: ClassVar[frozenset[str]] = frozenset(_IP_SCHEMES)
    UNIX_SCHEMES: ClassVar[frozenset[str]] = frozenset(_UNIX_SCHEMES)

    @classmethod
    def parse(cls, text: str | Address) -> Address:
        """Parse ``text`` (an :class:`Address` passes through); raise :class:`AddressError` if malformed."""
        if isinstance(text, Address):
            return text
        if not isinstance(text, str):
            raise AddressError(repr(text), "not a string")
        return _parse(text)

    # --- what kind of socket this names -------------------------------------------------------------
    @property
    def is_ip(self) -> bool:
        return self.scheme in _IP_SCHEMES

    @property
    def is_unix(self) -> bool:
        return self.scheme in _UNIX_SCHEMES

    @property
    def is_tls(self) -> bool:
        """TLS runs on the connection: ``tls://`` and ``wss://``."""
        return self.scheme in ("tls", "wss")

    @property
    def is_ws(self) -> bool:
        """A WebSocket: ``ws://``, ``wss://`` or ``ws+unix:``."""
        return self.scheme in _WS_SCHEMES

    @property
    def is_stdio(self) -> bool:
        return self.scheme == "stdio"

    @property
    def is_datagram(self) -> bool:
        return self.type == socket.SOCK_DGRAM

    @property
    def is_abstract(self) -> bool:
        return self.path.startswith("\0")

    @property
    def is_unnamed(self) -> bool:
        """An unbound Unix socket's address (``getpeername()`` of a client that never bound: ``''``).

        It has no form in the address syntax: ``str()`` gives ``unix:`` (or ``unixgram:``…), which does not parse.
        """
        return self.is_unix and not self.path

    def with_port(self, port: int) -> Address:
        return Address(self.scheme, self.host, port, self.family, self.type, self.path, self.resource)

    def with_host(self, host: str, family: socket.AddressFamily | None = None) -> Address:
        fam = self.family if family is None else family
        return Address(self.scheme, host, self.port, fam, self.type, self.path, self.resource)

    def __str__(self) -> str:
        if self.is_stdio:
            return "stdio:"
        if self.is_unix:
            if self.is_abstract:
                text = f"{self.scheme}:@{self.path[1:]}"
            elif self.path.startswith("//"):
                text = f"{self.scheme}://{self.path}"
            else:
                text = f"{self.scheme}:{self.path}"
            return f"{text}:{self.resource}" if self.resource not in ("", "/") else text
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.resource}"


def _parse(text: str) -> Address:
    def bad(problem: str) -> AddressError:
        return AddressError(text, problem)

    if text in ("-", "stdio:"):
        return Address("stdio")
    if not text:
        raise bad("empty address")
    if text != text.strip():
        raise bad("leading or trailing white space")
    m = _SCHEME_RE.match(text)
    if not m:
        raise bad("missing scheme (expected e.g. tcp://HOST:PORT or unix:PATH)")
    scheme, rest = m.group(1), text[m.end() :]
    if scheme == "ws+unix":
        sock_path, _, resource = rest.partition(":/")
        unix = _parse_unix(scheme, sock_path, bad)
        return Address(scheme, "", 0, socket.AF_UNIX, socket.SOCK_STREAM, unix.path, _resource("/" + resource, bad))
    if scheme in _UNIX_SCHEMES:
        return _parse_unix(scheme, rest, bad)
    if scheme not in _IP_SCHEMES:
        if scheme == "stdio":
            raise bad("nothing may follow 'stdio:'")
        known = ", ".join([*_IP_SCHEMES, *_UNIX_SCHEMES, "stdio"])
        raise bad(f"unknown scheme {scheme!r} (known: {known})")
    if not rest.startswith("//"):
        raise bad(f"expected '//' after '{scheme}:'")
    if scheme in _WS_SCHEMES:
        authority, slash, resource = rest[2:].partition("/")
        if "?" in authority:
            authority, _, query = authority.partition("?")
            resource, slash = "?" + query, ""
        if "@" in authority:
            raise bad("user information is not supported in a WebSocket address (use -H 'Authorization: ...')")
        if authority.endswith("]") or ":" not in authority.rpartition("]")[2]:
            authority += f":{_WS_PORTS[scheme]}"  # ws://host/path: the scheme's port, as in a URL
        addr = _parse_ip(scheme, authority, bad)
        return Address(scheme, addr.host, addr.port, addr.family, addr.type, resource=_resource(slash + resource, bad))
    return _parse_ip(scheme, rest[2:], bad)


def _resource(text: str, bad: _Bad) -> str:
    """A WebSocket request target: ``/`` when empty; other than printable ASCII is percent-encoded."""
    if not text:
        return "/"
    if not text.startswith("/"):
        text = "/" + text
    if any(c in text for c in " \t\r\n\0") or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise bad("white space or a control character in the WebSocket path")
    if not text.isascii():
        text = urllib.parse.quote(text, safe="".join(chr(c) for c in range(33, 127)), errors="strict")
    if len(text) > _RESOURCE_MAX:
        raise bad(f"WebSocket path longer than {_RESOURCE_MAX} characters")
    return text


def _parse_unix(scheme: str, rest: str, bad: _Bad) -> Address:
    if rest.startswith("//"):
        rest = rest[2:]
    if "\0" in rest:
        raise bad("NUL byte in path")
    if rest.startswith("@"):
        name = rest[1:]
        if not name:
            raise bad("empty abstract socket name after '@'")
        path = "\0" + name
        if len(_encoded(path)) > _MAX_UNIX_PATH + 1:
            raise bad("abstract socket name longer than 107 bytes")
    else:
        if not rest:
            raise bad("empty socket path")
        path = rest
        if len(_encoded(path)) > _MAX_UNIX_PATH:
            raise bad(f"socket path longer than {_MAX_UNIX_PATH} bytes")
    return Address(scheme, "", 0, socket.AF_UNIX, _UNIX_SCHEMES[scheme], path)


def _parse_ip(scheme: str, rest: str, bad: _Bad) -> Address:
    forced, kind = _IP_SCHEMES[scheme]
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise bad("unclosed '['")
        host_text, after = rest[1:close], rest[close + 1 :]
        if not after.startswith(":"):
            raise bad(f"expected ':PORT' after ']', got {after!r}" if after else "missing port")
        port_text = after[1:]
        _addr, pct, zone = host_text.partition("%")
        if pct and not _ZONE_RE.fullmatch(zone):
            raise bad(f"bad IPv6 zone id {zone!r}")
        try:
            ip6 = ipaddress.IPv6Address(host_text)
        except ValueError:
            raise bad(f"bad IPv6 address {host_text!r}") from None
        host, family = str(ip6), socket.AF_INET6
        if ip6.ipv4_mapped is not None:  # written dotted, as people write it: ::ffff:127.0.0.1, not ::ffff:7f00:1
            host = f"::ffff:{ip6.ipv4_mapped}"
    else:
        host_text, colon, port_text = rest.rpartition(":")
        if not colon:
            raise bad("missing port (expected HOST:PORT)")
        if ":" in host_text:
            raise bad("an IPv6 address needs brackets, as in tcp://[::1]:80")
        host, family = _check_host(host_text, bad)
    if forced == socket.AF_INET and family == socket.AF_INET6:
        raise bad(f"{scheme} needs an IPv4 address, got IPv6 {host!r}")
    if forced == socket.AF_INET6 and family == socket.AF_INET:
        raise bad(f"{scheme} needs an IPv6 address, got IPv4 {host!r}")
    if forced != socket.AF_UNSPEC:
        family = forced
    port = _parse_port(port_text, "udp" if kind == socket.SOCK_DGRAM else "tcp", bad)
    return Address(scheme, host, port, family, kind)


def _encoded(path: str) -> bytes:
    """The bytes the kernel will see (non-UTF-8 argv bytes come back as surrogates)."""
    return os.fsencode(path)


def _check_host(host: str, bad: _Bad) -> tuple[str, socket.AddressFamily]:
    if not host:
        return "", socket.AF_UNSPEC
    if _NUMERIC_RE.fullmatch(host) and not host.endswith("."):
        try:
            return str(ipaddress.IPv4Address(host)), socket.AF_INET
        except ValueError:
            raise bad(f"bad IPv4 address {host!r}") from None
    if not _NAME_RE.fullmatch(host):
        raise bad(f"bad host name {host!r}")
    return host, socket.AF_UNSPEC


def _parse_port(text: str, proto: str, bad: _Bad) -> int:
    if not text:
        raise bad("missing port")
    if text.isascii() and text.isdigit():
        if len(text) > 5:
            raise bad(f"port {text[:12]}{'…' if len(text) > 12 else ''} out of range 0-65535")
        port = int(text)
        if port > 65535:
            raise bad(f"port {text} out of range 0-65535")
        return port
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.+-]*", text):
        raise bad(f"bad port {text!r}")
    try:
        return socket.getservbyname(text, proto)
    except OSError:
        raise bad(f"unknown service name {text!r}") from None


def show(addr: Address | None, sock: socket.socket | None = None) -> str:
    """An address for log lines and errors: the address syntax, or words where there is none.

    An unnamed Unix socket (a client that never bound, ``getpeername() == ''``) has no address to write:
    it shows as ``unnamed unix peer`` (with its process id from SO_PEERCRED when ``sock`` is given),
    never as ``unix:``, which would read like an address and does not parse as one.
    """
    if addr is None:
        return "unknown address"
    if not addr.is_unnamed:
        return str(addr)
    pid = _peer_pid(sock) if sock is not None else 0
    return f"unnamed {addr.scheme} peer (pid {pid})" if pid else f"unnamed {addr.scheme} peer"


def _peer_pid(sock: socket.socket) -> int:
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is None or sock.family != socket.AF_UNIX:
        return 0
    try:
        pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i")))
    except (OSError, struct.error):
        return 0
    return int(pid)
