"""Synchronous streams: :func:`connect`, :func:`listen`, :class:`Stream`, :class:`Listener` (and, from
:mod:`.datagram`, the datagram sockets). Resolution and socket set-up are :mod:`sockcat.net.sockets`;
:mod:`sockcat.streams.aio` is the asyncio twin built on the same set-up, address and framing code.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, Timeout, UsageError, network_error, tls_reason
from sockcat.core.framing import DEFAULT_MAX_LINE, ReceiveBuffer, to_bytes
from sockcat.core.wsoptions import WsOptions
from sockcat.net import trace as _trace
from sockcat.net.options import SockOpt
from sockcat.net.proxy import Proxy
from sockcat.net.sockets import (
    RECV_SIZE,
    SocketFile,
    SockOpts,
    bind_socket,
    connect_socket,
    norm_opts,
    safe_name,
)
from sockcat.streams.fileio import stream_file
from sockcat.streams.tlsio import TLSChannel, handshake

if TYPE_CHECKING:
    from sockcat.streams.wsio import WSChannel


def _tls_client(
    sock: socket.socket, addr: Address, context: ssl.SSLContext | None, sni: str | None, timeout: float | None
) -> TLSChannel:
    from sockcat.net.tls import client_context

    ctx = context or client_context()
    hostname = sni if sni is not None else (addr.host or None)
    name = hostname if ctx.check_hostname or hostname else None
    return handshake(sock, ctx, server_side=False, where=addr, server_hostname=name, timeout=timeout)


def connect(
    address: Address | str,
    *,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    source: Address | str | None = None,
    sockopts: SockOpts = None,
    ssl_context: ssl.SSLContext | None = None,
    sni: str | None = None,
    proxy: Proxy | str | None = None,
    ws: WsOptions | None = None,
) -> Stream:
    """Connect to any stream (or datagram) address and return a :class:`Stream`.

    ``timeout`` bounds the connect and every later blocking call (``TimeoutError`` past it);
    ``connect_timeout`` overrides it for the connect alone. A ``tls://`` or ``wss://`` address verifies the
    peer's certificate and host name unless ``ssl_context`` says otherwise. ``proxy``: connect through a SOCKS or
    HTTP CONNECT proxy (``socks5h://host:1080``, ``http://user:pw@host:3128``…; tcp, tls and ws addresses).
    A WebSocket address (``ws://``, ``wss://``, ``ws+unix:``) upgrades the connection with ``ws`` (text mode,
    headers, subprotocols…: :class:`~sockcat.core.wsoptions.WsOptions`); the stream carries message payloads.
    """
    addr = Address.parse(address)
    ct = timeout if connect_timeout is None else connect_timeout
    sock = connect_socket(addr, timeout=ct, source=source, sockopts=sockopts, proxy=proxy)
    tls = _tls_client(sock, addr, ssl_context, sni, ct) if addr.is_tls else None
    chan = None
    if addr.is_ws:
        # (websockets: loaded only for a WebSocket address, ~40 ms of start-up)
        from sockcat.streams.wsio import client_handshake

        chan = client_handshake(sock, tls, addr, ws or WsOptions(), timeout=ct)
    sock.settimeout(timeout)
    return Stream(sock, addr.scheme, tls=tls, ws=chan)


# --- listening -----------------------------------------------------------------------------------


class Listener:
    """A listening stream socket; iterating it is an accept loop. ``.address`` is the bound address."""

    def __init__(
        self,
        sock: socket.socket,
        address: Address,
        *,
        ssl_context: ssl.SSLContext | None = None,
        sockopts: tuple[SockOpt, ...] = (),
        fingerprint: str | None = None,
        ws: WsOptions | None = None,
    ) -> None:
        self.socket = sock
        self.address = address
        self.ssl_context = ssl_context
        self.fingerprint = fingerprint
        self.ws = ws or WsOptions()
        self._opts = tuple(o for o in sockopts if o.name not in ("reuseaddr", "reuseport", "v6only"))
        self.socket_file = SocketFile.of(address)  # removed on close (a forked worker sets it to None)

    def accept_socket(self) -> tuple[socket.socket, Any]:
        """Accept one connection: the raw socket (TCP/Unix, before any TLS) and the peer's sockaddr."""
        try:
            conn, peer = self.socket.accept()
        except OSError as exc:
            raise network_error(exc, f"accept on {self.address}") from None
        for opt in self._opts:
            if opt.applies_to(conn.family, conn.type):
                with contextlib.suppress(OSError):
                    opt.apply(conn)
        return conn, peer

    def accept(self) -> Stream:
        """The next connection as a :class:`Stream` (TLS handshake done for a ``tls://`` listener, the WebSocket
        upgrade answered for a WebSocket one)."""
        conn, _peer = self.accept_socket()
        conn.settimeout(self.socket.gettimeout())
        return self.upgrade(conn)

    def upgrade(self, conn: socket.socket) -> Stream:
        """An accepted socket as a :class:`Stream`: TLS and WebSocket handshakes done as the address says."""
        tls = None
        if self.ssl_context is not None:
            tls = handshake(conn, self.ssl_context, server_side=True, where=self.address)
        if not self.address.is_ws:
            return Stream(conn, self.address.scheme, tls=tls)
        # (websockets: loaded only for a WebSocket address, ~40 ms of start-up)
        from sockcat.streams.wsio import server_handshake

        chan, ans = server_handshake(conn, tls, self.address, self.address.resource, self.ws)
        stream = Stream(conn, self.address.scheme, tls=tls, ws=chan)
        stream.request = ans.request
        return stream

    def __iter__(self) -> Iterator[Stream]:
        """Accept forever; a client whose TLS or WebSocket handshake fails is skipped, not fatal."""
        while self.socket.fileno() != -1:
            try:
                yield self.accept()
            except NetworkError as exc:
                if exc.errno == errno.EPROTO:
                    continue
                raise

    def fileno(self) -> int:
        return self.socket.fileno()

    def settimeout(self, value: float | None) -> None:
        self.socket.settimeout(value)

    def gettimeout(self) -> float | None:
        return self.socket.gettimeout()

    def getsockname(self) -> Any:
        return self.socket.getsockname()

    def close(self) -> None:
        """Close, and remove the Unix socket file if it is still the one this listener made."""
        self.socket.close()
        owned, self.socket_file = self.socket_file, None
        if owned is not None:
            owned.remove()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Listener {self.address}>"


def listen(
    address: Address | str,
    *,
    backlog: int = 128,
    sockopts: SockOpts = None,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    cert: str | None = None,
    key: str | None = None,
    ws: WsOptions | None = None,
) -> Listener:
    """Listen on a stream address (tcp*, unix, unixpacket, tls, ws, wss, ws+unix). Port 0 lets the kernel pick.

    A WebSocket listener answers each client's upgrade (``ws`` sets text mode, origins, subprotocols…); one on a
    path other than ``/`` serves that path only. A ``tls://`` or ``wss://`` listener uses ``ssl_context``, or
    ``cert``/``key``, or else a throwaway self-signed certificate whose fingerprint is in ``Listener.fingerprint``.
    """
    addr = Address.parse(address)
    if addr.is_datagram:
        raise UsageError(f"{addr} is a datagram address: use open_datagram() for it")
    if addr.is_stdio:
        raise UsageError("cannot listen on stdio:")
    fingerprint: str | None = None
    if addr.is_tls and ssl_context is None:
        from sockcat.net.tls import server_context

        ssl_context, fingerprint = server_context(cert=cert, key=key, hosts=[addr.host] if addr.host else [])
    opts = norm_opts(sockopts)
    sock, bound = bind_socket(addr, sockopts=opts, reuse_port=reuse_port)
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise network_error(exc, f"listen {addr}") from None
    return Listener(
        sock, bound, ssl_context=ssl_context if addr.is_tls else None, sockopts=opts, fingerprint=fingerprint, ws=ws
    )


# --- streams -------------------------------------------------------------------------------------


class Stream:
    """A connected socket with buffered, bounded reads (pwntools-style verbs) on top.

    ``recv`` returns ``b""`` only when the peer has closed; a timeout raises ``TimeoutError``.
    The real socket is ``.socket``; bytes read ahead by the delimited reads are served first.
    A TLS stream encrypts over ``.socket`` through a :class:`~sockcat.streams.tlsio.TLSChannel`, so one thread
    may read while another writes (or half-closes), as :func:`sockcat.relay` does.
    """

    def __init__(
        self, sock: socket.socket, scheme: str = "tcp", *, tls: TLSChannel | None = None, ws: WSChannel | None = None
    ) -> None:
        self.socket = sock
        self.scheme = scheme
        self._tls = tls
        self._ws = ws
        self._chan: TLSChannel | WSChannel | None = ws if ws is not None else tls
        self.request: Any = None  # a WebSocket listener's connection: the client's HTTP request (path, headers)
        self._buf = ReceiveBuffer()
        self.address = safe_name(sock, scheme, peer=False)
        self.peer = safe_name(sock, scheme, peer=True)

    def _where(self) -> str:
        return str(self.peer or self.address or self.scheme)

    def _recv_raw(self, n: int) -> bytes:
        try:
            if self._chan is not None:
                return self._chan.recv(n)
            return self.socket.recv(n)
        except TimeoutError as exc:
            why = exc.strerror if isinstance(exc, Timeout) and exc.strerror else "timed out"
            raise Timeout(errno.ETIMEDOUT, f"recv from {self._where()}: {why}") from exc
        except ssl.SSLZeroReturnError:
            return b""  # close_notify after our own: a clean end of the peer's direction
        except ssl.SSLError as exc:
            raise NetworkError(errno.EPROTO, f"recv from {self._where()}: {tls_reason(exc)}") from exc
        except OSError as exc:
            raise network_error(exc, f"recv from {self._where()}") from exc

    # Reading.
    def recv(self, bufsize: int = RECV_SIZE) -> bytes:
        """Up to ``bufsize`` bytes as soon as any are there; ``b""`` means the peer closed."""
        if self._buf:
            return self._buf.take_some(bufsize)
        return self._recv_raw(bufsize)

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        """Like ``socket.recv_into``: up to ``nbytes`` (default: the buffer's length) bytes into ``buffer``, as
        soon as any are there; 0 means the peer closed. Bytes read ahead by the delimited reads come first."""
        view = memoryview(buffer).cast("B")
        n = nbytes or len(view)
        if self._buf:
            data = self._buf.take_some(n)
            view[: len(data)] = data
            return len(data)
        if self._chan is not None:
            data = self._recv_raw(n)
            view[: len(data)] = data
            return len(data)
        try:
            return self.socket.recv_into(view, n)
        except TimeoutError as exc:
            raise Timeout(errno.ETIMEDOUT, f"recv from {self._where()}: timed out") from exc
        except OSError as exc:
            raise network_error(exc, f"recv from {self._where()}") from exc

    def recv_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or IncompleteReadError (with ``.partial``) if the peer closes first."""
        while (out := self._buf.take_exactly(n)) is None:
            data = self._recv_raw(max(RECV_SIZE, n - len(self._buf)))
            if not data:
                raise self._buf.incomplete(n)
            self._buf.feed(data)
        return out

    def recv_until(self, delim: bytes | str, *, drop: bool = False, max_size: int = DEFAULT_MAX_LINE) -> bytes:
        """Bytes up to and including ``delim`` (excluded if ``drop``); LimitOverrunError past ``max_size``."""
        d = to_bytes(delim)
        while (out := self._buf.take_until(d, max_size, drop=drop)) is None:
            data = self._recv_raw(RECV_SIZE)
            if not data:
                raise self._buf.incomplete(None)
            self._buf.feed(data)
        return out

    def recv_line(self, *, drop: bool = False, max_size: int = DEFAULT_MAX_LINE) -> bytes:
        """One line ending in ``b"\\n"`` (kept unless ``drop``), like ``readline()``."""
        return self.recv_until(b"\n", drop=drop, max_size=max_size)

    @property
    def buffered(self) -> int:
        """How many bytes a delimited read took off the socket ahead of need; the next reads return them first."""
        return len(self._buf)

    def unrecv(self, data: bytes) -> None:
        """Push bytes back so the next read returns them first."""
        self._buf.unread(data)

    # Writing.
    def send(self, data: bytes | bytearray | memoryview | str) -> int:
        try:
            if self._chan is not None:
                return self._chan.send(to_bytes(data))
            return self.socket.send(to_bytes(data))
        except OSError as exc:
            raise self._send_error(exc) from exc

    def sendall(self, data: bytes | bytearray | memoryview | str) -> None:
        payload = data.encode() if isinstance(data, str) else data
        try:
            if self._chan is not None:
                self._chan.sendall(payload)
            else:
                self.socket.sendall(payload)
        except OSError as exc:
            raise self._send_error(exc) from exc

    def send_line(self, data: bytes | bytearray | memoryview | str) -> None:
        self.sendall(to_bytes(data) + b"\n")

    def _send_error(self, exc: OSError) -> NetworkError:
        if isinstance(exc, TimeoutError):
            return Timeout(errno.ETIMEDOUT, f"send to {self._where()}: timed out")
        if isinstance(exc, ssl.SSLError):
            return NetworkError(errno.EPROTO, f"send to {self._where()}: {tls_reason(exc)}")
        return network_error(exc, f"send to {self._where()}")

    def shutdown_write(self) -> None:
        """Half-close: the peer reads EOF, and this side can still read what it sends back.

        A TLS stream sends close_notify first; bytes already received stay readable.
        """
        if self._chan is not None:
            self._chan.shutdown_write()
        else:
            shutdown_write(self.socket)

    # TLS facts (None on a plain stream).
    @property
    def tls_version(self) -> str | None:
        """The negotiated protocol (``"TLSv1.3"``...), None on a plain stream."""
        return self._tls.version() if self._tls is not None else None

    def cipher(self) -> str | None:
        """The negotiated cipher suite's name, None on a plain stream."""
        return self._tls.cipher() if self._tls is not None else None

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate like ``SSLSocket.getpeercert`` (None on a plain stream)."""
        return self._tls.getpeercert(binary_form) if self._tls is not None else None

    # The standard socket API, at hand.
    def fileno(self) -> int:
        return self.socket.fileno()

    def settimeout(self, value: float | None) -> None:
        self.socket.settimeout(value)

    def gettimeout(self) -> float | None:
        return self.socket.gettimeout()

    def setblocking(self, flag: bool) -> None:
        self.socket.setblocking(flag)

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> Any:
        return self.socket.getsockopt(level, option, buflen) if buflen else self.socket.getsockopt(level, option)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.socket.setsockopt(level, option, value)

    def getpeername(self) -> Any:
        return self.socket.getpeername()

    def getsockname(self) -> Any:
        return self.socket.getsockname()

    def shutdown(self, how: int) -> None:
        if how == socket.SHUT_WR:
            self.shutdown_write()
        else:
            socket.socket.shutdown(self.socket, how)

    def makefile(self, mode: str = "rb", buffering: int | None = None, **kw: Any) -> Any:
        """A file object on the socket (bytes already buffered by recv_until/recv_line are not in it).

        On a TLS stream it reads and writes plaintext through the stream (buffered bytes first).
        """
        if self._chan is not None:
            return stream_file(self, mode, buffering, **kw)
        return self.socket.makefile(mode, buffering, **kw)  # type: ignore[call-overload]

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()
        else:
            self.socket.close()

    @property
    def closed(self) -> bool:
        return self.socket.fileno() == -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Stream {self.address} -> {self.peer}>"


def shutdown_write(sock: socket.socket) -> None:
    """shutdown(SHUT_WR), TLS included: a TLS socket first sends its close_notify alert.

    ``SSLSocket.shutdown`` would drop the TLS layer, so the TCP half-close goes to the plain socket call.
    """
    if not isinstance(sock, ssl.SSLSocket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # (a traced socket shows it)
        return
    send_close_notify(sock)
    _trace.record(sock.fileno(), "shutdown", "SHUT_WR")
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_WR)


def send_close_notify(sock: ssl.SSLSocket) -> None:
    """Send TLS close_notify without waiting for the peer's (which would swallow its pending data)."""
    obj = getattr(sock, "_sslobj", None)
    if obj is None:
        return
    timeout = sock.gettimeout()
    try:
        socket.socket.settimeout(sock, 0.0)
        obj.shutdown()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLError, OSError):
        pass
    finally:
        socket.socket.settimeout(sock, timeout)
