"""sockcat: one address syntax for every socket kind, a socket library (sync and asyncio) and a command line.

Names load on first use (PEP 562): ``import sockcat`` (and the command line's start-up) costs only the
error classes; ``sockcat.connect``, ``sockcat.relay``, ``sockcat.aio``… import their modules when touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sockcat.core.errors import (
    AddressError,
    IncompleteReadError,
    LimitOverrunError,
    NetworkError,
    SockcatError,
    UsageError,
)

if TYPE_CHECKING:
    from sockcat.core.address import Address as Address
    from sockcat.core.stats import BenchResult as BenchResult
    from sockcat.core.wsoptions import WsOptions as WsOptions
    from sockcat.engines.bench import bench as bench
    from sockcat.engines.relay import relay as relay
    from sockcat.engines.scan import ScanResult as ScanResult
    from sockcat.engines.scan import scan as scan
    from sockcat.engines.services import serve as serve
    from sockcat.engines.transfer import recv_files as recv_files
    from sockcat.engines.transfer import send_files as send_files
    from sockcat.net.proxy import Proxy as Proxy
    from sockcat.net.trace import set_trace as set_trace
    from sockcat.net.trace import trace as trace
    from sockcat.streams import aio as aio
    from sockcat.streams.datagram import Datagram as Datagram
    from sockcat.streams.datagram import connect_datagram as connect_datagram
    from sockcat.streams.datagram import open_datagram as open_datagram
    from sockcat.streams.sync import Listener as Listener
    from sockcat.streams.sync import Stream as Stream
    from sockcat.streams.sync import connect as connect
    from sockcat.streams.sync import listen as listen

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "Address": "sockcat.core.address",
    "BenchResult": "sockcat.core.stats",
    "Datagram": "sockcat.streams.datagram",
    "Listener": "sockcat.streams.sync",
    "Proxy": "sockcat.net.proxy",
    "ScanResult": "sockcat.engines.scan",
    "Stream": "sockcat.streams.sync",
    "WsOptions": "sockcat.core.wsoptions",
    "bench": "sockcat.engines.bench",
    "connect": "sockcat.streams.sync",
    "connect_datagram": "sockcat.streams.datagram",
    "listen": "sockcat.streams.sync",
    "open_datagram": "sockcat.streams.datagram",
    "relay": "sockcat.engines.relay",
    "scan": "sockcat.engines.scan",
    "serve": "sockcat.engines.services",
    "set_trace": "sockcat.net.trace",
    "trace": "sockcat.net.trace",
    "send_files": "sockcat.engines.transfer",
    "recv_files": "sockcat.engines.transfer",
}

__all__ = [
    "Address",
    "AddressError",
    "BenchResult",
    "Datagram",
    "IncompleteReadError",
    "LimitOverrunError",
    "Listener",
    "NetworkError",
    "Proxy",
    "ScanResult",
    "SockcatError",
    "Stream",
    "UsageError",
    "WsOptions",
    "__version__",
    "bench",
    "connect",
    "connect_datagram",
    "listen",
    "open_datagram",
    "recv_files",
    "relay",
    "scan",
    "send_files",
    "serve",
    "set_trace",
    "trace",
]


def __getattr__(name: str) -> Any:
    if name == "aio":
        return importlib.import_module(".aio", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "aio"})
