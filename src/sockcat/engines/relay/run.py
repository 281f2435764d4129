"""``sockcat relay LISTEN TARGET``: the relay as a Service of the serving scaffold, in each process."""

from __future__ import annotations

import asyncio
import time

from sockcat.core.address import Address
from sockcat.core.errors import UsageError
from sockcat.engines.relay.common import RelayOptions
from sockcat.engines.relay.dgram import _DgramRelay
from sockcat.engines.relay.server import _Relay
from sockcat.net.proxy import check_target as check_proxy_target
from sockcat.serving.scaffold import Bound, Settings, serve_on_loop


def _check_kinds(listen: Address, target: Address) -> None:
    if listen.is_stdio or target.is_stdio:
        raise UsageError("relay joins two socket addresses; for stdio use connect or listen")
    if listen.is_datagram != target.is_datagram:
        raise UsageError(f"cannot relay between a datagram and a stream address: {listen} and {target}")


def run_relay(listen_address: Address, target: Address, opts: RelayOptions) -> None:
    """``sockcat relay LISTEN TARGET`` (CLI entry): bind, print the listening line, serve until a signal."""
    _check_kinds(listen_address, target)
    if opts.proxy is not None:
        check_proxy_target(target)
    settings = Settings(
        log=opts.log,
        access=opts.access,
        sockopts=opts.sockopts,
        fingerprint=opts.fingerprint,
        workers=opts.workers,
        grace=opts.grace,
    )
    serve_on_loop([listen_address], settings, lambda: _Serving(target, opts))


class _Serving:
    """The relay as the serving scaffold runs it, in each process."""

    def __init__(self, target: Address, opts: RelayOptions) -> None:
        self.target = target
        self.opts = opts
        self.relay: _Relay | None = None
        self.dgram: _DgramRelay | None = None

    async def start(self, bound: list[Bound]) -> None:
        (b,) = bound
        if b.address.is_datagram:
            self.dgram = _DgramRelay(b.sock, b.address, self.target, self.opts)
            await self.dgram.start()
            return
        b.sock.setblocking(False)
        self.relay = _Relay(self.target, self.opts, b.sock, b.address)
        self.relay.start_accepting()

    async def stop(self, grace: float) -> None:
        if self.dgram is not None:
            self.dgram.stop()
        relay = self.relay
        if relay is None:
            return
        try:
            relay.closing = True  # no back-off timer may start accepting again
            relay.stop_accepting()
            # Graceful: no new connections; the ones under way get --grace seconds.
            if relay.busy() and grace:
                self.opts.log.info(
                    f"stopping: {len(relay.conns) + len(relay.tasks)} connection(s) get {grace:g} s to finish"
                )
                await _wait_idle(relay, grace)
            if relay.busy():
                relay.stop_all()
                await _wait_idle(relay, 2.0)
                for t in list(relay.tasks):
                    t.cancel()
        finally:
            relay.close()


async def _wait_idle(relay: _Relay, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while relay.busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
