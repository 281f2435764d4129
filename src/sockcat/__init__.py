"""sockcat: one address syntax for every socket kind, a socket library (sync and asyncio) and a command line.

Names load on first use (PEP 562): ``import sockcat`` (and the command line's start-up) costs only the
error classes; ``sockcat.connect``, ``sockcat.relay``, ``sockcat.aio``… import their modules when touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    AddressError,
    IncompleteReadError,
    LimitOverrunError,
    NetworkError,
    SockcatError,
    UsageError,
)

if TYPE_CHECKING:
    from . import aio as aio
    from ._address import Address as Address
    from ._bench import bench as bench
    from ._proxy import Proxy as Proxy
    from ._relay import relay as relay
    from ._scan import ScanResult as ScanResult
    from ._scan import scan as scan
    from ._services import serve as serve
    from ._sockets import Datagram as Datagram
    from ._sockets import Listener as Listener
    from ._sockets import Stream as Stream
    from ._sockets import connect as connect
    from ._sockets import connect_datagram as connect_datagram
    from ._sockets import listen as listen
    from ._sockets import open_datagram as open_datagram
    from ._stats import BenchResult as BenchResult
    from ._trace import set_trace as set_trace
    from ._transfer import recv_files as recv_files
    from ._transfer import send_files as send_files

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "Address": "._address",
    "BenchResult": "._stats",
    "Datagram": "._sockets",
    "Listener": "._sockets",
    "Proxy": "._proxy",
    "ScanResult": "._scan",
    "Stream": "._sockets",
    "bench": "._bench",
    "connect": "._sockets",
    "connect_datagram": "._sockets",
    "listen": "._sockets",
    "open_datagram": "._sockets",
    "relay": "._relay",
    "scan": "._scan",
    "serve": "._services",
    "set_trace": "._trace",
    "send_files": "._transfer",
    "recv_files": "._transfer",
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
