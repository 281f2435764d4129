"""TLS over a blocking socket, safe for one reading and one writing thread at once.

``ssl.SSLSocket`` must not be read and written from two threads (OpenSSL's SSL objects are not
thread-safe, and TLS 1.3 reads can trigger writes). Here the TLS state lives in an ``ssl.SSLObject``
over memory BIOs, touched only under a lock that is never held across socket I/O; ciphertext leaves
under a second lock taken *before* draining the outgoing BIO, so records hit the wire in order.
Half-close is exact: close_notify, then TCP FIN, while the other direction keeps reading.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
import threading

from ._errors import NetworkError

RECV_SIZE = 65536


class TLSChannel:
    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self._state = threading.Lock()
        self._send = threading.Lock()
        self._eof = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def _flush(self) -> None:
        with self._send:
            with self._state:
                data = self._out.read()
            if data:
                self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(RECV_SIZE)
        with self._state:
            if data:
                self._in.write(data)
            else:
                self._in.write_eof()
        return bool(data)

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

    def recv(self, n: int = RECV_SIZE) -> bytes:
        """Up to ``n`` plaintext bytes; ``b""`` when the peer's direction ended (close_notify or FIN)."""
        while True:
            if self._eof:
                return b""
            try:
                with self._state:
                    data = self._obj.read(n)
                    owe = self._out.pending
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                return b""
            if owe:
                self._flush()  # TLS 1.3 post-handshake replies (key update, ticket ack)
            return data

    def recv_into(self, buf: memoryview) -> int:
        data = self.recv(len(buf))
        buf[: len(data)] = data
        return len(data)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            with self._state:
                n = self._obj.write(view[:RECV_SIZE])
            view = view[n:]
            self._flush()

    def shutdown_write(self) -> None:
        """close_notify, then TCP FIN; reading goes on until the peer ends its direction too."""
        with contextlib.suppress(ssl.SSLError), self._state:
            self._obj.unwrap()
        with contextlib.suppress(OSError):
            self._flush()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def tls_error(exc: ssl.SSLError, what: str) -> NetworkError:
    from ._sockets import tls_reason

    err = NetworkError(errno.EPROTO, f"{what}: {tls_reason(exc)}")
    err.__cause__ = exc
    return err
