"""What a WebSocket end may be told, apart from the protocol itself (:mod:`sockcat.core.websocket`), so that the
commands and streams that take these options load the ``websockets`` package only when an address is a WebSocket
one (it costs about 40 ms of start-up)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024  # bytes in one message, unless --max-message says otherwise


@dataclass(frozen=True)
class WsOptions:
    """What a WebSocket end may be told (docs/websocket.md): text mode, bounds, compression, subprotocols, the
    client's extra headers, the listener's origins (None: any; a browser-less client, with no Origin, always
    passes) and keepalive pings."""

    text: bool = False
    max_message: int = DEFAULT_MAX_MESSAGE
    compress: bool = True
    protocols: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    origins: tuple[str, ...] | None = None
    ping: float | None = None
