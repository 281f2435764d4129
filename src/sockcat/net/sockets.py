"""Network set-up for every address kind: resolution, sockets made and bound, happy-eyeballs connect.

Errors are mapped once, here, at the I/O boundary (:func:`sockcat.core.errors.network_error`). The streams
(:mod:`sockcat.streams.sync`, :mod:`sockcat.streams.aio`) build on these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import selectors
import socket
import stat
import time
from typing import Any

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, UsageError, network_error
from sockcat.core.eyeballs import ATTEMPT_DELAY, Eyeballs
from sockcat.net import proxy as _proxy
from sockcat.net import trace as _trace
from sockcat.net.options import SockOpt, apply_sockopts, parse_sockopts
from sockcat.net.proxy import Proxy

RECV_SIZE = 65536
HAPPY_EYEBALLS_DELAY = ATTEMPT_DELAY  # (kept for callers of this name)

SockOpts = tuple[SockOpt, ...] | list[str] | tuple[str, ...] | None


def norm_opts(opts: SockOpts) -> tuple[SockOpt, ...]:
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


def safe_name(sock: socket.socket, scheme: str, peer: bool) -> Address | None:
    try:
        return to_address(scheme, sock.getpeername() if peer else sock.getsockname())
    except OSError:
        return None


# --- connecting ----------------------------------------------------------------------------------


def prepare_socket(
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


def check_source(target: Address, source: Address) -> None:
    """A source address must be of the target's kind: an IP address of the same transport for tcp/tls/udp, a
    Unix path of the same socket type for unix kinds. Anything else is a usage error, never silently ignored."""
    same = (source.type == target.type and source.is_unix == target.is_unix) or (
        target.is_tls and source.scheme in ("tcp", "tcp4", "tcp6", "tls")
    )
    if not same or source.is_stdio:
        raise UsageError(f"source {source} cannot be bound for {target}: give a source of the same kind")
    known = (socket.AF_INET, socket.AF_INET6)  # a literal, or a 4/6 scheme (a name is AF_UNSPEC until resolved)
    if source.is_ip and source.family in known and target.family in known and source.family != target.family:
        raise UsageError(f"source {source} is not of {target}'s address family")


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
    sock = prepare_socket(fam, kind, proto, opts, source, str(addr))
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
    """RFC 8305, as :class:`sockcat.core.eyeballs.Eyeballs` plans it, on non-blocking sockets and a selector."""
    plan = Eyeballs(infos)
    deadline = None if timeout is None else time.monotonic() + timeout
    pending: dict[socket.socket, Any] = {}
    winner: socket.socket | None = None
    with selectors.DefaultSelector() as sel:
        try:
            while winner is None and not plan.lost:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError(errno.ETIMEDOUT, "timed out")
                if plan.due(now):
                    fam, kind, proto, sa = plan.start(now)
                    try:
                        sock = prepare_socket(fam, kind, proto, opts, source, str(addr))
                    except OSError as exc:
                        plan.failed(exc, now)
                        continue
                    sock.setblocking(False)
                    rc = sock.connect_ex(sa)
                    if rc == 0:
                        winner = sock
                        break
                    if rc not in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                        plan.failed(OSError(rc, os.strerror(rc)), now)
                        sock.close()
                        continue
                    pending[sock] = sa
                    sel.register(sock, selectors.EVENT_WRITE)
                    continue
                waits = [w for w in (plan.wait(now),) if w is not None]
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
                    plan.failed(OSError(err, os.strerror(err)), time.monotonic())
                    sock.close()
        finally:
            for sock in pending:
                sock.close()
    if winner is None:
        raise plan.error()
    winner.settimeout(timeout)
    return winner


def connect_socket(
    address: Address | str,
    *,
    timeout: float | None = None,
    source: Address | str | None = None,
    sockopts: SockOpts = None,
    proxy: Proxy | str | None = None,
) -> socket.socket:
    """A connected plain socket (no TLS) for any address kind, errors mapped to sockcat's; with ``proxy``
    (a ``socks5://``, ``socks5h://``, ``socks4://``, ``socks4a://`` or ``http://`` URL) through that proxy."""
    addr = Address.parse(address)
    src = Address.parse(source) if source is not None else None
    if src is not None:
        check_source(addr, src)
    opts = norm_opts(sockopts)
    if proxy is not None:
        return _proxy.connect(Proxy.parse(proxy), addr, timeout, src, opts)
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
    return sock


class SocketFile:
    """The file of a Unix socket this process bound, to remove when its socket closes: only while it is still
    that file (by device and inode). Another process may have put its own socket there since (after removing
    ours as stale): that one is not ours to remove."""

    __slots__ = ("dev", "ino", "path")

    def __init__(self, path: str, dev: int, ino: int) -> None:
        self.path = path
        self.dev = dev
        self.ino = ino

    @classmethod
    def of(cls, address: Address) -> SocketFile | None:
        """The file ``address`` (just bound) names; None for other kinds, abstract names and autobind."""
        if not address.is_unix or address.is_abstract or not address.path:
            return None
        try:
            st = os.stat(address.path)
        except OSError:
            return None
        return cls(os.path.abspath(address.path), st.st_dev, st.st_ino)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == (self.dev, self.ino):
                os.unlink(self.path)


def unix_stale(path: str, kind: int, where: str) -> None:
    """Remove a socket file left by a dead listener; refuse if a live one answers there
    (docs/reference.md#addresses)."""
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
    opts = norm_opts(sockopts)
    infos = resolve(addr, passive=True)
    if not infos:
        raise NetworkError(errno.EADDRNOTAVAIL, f"listen {addr}: no address to bind")
    fam, kind, proto, sa = infos[0]
    if addr.is_unix:
        unix_stale(addr.path, kind, str(addr))
    sock = new_socket(fam, kind, proto)
    try:
        if fam != socket.AF_UNIX:
            # TCP: a listener restarts over its old connections' TIME_WAIT. Never on UDP, where SO_REUSEADDR lets
            # a second socket bind a busy port and take its datagrams (ask with --sockopt reuseaddr=1 if meant).
            if kind == socket.SOCK_STREAM:
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
    bound = safe_name(sock, addr.scheme, peer=False) or addr
    if addr.is_ip:
        # Keep the user's scheme and host spelling; only the port is filled in (port 0 -> real port).
        host = addr.host if addr.host else ""
        bound = Address(addr.scheme, host, bound.port, addr.family, addr.type)
    if addr.resource:
        bound = dataclasses.replace(bound, resource=addr.resource)
    return sock, bound


def autobind_unix(sock: socket.socket) -> None:
    """Give a unixgram client an address replies can reach: Linux autobind picks an abstract name."""
    sock.bind("")
