"""The buffered path (TLS, ``--hexdump``, ``--trace``, packet sockets): awaited copies through 64 KiB per
active direction, so a slow reader slows the writer; half-close and resets pass through."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from sockcat.core.hexdump import HexDumper
from sockcat.engines.pump import Counter
from sockcat.engines.relay.common import _LINGER0, RelayOptions
from sockcat.streams import aio as _aio


class _BufferedConn:
    def __init__(self, a: _aio.Stream, b: _aio.Stream, opts: RelayOptions) -> None:
        self.a = a
        self.b = b
        self.opts = opts
        self.counters = (Counter(), Counter())
        self.tasks: list[asyncio.Task[None]] = []
        self.reset = False
        # A WebSocket side reads and writes whole messages: larger ones cost fewer frames and system calls.
        self.chunk = 262144 if opts.server_ws is not None or opts.client_ws is not None else 65536

    async def run(self) -> None:
        self.tasks = [
            asyncio.ensure_future(self._copy(self.a, self.b, self.counters[0], ">")),
            asyncio.ensure_future(self._copy(self.b, self.a, self.counters[1], "<")),
        ]
        try:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            for t in self.tasks:
                t.cancel()

    async def _copy(self, src: _aio.Stream, dst: _aio.Stream, counter: Counter, mark: str) -> None:
        dump = HexDumper(mark) if self.opts.hexdump else None
        packets = src.socket.type == socket.SOCK_SEQPACKET
        try:
            while data := await (src.recv_packet() if packets else src.recv(self.chunk)):
                if dump is not None:
                    for line in dump.lines(data):
                        self.opts.log.always(line)
                await dst.sendall(data)
                counter.add(len(data))
        except (OSError, ssl.SSLError) as exc:
            self.opts.log.debug(f"relay direction {mark}: {exc}")
            self.abort()
            return
        await dst.shutdown_write()

    def abort(self) -> None:
        """Pass a reset on: SO_LINGER 0 makes the coming close() send RST."""
        if self.reset:
            return
        self.reset = True
        for s in (self.a, self.b):
            if s._ws is not None and s._ws.core.close_sent:
                continue  # a WebSocket told why in its Close (1002, 1009…): a reset could destroy that frame
            with contextlib.suppress(OSError):
                s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
        self.stop()

    def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
