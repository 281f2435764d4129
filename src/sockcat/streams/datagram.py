"""Datagram sockets (udp, unixgram): :class:`Datagram`, :func:`open_datagram`, :func:`connect_datagram`."""

from __future__ import annotations

import errno
import socket
from types import TracebackType
from typing import Any, Self

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, Timeout, UsageError, network_error
from sockcat.core.framing import to_bytes
from sockcat.net.sockets import (
    RECV_SIZE,
    SocketFile,
    SockOpts,
    autobind_unix,
    bind_socket,
    check_source,
    connect_socket,
    new_socket,
    norm_opts,
    resolve,
    safe_name,
    to_address,
)

# --- datagrams -----------------------------------------------------------------------------------


class Datagram:
    """A datagram socket (udp*, unixgram): ``sendto``/``recvfrom`` speak :class:`Address`."""

    def __init__(self, sock: socket.socket, address: Address, peer: Address | None = None) -> None:
        self.socket = sock
        self.address = address
        self.peer = peer
        self.scheme = address.scheme
        self.socket_file: SocketFile | None = None  # removed on close

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
        owned, self.socket_file = self.socket_file, None
        if owned is not None:
            owned.remove()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Datagram {self.address}>"


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
    opts = norm_opts(sockopts)
    if addr.is_unix and addr.path in ("", "\0"):
        sock = new_socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        autobind_unix(sock)
        bound = to_address(addr.scheme, sock.getsockname())
    else:
        sock, bound = bind_socket(addr, sockopts=opts)
    dg = Datagram(sock, bound)
    dg.socket_file = SocketFile.of(addr)
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
    if source is not None:
        check_source(addr, Address.parse(source))
    if addr.is_unix:
        sock = new_socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if source is not None:
                sock.bind(Address.parse(source).path)
            else:
                autobind_unix(sock)
            sock.connect(addr.path)
        except OSError as exc:
            sock.close()
            raise network_error(exc, f"connect {addr}") from None
    else:
        sock = connect_socket(addr, timeout=timeout, source=source, sockopts=sockopts)
    sock.settimeout(timeout)
    local = safe_name(sock, addr.scheme, peer=False) or addr
    return Datagram(sock, local, addr)
