"""sockcat: one address syntax for every socket kind, a socket library (sync and asyncio) and a command line."""

from ._address import Address
from ._bench import bench
from ._errors import (
    AddressError,
    IncompleteReadError,
    LimitOverrunError,
    NetworkError,
    SockcatError,
    UsageError,
)
from ._relay import relay
from ._services import serve
from ._sockets import Datagram, Listener, Stream, connect, connect_datagram, listen, open_datagram
from ._stats import BenchResult
from ._trace import set_trace

__version__ = "0.1.0"

__all__ = [
    "Address",
    "AddressError",
    "BenchResult",
    "Datagram",
    "IncompleteReadError",
    "LimitOverrunError",
    "Listener",
    "NetworkError",
    "SockcatError",
    "Stream",
    "UsageError",
    "__version__",
    "bench",
    "connect",
    "connect_datagram",
    "listen",
    "open_datagram",
    "relay",
    "serve",
    "set_trace",
]
