"""TLS over a blocking socket, safe for one reading and one writing thread at once.

``ssl.SSLSocket`` must not be read and written from two threads (OpenSSL's SSL objects are not
thread-safe, and TLS 1.3 reads can trigger writes). Here the TLS state lives in an ``ssl.SSLObject``
over memory BIOs, touched only under a lock that is never held across socket I/O; ciphertext leaves
under a second lock taken *before* draining the outgoing BIO, so records hit the wire in order. A reader
never waits for that lock: if a writer holds it, the writer sends the reader's bytes too.
Half-close is exact: close_notify, then TCP FIN, while the other direction keeps reading, and nothing
already received is lost (see :meth:`TLSChannel.shutdown_write`).
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import ssl
import threading

from ._errors import NetworkError

RECV_SIZE = 65536
_DRAIN_LIMIT = 64  # recv calls at most when draining unread bytes before close


class TLSChannel:
    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self._state = threading.Lock()  # the SSL object, the BIOs and _plain; never held across socket I/O
        self._send = threading.Lock()  # whoever holds it moves ciphertext from the outgoing BIO to the wire
        self._reading = threading.Lock()  # one reader at a time: socket bytes enter the BIO in order
        self._writing = threading.Lock()  # one sendall (or close_notify) at a time
        self._unsent = memoryview(b"")  # ciphertext out of the BIO, not yet on the wire (guarded by _send)
        self._plain = bytearray()  # plaintext decrypted ahead of close_notify, served first (guarded by _state)
        self._eof = False
        self._error: ssl.SSLError | None = None
        self._wrote_close = False

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- the wire ------------------------------------------------------------------------------------

    def _flush(self, wait: bool = True) -> None:
        """Put everything in the outgoing BIO on the wire, in order.

        With ``wait`` false (a reader) this never blocks on another thread: if the send lock is taken,
        its holder looks at the BIO again after letting go and sends these bytes as well.
        """
        while self._send.acquire(blocking=wait):
            try:
                while True:
                    if not self._unsent:
                        with self._state:
                            data = self._out.read()
                        if not data:
                            break
                        self._unsent = memoryview(data)
                    n = self.sock.send(self._unsent)
                    self._unsent = self._unsent[n:]
            finally:
                self._send.release()
            with self._state:
                if not self._out.pending:
                    return
            wait = False  # bytes were added after our last look: send them unless someone else does

    def _fill(self) -> None:
        data = self.sock.recv(RECV_SIZE)
        with self._state:
            if data:
                self._in.write(data)
            else:
                self._in.write_eof()

    # -- handshake and facts -------------------------------------------------------------------------

    def handshake(self) -> None:
        while True:
            try:
                with self._state:
                    self._obj.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def version(self) -> str | None:
        return self._obj.version()

    def cipher(self) -> str:
        c = self._obj.cipher()
        return c[0] if c else "?"

    def peer_certificate(self) -> bytes | None:
        return self._obj.getpeercert(binary_form=True)

    def getpeercert(self, binary_form: bool = False) -> object:
        with self._state:
            return self._obj.getpeercert(binary_form)

    # -- reading -------------------------------------------------------------------------------------

    def _take_plain(self, n: int) -> bytes:
        data = bytes(self._plain[:n])
        del self._plain[:n]
        return data

    def recv(self, n: int = RECV_SIZE) -> bytes:
        """Up to ``n`` plaintext bytes; ``b""`` when the peer's direction ended (close_notify or FIN)."""
        if n <= 0:
            return b""
        with self._reading:
            while True:
                data: bytes | None = None
                with self._state:
                    if self._plain:
                        return self._take_plain(n)
                    if self._eof:
                        return b""
                    if self._error is not None:
                        raise self._error
                    try:
                        data = self._obj.read(min(n, RECV_SIZE))  # a record is 16 KiB at most
                    except ssl.SSLWantReadError:
                        pass
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        self._eof = True
                        return b""
                    else:
                        if not data:
                            self._eof = True
                    owe = self._out.pending
                if owe:
                    # TLS 1.3 post-handshake replies (key update): sent now unless a writer will send them.
                    self._flush(wait=False)
                if data is not None:
                    return data
                self._fill()

    def recv_into(self, buf: memoryview) -> int:
        data = self.recv(len(buf))
        buf[: len(data)] = data
        return len(data)

    # -- writing -------------------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt up to 64 KiB of ``data`` and send it; the count of plaintext bytes taken."""
        view = memoryview(data).cast("B")
        if not view:
            return 0
        with self._writing:
            with self._state:
                n = self._obj.write(view[:RECV_SIZE])
            with contextlib.suppress(BlockingIOError):  # taken: the rest leaves with the next send
                self._flush()
            return n

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        with self._writing:
            while view:
                with self._state:
                    n = self._obj.write(view[:RECV_SIZE])
                view = view[n:]
                self._flush()

    def _read_ahead(self) -> None:
        """Decrypt every whole record already received into ``_plain`` (call with ``_state`` held).

        OpenSSL's SSL_shutdown, called twice by ``unwrap()``, reads the records waiting in the incoming
        BIO and throws their application data away: they must be out of it first.
        """
        while not self._eof and self._error is None:
            try:
                data = self._obj.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                return
            except ssl.SSLError as exc:
                self._error = exc
                return
            if not data:
                self._eof = True
                return
            self._plain += data

    def shutdown_write(self) -> None:
        """close_notify, then TCP FIN; reading goes on until the peer ends its direction too."""
        with self._writing:
            with self._state:
                if self._wrote_close:
                    return
                self._wrote_close = True
                self._read_ahead()
                with contextlib.suppress(ssl.SSLError):
                    self._obj.unwrap()
            with contextlib.suppress(OSError):
                self._flush()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    # -- closing -------------------------------------------------------------------------------------

    def drain(self) -> None:
        """Read and drop whatever the kernel holds for us (unread TLS 1.3 session tickets, say).

        Closing a socket with unread bytes makes the kernel send RST instead of FIN, and the peer would
        see a reset instead of the end of the stream.
        """
        with contextlib.suppress(OSError, ValueError):
            poller = select.poll()
            poller.register(self.sock.fileno(), select.POLLIN)
            # Poll first: on a socket with a timeout, recv would wait for data before trying MSG_DONTWAIT.
            for _ in range(_DRAIN_LIMIT):
                if not poller.poll(0) or not socket.socket.recv(self.sock, RECV_SIZE, socket.MSG_DONTWAIT):
                    return

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.drain()
        self.sock.close()


def tls_error(exc: ssl.SSLError, what: str) -> NetworkError:
    from ._sockets import tls_reason

    err = NetworkError(errno.EPROTO, f"{what}: {tls_reason(exc)}")
    err.__cause__ = exc
    return err
