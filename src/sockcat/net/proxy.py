"""Outgoing TCP connections through a SOCKS4/4a/5/5h or HTTP CONNECT proxy (``--proxy URL``).

python-socks does the handshakes; this module parses the URL, checks that the target is something a proxy can
reach (a tcp or tls address), and maps the library's errors to sockcat's one-line ones. The ``h``/``a``
schemes, as in curl, let the proxy resolve the target's name; ``socks5://`` and ``socks4://`` resolve it here;
an HTTP proxy always resolves it itself (``CONNECT host:port``).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, Timeout, UsageError, network_error
from sockcat.core.untrusted import escape
from sockcat.net import trace as _trace
from sockcat.net.options import SockOpt, apply_sockopts

SCHEMES = ("socks4", "socks4a", "socks5", "socks5h", "http")
DEFAULT_PORTS = {"socks4": 1080, "socks4a": 1080, "socks5": 1080, "socks5h": 1080, "http": 8080}
DEFAULT_TIMEOUT = 60.0  # python-socks' own default, kept when no -w is given


@dataclass(frozen=True)
class Proxy:
    """A parsed ``--proxy`` URL. ``str()`` leaves the password out (it goes into log and error lines)."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, text: str | Proxy) -> Proxy:
        if isinstance(text, Proxy):
            return text
        usage = f"bad proxy {text!r}: want SCHEME://[USER:PASSWORD@]HOST[:PORT], SCHEME one of {', '.join(SCHEMES)}"
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            raise UsageError(usage) from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise UsageError(usage)
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], user or None, password)

    @property
    def remote_dns(self) -> bool:
        """The proxy resolves the target's name (socks4a, socks5h, http)."""
        return self.scheme in ("socks4a", "socks5h", "http")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{host}:{self.port}"

    def _kwargs(self) -> dict[str, Any]:
        """python-socks' constructor arguments."""
        from python_socks import ProxyType

        kind = {"socks4": ProxyType.SOCKS4, "socks4a": ProxyType.SOCKS4, "http": ProxyType.HTTP}
        return {
            "proxy_type": kind.get(self.scheme, ProxyType.SOCKS5),
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "rdns": self.remote_dns,
        }


def check_target(addr: Address) -> None:
    """A proxy carries TCP: tcp, tcp4, tcp6 and tls targets only."""
    if addr.scheme not in ("tcp", "tcp4", "tcp6", "tls", "ws", "wss"):
        raise UsageError(f"--proxy carries tcp, tls, ws and wss connections, not {addr.scheme} ({addr})")


def _begin(proxy: Proxy, addr: Address, source: Address | None) -> tuple[str, int, tuple[str, int] | None]:
    """Check a proxied connect's arguments: (target host, target port, local address to bind or None)."""
    check_target(addr)
    assert addr.host is not None and addr.port is not None
    local = None
    if source is not None:
        if not source.is_ip:
            raise UsageError(f"--source {source} with --proxy: give an IP address to connect from")
        local = (source.host or "0.0.0.0", source.port or 0)
    _trace.emit(f"proxy {proxy}: connect to {proxy.host}:{proxy.port}")
    return addr.host, addr.port, local


def _failure(exc: BaseException, addr: Address, proxy: Proxy) -> NetworkError:
    """python-socks' errors as sockcat's: what failed, the target and the proxy, no library wording."""
    from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError

    where = f"connect {addr} via {proxy}"
    if isinstance(exc, ProxyTimeoutError | TimeoutError):
        return Timeout(errno.ETIMEDOUT, f"{where}: timed out")
    if isinstance(exc, ProxyConnectionError):
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        return network_error(cause, f"{where}: proxy unreachable")
    if isinstance(exc, ProxyError):  # its text quotes what the proxy sent: shown escaped
        return NetworkError(errno.ECONNREFUSED, f"{where}: the proxy said: {escape(str(exc))[:300]}")
    if isinstance(exc, OSError):
        return network_error(exc, where)
    return NetworkError(errno.EPROTO, f"{where}: {escape(str(exc))[:300]}")


def _finish(sock: socket.socket, addr: Address, proxy: Proxy, opts: tuple[SockOpt, ...]) -> socket.socket:
    try:
        apply_sockopts(sock, opts, str(addr))
    except BaseException:
        sock.close()
        raise
    _trace.emit(f"proxy {proxy}: CONNECT {addr.host}:{addr.port} -> ok", sock.fileno())
    return sock


def connect(
    proxy: Proxy,
    addr: Address,
    timeout: float | None,
    source: Address | None,
    opts: tuple[SockOpt, ...],
) -> socket.socket:
    """A blocking socket connected to ``addr`` through ``proxy`` (the tunnel is up; TLS, if any, comes next)."""
    from python_socks.sync import Proxy as SyncProxy

    host, port, local = _begin(proxy, addr, source)
    try:
        client = SyncProxy(**proxy._kwargs())
        sock = client.connect(host, port, timeout=timeout or DEFAULT_TIMEOUT, local_addr=local)
    except Exception as exc:
        raise _failure(exc, addr, proxy) from None
    return _finish(sock, addr, proxy, opts)


async def connect_async(
    proxy: Proxy,
    addr: Address,
    timeout: float | None,
    source: Address | None,
    opts: tuple[SockOpt, ...],
) -> socket.socket:
    """The asyncio twin of :func:`connect`: a non-blocking socket connected through ``proxy``."""
    import asyncio

    from python_socks.async_.asyncio import Proxy as AsyncProxy

    host, port, local = _begin(proxy, addr, source)
    try:
        client = AsyncProxy(**proxy._kwargs(), loop=asyncio.get_running_loop())
        sock = await client.connect(host, port, timeout=timeout or DEFAULT_TIMEOUT, local_addr=local)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise _failure(exc, addr, proxy) from None
    sock.setblocking(False)
    return _finish(sock, addr, proxy, opts)
