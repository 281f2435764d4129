"""The chat on a WebSocket address (docs/chat.md#the-chat-in-a-browser): a plain ``GET /`` gets the chat page
(``page/``: HTML, CSS and JS shipped in the package), and an upgrade joins the same room as every other address.

Over WebSocket the chat carries the same line protocol: each message from a client is a line (a trailing ``\\n``
may be left out), and the broker sends each line as one text message. A :class:`WsGate` protocol answers the HTTP
request; once upgraded (without compression: the room's lines are framed once for every WebSocket client), a
:class:`~.client.Client` runs on a :class:`~sockcat.streams.aio_wsproto.WsTransport` that frames what it writes.

Cross-site WebSocket hijacking: a browser page on another site could open a WebSocket to a broker on the user's
machine or network. An upgrade whose ``Origin`` is not the broker's own page (or one given with ``--origin``) is
refused with 403, and so is one whose ``Host`` is not a name of this broker (a page that re-binds its own DNS name
to the broker's address would otherwise pass as same-origin). Clients that send no ``Origin`` are not browsers and
are served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import ipaddress
import socket
from importlib import resources
from typing import Any, cast

from websockets.http11 import Request

from sockcat.core.websocket import HandshakeReader, WsCore, WsError, answer
from sockcat.core.wsoptions import WsOptions
from sockcat.engines.chat.broker import Broker
from sockcat.engines.chat.client import Client
from sockcat.streams.aio_wsproto import WsTransport, pass_on

WS_HANDSHAKE_TIMEOUT = 10.0
_PAGES = {
    "/": ("index.html", "text/html"),
    "/chat.css": ("chat.css", "text/css"),
    "/chat.js": ("chat.js", "text/javascript"),
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def page(path: str) -> tuple[bytes, str] | None:
    """A file of the chat page for a request path (query ignored), with its media type; None: no such file."""
    found = _PAGES.get(path.partition("?")[0])
    if found is None:
        return None
    name, kind = found
    return resources.files("sockcat.engines.chat").joinpath("page", name).read_bytes(), kind


def http_response(status: int, reason: str, body: bytes, kind: str = "text/plain") -> bytes:
    headers = [
        f"HTTP/1.1 {status} {reason}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Content-Type: {kind}; charset=utf-8",
        f"Content-Length: {len(body)}",
        f"Content-Security-Policy: {_CSP}",
        "X-Content-Type-Options: nosniff",
        "Referrer-Policy: no-referrer",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


class Names:
    """The host names a browser may use for this broker: IP literals, ``localhost``, this machine's names, the
    listening addresses' hosts and the hosts of ``--origin``."""

    def __init__(self, extra: list[str]) -> None:
        self.names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower(), *(e.lower() for e in extra)}

    def allowed(self, host_header: str) -> bool:
        host = host_header.strip().lower()
        if host.startswith("["):
            host = host[1 : host.find("]")] if "]" in host else host
        else:
            host = host.rpartition(":")[0] if host.count(":") == 1 else host
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return host.rstrip(".") in self.names


class WsGate(asyncio.Protocol):
    """One connection to a WebSocket chat address: the page for ``GET``, or the upgrade and then a chat client."""

    def __init__(
        self,
        broker: Broker,
        scheme: str,
        opts: WsOptions,
        names: Names,
        secure: bool,
        cache: list[Any],
        pending: set[WsGate],
    ) -> None:
        self.broker = broker
        self.scheme = scheme
        self.opts = opts
        self.names = names
        self.secure = secure
        self.cache = cache
        self.pending = pending
        self.t: asyncio.Transport | None = None
        self.hs: HandshakeReader | None = HandshakeReader(response=False)
        self.core: WsCore | None = None
        self.client: Client | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.accepted = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = t = cast(asyncio.Transport, transport)
        b = self.broker
        why = b.refuse(None, len(b.clients) + len(self.pending))
        if why is not None:
            b.opts.log.info(f"refused a connection on {self.scheme}: {why}")
            t.close()
            return
        self.pending.add(self)
        self.timer = asyncio.get_running_loop().call_later(WS_HANDSHAKE_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        if self.core is None and self.t is not None:
            self.t.abort()

    def _done_waiting(self) -> None:
        self.pending.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._done_waiting()
        if self.client is not None:
            self.client.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        t = self.t
        if t is None:
            return
        try:
            if self.core is None:
                self._request(t, data)
                return
            self.core.feed(data)
            if self.client is not None:
                pass_on(t, self.core, self.client)
        except WsError as exc:
            self.broker.opts.log.info(f"{self.client.peer if self.client else self.scheme}: {exc.reason}")
            if self.core is not None:
                t.write(self.core.take_out())
            t.close()

    def _request(self, t: asyncio.Transport, data: bytes) -> None:
        assert self.hs is not None
        request = self.hs.feed(data)
        if request is None:
            return
        assert isinstance(request, Request)
        self._done_waiting()
        if ", ".join(request.headers.get_all("Upgrade")).lower() != "websocket":
            self._page(t, request)
            return
        hosts = request.headers.get_all("Host")
        host = hosts[0] if len(hosts) == 1 else ""
        if not self.names.allowed(host):
            t.write(http_response(403, "Forbidden", b"not a name of this broker (see --origin)\n"))
            t.close()
            return
        own = f"{'https' if self.secure else 'http'}://{host.strip()}"
        origins = (own, *(self.opts.origins or ()))
        ans = answer(
            request, "/", dataclasses.replace(self.opts, origins=origins, text=True, compress=False), self.hs.leftover()
        )
        t.write(ans.response)
        if ans.core is None:
            t.close()
            return
        self.core = ans.core
        self.hs = None
        client = self.client = Client(self.broker, self.scheme, self.accepted)
        client.connection_made(WsTransport(t, ans.core, self.cache))  # type: ignore[arg-type]
        if client.transport is not None:
            pass_on(t, ans.core, client)

    def _page(self, t: asyncio.Transport, request: Request) -> None:
        """What a browser asks before the upgrade: the page's files, nothing else (the parser takes GET only)."""
        found = page(request.path)
        if found is None:
            t.write(http_response(404, "Not Found", b"not found\n"))
        else:
            body, kind = found
            t.write(http_response(200, "OK", body, kind))
        t.close()

    def eof_received(self) -> bool | None:
        if self.core is not None and self.t is not None and self.client is not None:
            try:
                self.core.feed(b"")
                pass_on(self.t, self.core, self.client)
            except WsError:
                pass
        return None

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_writing()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_writing()
