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

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, network_error, tls_reason
from sockcat.net import trace as _trace
from sockcat.net.pin import check_pin

TLS_HANDSHAKE_TIMEOUT = 10.0  # seconds a TLS handshake may take, both ways, unless a connect timeout says less

RECV_SIZE = 65536
_DRAIN_LIMIT = 64  # recv calls at most when draining unread bytes before close


class TLSCore:
    """The TLS state the sync channel below and ``aio``'s share, with no I/O of its own.

    An ``ssl.SSLObject`` over two memory BIOs, plus what exact half-close needs: plaintext decrypted ahead of
    our close_notify (served first), the end of the peer's direction, and an error met while reading ahead.
    The caller moves ciphertext: ``outgoing`` to the wire, the wire to :meth:`feed`.
    """

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.plain = bytearray()
        self.eof = False
        self.error: ssl.SSLError | None = None
        self.wrote_close = False

    def feed(self, data: bytes) -> None:
        """Ciphertext from the wire; ``b""`` is the TCP FIN."""
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def read(self, n: int) -> bytes | None:
        """Up to ``n`` plaintext bytes, ``b""`` once the peer's direction has ended, or None: feed me more."""
        if self.plain:
            data = bytes(self.plain[:n])
            del self.plain[:n]
            return data
        if self.eof:
            return b""
        if self.error is not None:
            raise self.error
        try:
            data = self.obj.read(min(n, RECV_SIZE))  # a record is 16 KiB at most
        except ssl.SSLWantReadError:
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self.eof = True
            return b""
        if not data:
            self.eof = True
        return data

    def close_notify(self) -> None:
        """Queue our close_notify in ``outgoing`` (once), keeping every byte already received readable.

        ``unwrap()`` calls OpenSSL's SSL_shutdown twice; the second call reads the records waiting in the
        incoming BIO and throws their application data away, so they are decrypted into ``plain`` first.
        """
        if self.wrote_close:
            return
        self.wrote_close = True
        while not self.eof and self.error is None:
            try:
                data = self.obj.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.eof = True
                break
            except ssl.SSLError as exc:
                self.error = exc
                break
            if not data:
                self.eof = True
                break
            self.plain += data
        with contextlib.suppress(ssl.SSLError):
            self.obj.unwrap()


class TLSChannel:
    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self.sock = sock
        self._core = TLSCore(context, server_side=server_side, server_hostname=server_hostname)
        self._obj = self._core.obj
        self._out = self._core.outgoing
        self._state = threading.Lock()  # the TLS core; never held across socket I/O
        self._send = threading.Lock()  # whoever holds it moves ciphertext from the outgoing BIO to the wire
        self._reading = threading.Lock()  # one reader at a time: socket bytes enter the BIO in order
        self._writing = threading.Lock()  # one sendall (or close_notify) at a time
        self._unsent = memoryview(b"")  # ciphertext out of the BIO, not yet on the wire (guarded by _send)

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
            self._core.feed(data)

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

    def recv(self, n: int = RECV_SIZE) -> bytes:
        """Up to ``n`` plaintext bytes; ``b""`` when the peer's direction ended (close_notify or FIN)."""
        if n <= 0:
            return b""
        with self._reading:
            while True:
                with self._state:
                    data = self._core.read(n)
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

    def shutdown_write(self) -> None:
        """close_notify, then TCP FIN; reading goes on until the peer ends its direction too."""
        with self._writing:
            with self._state:
                if self._core.wrote_close:
                    return
                self._core.close_notify()
            with contextlib.suppress(OSError):
                self._flush()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    # -- closing -------------------------------------------------------------------------------------

    def drain(self) -> None:
        drain_socket(self.sock)

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.drain()
        self.sock.close()


def drain_socket(sock: socket.socket) -> None:
    """Read and drop whatever the kernel holds for us (unread TLS 1.3 session tickets, say) before a close.

    Closing a socket with unread bytes makes the kernel send RST instead of FIN, and the peer would
    see a reset instead of the end of the stream.
    """
    with contextlib.suppress(OSError, ValueError):
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        # Poll first: on a socket with a timeout, recv would wait for data before trying MSG_DONTWAIT.
        for _ in range(_DRAIN_LIMIT):
            if not poller.poll(0) or not socket.socket.recv(sock, RECV_SIZE, socket.MSG_DONTWAIT):
                return


def tls_error(exc: ssl.SSLError, what: str) -> NetworkError:
    err = NetworkError(errno.EPROTO, f"{what}: {tls_reason(exc)}")
    err.__cause__ = exc
    return err


def handshake(
    sock: socket.socket,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    where: Address | str,
    server_hostname: str | None = None,
    timeout: float | None = None,
) -> TLSChannel:
    """The one TLS handshake of the synchronous code (connect, listen, relay's buffered path, recv, bench): within
    ``timeout`` (default :data:`TLS_HANDSHAKE_TIMEOUT`), errors worded once (``TLS handshake with/from WHERE:
    REASON``, EPROTO), the socket closed on failure and its previous timeout kept on success."""
    old = sock.gettimeout()
    what = f"TLS handshake {'from' if server_side else 'with'} {where}"
    try:
        sock.settimeout(timeout if timeout is not None else TLS_HANDSHAKE_TIMEOUT)
        tls = TLSChannel(sock, context, server_side=server_side, server_hostname=server_hostname)
        tls.handshake()
        if not server_side:
            check_pin(context, tls.getpeercert(binary_form=True), what)  # type: ignore[arg-type]
        sock.settimeout(old)
    except ssl.SSLError as exc:
        sock.close()
        raise tls_error(exc, what) from None
    except NetworkError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        err = network_error(exc, what)
        err.errno = errno.EPROTO
        raise err from None
    _trace.emit(f"tls handshake -> {tls.version()} {tls.cipher()}", sock.fileno())
    return tls
