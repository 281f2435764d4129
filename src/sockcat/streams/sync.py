"""Sockets for every address kind: resolution, happy-eyeballs connect, listeners, streams, datagrams.

Everything here is synchronous; :mod:`sockcat.aio` builds its asyncio twins on the same resolution,
address and framing code. Errors are mapped once, here, at the I/O boundary.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import selectors
import socket
import ssl
import stat
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, Timeout, UsageError, network_error, tls_reason
from sockcat.core.framing import DEFAULT_MAX_LINE, ReceiveBuffer, to_bytes
from sockcat.net import proxy as _proxy
from sockcat.net import trace as _trace
from sockcat.net.options import SockOpt, apply_sockopts, parse_sockopts
from sockcat.net.proxy import Proxy
from sockcat.streams.tlsio import TLSChannel

RECV_SIZE = 65536
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305 §5: "Connection Attempt Delay", recommended 250 ms
TLS_HANDSHAKE_TIMEOUT = 10.0

SockOpts = tuple[SockOpt, ...] | list[str] | tuple[str, ...] | None


def _opts(opts: SockOpts) -> tuple[SockOpt, ...]:
    if not opts:
        return ()
    if all(isinstance(o, SockOpt) for o in opts):
        return tuple(o for o in opts if isinstance(o, SockOpt))
    return parse_sockopts([str(o) for o in opts])


def new_socket(family: int, kind: int, proto: int = 0) -> socket.socket:
    """A new socket of the traced class when ``--trace`` is on, a plain one otherwise."""
    return _trace.socket_class()(family, kind, proto)


# --- addresses <-> the socket API ----------------------------------------------------------------


def resolve(addr: Address, *, passive: bool = False) -> list[tuple[int, int, int, Any]]:
    """``(family, type, proto, sockaddr)`` candidates for an address (Unix kinds need no look-up)."""
    if addr.is_unix:
        return [(socket.AF_UNIX, addr.type, 0, addr.path)]
    if addr.is_stdio:
        raise UsageError("stdio: is not a socket address")
    host: str | None = addr.host or None
    family = addr.family
    if passive and host is None:
        # Empty host when listening: all interfaces, dual-stack where the OS allows (see _bind_ip).
        if family == socket.AF_INET:
            return [(socket.AF_INET, addr.type, 0, ("0.0.0.0", addr.port))]
        if family == socket.AF_INET6 or socket.has_ipv6:
            return [(socket.AF_INET6, addr.type, 0, ("::", addr.port, 0, 0))]
        return [(socket.AF_INET, addr.type, 0, ("0.0.0.0", addr.port))]
    # No AI_ADDRCONFIG: it drops ::1 for "localhost" on hosts whose only IPv6 address is loopback.
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(host, addr.port, family, addr.type, 0, flags)
    except socket.gaierror as exc:
        raise NetworkError(
            errno.EHOSTUNREACH,
            f"{'listen' if passive else 'connect'} {addr}: cannot resolve host {addr.host!r} ({exc.strerror})",
        ) from exc
    except UnicodeError:
        raise NetworkError(errno.EINVAL, f"connect {addr}: cannot resolve host {addr.host!r}") from None
    seen: set[tuple[int, Any]] = set()
    out: list[tuple[int, int, int, Any]] = []
    for fam, kind, proto, _canon, sa in infos:
        if (fam, sa) not in seen:
            seen.add((fam, sa))
            out.append((fam, kind, proto, sa))
    return out


def to_address(scheme: str, sockaddr: Any) -> Address:
    """Turn what ``getsockname``/``getpeername``/``recvfrom`` return into an :class:`Address`."""
    if isinstance(sockaddr, tuple):
        host, port = str(sockaddr[0]), int(sockaddr[1])
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]  # an IPv4 peer of a dual-stack socket: show it as the IPv4 address it is
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        base = scheme.rstrip("46")
        kinds = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "tls": socket.SOCK_STREAM}
        return Address(scheme if base != scheme else base, host, port, fam, kinds.get(base, socket.SOCK_STREAM))
    if isinstance(sockaddr, bytes):
        sockaddr = sockaddr.decode("utf-8", "surrogateescape")
    path = str(sockaddr or "")
    kind = {"unixgram": socket.SOCK_DGRAM, "unixpacket": socket.SOCK_SEQPACKET}.get(scheme, socket.SOCK_STREAM)
    return Address(scheme, "", 0, socket.AF_UNIX, kind, path)


def _safe_name(sock: socket.socket, scheme: str, peer: bool) -> Address | None:
    try:
        return to_address(scheme, sock.getpeername() if peer else sock.getsockname())
    except OSError:
        return None


# --- connecting ----------------------------------------------------------------------------------


def _prepare(
    fam: int, kind: int, proto: int, opts: tuple[SockOpt, ...], source: Address | None, where: str
) -> socket.socket:
    sock = new_socket(fam, kind, proto)
    try:
        apply_sockopts(sock, opts, where)
        if source is not None:
            _bind_source(sock, source, where)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_source(sock: socket.socket, source: Address, where: str) -> None:
    if sock.family == socket.AF_UNIX:
        sock.bind(source.path)
        return
    host = source.host or ("::" if sock.family == socket.AF_INET6 else "0.0.0.0")
    try:
        infos = socket.getaddrinfo(host, source.port, sock.family, sock.type, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise NetworkError(errno.EADDRNOTAVAIL, f"source {source}: {exc.strerror}") from None
    try:
        sock.bind(infos[0][4])
    except OSError as exc:
        raise network_error(exc, f"bind source {source} for {where}") from None


def _connect_one(
    info: tuple[int, int, int, Any],
    addr: Address,
    timeout: float | None,
    opts: tuple[SockOpt, ...],
    source: Address | None,
) -> socket.socket:
    fam, kind, proto, sa = info
    sock = _prepare(fam, kind, proto, opts, source, str(addr))
    try:
        sock.settimeout(timeout)
        sock.connect(sa)
    except BaseException:
        sock.close()
        raise
    return sock


def _happy_eyeballs(
    infos: list[tuple[int, int, int, Any]],
    addr: Address,
    timeout: float | None,
    opts: tuple[SockOpt, ...],
    source: Address | None,
) -> socket.socket:
    """RFC 8305: start the next attempt every 250 ms (or at once when one fails); first success wins."""
    v6 = [i for i in infos if i[0] == socket.AF_INET6]
    v4 = [i for i in infos if i[0] != socket.AF_INET6]
    queue: list[tuple[int, int, int, Any]] = []
    first, second = (v6, v4) if infos[0][0] == socket.AF_INET6 else (v4, v6)
    for i in range(max(len(first), len(second))):
        queue += first[i : i + 1] + second[i : i + 1]
    deadline = None if timeout is None else time.monotonic() + timeout
    errors: list[OSError] = []
    pending: dict[socket.socket, Any] = {}
    winner: socket.socket | None = None
    with selectors.DefaultSelector() as sel:
        try:
            next_start = time.monotonic()
            while winner is None and (queue or pending):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError(errno.ETIMEDOUT, "timed out")
                if queue and (not pending or now >= next_start):
                    fam, kind, proto, sa = queue.pop(0)
                    try:
                        sock = _prepare(fam, kind, proto, opts, source, str(addr))
                    except OSError as exc:
                        errors.append(exc)
                        continue
                    sock.setblocking(False)
                    rc = sock.connect_ex(sa)
                    if rc == 0:
                        winner = sock
                        break
                    if rc not in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                        errors.append(OSError(rc, os.strerror(rc)))
                        sock.close()
                        continue
                    pending[sock] = sa
                    sel.register(sock, selectors.EVENT_WRITE)
                    next_start = now + HAPPY_EYEBALLS_DELAY
                    continue
                waits = [] if not queue else [max(0.0, next_start - now)]
                if deadline is not None:
                    waits.append(max(0.0, deadline - now))
                for key, _ in sel.select(min(waits) if waits else None):
                    sock = key.fileobj  # type: ignore[assignment]
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    sel.unregister(sock)
                    del pending[sock]
                    if err == 0:
                        winner = sock
                        break
                    errors.append(OSError(err, os.strerror(err)))
                    sock.close()
                    next_start = time.monotonic()
        finally:
            for sock in pending:
                sock.close()
    if winner is None:
        if len(errors) == 1:
            raise errors[0]
        group = ExceptionGroup("every address failed", errors) if errors else None
        last = errors[-1] if errors else OSError(errno.EHOSTUNREACH, "no address")
        raise last from group
    winner.settimeout(timeout)
    return winner


def connect_socket(
    address: Address | str,
    *,
    timeout: float | None = None,
    source: Address | str | None = None,
    sockopts: SockOpts = None,
    proxy: Proxy | str | None = None,
) -> tuple[socket.socket, Address]:
    """A connected plain socket (no TLS) for any address kind, errors mapped to sockcat's; with ``proxy``
    (a ``socks5://``, ``socks5h://``, ``socks4://``, ``socks4a://`` or ``http://`` URL) through that proxy."""
    addr = Address.parse(address)
    src = Address.parse(source) if source is not None else None
    opts = _opts(sockopts)
    if proxy is not None:
        return _proxy.connect(Proxy.parse(proxy), addr, timeout, src, opts), addr
    try:
        infos = resolve(addr)
        if not infos:
            raise NetworkError(errno.EHOSTUNREACH, f"{addr}: no address to connect to")
        if len(infos) == 1:
            sock = _connect_one(infos[0], addr, timeout, opts, src)
        else:
            sock = _happy_eyeballs(infos, addr, timeout, opts, src)
    except (NetworkError, UsageError):
        raise
    except OSError as exc:
        raise network_error(exc, f"connect {addr}") from exc.__cause__
    return sock, addr


def _tls_client(
    sock: socket.socket, addr: Address, context: ssl.SSLContext | None, sni: str | None, timeout: float | None
) -> TLSChannel:
    from sockcat.net.tls import client_context

    ctx = context or client_context()
    hostname = sni if sni is not None else (addr.host or None)
    try:
        sock.settimeout(timeout if timeout is not None else TLS_HANDSHAKE_TIMEOUT)
        tls = TLSChannel(
            sock, ctx, server_side=False, server_hostname=hostname if ctx.check_hostname or hostname else None
        )
        tls.handshake()
    except ssl.SSLError as exc:
        sock.close()
        raise NetworkError(errno.EPROTO, f"TLS handshake with {addr}: {tls_reason(exc)}") from exc
    except OSError as exc:
        sock.close()
        raise network_error(exc, f"TLS handshake with {addr}") from exc
    _trace.emit(f"tls handshake -> {tls.version()} {tls.cipher()}")
    return tls


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
) -> Stream:
    """Connect to any stream (or datagram) address and return a :class:`Stream`.

    ``timeout`` bounds the connect and every later blocking call (``TimeoutError`` past it);
    ``connect_timeout`` overrides it for the connect alone. A ``tls://`` address verifies the peer's
    certificate and host name unless ``ssl_context`` says otherwise. ``proxy``: connect through a SOCKS or
    HTTP CONNECT proxy (``socks5h://host:1080``, ``http://user:pw@host:3128``…; tcp and tls addresses).
    """
    addr = Address.parse(address)
    ct = timeout if connect_timeout is None else connect_timeout
    sock, addr = connect_socket(addr, timeout=ct, source=source, sockopts=sockopts, proxy=proxy)
    tls = _tls_client(sock, addr, ssl_context, sni, ct) if addr.is_tls else None
    sock.settimeout(timeout)
    return Stream(sock, addr.scheme, tls=tls)


# --- listening -----------------------------------------------------------------------------------


def _unix_stale(path: str, kind: int, where: str) -> None:
    """Remove a socket file left by a dead listener; refuse if a live one answers there (SPEC §1)."""
    if path.startswith("\0"):
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise NetworkError(errno.EADDRINUSE, f"listen {where}: address in use ({path} exists and is not a socket)")
    from sockcat.net.unixstale import unix_path_in_use

    # The kernel's socket table answers without connecting (a probe connect would queue a phantom
    # connection on a live listener); the connect probe is only for systems without that table.
    in_use = unix_path_in_use(path, st)
    if in_use is False:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    if in_use:
        raise NetworkError(errno.EADDRINUSE, f"listen {where}: address in use")
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError:
        if kind == socket.SOCK_DGRAM:
            return
        raise NetworkError(errno.EADDRINUSE, f"listen {where}: address in use") from None
    finally:
        probe.close()
    if kind == socket.SOCK_DGRAM:
        # A datagram socket "accepts" a connect only if someone is bound there.
        raise NetworkError(errno.EADDRINUSE, f"listen {where}: address in use")
    raise NetworkError(errno.EADDRINUSE, f"listen {where}: address in use")


def bind_socket(
    address: Address | str, *, sockopts: SockOpts = None, reuse_port: bool = False
) -> tuple[socket.socket, Address]:
    """A bound (not yet listening) socket for any address kind, with the bound :class:`Address`."""
    addr = Address.parse(address)
    opts = _opts(sockopts)
    infos = resolve(addr, passive=True)
    if not infos:
        raise NetworkError(errno.EADDRNOTAVAIL, f"listen {addr}: no address to bind")
    fam, kind, proto, sa = infos[0]
    if addr.is_unix:
        _unix_stale(addr.path, kind, str(addr))
    sock = new_socket(fam, kind, proto)
    try:
        if fam != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if fam == socket.AF_INET6 and not addr.host and addr.family == socket.AF_UNSPEC:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        apply_sockopts(sock, opts, str(addr))
        sock.bind(sa)
    except OSError as exc:
        sock.close()
        if isinstance(exc, NetworkError | UsageError):
            raise
        raise network_error(exc, f"listen {addr}") from None
    except BaseException:
        sock.close()
        raise
    bound = _safe_name(sock, addr.scheme, peer=False) or addr
    if addr.is_ip:
        # Keep the user's scheme and host spelling; only the port is filled in (port 0 -> real port).
        host = addr.host if addr.host else ""
        bound = Address(addr.scheme, host, bound.port, addr.family, addr.type)
    return sock, bound


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
    ) -> None:
        self.socket = sock
        self.address = address
        self.ssl_context = ssl_context
        self.fingerprint = fingerprint
        self._opts = tuple(o for o in sockopts if o.name not in ("reuseaddr", "reuseport", "v6only"))
        self._owned_path: tuple[str, int, int] | None = None
        if address.is_unix and not address.is_abstract:
            with contextlib.suppress(OSError):
                st = os.stat(address.path)
                self._owned_path = (os.path.abspath(address.path), st.st_dev, st.st_ino)

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
        """The next connection as a :class:`Stream` (TLS handshake done for a ``tls://`` listener)."""
        conn, _peer = self.accept_socket()
        conn.settimeout(self.socket.gettimeout())
        tls = None
        if self.ssl_context is not None:
            tls = tls_server_handshake(conn, self.ssl_context, self.address)
        return Stream(conn, self.address.scheme, tls=tls)

    def __iter__(self) -> Iterator[Stream]:
        """Accept forever; a client whose TLS handshake fails is skipped, not fatal."""
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
        if self._owned_path is not None:
            path, dev, ino = self._owned_path
            self._owned_path = None
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Listener {self.address}>"


def tls_server_handshake(conn: socket.socket, context: ssl.SSLContext, where: Address) -> TLSChannel:
    old = conn.gettimeout()
    try:
        conn.settimeout(TLS_HANDSHAKE_TIMEOUT if old is None else old)
        tls = TLSChannel(conn, context, server_side=True)
        tls.handshake()
        conn.settimeout(old)
    except ssl.SSLError as exc:
        conn.close()
        raise NetworkError(errno.EPROTO, f"TLS handshake on {where}: {tls_reason(exc)}") from exc
    except OSError as exc:
        conn.close()
        err = network_error(exc, f"TLS handshake on {where}")
        err.errno = errno.EPROTO
        raise err from exc
    _trace.emit(f"tls handshake -> {tls.version()} {tls.cipher()}")
    return tls


def listen(
    address: Address | str,
    *,
    backlog: int = 128,
    sockopts: SockOpts = None,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> Listener:
    """Listen on a stream address (tcp*, unix, unixpacket, tls). Port 0 lets the kernel pick.

    A ``tls://`` listener uses ``ssl_context``, or ``cert``/``key``, or else a throwaway self-signed
    certificate whose fingerprint is in ``Listener.fingerprint``.
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
    opts = _opts(sockopts)
    sock, bound = bind_socket(addr, sockopts=opts, reuse_port=reuse_port)
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise network_error(exc, f"listen {addr}") from None
    return Listener(
        sock, bound, ssl_context=ssl_context if addr.is_tls else None, sockopts=opts, fingerprint=fingerprint
    )


# --- streams -------------------------------------------------------------------------------------


class Stream:
    """A connected socket with buffered, bounded reads (pwntools-style verbs) on top.

    ``recv`` returns ``b""`` only when the peer has closed; a timeout raises ``TimeoutError``.
    The real socket is ``.socket``; bytes read ahead by the delimited reads are served first.
    A TLS stream encrypts over ``.socket`` through a :class:`~sockcat.streams.tlsio.TLSChannel`, so one thread
    may read while another writes (or half-closes), as :func:`sockcat.relay` does.
    """

    def __init__(self, sock: socket.socket, scheme: str = "tcp", *, tls: TLSChannel | None = None) -> None:
        self.socket = sock
        self.scheme = scheme
        self._tls = tls
        self._buf = ReceiveBuffer()
        self.address = _safe_name(sock, scheme, peer=False)
        self.peer = _safe_name(sock, scheme, peer=True)

    def _where(self) -> str:
        return str(self.peer or self.address or self.scheme)

    def _recv_raw(self, n: int) -> bytes:
        try:
            if self._tls is not None:
                return self._tls.recv(n)
            return self.socket.recv(n)
        except TimeoutError as exc:
            raise Timeout(errno.ETIMEDOUT, f"recv from {self._where()}: timed out") from exc
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
        if self._tls is not None:
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
            if self._tls is not None:
                return self._tls.send(to_bytes(data))
            return self.socket.send(to_bytes(data))
        except OSError as exc:
            raise self._send_error(exc) from exc

    def sendall(self, data: bytes | bytearray | memoryview | str) -> None:
        payload = data.encode() if isinstance(data, str) else data
        try:
            if self._tls is not None:
                self._tls.sendall(payload)
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
        if self._tls is not None:
            self._tls.shutdown_write()
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
        if self._tls is not None:
            return _stream_file(self, mode, buffering, **kw)
        return self.socket.makefile(mode, buffering, **kw)  # type: ignore[call-overload]

    def close(self) -> None:
        if self._tls is not None:
            self._tls.close()
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


class _StreamIO(io.RawIOBase):
    """The raw file under :meth:`Stream.makefile` for a TLS stream: plaintext in and out."""

    def __init__(self, stream: Stream, mode: str) -> None:
        super().__init__()
        self._stream = stream
        self._mode = mode

    def readable(self) -> bool:
        return "r" in self._mode

    def writable(self) -> bool:
        return "w" in self._mode

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.recv(len(view))
        view[: len(data)] = data
        return len(data)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._stream.sendall(view)
        return len(view)

    def fileno(self) -> int:
        return self._stream.fileno()


def _stream_file(
    stream: Stream,
    mode: str = "rb",
    buffering: int | None = None,
    *,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> Any:
    """``socket.makefile`` semantics over a :class:`Stream` (closing the file leaves the stream open)."""
    if not set(mode) <= {"r", "w", "b"}:
        raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
    writing = "w" in mode
    reading = "r" in mode or not writing
    raw = _StreamIO(stream, ("r" if reading else "") + ("w" if writing else ""))
    size = io.DEFAULT_BUFFER_SIZE if buffering is None or buffering < 0 else buffering
    if size == 0:
        if "b" not in mode:
            raise ValueError("unbuffered streams must be binary")
        return raw
    buffer: io.BufferedIOBase
    if reading and writing:
        buffer = io.BufferedRWPair(raw, raw, size)
    elif reading:
        buffer = io.BufferedReader(raw, size)
    else:
        buffer = io.BufferedWriter(raw, size)
    if "b" in mode:
        return buffer
    return io.TextIOWrapper(buffer, io.text_encoding(encoding), errors, newline)


def shutdown_write(sock: socket.socket) -> None:
    """shutdown(SHUT_WR), TLS included: a TLS socket first sends its close_notify alert.

    ``SSLSocket.shutdown`` would drop the TLS layer, so the TCP half-close goes to the plain socket call.
    """
    if isinstance(sock, ssl.SSLSocket):
        send_close_notify(sock)
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


# --- datagrams -----------------------------------------------------------------------------------


class Datagram:
    """A datagram socket (udp*, unixgram): ``sendto``/``recvfrom`` speak :class:`Address`."""

    def __init__(self, sock: socket.socket, address: Address, peer: Address | None = None) -> None:
        self.socket = sock
        self.address = address
        self.peer = peer
        self.scheme = address.scheme
        self._owned_path: str | None = None

    def _target(self, addr: Address | str) -> Any:
        a = Address.parse(addr)
        if a.is_unix:
            return a.path
        for fam, _k, _p, sa in resolve(a):
            if fam == self.socket.family:
                return sa
            if self.socket.family == socket.AF_INET6 and fam == socket.AF_INET:
                return ("::ffff:" + sa[0], sa[1], 0, 0)
        raise NetworkError(errno.EAFNOSUPPORT, f"sendto {a}: no address of this socket's family")

    def sendto(self, data: bytes | bytearray | memoryview | str, address: Address | str) -> int:
        target = self._target(address)
        try:
            return self.socket.sendto(to_bytes(data), target)
        except OSError as exc:
            raise network_error(exc, f"sendto {address}") from exc

    def recvfrom(self, bufsize: int = RECV_SIZE) -> tuple[bytes, Address]:
        try:
            data, sa = self.socket.recvfrom(bufsize)
        except TimeoutError as exc:
            raise Timeout(errno.ETIMEDOUT, f"recvfrom on {self.address}: timed out") from exc
        except OSError as exc:
            raise network_error(exc, f"recvfrom on {self.address}") from exc
        return data, to_address(self.scheme, sa)

    def send(self, data: bytes | bytearray | memoryview | str) -> int:
        try:
            return self.socket.send(to_bytes(data))
        except OSError as exc:
            raise network_error(exc, f"send to {self.peer}") from exc

    def recv(self, bufsize: int = RECV_SIZE) -> bytes:
        try:
            return self.socket.recv(bufsize)
        except TimeoutError as exc:
            raise Timeout(errno.ETIMEDOUT, f"recv on {self.address}: timed out") from exc
        except OSError as exc:
            raise network_error(exc, f"recv from {self.peer}") from exc

    def fileno(self) -> int:
        return self.socket.fileno()

    def settimeout(self, value: float | None) -> None:
        self.socket.settimeout(value)

    def gettimeout(self) -> float | None:
        return self.socket.gettimeout()

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.socket.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        return self.socket.getsockopt(level, option)

    def getsockname(self) -> Any:
        return self.socket.getsockname()

    def close(self) -> None:
        self.socket.close()
        if self._owned_path:
            with contextlib.suppress(OSError):
                os.unlink(self._owned_path)
            self._owned_path = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Datagram {self.address}>"


def _autobind_unix(sock: socket.socket) -> None:
    """Give a unixgram client an address replies can reach: Linux autobind picks an abstract name."""
    sock.bind("")


def open_datagram(
    address: Address | str,
    *,
    connect: Address | str | None = None,
    sockopts: SockOpts = None,
    timeout: float | None = None,
) -> Datagram:
    """Bind a datagram socket to ``address`` (port 0 / autobind allowed); optionally connect it to a peer."""
    addr = Address.parse(address)
    if not addr.is_datagram:
        raise UsageError(f"{addr} is not a datagram address (udp, udp4, udp6, unixgram)")
    opts = _opts(sockopts)
    if addr.is_unix and addr.path in ("", "\0"):
        sock = new_socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _autobind_unix(sock)
        bound = to_address(addr.scheme, sock.getsockname())
    else:
        sock, bound = bind_socket(addr, sockopts=opts)
    dg = Datagram(sock, bound)
    if addr.is_unix and not addr.is_abstract and addr.path:
        dg._owned_path = addr.path
    sock.settimeout(timeout)
    if connect is not None:
        peer = Address.parse(connect)
        try:
            sock.connect(dg._target(peer))
        except OSError as exc:
            dg.close()
            raise network_error(exc, f"connect {peer}") from None
        dg.peer = peer
    return dg


def connect_datagram(
    address: Address | str,
    *,
    source: Address | str | None = None,
    sockopts: SockOpts = None,
    timeout: float | None = None,
) -> Datagram:
    """A datagram socket connected to ``address`` (a unixgram one autobinds so replies can come back)."""
    addr = Address.parse(address)
    if addr.is_unix:
        sock = new_socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if source is not None:
                sock.bind(Address.parse(source).path)
            else:
                _autobind_unix(sock)
            sock.connect(addr.path)
        except OSError as exc:
            sock.close()
            raise network_error(exc, f"connect {addr}") from None
    else:
        sock, addr = connect_socket(addr, timeout=timeout, source=source, sockopts=sockopts)
    sock.settimeout(timeout)
    local = _safe_name(sock, addr.scheme, peer=False) or addr
    return Datagram(sock, local, addr)
