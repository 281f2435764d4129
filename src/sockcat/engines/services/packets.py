"""The datagram (udp, unixgram) and record (unixpacket) services."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

from sockcat.core.address import Address
from sockcat.core.errors import describe
from sockcat.core.services import (
    _PRINTABLE,
    _RECORD_LINES,
    chargen_datagram,
    chargen_line,
    chargen_reply_size,
    daytime_line,
)
from sockcat.engines.services.common import (
    DATAGRAM_MAX,
    RECV_BUFFER,
    ServeOptions,
    _name,
)
from sockcat.serving.scaffold import DEFAULT_MAX_CONNS

# --- datagram services --------------------------------------------------------------------------------------


class _DatagramService:
    """A reader callback on the bound datagram socket; each datagram gets its reply (if any) at once."""

    def __init__(self, service: str, sock: socket.socket, bound: Address, opts: ServeOptions) -> None:
        self.service = service
        self.sock = sock
        self.bound = bound
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray(DATAGRAM_MAX)
        self.view = memoryview(self.buf)
        self.line = random.randrange(len(_PRINTABLE))
        self.warned_unbound = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def stop(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())

    def _reply(self, n: int) -> bytes | None:
        if self.service == "echo":
            return bytes(self.view[:n])
        if self.service == "chargen":
            self.line += 1
            return chargen_datagram(self.line, chargen_reply_size(n))
        if self.service == "daytime":
            return daytime_line()
        return None

    def _readable(self) -> None:
        sock, log, access = self.sock, self.opts.log, self.opts.access
        for _ in range(64):  # drain a burst, then let other callbacks run
            try:
                n, sa = sock.recvfrom_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP error for an earlier reply
                log.debug(f"recvfrom on {self.bound}: {describe(exc)}")
                continue
            peer = _name(self.bound.scheme, sa)
            if access.active and not access.permits(peer.host if peer else ""):
                log.info(f"refused {peer}: not allowed by --allow/--deny")
                continue
            if log.verbose:
                log.info(f"datagram from {peer} on {self.bound}: {n} bytes")
            reply = self._reply(n)
            if reply is None:
                continue
            if not sa:
                if not self.warned_unbound:
                    self.warned_unbound = True
                    log.info(f"datagram from an unbound {self.bound.scheme} client: replies cannot reach it")
                continue
            try:
                sock.sendto(reply, sa)
            except OSError as exc:  # full buffer or gone peer: drop the reply, as UDP would
                log.debug(f"sendto {peer}: {describe(exc)}")


# --- unixpacket (SOCK_SEQPACKET) --------------------------------------------------------------------------


class _PacketService:
    """An accept loop and one task per connection; records stay whole (no coalescing transport)."""

    def __init__(self, service: str, sock: socket.socket, bound: Address, opts: ServeOptions) -> None:
        self.service = service
        self.sock = sock
        self.bound = bound
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.sock.setblocking(False)
        self.accepting = asyncio.ensure_future(self._accept_loop())

    def stop(self) -> None:
        if self.accepting is not None:
            self.accepting.cancel()
        for t in list(self.tasks):
            t.cancel()

    async def _accept_loop(self) -> None:
        log, opts = self.opts.log, self.opts
        while True:
            try:
                conn, _sa = await self.loop.sock_accept(self.sock)
            except OSError as exc:
                log.warning(f"accept on {self.bound}: {describe(exc)}")
                await asyncio.sleep(0.1)
                continue
            if opts.access.active and not opts.access.permits(""):
                log.info(f"refused a connection on {self.bound}: not allowed by --allow/--deny")
                conn.close()
                continue
            cap = opts.max_conns if opts.max_conns is not None else DEFAULT_MAX_CONNS
            if len(self.tasks) >= cap:
                log.info(f"refused a connection on {self.bound}: --max-conns {cap} reached")
                conn.close()
                continue
            conn.setblocking(False)
            log.info(f"connection on {self.bound}")
            task = asyncio.ensure_future(self._handle(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _handle(self, conn: socket.socket) -> None:
        loop = self.loop
        rx = tx = 0
        try:
            if self.service == "daytime":
                line = daytime_line()
                await loop.sock_sendall(conn, line)
                tx += len(line)
            elif self.service == "chargen":
                tx = await self._chargen(conn)
            else:
                while data := await self._recv(conn):
                    rx += len(data)
                    if self.service == "echo":
                        await loop.sock_sendall(conn, data)
                        tx += len(data)
        except OSError as exc:
            self.opts.log.info(f"connection on {self.bound}: {describe(exc)}")
        finally:
            conn.close()
            self.opts.log.info(f"closed a connection on {self.bound}: {tx} bytes sent, {rx} bytes received")

    async def _recv(self, conn: socket.socket) -> bytes:
        if self.opts.idle_timeout is None:
            return await self.loop.sock_recv(conn, RECV_BUFFER)
        try:
            async with asyncio.timeout(self.opts.idle_timeout):
                return await self.loop.sock_recv(conn, RECV_BUFFER)
        except TimeoutError:
            self.opts.log.info(f"idle for {self.opts.idle_timeout:g} s: closing")
            return b""

    async def _chargen(self, conn: socket.socket) -> int:
        async def drain() -> None:
            while await self.loop.sock_recv(conn, RECV_BUFFER):
                pass

        reader = asyncio.ensure_future(drain())
        tx = 0
        line = 0
        try:
            while not reader.done():
                record = b"".join(chargen_line(line + i) for i in range(_RECORD_LINES))
                line += _RECORD_LINES
                await self.loop.sock_sendall(conn, record)
                tx += len(record)
        finally:
            reader.cancel()
        return tx
