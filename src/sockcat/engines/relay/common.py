"""What the relay's modules share: its options, the SO_LINGER value that makes close() send RST, a socket's name."""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass, field

from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address
from sockcat.core.log import SILENT, Log
from sockcat.core.wsoptions import WsOptions
from sockcat.net.options import SockOpt
from sockcat.net.proxy import Proxy
from sockcat.net.sockets import to_address

_LINGER0 = struct.pack("ii", 1, 0)


@dataclass
class RelayOptions:
    log: Log = SILENT
    connect_timeout: float | None = 10.0
    idle_timeout: float | None = None
    hexdump: bool = False
    max_conns: int | None = None  # None: 10,000 connections, or 1,024 datagram sessions (per process)
    max_per_source: int = 256  # datagram sessions from one IPv4 /24 or IPv6 /64
    access: AccessPolicy = field(default_factory=AccessPolicy)
    sockopts: tuple[SockOpt, ...] = ()
    source: Address | None = None
    server_ssl: ssl.SSLContext | None = None  # TLS terminated on the listening side
    fingerprint: str | None = None
    client_ssl: ssl.SSLContext | None = None  # TLS originated towards the target
    sni: str | None = None
    grace: float = 5.0
    workers: int = 1
    proxy: Proxy | None = None  # reach the target through this SOCKS / HTTP CONNECT proxy
    server_ws: WsOptions | None = None  # the listening side is a WebSocket
    client_ws: WsOptions | None = None  # the target is a WebSocket


def _name(sock: socket.socket, scheme: str, peer: bool) -> Address | None:
    try:
        return to_address(scheme, sock.getpeername() if peer else sock.getsockname())
    except OSError:
        return None
