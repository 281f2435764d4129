"""Datagram kinds (udp*, unixgram): one upstream socket per client address, closed after the idle time-out."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

from sockcat.core.address import Address, show
from sockcat.core.errors import describe
from sockcat.engines.relay.common import RelayOptions
from sockcat.net.sockets import resolve, to_address

DEFAULT_UDP_IDLE = 60.0


class _DgramRelay:
    """udp/unixgram <-> udp/unixgram: a session (own upstream socket) per client address."""

    def __init__(self, listen_sock: socket.socket, bound: Address, target: Address, opts: RelayOptions) -> None:
        self.sock = listen_sock
        self.bound = bound
        self.target = target
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.sessions: dict[Any, tuple[socket.socket, list[float]]] = {}
        self.idle = opts.idle_timeout if opts.idle_timeout is not None else DEFAULT_UDP_IDLE
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
        if self.opts.max_conns is not None and len(self.sessions) >= self.opts.max_conns:
            self.opts.log.info(f"refused {show(peer)}: --max-conns {self.opts.max_conns} reached")
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
        session = (up, [time.monotonic()])
        self.sessions[sa] = session
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
            if sa:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, sa)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle / 2 or 0.1))
            now = time.monotonic()
            for sa, (up, stamp) in list(self.sessions.items()):
                if now - stamp[0] >= self.idle:
                    self._close(sa, up)

    def _close(self, sa: Any, up: socket.socket) -> None:
        self.sessions.pop(sa, None)
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
