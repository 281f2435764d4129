"""What every service of ``serve`` shares: the options, the per-server state, the constants."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from typing import Any, Protocol

from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address
from sockcat.core.log import SILENT, Log
from sockcat.core.wsoptions import WsOptions
from sockcat.net.options import SockOpt
from sockcat.net.sockets import to_address
from sockcat.serving.scaffold import DEFAULT_MAX_CONNS

SERVICES = ("echo", "discard", "chargen", "daytime")
BACKLOG = 4096
RECV_BUFFER = 256 * 1024
DATAGRAM_MAX = 65536 * 4  # unixgram datagrams may exceed UDP's 64 KiB
WRITE_HIGH_WATER = 64 * 1024  # per-connection bytes queued in user space before chargen/echo pause


# --- options and shared state ---------------------------------------------------------------------------


@dataclass
class ServeOptions:
    log: Log = SILENT
    max_conns: int | None = None  # None: 10,000 (stream kinds)
    access: AccessPolicy = field(default_factory=AccessPolicy)
    sockopts: tuple[SockOpt, ...] = ()
    idle_timeout: float | None = None
    ssl_context: ssl.SSLContext | None = None
    fingerprint: str | None = None
    workers: int = 1
    backlog: int = BACKLOG
    ws: WsOptions = field(default_factory=WsOptions)  # a WebSocket address's options


class _Connection(Protocol):
    """What the shared state needs of a connection (the protocols are in :mod:`.stream`)."""

    peer: Address | None
    last: float

    def stop(self) -> None: ...


class _Shared:
    """What every connection of one server shares: options, the connection set, counters."""

    __slots__ = ("access", "conns", "counting", "guarded", "log", "loop", "max_conns", "scheme", "sockopts")

    def __init__(self, scheme: str, opts: ServeOptions) -> None:
        self.loop = asyncio.get_running_loop()
        self.scheme = scheme
        self.log = opts.log
        self.max_conns = opts.max_conns if opts.max_conns is not None else DEFAULT_MAX_CONNS
        self.access = opts.access
        self.sockopts = tuple(o for o in opts.sockopts if o.name not in ("reuseaddr", "reuseport", "v6only"))
        self.conns: set[Any] = set()  # the live connections (stream protocols)
        # Per-connection bookkeeping only when asked for (-v, -i): the fast path does none.
        self.counting = opts.log.verbose or opts.idle_timeout is not None
        self.guarded = self.counting or opts.access.active or bool(self.sockopts)

    def peer_of(self, transport: asyncio.BaseTransport) -> Address | None:
        sa = transport.get_extra_info("peername")
        return _name(self.scheme, sa)

    def refuse(self, peer: Address | None, handshaking: int) -> str | None:
        """Why a TLS connection is refused before its handshake (None: admitted), ``handshaking`` others under way."""
        if self.access.active and not self.access.permits(peer.host if peer else ""):
            return "not allowed by --allow/--deny"
        if len(self.conns) + handshaking >= self.max_conns:
            return f"--max-conns {self.max_conns} reached"
        return None

    def admit(self, conn: _Connection, transport: asyncio.BaseTransport) -> bool:
        """Apply --allow/--deny, --max-conns and --sockopt to a new connection; False = refused (closed)."""
        peer = self.peer_of(transport)
        if self.access.active and not self.access.permits(peer.host if peer else ""):
            self.log.info(f"refused {peer}: not allowed by --allow/--deny")
            transport.close()
            return False
        if len(self.conns) >= self.max_conns:
            self.log.info(f"refused {peer}: --max-conns {self.max_conns} reached")
            transport.close()
            return False
        if self.sockopts:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                for opt in self.sockopts:
                    if opt.applies_to(sock.family, sock.type):
                        with contextlib.suppress(OSError):
                            opt.apply(sock)
        if self.counting:
            conn.peer = peer
            conn.last = self.loop.time()
            local = _name(self.scheme, transport.get_extra_info("sockname"))
            self.log.info(f"connection from {peer} on {local}")
        return True


def _name(scheme: str, sa: Any) -> Address | None:
    if sa is None or sa == "":
        return None
    try:
        return to_address(scheme, sa)
    except (TypeError, ValueError):
        return None
