"""WebSocket over a blocking socket (or a :class:`~sockcat.streams.tlsio.TLSChannel` for ``wss://``), safe for one
reading and one writing thread at once, as a relay or a bridge uses it.

The frames are :mod:`sockcat.core.websocket`'s. The reader answers pings without waiting for the writer: a pong
is queued, and whoever holds the wire next sends it (as the TLS channel does with its own records). Half-close
is a Close frame (docs/websocket.md), then the transport's own half-close once both Closes have passed.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from websockets.http11 import Request

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, Timeout, network_error
from sockcat.core.untrusted import escape
from sockcat.core.websocket import ClientHandshake, HandshakeReader, Keepalive, ServerAnswer, WsCore, WsError, answer
from sockcat.core.wsoptions import WsOptions
from sockcat.net import trace as _trace
from sockcat.streams.tlsio import TLS_HANDSHAKE_TIMEOUT, TLSChannel, drain_socket

RECV_SIZE = 262144
WS_HANDSHAKE_TIMEOUT = TLS_HANDSHAKE_TIMEOUT  # seconds for the HTTP upgrade, both ways
WS_CLOSE_WAIT = 2.0  # seconds close() waits for the peer's Close after sending ours


class Transport(Protocol):
    """What a WebSocket runs over: a plain socket (:class:`SocketTransport`) or a TLS channel."""

    def recv(self, n: int) -> bytes: ...
    def sendall(self, data: bytes | bytearray | memoryview) -> None: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...


class SocketTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def transport(sock: socket.socket, tls: TLSChannel | None) -> Transport:
    return tls if tls is not None else SocketTransport(sock)


class WSChannel:
    """An open WebSocket as a byte stream: ``recv``/``send``/``sendall``/``shutdown_write``/``close``."""

    def __init__(self, sock: socket.socket, core: WsCore, wire: Transport, *, ping: float | None = None) -> None:
        self.sock = sock
        self.core = core
        self._wire = wire
        self._reading = threading.Lock()
        self._writing = threading.Lock()  # one message (or Close) at a time
        self._send = threading.Lock()  # whoever holds it puts queued control frames on the wire
        self._queued = bytearray()  # pongs the reader owes, sent by whoever holds _send next
        self._queue_lock = threading.Lock()
        self._ended = threading.Event()
        self.keepalive = Keepalive(ping, time.monotonic()) if ping else None
        if ping:
            threading.Thread(target=self._keepalive, name="sockcat ws ping", daemon=True).start()

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- reading -------------------------------------------------------------------------------------

    def recv(self, n: int = RECV_SIZE) -> bytes:
        """Up to ``n`` bytes of message payload; ``b""`` once the peer's Close (or end) has come."""
        if n <= 0:
            return b""
        with self._reading:
            while True:
                try:
                    data = self.core.read(n)
                except WsError as exc:
                    raise NetworkError(errno.ECONNRESET, exc.reason) from None
                if data is not None:
                    if not data:
                        self._peer_ended()
                    return data
                raw = self._wire.recv(RECV_SIZE)
                if self.keepalive is not None:
                    if self.keepalive.silent:
                        raise Timeout(errno.ETIMEDOUT, self.keepalive.silence())
                    self.keepalive.heard = time.monotonic()
                try:
                    self.core.feed(raw)
                except WsError as exc:
                    self._owe(self.core.take_out())
                    raise NetworkError(errno.EPROTO, exc.reason) from None
                if self.core.out:
                    self._owe(self.core.take_out())

    def recv_into(self, buf: memoryview) -> int:
        data = self.recv(len(buf))
        buf[: len(data)] = data
        return len(data)

    def _peer_ended(self) -> None:
        if self.core.close_sent:  # both Closes have passed: end the transport's direction too
            with contextlib.suppress(OSError):
                self._wire.shutdown_write()

    # -- writing -------------------------------------------------------------------------------------

    def _owe(self, frames: bytes) -> None:
        """Queue control frames and send them now unless another thread holds the wire (it will send them)."""
        with self._queue_lock:
            self._queued += frames
        self._flush(wait=False)

    def _flush(self, wait: bool, data: bytes | None = None) -> None:
        while self._send.acquire(blocking=wait):
            try:
                with self._queue_lock:
                    owed = bytes(self._queued)
                    self._queued.clear()
                if owed:
                    self._wire.sendall(owed)
                if data:
                    self._wire.sendall(data)
                    data = None
            finally:
                self._send.release()
            with self._queue_lock:
                if not self._queued:
                    return
            wait = False

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Send ``data`` as one message; the count of bytes taken (all of them)."""
        self.sendall(data)
        return len(memoryview(data).cast("B"))

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        if not len(data):
            return
        with self._writing:
            try:
                frames = self.core.encode(data)
            except WsError as exc:
                raise NetworkError(errno.EPIPE, exc.reason) from None
            self._flush(True, frames)

    def ping(self) -> None:
        with self._writing:
            self._flush(True, self.core.encode_ping(b"sockcat"))

    def shutdown_write(self) -> None:
        """Our Close; reading goes on until the peer's. Once both have passed, the transport half-closes."""
        with self._writing:
            frame = self.core.encode_close()
            if frame:
                with contextlib.suppress(OSError):
                    self._flush(True, frame)
            if self.core.peer_closed:
                with contextlib.suppress(OSError):
                    self._wire.shutdown_write()

    def _keepalive(self) -> None:
        assert self.keepalive is not None
        while not self._ended.wait(self.keepalive.every):
            ping = self.keepalive.tick(self.core, time.monotonic())
            if ping is None:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)  # the reader wakes up, and reports the silence
                return
            if ping:
                with contextlib.suppress(OSError, NetworkError):
                    self._owe(ping)

    def close(self) -> None:
        """End the connection. If our Close went out and the peer's has not come, wait for it a moment
        (``WS_CLOSE_WAIT``): a peer whose Close reached a closed socket would get a reset, and a reset makes
        its kernel drop what it had received and not yet read."""
        self._ended.set()
        if self.sock.fileno() != -1 and self._writing.acquire(blocking=False):
            try:
                frame = self.core.encode_close()
                if frame:  # a last Close if it can leave at once; the peer sees 1006 otherwise
                    with contextlib.suppress(OSError):
                        self.sock.settimeout(WS_CLOSE_WAIT)
                        self._wire.sendall(frame)
                if self.core.close_sent and not self.core.peer_closed:
                    self._await_peer_close()
            finally:
                self._writing.release()
        self._wire.close()

    def _await_peer_close(self) -> None:
        deadline = time.monotonic() + WS_CLOSE_WAIT
        with contextlib.suppress(OSError, WsError):
            while not self.core.peer_closed and (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                self.core.feed(self._wire.recv(RECV_SIZE))
                self.core.inbox.clear()


# --- the opening handshakes --------------------------------------------------------------------------


@contextlib.contextmanager
def handshake_errors(what: str, close: Callable[[], object]) -> Iterator[None]:
    """The one wording of a failed upgrade, both sides, sync and asyncio: ``close()`` the connection, then raise
    NetworkError (EPROTO for the protocol, ETIMEDOUT for time) naming ``what``."""
    try:
        yield
    except WsError as exc:
        close()
        raise NetworkError(errno.EPROTO, f"{what}: {exc.reason}") from None
    except TimeoutError:
        close()
        raise Timeout(errno.ETIMEDOUT, f"{what}: timed out") from None
    except NetworkError:
        close()
        raise
    except OSError as exc:
        close()
        raise network_error(exc, what) from None


def _what(server_side: bool, where: Address | str) -> str:
    return f"WebSocket handshake {'from' if server_side else 'with'} {where}"


def client_handshake(
    sock: socket.socket,
    tls: TLSChannel | None,
    addr: Address,
    opts: WsOptions,
    *,
    timeout: float | None = None,
    host: str | None = None,
) -> WSChannel:
    """Upgrade a connected socket (TLS done) to a WebSocket, within ``timeout`` (default 10 s); the socket is
    closed on failure and its previous timeout kept on success."""
    old = sock.gettimeout()
    what = _what(False, addr)
    wire = transport(sock, tls)
    with handshake_errors(what, wire.close):
        sock.settimeout(timeout if timeout is not None else WS_HANDSHAKE_TIMEOUT)
        hs = ClientHandshake(host or addr.host, addr.port, addr.resource, opts, secure=addr.is_tls)
        wire.sendall(hs.request)
        core = None
        while core is None:
            core = hs.feed(wire.recv(RECV_SIZE))
        sock.settimeout(old)
    _trace.emit(f"websocket handshake -> {addr.resource} {hs.subprotocol or ''}".rstrip(), sock.fileno())
    return WSChannel(sock, core, wire, ping=opts.ping)


def server_handshake(
    sock: socket.socket, tls: TLSChannel | None, where: Address | str, resource: str, opts: WsOptions
) -> tuple[WSChannel, ServerAnswer]:
    """Answer a client's upgrade within 10 s. A request that is not one (or is refused: origin, path) gets its
    HTTP error and raises NetworkError (EPROTO), the socket closed; so does a malformed or slow request."""
    old = sock.gettimeout()
    what = _what(True, where)
    wire = transport(sock, tls)
    with handshake_errors(what, wire.close):
        sock.settimeout(WS_HANDSHAKE_TIMEOUT)
        reader = HandshakeReader(response=False)
        request = None
        while request is None:
            request = reader.feed(wire.recv(RECV_SIZE))
        assert isinstance(request, Request)
        ans = answer(request, resource, opts, reader.leftover())
        wire.sendall(ans.response)
        if ans.core is None:
            wire.shutdown_write()
            drain_socket(sock)  # unread bytes would turn our close into a reset that loses the answer
            raise WsError(1002, f"refused {escape(request.path[:200])} with HTTP {ans.status}")
        sock.settimeout(old)
    assert ans.core is not None
    return WSChannel(sock, ans.core, wire, ping=opts.ping), ans
