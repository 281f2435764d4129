"""The stream services over WebSocket (``serve echo ws://…``): one asyncio protocol per connection that answers
the upgrade (:mod:`sockcat.core.websocket`), then runs the service on message payloads (docs/websocket.md).

Echo sends back what each read of the payloads gave (in ``--text`` mode, line by line, so a text message comes
back as one text message); discard drops them; chargen sends the RFC 864 pattern in binary messages; daytime sends
one message and its Close. Like the plain services, echo stops reading while its replies wait (bounded memory).
"""

from __future__ import annotations

import asyncio

from websockets.http11 import Request

from sockcat.core.services import CHARGEN_CHUNK, daytime_line
from sockcat.core.websocket import HandshakeReader, Keepalive, WsCore, WsError, answer
from sockcat.core.wsoptions import WsOptions
from sockcat.engines.services.common import WRITE_HIGH_WATER, _Shared
from sockcat.engines.services.stream import _Conn

WS_HANDSHAKE_TIMEOUT = 10.0  # seconds a client has to send its whole upgrade request
_READ = 1 << 20


class WsService(_Conn, asyncio.Protocol):
    __slots__ = ("core", "hs", "keepalive", "opts", "paused", "resource", "service", "timer")

    def __init__(self, shared: _Shared, service: str, resource: str, opts: WsOptions) -> None:
        super().__init__(shared)
        self.service = service
        self.resource = resource
        self.opts = opts
        self.hs: HandshakeReader | None = HandshakeReader(response=False)
        self.core: WsCore | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.keepalive: Keepalive | None = None

    def start(self, transport: asyncio.Transport) -> None:
        self.timer = self.shared.loop.call_later(WS_HANDSHAKE_TIMEOUT, self._too_slow)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def _too_slow(self) -> None:
        if self.core is None and self.transport is not None:
            self.shared.log.info(f"{self.peer or 'a client'}: no WebSocket upgrade within {WS_HANDSHAKE_TIMEOUT:g} s")
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        super().connection_lost(exc)

    # --- bytes in ------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        t = self.transport
        if t is None:
            return
        if self.shared.counting:
            self.rx += len(data)
            self.last = self.shared.loop.time()
        try:
            if self.core is None:
                self._upgrade(t, data)
            else:
                self.core.feed(data)
            if self.core is not None:
                self._serve(t, self.core)
        except WsError as exc:
            self.shared.log.info(f"{self.peer or 'a client'}: {exc.reason}")
            if self.core is not None:
                t.write(self.core.take_out())
            t.close()

    def _upgrade(self, t: asyncio.Transport, data: bytes) -> None:
        assert self.hs is not None
        request = self.hs.feed(data)
        if request is None:
            return
        assert isinstance(request, Request)
        ans = answer(request, self.resource, self.opts, self.hs.leftover())
        self.hs = None
        t.write(ans.response)
        if ans.core is None:
            self.shared.log.info(f"{self.peer or 'a client'}: refused with HTTP {ans.status}")
            t.close()
            return
        self.core = ans.core
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.opts.ping:
            self.keepalive = Keepalive(self.opts.ping, self.shared.loop.time())
            self.timer = self.shared.loop.call_later(self.opts.ping, self._ping)
        if self.service == "daytime":
            t.write(self.core.encode(daytime_line()) + self.core.encode_close())
        elif self.service == "chargen":
            self._fill()

    def _serve(self, t: asyncio.Transport, core: WsCore) -> None:
        if self.keepalive is not None:
            self.keepalive.heard = self.shared.loop.time()
        while data := core.read(_READ):
            if self.service == "echo" and not core.close_sent:
                out = core.encode(data)
                if self.shared.counting:
                    self.tx += len(out)
                t.write(out)
        if core.out:
            t.write(core.take_out())
        if core.peer_closed:  # the client's Close (or end): ours, and the connection ends
            t.write(core.encode_close())
            t.close()

    def eof_received(self) -> bool | None:
        if self.core is not None and self.transport is not None:
            try:
                self.core.feed(b"")
                self._serve(self.transport, self.core)
            except WsError:
                pass
        return None

    # --- keepalive, chargen, backpressure ---------------------------------------------------------------------
    def _ping(self) -> None:
        t, core, keepalive = self.transport, self.core, self.keepalive
        if t is None or core is None or keepalive is None:
            return
        ping = keepalive.tick(core, self.shared.loop.time())
        if ping is None:
            self.shared.log.info(f"{self.peer or 'a client'}: {keepalive.silence()}: closing")
            t.abort()
            return
        if ping:
            t.write(ping)
        self.timer = self.shared.loop.call_later(keepalive.every, self._ping)

    def _fill(self) -> None:
        t, core = self.transport, self.core
        for _ in range(8):
            if self.paused or t is None or core is None or t.is_closing() or core.close_sent:
                return
            t.write(core.encode(CHARGEN_CHUNK))
            if self.shared.counting:
                self.tx += len(CHARGEN_CHUNK)
                self.last = self.shared.loop.time()
        self.shared.loop.call_soon(self._fill)

    def pause_writing(self) -> None:
        self.paused = True
        if self.service == "echo" and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is None:
            return
        if self.service == "echo":
            self.transport.resume_reading()
        elif self.service == "chargen":
            self._fill()
