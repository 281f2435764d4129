"""The transfer's byte paths: protocol lines, and file bytes moved and hashed at once.

A :class:`PlainChannel` carries the protocol over the stream as it is (tcp, unix, tls). On a plain socket,
file bytes never enter Python: the sender's ``sendfile`` reads the page cache straight into the socket and the
receiver splices from the socket into the part file, while a second thread hashes the same bytes through a
read-only mapping of the file (SHA-256 releases the GIL), so hashing overlaps moving instead of preceding it.
Over TLS the bytes pass through a buffer, hashed and written by a second thread.

A :class:`SealedChannel` (a one-time code was used) carries everything in AES-256-GCM records keyed by the
code's key exchange; the receiver opens each record before a single byte of it is written.

Every wait is bounded by the idle timeout: a peer that sends nothing for that long ends the session.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sockcat.core.errors import IncompleteReadError, LimitOverrunError, NetworkError, ProtocolError, Timeout
from sockcat.core.framing import ReceiveBuffer
from sockcat.core.pake import RECORD, Opener, Sealer, SealError
from sockcat.core.transfer import LINE, dump_line, parse_line
from sockcat.engines.pump import grow_pipe
from sockcat.streams.sync import Stream

Progress = Callable[[int], None]
Hash = Any  # hashlib's SHA-256 object

CHUNK = 1 << 20  # bytes per read, write or record
WINDOW = 32 << 20  # bytes hashed per mapping of the file (mapped in one go: MAP_POPULATE)
INLINE = 4 << 20  # files up to this size are hashed in the thread that moves them
QUEUE = 4  # chunks waiting between the moving thread and the hashing/writing one
KEEPALIVE = 5.0  # seconds between "busy" lines while a side works on something long


# Pages mapped in one go rather than one fault at a time: measured 15 % less CPU for hashing from the page cache.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


class PeerClosed(NetworkError):
    """The peer closed the connection in the middle of something."""


def hash_range(fd: int, start: int, end: int, h: Hash) -> None:
    """Feed bytes ``[start, end)`` of a file to ``h``, through read-only mappings (no copy into Python)."""
    pos = start
    while pos < end:
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        length = min(end, base + WINDOW) - base
        with mmap.mmap(fd, length, flags=_MAP_FLAGS, prot=mmap.PROT_READ, offset=base) as m, memoryview(m) as view:
            h.update(view[pos - base :])
        pos = base + length


def hash_read(fd: int, start: int, end: int, h: Hash, stop: threading.Event | None = None) -> None:
    """Feed bytes ``[start, end)`` of a file to ``h`` through one reused buffer (until ``stop`` is set). For files
    that are not ours (the sender's sources): a mapping of a file truncated meanwhile would kill the process with
    SIGBUS, and reading through a small buffer that stays in the CPU's cache costs no more (measured)."""
    buf = bytearray(min(CHUNK, max(end - start, 1)))
    view = memoryview(buf)
    pos = start
    while pos < end and not (stop is not None and stop.is_set()):
        n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
        if n <= 0:
            raise ProtocolError("the file shrank while it was read")
        h.update(view[:n])
        pos += n


class _Follower(threading.Thread):
    """Hashes a file's bytes from ``start`` up to a limit that the writing thread raises as bytes land."""

    def __init__(self, fd: int, start: int, h: Hash) -> None:
        super().__init__(name="sockcat hash", daemon=True)
        self.fd, self.pos, self.h = fd, start, h
        self._limit = start
        self._final = False
        self._cond = threading.Condition()
        self.error: BaseException | None = None

    def advance(self, limit: int, final: bool = False) -> None:
        with self._cond:
            self._limit, self._final = limit, final
            self._cond.notify()

    def run(self) -> None:
        try:
            while True:
                with self._cond:
                    while True:
                        end = self._limit if self._final else self._limit - self._limit % WINDOW
                        if end > self.pos or self._final:
                            break
                        self._cond.wait()
                    final = self._final
                if end > self.pos:
                    hash_range(self.fd, self.pos, end, self.h)
                    self.pos = end
                elif final:
                    return
        except BaseException as exc:
            self.error = exc

    def finish(self, limit: int) -> None:
        self.advance(limit, final=True)
        self.join()
        if self.error is not None:
            raise self.error


def wait_fd(fd: int, events: int, timeout: float | None, what: str) -> None:
    """Block until ``fd`` is ready, or raise Timeout after ``timeout`` seconds of nothing."""
    poller = select.poll()
    poller.register(fd, events)
    ms = -1 if timeout is None else max(0, int(timeout * 1000))
    while not poller.poll(ms):
        if ms >= 0:
            raise Timeout(errno.ETIMEDOUT, f"{what}: nothing for {timeout:g} s")


class Channel:
    """What both channel kinds offer the engine."""

    zero_copy = False

    def __init__(self, stream: Stream, idle_timeout: float | None) -> None:
        self.stream = stream
        self.idle = idle_timeout
        self._send_lock = threading.Lock()
        stream.settimeout(idle_timeout)

    @property
    def where(self) -> str:
        return str(self.stream.peer or self.stream.address or "the peer")

    # Lines --------------------------------------------------------------------------------------------------

    def send_msg(self, obj: dict[str, Any]) -> None:
        self._send(dump_line(obj))

    def recv_msg(self, what: str, max_size: int = LINE, *, busy: bool | float = True) -> dict[str, Any]:
        """The next protocol line as an object. ``{"busy": …}`` lines (the peer is working) are skipped if
        ``busy`` is true, refused if false, and skipped until the monotonic time ``busy`` if it is a float."""
        while True:
            obj = parse_line(self._recv_line(what, max_size), what)
            if "busy" not in obj:
                return obj
            if busy is False or (type(busy) is float and time.monotonic() > busy):
                raise ProtocolError(f"the peer said it was busy where the {what} was due, or for too long")

    @contextlib.contextmanager
    def keepalive(self) -> Iterator[None]:
        """While the block runs, tell the peer every few seconds that this side is busy (not gone)."""
        stop = threading.Event()
        every = min(KEEPALIVE, self.idle / 3) if self.idle else KEEPALIVE

        def beat() -> None:
            while not stop.wait(every):
                try:
                    self.send_msg({"busy": True})
                except OSError:
                    return

        t = threading.Thread(target=beat, name="sockcat keepalive", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    # To be provided -------------------------------------------------------------------------------------------

    def _send(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def _recv_line(self, what: str, max_size: int) -> bytes:
        raise NotImplementedError

    def recv_exactly(self, n: int, what: str) -> bytes:
        raise NotImplementedError

    def send_bytes(self, data: bytes) -> None:
        self._send(data)

    def send_file(self, fd: int, start: int, count: int, h: Hash, progress: Progress | None) -> None:
        """Send bytes ``[start, start + count)`` of a file, feeding them to ``h`` too."""
        if count <= INLINE:
            self._send_buffered(fd, start, count, h, progress)
            return
        chunks: queue.Queue[bytes | None] = queue.Queue(QUEUE)
        failed: list[BaseException] = []
        stop = threading.Event()

        def read() -> None:  # reads and hashes ahead of the sending thread
            try:
                for pos in range(start, start + count, CHUNK):
                    if stop.is_set():
                        return
                    data = os.pread(fd, min(CHUNK, start + count - pos), pos)
                    if not data:
                        raise ProtocolError("the file shrank while it was sent")
                    h.update(data)
                    chunks.put(data)
            except BaseException as exc:
                failed.append(exc)
            finally:
                chunks.put(None)

        reader = threading.Thread(target=read, name="sockcat read", daemon=True)
        reader.start()
        try:
            while (data := chunks.get()) is not None:
                self._send(data)
                if progress is not None:
                    progress(len(data))
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    chunks.get(timeout=0.05)
            reader.join()
        if failed:
            raise failed[0]

    def _send_buffered(self, fd: int, start: int, count: int, h: Hash, progress: Progress | None) -> None:
        pos, end = start, start + count
        while pos < end:
            data = os.pread(fd, min(CHUNK, end - pos), pos)
            if not data:
                raise ProtocolError("the file shrank while it was sent")
            h.update(data)
            self._send(data)
            pos += len(data)
            if progress is not None:
                progress(len(data))

    def recv_file(self, fd: int, count: int, h: Hash, progress: Progress | None, what: str) -> None:
        """Receive ``count`` bytes, append them to the file ``fd`` and feed them to ``h``."""
        if count <= INLINE:
            left = count
            while left:
                data = self._recv_some(min(left, CHUNK), what)
                h.update(data)
                _write_all(fd, data)
                left -= len(data)
                if progress is not None:
                    progress(len(data))
            return
        chunks: queue.Queue[bytes | None] = queue.Queue(QUEUE)
        failed: list[BaseException] = []

        def write() -> None:  # hashes and writes behind the receiving thread
            try:
                while (data := chunks.get()) is not None:
                    h.update(data)
                    _write_all(fd, data)
            except BaseException as exc:
                failed.append(exc)
                while chunks.get() is not None:
                    pass

        writer = threading.Thread(target=write, name="sockcat write", daemon=True)
        writer.start()
        try:
            left = count
            while left and not failed:
                data = self._recv_some(min(left, CHUNK), what)
                chunks.put(data)
                left -= len(data)
                if progress is not None:
                    progress(len(data))
        finally:
            chunks.put(None)
            writer.join()
        if failed:
            raise failed[0]

    def _recv_some(self, n: int, what: str) -> bytes:
        """Between 1 and ``n`` bytes of the byte stream; PeerClosed at its end."""
        raise NotImplementedError


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class PlainChannel(Channel):
    """The protocol over the stream as it is; on a plain socket, file bytes move in the kernel."""

    def __init__(self, stream: Stream, idle_timeout: float | None) -> None:
        super().__init__(stream, idle_timeout)
        self.zero_copy = stream.tls_version is None and stream.socket.type == socket.SOCK_STREAM

    def _send(self, data: bytes | memoryview) -> None:
        with self._send_lock:
            self.stream.sendall(data)

    def _recv_line(self, what: str, max_size: int) -> bytes:
        try:
            return self.stream.recv_line(max_size=max_size)
        except IncompleteReadError:
            raise PeerClosed(errno.ECONNRESET, f"{self.where} closed the connection before the {what}") from None
        except LimitOverrunError:
            raise ProtocolError(f"the {what} is longer than {max_size:,} bytes") from None

    def recv_exactly(self, n: int, what: str) -> bytes:
        try:
            return self.stream.recv_exactly(n)
        except IncompleteReadError:
            raise PeerClosed(errno.ECONNRESET, f"{self.where} closed the connection in the {what}") from None

    def _recv_some(self, n: int, what: str) -> bytes:
        data = self.stream.recv(n)
        if not data:
            raise PeerClosed(errno.ECONNRESET, f"{self.where} closed the connection in the {what}")
        return data

    def send_file(self, fd: int, start: int, count: int, h: Hash, progress: Progress | None) -> None:
        if not self.zero_copy or count <= INLINE:
            super().send_file(fd, start, count, h, progress)
            return
        failed: list[BaseException] = []
        stop = threading.Event()
        hasher = threading.Thread(target=_hash_into, args=(fd, start, start + count, h, failed, stop), daemon=True)
        hasher.start()
        try:
            self._sendfile(fd, start, count, progress)
        except BaseException:
            stop.set()  # the digest will not be needed
            raise
        finally:
            hasher.join()
        if failed:
            raise failed[0]

    def _sendfile(self, fd: int, start: int, count: int, progress: Progress | None) -> None:
        sock = self.stream.socket.fileno()
        pos, end = start, start + count
        with self._send_lock:
            while pos < end:
                try:
                    n = os.sendfile(sock, fd, pos, min(end - pos, 64 * CHUNK))
                except BlockingIOError:
                    wait_fd(sock, select.POLLOUT, self.idle, f"send to {self.where}")
                    continue
                except OSError as exc:
                    raise _net_error(exc, f"send to {self.where}") from None
                if n == 0:
                    raise ProtocolError("the file shrank while it was sent")
                pos += n
                if progress is not None:
                    progress(n)

    def recv_file(self, fd: int, count: int, h: Hash, progress: Progress | None, what: str) -> None:
        if not self.zero_copy or count <= INLINE:
            super().recv_file(fd, count, h, progress, what)
            return
        start = os.lseek(fd, 0, os.SEEK_END)
        ahead = self.stream.recv(min(count, self.stream.buffered)) if self.stream.buffered else b""
        if ahead:  # bytes the line reader already took off the socket
            h.update(ahead)
            _write_all(fd, ahead)
            if progress is not None:
                progress(len(ahead))
        follower = _Follower(fd, start + len(ahead), h)
        follower.start()
        try:
            self._splice_in(fd, count - len(ahead), follower, start + len(ahead), progress, what)
        finally:
            follower.finish(os.lseek(fd, 0, os.SEEK_END))

    def _splice_in(
        self, fd: int, count: int, follower: _Follower, pos: int, progress: Progress | None, what: str
    ) -> None:
        sock = self.stream.socket.fileno()
        r, w = os.pipe2(os.O_CLOEXEC)
        grow_pipe(w)
        try:
            left = count
            while left:
                # Wait for the socket first: a splice blocked on it would hold the pipe (see _copy).
                wait_fd(sock, select.POLLIN, self.idle, f"receive {what} from {self.where}")
                try:
                    n = os.splice(sock, w, min(left, CHUNK), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _net_error(exc, f"receive from {self.where}") from None
                if n == 0:
                    raise PeerClosed(errno.ECONNRESET, f"{self.where} closed the connection in the {what}")
                moved = 0
                while moved < n:
                    moved += os.splice(r, fd, n - moved, flags=os.SPLICE_F_MOVE)
                left -= n
                pos += n
                follower.advance(pos)
                if progress is not None:
                    progress(n)
        finally:
            os.close(r)
            os.close(w)


def _hash_into(fd: int, start: int, end: int, h: Hash, failed: list[BaseException], stop: threading.Event) -> None:
    try:
        hash_read(fd, start, end, h, stop)
    except BaseException as exc:
        failed.append(exc)


def _net_error(exc: OSError, what: str) -> NetworkError:
    from sockcat.core.errors import network_error

    return network_error(exc, what)


class SealedChannel(Channel):
    """Everything in AES-256-GCM records keyed by the code's exchange (``docs/transfer.md``)."""

    def __init__(self, stream: Stream, idle_timeout: float | None, send_key: bytes, recv_key: bytes) -> None:
        super().__init__(stream, idle_timeout)
        self._sealer = Sealer(send_key)
        self._opener = Opener(recv_key)
        self._plain = ReceiveBuffer()

    def _send(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        with self._send_lock:
            for pos in range(0, max(len(view), 1), RECORD):
                header, sealed = self._sealer.seal(view[pos : pos + RECORD])
                self.stream.sendall(header + sealed if len(sealed) < 4096 else header)
                if len(sealed) >= 4096:
                    self.stream.sendall(sealed)

    def _open_record(self, what: str) -> bytes:
        """Read and open the next record: its plaintext."""
        try:
            header = self.stream.recv_exactly(4)
            body = bytearray(Opener.length(header))
        except IncompleteReadError:
            raise PeerClosed(errno.ECONNRESET, f"{self.where} closed the connection in the {what}") from None
        except SealError as exc:
            raise ProtocolError(str(exc)) from None
        view, got = memoryview(body), 0
        while got < len(body):
            n = self.stream.recv_into(view[got:])
            if not n:
                raise PeerClosed(errno.ECONNRESET, f"{self.where} closed the connection in the {what}")
            got += n
        try:
            return self._opener.open(header, body)
        except SealError as exc:
            raise ProtocolError(str(exc)) from None

    def _record(self, what: str) -> None:
        self._plain.feed(self._open_record(what))

    def _recv_line(self, what: str, max_size: int) -> bytes:
        while True:
            try:
                line = self._plain.take_until(b"\n", max_size)
            except LimitOverrunError:
                raise ProtocolError(f"the {what} is longer than {max_size:,} bytes") from None
            if line is not None:
                return line
            self._record(what)

    def recv_exactly(self, n: int, what: str) -> bytes:
        while (out := self._plain.take_exactly(n)) is None:
            self._record(what)
        return out

    def _recv_some(self, n: int, what: str) -> bytes:
        if self._plain:
            return self._plain.take_some(n)
        data = self._open_record(what)  # the usual case: a whole record, straight through
        if len(data) > n:
            self._plain.feed(data[n:])
            data = data[:n]
        return data


def sha256() -> Hash:
    return hashlib.sha256()
