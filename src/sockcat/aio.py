"""The asyncio twin of sockcat's library: the same names, awaited (``await aio.connect(...)``, ``async with``,
``async for conn in listener``). This module only gathers them: the streams live in
:mod:`sockcat.streams.aio`, the engines' coroutines in :mod:`sockcat.engines`.
"""

from __future__ import annotations

from typing import Any

from sockcat.core.address import Address
from sockcat.streams.aio import (
    Datagram,
    Listener,
    Stream,
    connect,
    connect_datagram,
    connect_socket,
    listen,
    open_datagram,
)

__all__ = [
    "Datagram",
    "Listener",
    "Stream",
    "bench",
    "connect",
    "connect_datagram",
    "connect_socket",
    "listen",
    "open_datagram",
    "relay",
    "scan",
    "serve",
]


async def relay(a: Stream, b: Stream) -> tuple[int, int]:
    """Copy both ways until both directions end (half-close and resets pass through); the twin of
    :func:`sockcat.relay`. Returns (bytes a->b, bytes b->a)."""
    from sockcat.engines.relay import relay_async  # the engines load when first used: `import sockcat.aio` stays light

    return await relay_async(a, b)


async def bench(address: Address | str, **kwargs: Any) -> Any:
    """Load an echo, discard or chargen server from a running loop; the twin of :func:`sockcat.bench`
    (same keyword arguments, one process). Returns a :class:`sockcat.BenchResult`."""
    from sockcat.engines.bench import bench_async

    return await bench_async(address, **kwargs)


async def serve(service: str, address: Address | str, **kwargs: Any) -> None:
    """Run a test service (echo, discard, chargen, daytime) in a running loop until cancelled; the twin of
    :func:`sockcat.serve`."""
    from sockcat.engines.services import serve_async

    await serve_async(service, address, **kwargs)


async def scan(host: str, ports: list[int] | str, **kwargs: Any) -> Any:
    """Scan ``host``'s ports from a running loop; the twin of :func:`sockcat.scan` (same keyword arguments).
    Returns a :class:`sockcat.ScanResult`."""
    from sockcat.engines.scan import scan_async

    return await scan_async(host, ports, **kwargs)
