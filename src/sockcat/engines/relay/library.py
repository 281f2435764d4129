"""The library functions: :func:`relay` joins two blocking streams, :func:`relay_async` two asyncio ones."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

from sockcat.engines.pump import Counter, StreamEnd, copy
from sockcat.engines.relay.buffered import _BufferedConn
from sockcat.engines.relay.common import _LINGER0, RelayOptions
from sockcat.streams import aio as _aio
from sockcat.streams.sync import Stream


def _disconnect(fd: int) -> bool:
    """``connect(fd, AF_UNSPEC)``: Linux aborts a TCP connection at once (RST) and wakes its blocked callers."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        unspec = (ctypes.c_ubyte * 16)()  # a sockaddr whose sa_family is AF_UNSPEC (0)
        return int(libc.connect(fd, ctypes.byref(unspec), ctypes.sizeof(unspec))) == 0
    except (OSError, AttributeError):
        return False


def _reset_now(sock: socket.socket) -> None:
    """Reset a connection another thread may be blocked on: RST to the peer (never a FIN), the waiter woken.

    SO_LINGER 0 makes the eventual close() send RST; on Linux TCP, ``connect(AF_UNSPEC)`` sends it now and
    wakes a blocked reader or writer. ``shutdown(SHUT_RD)`` sends nothing but wakes a reader elsewhere.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
    if sys.platform == "linux" and sock.family in (socket.AF_INET, socket.AF_INET6) and sock.fileno() >= 0:
        _disconnect(sock.fileno())
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RD)


def relay(a: Stream, b: Stream) -> tuple[int, int]:
    """Copy ``a`` -> ``b`` and ``b`` -> ``a`` until both directions end; half-close and resets propagate.

    Returns (bytes a->b, bytes b->a). Plain sockets move through ``os.splice``; bytes already buffered
    by ``recv_line``/``recv_until`` go first.
    """
    counters = (Counter(), Counter())

    def one(src: Stream, dst: Stream, counter: Counter) -> None:
        try:
            copy(StreamEnd(src), StreamEnd(dst), counter)
        except OSError:
            for s in (a, b):  # pass the reset on (no FIN first), and wake the other direction
                _reset_now(s.socket)

    for s in (a, b):
        s.socket.settimeout(None)
    t = threading.Thread(target=one, args=(b, a, counters[1]), daemon=True)
    t.start()
    one(a, b, counters[0])
    t.join()
    return counters[0].bytes, counters[1].bytes


async def relay_async(a: _aio.Stream, b: _aio.Stream) -> tuple[int, int]:
    """The asyncio twin of :func:`relay`."""
    conn = _BufferedConn(a, b, RelayOptions())
    await conn.run()
    return conn.counters[0].bytes, conn.counters[1].bytes
