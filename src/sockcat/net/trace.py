"""``--trace``: every socket operation as it happens, one stderr line each.

Tracing costs nothing when off: sockets are plain ``socket.socket`` objects then. When on, sockets are
:class:`TracedSocket`, a subclass that prints each call in the socket API's own words, e.g.
``socket(AF_INET6, SOCK_STREAM)``, ``bind(('::', 8080))``, ``recv(65536) -> 12 bytes``, ``close()``.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

_lock = threading.Lock()
_out: TextIO | None = None


def set_trace(stream: TextIO | None = sys.stderr) -> None:
    """Turn tracing on (lines go to ``stream``) or off (``None``); affects sockets created afterwards."""
    global _out
    _out = stream


def tracing() -> bool:
    return _out is not None


def emit(line: str) -> None:
    out = _out
    if out is None:
        return
    with _lock:
        out.write(line + "\n")
        out.flush()


def _names(prefix: str) -> dict[int, str]:
    table: dict[int, str] = {}
    for name in dir(socket):
        if name.startswith(prefix) and "J1939" not in name and "VM_SOCKETS" not in name:
            value = getattr(socket, name)
            if isinstance(value, int):
                table.setdefault(int(value), name)
    return table


_LEVELS = {
    socket.SOL_SOCKET: "SOL_SOCKET",
    socket.IPPROTO_TCP: "IPPROTO_TCP",
    socket.IPPROTO_IP: "IPPROTO_IP",
    socket.IPPROTO_IPV6: "IPPROTO_IPV6",
    socket.IPPROTO_UDP: "IPPROTO_UDP",
}
_OPTS = {
    socket.SOL_SOCKET: _names("SO_"),
    socket.IPPROTO_TCP: _names("TCP_"),
    socket.IPPROTO_IP: _names("IP_"),
    socket.IPPROTO_IPV6: _names("IPV6_"),
}
_HOW = {socket.SHUT_RD: "SHUT_RD", socket.SHUT_WR: "SHUT_WR", socket.SHUT_RDWR: "SHUT_RDWR"}


def _family(f: int) -> str:
    try:
        return socket.AddressFamily(f).name
    except ValueError:
        return str(f)


def _kind(t: int) -> str:
    try:
        return socket.SocketKind(t).name
    except ValueError:
        return str(t)


def fmt_sockaddr(addr: Any) -> str:
    """``('::1', 53122)`` for IP (flow info and scope dropped), ``'/path'`` or ``'@name'`` for Unix."""
    if isinstance(addr, tuple):
        return repr(tuple(addr[:2]))
    if isinstance(addr, bytes):
        addr = addr.decode("utf-8", "replace")
    if isinstance(addr, str) and addr.startswith("\0"):
        return repr("@" + addr[1:])
    return repr(addr)


def _err(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0)
    return f"{code or type(exc).__name__} ({exc.strerror or exc})"


def _call(line: str, fn: Callable[[], Any], show: Callable[[Any], str] | None = None) -> Any:
    try:
        result = fn()
    except OSError as exc:
        emit(f"{line} -> {_err(exc)}")
        raise
    emit(f"{line} -> {show(result)}" if show else line)
    return result


def _nbytes(n: int) -> str:
    return f"{n} bytes"


class TracedSocket(socket.socket):
    """A ``socket.socket`` that narrates every call (see module docstring)."""

    __slots__ = ()

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
    ) -> None:
        super().__init__(family, type, proto, fileno)
        if fileno is None:
            emit(f"socket({_family(self.family)}, {_kind(self.type)})")

    # Connection set-up.
    def bind(self, address: Any) -> None:
        _call(f"bind({fmt_sockaddr(address)})", lambda: super(TracedSocket, self).bind(address))

    def listen(self, backlog: int = 128) -> None:
        _call(f"listen({backlog})", lambda: super(TracedSocket, self).listen(backlog))

    def connect(self, address: Any) -> None:
        _call(f"connect({fmt_sockaddr(address)})", lambda: super(TracedSocket, self).connect(address))

    def connect_ex(self, address: Any) -> int:
        rc: int = super().connect_ex(address)
        emit(f"connect_ex({fmt_sockaddr(address)}) -> {errno.errorcode.get(rc, rc) if rc else 0}")
        return rc

    def accept(self) -> tuple[socket.socket, Any]:
        def go() -> tuple[socket.socket, Any]:
            fd, addr = self._accept()  # type: ignore[attr-defined]
            return TracedSocket(self.family, self.type, self.proto, fileno=fd), addr

        result: tuple[socket.socket, Any] = _call("accept()", go, lambda r: fmt_sockaddr(r[1]))
        return result

    def setsockopt(self, level: int, optname: int, value: Any, optlen: Any = None) -> None:
        lv = _LEVELS.get(level, str(level))
        on = _OPTS.get(level, {}).get(optname, str(optname))
        shown = value if isinstance(value, int) else repr(value)
        if optlen is None:
            _call(
                f"setsockopt({lv}, {on}, {shown})",
                lambda: super(TracedSocket, self).setsockopt(level, optname, value),
            )
        else:
            _call(
                f"setsockopt({lv}, {on}, {shown})",
                lambda: super(TracedSocket, self).setsockopt(level, optname, value, optlen),
            )

    def shutdown(self, how: int) -> None:
        _call(f"shutdown({_HOW.get(how, how)})", lambda: super(TracedSocket, self).shutdown(how))

    def close(self) -> None:
        if self.fileno() != -1:
            emit("close()")
        super().close()

    # Data.
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data: bytes = _call(
            f"recv({bufsize})",
            lambda: super(TracedSocket, self).recv(bufsize, flags),
            lambda d: _nbytes(len(d)),
        )
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n: int = _call(
            f"recv_into({nbytes or len(buffer)})",
            lambda: super(TracedSocket, self).recv_into(buffer, nbytes, flags),
            _nbytes,
        )
        return n

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        r: tuple[bytes, Any] = _call(
            f"recvfrom({bufsize})",
            lambda: super(TracedSocket, self).recvfrom(bufsize, flags),
            lambda r: f"{len(r[0])} bytes from {fmt_sockaddr(r[1])}",
        )
        return r

    def send(self, data: Any, flags: int = 0) -> int:
        n: int = _call(f"send({len(data)} bytes)", lambda: super(TracedSocket, self).send(data, flags), _nbytes)
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        _call(f"sendall({len(data)} bytes)", lambda: super(TracedSocket, self).sendall(data, flags))

    def sendto(self, data: Any, *args: Any) -> int:
        addr = args[-1]
        n: int = _call(
            f"sendto({len(data)} bytes, {fmt_sockaddr(addr)})",
            lambda: super(TracedSocket, self).sendto(data, *args),
            _nbytes,
        )
        return n


def socket_class() -> type[socket.socket]:
    """The class new sockets should be made of: plain unless tracing is on."""
    return TracedSocket if _out is not None else socket.socket
