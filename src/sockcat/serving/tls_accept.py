"""TLS listeners on asyncio that admit before the handshake.

``loop.create_server(ssl=…)`` calls a protocol's ``connection_made`` only once the handshake is done, so a cap
counted there lets any number of connections that never finish one hold descriptors until the handshake timeout.
:class:`TlsAcceptor` accepts itself instead: each connection is admitted (``--allow``/``--deny``, the connection
cap, counting the handshakes under way) before the handshake starts, and has :data:`TLS_HANDSHAKE_TIMEOUT` seconds
to finish it. The protocol then sees an ordinary TLS transport.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from sockcat.core.address import Address, show
from sockcat.core.errors import describe, tls_reason
from sockcat.core.log import Log
from sockcat.net import trace as _trace
from sockcat.net.sockets import to_address
from sockcat.net.traceloop import traced_protocol
from sockcat.streams.tlsio import TLS_HANDSHAKE_TIMEOUT

# (address, handshakes under way) -> why the connection is refused, or None to admit it
Refuse = Callable[[Address | None, int], str | None]


class TlsAcceptor:
    """Accept on ``sock`` (bound, listening), admit, then hand each connection to ``factory(accepted)`` over TLS
    (``accepted``: the loop time of the accept, for deadlines that count from connecting)."""

    def __init__(
        self,
        sock: socket.socket,
        scheme: str,
        ctx: ssl.SSLContext,
        factory: Callable[[float], asyncio.BaseProtocol],
        refuse: Refuse,
        log: Log,
    ) -> None:
        self.sock, self.scheme, self.ctx = sock, scheme, ctx
        self.factory, self.refuse, self.log = factory, refuse, log
        self.handshaking = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.sock.setblocking(False)
        self._spawn(self._accept())

    def close(self) -> None:
        """Stop accepting; handshakes under way end (their connections closed)."""
        for task in list(self.tasks):
            task.cancel()

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(step)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, where = await loop.sock_accept(self.sock)
            except OSError as exc:  # (EMFILE and the like: not the end of the server)
                self.log.warning(f"accept: {describe(exc)}")
                await asyncio.sleep(0.1)
                continue
            try:
                address: Address | None = to_address(self.scheme, where)
            except (OSError, ValueError):
                address = None
            why = self.refuse(address, self.handshaking)
            if why is not None:
                self.log.info(f"refused {show(address, conn)}: {why}")
                conn.close()
                continue
            self._spawn(self._handshake(conn, address, loop.time()))

    async def _handshake(self, conn: socket.socket, address: Address | None, accepted: float) -> None:
        self.handshaking += 1
        listen_fd = self.sock.fileno()

        def protocol() -> asyncio.BaseProtocol:
            made = self.factory(accepted)  # traced, shown from the handshake on (the accept was a traced call)
            return traced_protocol(made, listen_fd, accept_line=False) if _trace.tracing() else made

        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                protocol, conn, ssl=self.ctx, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
            )
        except (TimeoutError, OSError) as exc:
            conn.close()
            self.log.info(f"{show(address, conn)}: TLS handshake: {tls_reason(exc) or 'timed out'}")
        except asyncio.CancelledError:
            conn.close()
            raise
        finally:
            self.handshaking -= 1
