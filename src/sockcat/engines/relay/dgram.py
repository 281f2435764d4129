"""Datagram kinds (udp*, unixgram): one upstream socket per client address, closed after the idle time-out.

A session costs a socket (and, for UDP, a host-wide ephemeral port), and a datagram's source address costs nothing
to forge, so sessions are capped: :data:`MAX_SESSIONS` in all (``--max-conns``) and :data:`PER_SOURCE` per
source network (an IPv4 /24 or IPv6 /64; ``--max-per-source``); and a session whose target never answered is
closed after :data:`NO_REPLY_IDLE` seconds instead of the full idle time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from typing import Any

from sockcat.core.address import Address, show
from sockcat.core.errors import describe
from sockcat.engines.relay.common import RelayOptions
from sockcat.net.sockets import resolve, to_address

DEFAULT_UDP_IDLE = 60.0
MAX_SESSIONS = 1024
PER_SOURCE = 256
NO_REPLY_IDLE = 5.0


def source_network(peer: Address) -> str:
    """The network a datagram source counts against: its IPv4 /24 or IPv6 /64 (a Unix peer is its own)."""
    if not peer.is_ip:
        return str(peer)
    try:
        ip = ipaddress.ip_address(peer.host.split("%", 1)[0])
    except ValueError:
        return peer.host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))


class _DgramRelay:
    """udp/unixgram <-> udp/unixgram: a session (own upstream socket) per client address."""

    def __init__(self, listen_sock: socket.socket, bound: Address, target: Address, opts: RelayOptions) -> None:
        self.sock = listen_sock
        self.bound = bound
        self.target = target
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.sessions: dict[Any, tuple[socket.socket, list[float]]] = {}  # source -> (upstream, [last, replied])
        self.networks: dict[Any, str] = {}  # source -> its network
        self.per_network: dict[str, int] = {}
        self.idle = opts.idle_timeout if opts.idle_timeout is not None else DEFAULT_UDP_IDLE
        self.max_sessions = opts.max_conns if opts.max_conns is not None else MAX_SESSIONS
        self.per_source = min(opts.max_per_source, self.max_sessions)
        self.target_sa: Any = None

    async def start(self) -> None:
        infos = await self.loop.run_in_executor(None, resolve, self.target)
        self.target_info = infos[0]
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._from_client)
        self.sweeper = asyncio.ensure_future(self._sweep())

    def _from_client(self) -> None:
        for _ in range(64):
            try:
                data, sa = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.opts.log.debug(f"recvfrom on {self.bound}: {describe(exc)}")
                continue
            session = self.sessions.get(sa)
            if session is None:
                session = self._open(sa)
                if session is None:
                    continue
            up, stamp = session
            stamp[0] = time.monotonic()
            with contextlib.suppress(OSError):
                up.send(data)

    def _open(self, sa: Any) -> tuple[socket.socket, list[float]] | None:
        peer = to_address(self.bound.scheme, sa)
        if self.bound.is_ip and not self.opts.access.permits(peer.host):
            self.opts.log.info(f"refused {show(peer)}: not allowed by --allow/--deny")
            return None
        if len(self.sessions) >= self.max_sessions:
            self.opts.log.info(f"refused {show(peer)}: {self.max_sessions} sessions already (--max-conns)")
            return None
        network = source_network(peer)
        if self.per_network.get(network, 0) >= self.per_source:
            self.opts.log.info(f"refused {show(peer)}: {self.per_source} sessions from {network} (--max-per-source)")
            return None
        if self.bound.is_unix and not sa:
            self.opts.log.info(f"datagram from an unbound {self.bound.scheme} client: replies cannot reach it")
        fam, kind, proto, target_sa = self.target_info
        up = socket.socket(fam, kind, proto)
        try:
            if fam == socket.AF_UNIX:
                up.bind("")  # autobind, so the target's replies can come back
            up.setblocking(False)
            up.connect(target_sa)
        except OSError as exc:
            up.close()
            self.opts.log.info(f"{show(peer)}: connect {self.target}: {describe(exc)}")
            return None
        session = (up, [time.monotonic(), 0.0])
        self.sessions[sa] = session
        self.networks[sa] = network
        self.per_network[network] = self.per_network.get(network, 0) + 1
        self.loop.add_reader(up.fileno(), self._from_upstream, sa, up, session[1])
        self.opts.log.info(f"session from {show(peer)} on {self.bound} -> {self.target}")
        return session

    def _from_upstream(self, sa: Any, up: socket.socket, stamp: list[float]) -> None:
        for _ in range(64):
            try:
                data = up.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.opts.log.debug(f"{self.target}: {describe(exc)}")
                return
            stamp[0] = time.monotonic()
            stamp[1] = 1.0  # the target answered: the session gets the full idle time
            if sa:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, sa)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle / 2 or 0.1, NO_REPLY_IDLE / 2))
            now = time.monotonic()
            for sa, (up, stamp) in list(self.sessions.items()):
                if now - stamp[0] >= (self.idle if stamp[1] else min(NO_REPLY_IDLE, self.idle)):
                    self._close(sa, up)

    def _close(self, sa: Any, up: socket.socket) -> None:
        self.sessions.pop(sa, None)
        network = self.networks.pop(sa, None)
        if network is not None:
            left = self.per_network.get(network, 1) - 1
            if left:
                self.per_network[network] = left
            else:
                self.per_network.pop(network, None)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(up.fileno())
        up.close()
        self.opts.log.info(f"session from {to_address(self.bound.scheme, sa)} closed")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sweeper.cancel()
        for sa, (up, _stamp) in list(self.sessions.items()):
            self._close(sa, up)
