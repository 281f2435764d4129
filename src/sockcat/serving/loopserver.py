"""Stream servers on the running event loop (``serve``, ``chat``): one way to start one on a bound, listening
socket, so that the backlog, TLS admission and ``--trace`` are the same for every engine that serves this way."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from sockcat.core.address import Address
from sockcat.core.log import Log
from sockcat.net import trace as _trace
from sockcat.net.traceloop import traced_factory
from sockcat.serving.scaffold import BACKLOG
from sockcat.serving.tls_accept import Refuse, TlsAcceptor


async def start_stream_server(
    sock: socket.socket,
    address: Address,
    factory: Callable[[float | None], asyncio.BaseProtocol],
    *,
    backlog: int = BACKLOG,
    tls: tuple[ssl.SSLContext, Refuse, Log] | None = None,
) -> asyncio.AbstractServer | TlsAcceptor:
    """Serve ``factory``'s protocols on ``sock``. With ``tls`` (context, admission, log), a :class:`TlsAcceptor`
    admits each connection before its handshake and calls ``factory`` with the accept's loop time; else the loop's
    own server calls ``factory(None)``, listening with ``backlog`` (asyncio lists the socket again with its own
    default of 100 unless told). Traced connections under ``--trace``, either way."""
    if tls is not None:
        acceptor = TlsAcceptor(sock, address.scheme, tls[0], factory, tls[1], tls[2])  # (it traces its own)
        acceptor.start()
        return acceptor

    def plain() -> asyncio.BaseProtocol:
        return factory(None)

    make = traced_factory(plain, sock.fileno()) if _trace.tracing() else plain
    loop = asyncio.get_running_loop()
    if address.is_unix:
        return await loop.create_unix_server(make, sock=sock, backlog=backlog)
    return await loop.create_server(make, sock=sock, backlog=backlog)
