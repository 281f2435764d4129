"""One-way byte copying between endpoints (stdio, sockets, TLS, child pipes), zero-copy where Linux allows.

A plain stream socket, a pipe or a file can be moved with ``os.splice`` (through a pipe of 1 MiB when
neither side is one): the bytes never enter Python. Everything else, and ``--hexdump``/``--trace``,
goes through a reused buffer. Either way a slow reader blocks the copy: memory stays bounded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import ssl
import stat
import threading
import time
import weakref
from collections.abc import Callable

from sockcat.core.hexdump import HexDumper
from sockcat.net import trace as _trace
from sockcat.streams.sync import Stream
from sockcat.streams.tlsio import TLSChannel, tls_error

SPLICE_CHUNK = 1 << 20
BUFFER_SIZE = 1 << 18
PACKET_SIZE = 1 << 16  # one seqpacket/datagram write must fit the socket's send buffer
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_HAVE_SPLICE = hasattr(os, "splice")
_NO_SPLICE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.ESPIPE}


def grow_pipe(fd: int, size: int = SPLICE_CHUNK) -> None:
    """Ask for a bigger pipe buffer (fewer wake-ups); harmless if refused."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)


class Counter:
    """Bytes moved in one direction, and when the last ones moved (for idle time-outs)."""

    __slots__ = ("bytes", "last")

    def __init__(self) -> None:
        self.bytes = 0
        self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.bytes += n
        self.last = time.monotonic()


class End:
    """An endpoint: reads, writes, ends its writing half; ``splice_fd`` if the kernel can move its bytes."""

    name = "?"
    splice_fd: int | None = None
    is_pipe = False
    packet = False

    def readinto(self, buf: memoryview) -> int:
        raise NotImplementedError

    def read_packet(self) -> bytes:
        """One whole message of a packet socket (only called when ``packet`` is true)."""
        raise NotImplementedError

    def write(self, data: memoryview | bytes) -> None:
        raise NotImplementedError

    def close_write(self) -> None:
        """Signal end of data to whoever reads from this endpoint."""

    def close(self) -> None:
        """Release the endpoint."""


class FdEnd(End):
    """A file descriptor: stdin/stdout, or a child process's pipe."""

    def __init__(self, fd: int, name: str, *, owned: bool = False, shared: bool = False) -> None:
        """``shared``: several threads write to it (listen -k's stdout): every write goes through ``write()``
        under its lock, never ``splice()`` (which, into a regular file, races on the file offset and loses data)."""
        self.fd = fd
        self.name = name
        self.owned = owned
        self._lock = threading.Lock()
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            mode = 0
        self.is_pipe = stat.S_ISFIFO(mode)
        if self.is_pipe:
            grow_pipe(fd)
        if not shared and (stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)):
            self.splice_fd = fd

    def readinto(self, buf: memoryview) -> int:
        return os.readv(self.fd, [buf])

    def write(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        with self._lock:  # several connections may share stdout (listen -k)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]

    def close_write(self) -> None:
        if self.owned:
            self.close()

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class SockEnd(End):
    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.packet = sock.type in (socket.SOCK_SEQPACKET, socket.SOCK_DGRAM)
        if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            self.splice_fd = sock.fileno()

    def readinto(self, buf: memoryview) -> int:
        if isinstance(self.sock, _trace.TracedSocket):
            data = self.sock.recv(len(buf))  # shown as recv(N) -> M bytes, the call learners know
            buf[: len(data)] = data
            return len(data)
        return self.sock.recv_into(buf)

    def read_packet(self) -> bytes:
        # MSG_TRUNC with MSG_PEEK returns the whole packet's length: no packet is ever cut short.
        size = self.sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
        return self.sock.recv(max(size, 1))

    def write(self, data: memoryview | bytes) -> None:
        self.sock.sendall(data)

    def close_write(self) -> None:
        _FIN_SENT.add(self.sock)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


class TLSEnd(End):
    def __init__(self, channel: TLSChannel, name: str) -> None:
        self.channel = channel
        self.name = name

    def readinto(self, buf: memoryview) -> int:
        try:
            return self.channel.recv_into(buf)
        except ssl.SSLError as exc:  # a one-line reason, never "[SSL: …] … (_ssl.c:NNN)"
            raise tls_error(exc, f"recv from {self.name}") from exc

    def write(self, data: memoryview | bytes) -> None:
        try:
            self.channel.sendall(data)
        except ssl.SSLError as exc:
            raise tls_error(exc, f"send to {self.name}") from exc

    def close_write(self) -> None:
        _FIN_SENT.add(self.channel.sock)
        self.channel.shutdown_write()

    def close(self) -> None:
        self.channel.close()


class StreamEnd(End):
    """A library :class:`~sockcat.Stream` (TLS included: it half-closes with close_notify)."""

    def __init__(self, stream: Stream, name: str | None = None) -> None:
        self.stream = stream
        self.name = name or str(stream.peer)
        sock = stream.socket
        self.packet = sock.type in (socket.SOCK_SEQPACKET, socket.SOCK_DGRAM)
        if stream._chan is None and not isinstance(sock, ssl.SSLSocket) and not self.packet and not stream._buf:
            self.splice_fd = sock.fileno()

    def read_packet(self) -> bytes:
        if self.stream._buf:
            return self.stream.recv()
        sock = self.stream.socket
        size = sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
        return self.stream.recv(max(size, 1))

    def readinto(self, buf: memoryview) -> int:
        data = self.stream.recv(len(buf))
        buf[: len(data)] = data
        return len(data)

    def write(self, data: memoryview | bytes) -> None:
        self.stream.sendall(data)

    def close_write(self) -> None:
        _FIN_SENT.add(self.stream.socket)
        self.stream.shutdown_write()

    def close(self) -> None:
        self.stream.close()


def copy(
    src: End,
    dst: End,
    counter: Counter,
    *,
    hexdump: HexDumper | None = None,
    emit: Callable[[str], None] | None = None,
    close_write: bool = True,
) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends, then end ``dst``'s writing half (half-close).

    If the copy fails (a reset, a broken destination), a socket ``dst`` is left as it is: an orderly end (FIN,
    close_notify) would turn the failure into an EOF for its peer, and the caller passes the reset on instead.
    """
    ok = False
    try:
        moved = False
        if (
            _HAVE_SPLICE
            and hexdump is None
            and src.splice_fd is not None
            and dst.splice_fd is not None
            and not (src.packet or dst.packet)
        ):
            splice = _trace.splice if _trace.tracing() else os.splice  # (traced: each call shown as what it is)
            moved = _splice(src.splice_fd, dst.splice_fd, src.is_pipe, dst.is_pipe, counter, splice)
        if not moved:
            _buffered(src, dst, counter, hexdump, emit)
        if _was_reset(src):
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        ok = True
    finally:
        if close_write and (ok or not isinstance(dst, (SockEnd, StreamEnd))):
            dst.close_write()


_TCP_CLOSE = 7  # tcpi_state of a connection ended by a reset (an orderly end leaves it in CLOSE_WAIT)
_FIN_SENT: weakref.WeakSet[socket.socket] = weakref.WeakSet()  # sockets a close_write() here half-closed


def _was_reset(end: End) -> bool:
    """Whether an end that read EOF was in fact reset. A reset is reported once (``sk_err``), to whichever call
    comes first: when the other direction's write took it, this direction's next read sees a plain EOF. The TCP
    state tells them apart (CLOSE after a reset; CLOSE_WAIT after the peer's FIN, or CLOSE once our own FIN was
    answered too, hence the check that we sent none), so a reset is passed on as a reset, never as a FIN."""
    sock = getattr(end, "sock", None) or getattr(getattr(end, "stream", None), "socket", None)
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    if sock in _FIN_SENT:
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE
    except (OSError, IndexError):
        return False


def _buffered(
    src: End, dst: End, counter: Counter, hexdump: HexDumper | None, emit: Callable[[str], None] | None
) -> None:
    if src.packet:
        while data := src.read_packet():
            if hexdump is not None and emit is not None:
                for line in hexdump.lines(data):
                    emit(line)
            dst.write(data)
            counter.add(len(data))
        return
    buf = bytearray(PACKET_SIZE if dst.packet else BUFFER_SIZE)
    view = memoryview(buf)
    while True:
        n = src.readinto(view)
        if not n:
            return
        if hexdump is not None and emit is not None:
            for line in hexdump.lines(bytes(view[:n])):
                emit(line)
        dst.write(view[:n])
        counter.add(n)


def _splice(
    src: int, dst: int, src_pipe: bool, dst_pipe: bool, counter: Counter, splice: Callable[[int, int, int], int]
) -> bool:
    """Move bytes in the kernel; False (nothing moved) if splice refuses these descriptors.

    No SPLICE_F_MORE: it corks the socket and costs about a quarter of the throughput.
    """
    if src_pipe or dst_pipe:
        # A splice from a socket into a pipe holds the pipe's lock while it waits for the socket: the process
        # reading that pipe (our stdout's reader) could not read what the last call already put there until
        # more data came. So wait for the socket first, and splice only what is there.
        poller = None
        if dst_pipe and not src_pipe:
            poller = select.poll()
            poller.register(src, select.POLLIN)
        first = True
        while True:
            if poller is not None:
                poller.poll()
            try:
                n = splice(src, dst, SPLICE_CHUNK)
            except OSError as exc:
                if first and exc.errno in _NO_SPLICE:
                    return False
                raise
            first = False
            if not n:
                return True
            counter.add(n)
    r, w = os.pipe()
    _trace.record(r, "pipe", "", f"read end {r}, write end {w}")  # (socket to socket: through a pipe)
    try:
        grow_pipe(w)
        first = True
        while True:
            try:
                n = splice(src, w, SPLICE_CHUNK)
            except OSError as exc:
                if first and exc.errno in _NO_SPLICE:
                    return False
                raise
            if not n:
                return True
            pending = n
            while pending:
                try:
                    m = splice(r, dst, pending)
                except OSError as exc:
                    if first and exc.errno in _NO_SPLICE:
                        # The bytes are in our pipe already: hand them over by hand, then give up on splice.
                        _drain(r, dst, pending)
                        counter.add(n)
                        return _finish_buffered(src, dst, counter)
                    raise
                first = False
                pending -= m
            counter.add(n)
    finally:
        os.close(r)
        os.close(w)


def _drain(r: int, dst: int, pending: int) -> None:
    while pending:
        data = os.read(r, pending)
        pending -= len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view) :]


def _finish_buffered(src: int, dst: int, counter: Counter) -> bool:
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    while n := os.readv(src, [view]):
        out = view[:n]
        while out:
            out = out[os.write(dst, out) :]
        counter.add(n)
    return True
