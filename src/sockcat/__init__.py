"""sockcat: one address syntax for every socket kind, a socket library (sync and asyncio) and a command line."""

from ._address import Address
from ._errors import (
    AddressError,
    IncompleteReadError,
    LimitOverrunError,
    NetworkError,
    SockcatError,
    UsageError,
)
from ._relay import relay
from ._sockets import Datagram, Listener, Stream, connect, connect_datagram, listen, open_datagram
from ._trace import set_trace

__version__ = "0.1.0"

__all__ = [
    "Address",
    "AddressError",
    "Datagram",
    "IncompleteReadError",
    "LimitOverrunError",
    "Listener",
    "NetworkError",
    "SockcatError",
    "Stream",
    "UsageError",
    "__version__",
    "connect",
    "connect_datagram",
    "listen",
    "open_datagram",
    "relay",
    "set_trace",
]
