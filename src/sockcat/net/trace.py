"""``--trace``: every socket operation as it happens, one stderr line each (docs/reference.md#trace).

Tracing costs nothing when off: sockets are plain ``socket.socket`` objects then. When on, sockets are
:class:`TracedSocket`, a subclass that prints each call in the socket API's own words, after the descriptor it is
made on: ``[fd 5] socket(AF_INET6, SOCK_STREAM)``, ``[fd 5] bind(('::', 8080))``, ``[fd 6] recv(65536) -> 12
bytes``, ``[fd 6] close()``.

Order: a call that sends something out (connect, send, sendall, sendto, sendfile, a splice into a socket,
shutdown, close) is printed as it starts, and its result, when it is not the plain success, on a line of its own
after it (``[fd 6] sendall -> EPIPE (Broken pipe)``); a call that waits for something (accept, recv…) is printed
when it returns, with what it got. So whatever a peer did in answer to a call is printed after that call,
whichever thread made it.

``--trace-json`` prints the same calls as JSON objects, one per line: ``{"fd": 6, "call": "recv", "args":
"65536", "result": "12 bytes"}`` (``error`` instead of ``result`` for a failure, named by its errno; ``note`` for a
line that is no socket call, such as a TLS handshake's outcome).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import select
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

_lock = threading.Lock()
_connections = itertools.count(1)
_out: TextIO | None = None
_json = False


def set_trace(stream: TextIO | None = sys.stderr, *, as_json: bool = False) -> None:
    """Turn tracing on (lines go to ``stream``; JSON objects with ``as_json``) or off (``None``). Sockets sockcat
    creates while it is on are traced, for as long as it stays on."""
    global _out, _json
    _out, _json = stream, as_json


@contextlib.contextmanager
def trace(file: TextIO | None = None, *, as_json: bool = False) -> Iterator[None]:
    """``with sockcat.trace(): ...``: the socket calls made inside the block, on the sockets sockcat creates there,
    to ``file`` (default stderr); what was set before comes back after."""
    before = (_out, _json)
    set_trace(file if file is not None else sys.stderr, as_json=as_json)
    try:
        yield
    finally:
        set_trace(before[0], as_json=before[1])


def tracing() -> bool:
    return _out is not None


def _write(text: str) -> None:
    out = _out
    if out is None:
        return
    with _lock:
        out.write(text + "\n")
        out.flush()


def next_connection() -> int:
    """The number of a connection a server accepted: 1, 2, … in the order they came, one count per process, shown
    on its ``accept`` line so that a descriptor a later connection uses again is told apart."""
    return next(_connections)


def emit(line: str, fd: int | None = None) -> None:
    """A line that is not a socket call (a proxy's answer, a TLS handshake's outcome), on ``fd`` if given."""
    if _out is None:
        return
    if _json:
        _write(json.dumps({"fd": fd, "note": line}, ensure_ascii=False))
    else:
        _write(f"[fd {fd}] {line}" if fd is not None else line)


def record(fd: int, call: str, args: str, result: str | None = None, error: OSError | None = None) -> None:
    """One socket call: ``[fd N] call(args)``, ``-> result`` or ``-> ERRNO (text)`` after it."""
    if _out is None:
        return
    if _json:
        _write_json({"fd": fd, "call": call, "args": args}, result, error)
        return
    line = f"[fd {fd}] {call}({args})"
    if error is not None:
        line += f" -> {_err(error)}"
    elif result is not None:
        line += f" -> {result}"
    _write(line)


def outcome(fd: int, call: str, result: str | None = None, error: OSError | None = None) -> None:
    """The result of an outward call printed as it started: ``[fd N] call -> result``."""
    if _out is None:
        return
    if _json:
        _write_json({"fd": fd, "call": call}, result, error)
        return
    _write(f"[fd {fd}] {call} -> {_err(error) if error is not None else result}")


def _write_json(obj: dict[str, Any], result: str | None, error: OSError | None) -> None:
    if result is not None:
        obj["result"] = result
    if error is not None:
        obj["error"] = errno.errorcode.get(error.errno or 0, type(error).__name__)
        obj["message"] = error.strerror or str(error)
    _write(json.dumps(obj, ensure_ascii=False))


def splice(src: int, dst: int, count: int) -> int:
    """``os.splice``, traced. Into a socket it sends, so it is printed as it starts (once ``src`` has bytes to
    give: ``[fd SRC] splice(SRC -> DST, COUNT)``) and its result after (``[fd SRC] splice -> N bytes``); into a
    pipe or a file it is printed when it returns: ``[fd SRC] splice(SRC -> DST, COUNT) -> N bytes``."""
    args = f"{src} -> {dst}, {count}"
    if not stat.S_ISSOCK(os.fstat(dst).st_mode):
        try:
            n = os.splice(src, dst, count)
        except OSError as exc:
            record(src, "splice", args, error=exc)
            raise
        record(src, "splice", args, f"{n} bytes")
        return n
    ready = select.poll()
    ready.register(src, select.POLLIN)
    ready.poll()  # (the splice would wait here too)
    record(src, "splice", args)
    try:
        n = os.splice(src, dst, count)
    except OSError as exc:
        outcome(src, "splice", error=exc)
        raise
    outcome(src, "splice", f"{n} bytes")
    return n


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
            record(self.fileno(), "socket", f"{_family(self.family)}, {_kind(self.type)}")

    def _inward(self, call: str, args: str, fn: Callable[[], Any], show: Callable[[Any], str] | None = None) -> Any:
        """A call that waits for something: printed when it returns, with what it got."""
        fd = self.fileno()
        try:
            result = fn()
        except OSError as exc:
            record(fd, call, args, error=exc)
            raise
        record(fd, call, args, show(result) if show else None)
        return result

    def _outward(
        self, call: str, args: str, fn: Callable[[], Any], show: Callable[[Any], str | None] | None = None
    ) -> Any:
        """A call that sends something out: printed as it starts; a result other than plain success after it."""
        fd = self.fileno()
        record(fd, call, args)
        try:
            result = fn()
        except OSError as exc:
            outcome(fd, call, error=exc)
            raise
        shown = show(result) if show else None
        if shown is not None:
            outcome(fd, call, shown)
        return result

    # Connection set-up.
    def bind(self, address: Any) -> None:
        self._inward("bind", fmt_sockaddr(address), lambda: super(TracedSocket, self).bind(address))

    def listen(self, backlog: int = 128) -> None:
        self._inward("listen", str(backlog), lambda: super(TracedSocket, self).listen(backlog))

    def connect(self, address: Any) -> None:
        self._outward("connect", fmt_sockaddr(address), lambda: super(TracedSocket, self).connect(address))

    def connect_ex(self, address: Any) -> int:
        fd = self.fileno()
        record(fd, "connect_ex", fmt_sockaddr(address))
        rc: int = super().connect_ex(address)
        outcome(fd, "connect_ex", str(errno.errorcode.get(rc, rc)) if rc else "0")
        return rc

    def accept(self) -> tuple[socket.socket, Any]:
        def go() -> tuple[socket.socket, Any]:
            fd, addr = self._accept()  # type: ignore[attr-defined]
            return TracedSocket(self.family, self.type, self.proto, fileno=fd), addr

        result: tuple[socket.socket, Any] = self._inward(
            "accept", "", go, lambda r: f"fd {r[0].fileno()} from {fmt_sockaddr(r[1])}, connection {next_connection()}"
        )
        return result

    def setsockopt(self, level: int, optname: int, value: Any, optlen: Any = None) -> None:
        lv = _LEVELS.get(level, str(level))
        on = _OPTS.get(level, {}).get(optname, str(optname))
        shown = value if isinstance(value, int) else repr(value)
        if optlen is None:
            self._inward(
                "setsockopt",
                f"{lv}, {on}, {shown}",
                lambda: super(TracedSocket, self).setsockopt(level, optname, value),
            )
        else:
            self._inward(
                "setsockopt",
                f"{lv}, {on}, {shown}",
                lambda: super(TracedSocket, self).setsockopt(level, optname, value, optlen),
            )

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        lv = _LEVELS.get(level, str(level))
        on = _OPTS.get(level, {}).get(optname, str(optname))
        if buflen is not None:
            raw = super().getsockopt
            return self._inward("getsockopt", f"{lv}, {on}, {buflen}", lambda: raw(level, optname, buflen))

        def show(value: int) -> str:
            if level == socket.SOL_SOCKET and optname == socket.SO_ERROR and value:
                return str(errno.errorcode.get(value, value))
            return str(value)

        plain = super().getsockopt
        return self._inward("getsockopt", f"{lv}, {on}", lambda: plain(level, optname), show)

    def getsockname(self) -> Any:
        return self._inward("getsockname", "", super().getsockname, fmt_sockaddr)

    def getpeername(self) -> Any:
        return self._inward("getpeername", "", super().getpeername, fmt_sockaddr)

    def settimeout(self, value: float | None) -> None:
        record(self.fileno(), "settimeout", repr(value))
        super().settimeout(value)

    def setblocking(self, flag: bool) -> None:
        record(self.fileno(), "setblocking", repr(bool(flag)))
        super().setblocking(flag)

    def shutdown(self, how: int) -> None:
        self._outward("shutdown", _HOW.get(how, str(how)), lambda: super(TracedSocket, self).shutdown(how))

    def close(self) -> None:
        fd = self.fileno()
        if fd != -1:
            record(fd, "close", "")
        super().close()

    # Data.
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data: bytes = self._inward(
            "recv", str(bufsize), lambda: super(TracedSocket, self).recv(bufsize, flags), lambda d: _nbytes(len(d))
        )
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n: int = self._inward(
            "recv_into",
            str(nbytes or len(buffer)),
            lambda: super(TracedSocket, self).recv_into(buffer, nbytes, flags),
            _nbytes,
        )
        return n

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        r: tuple[bytes, Any] = self._inward(
            "recvfrom",
            str(bufsize),
            lambda: super(TracedSocket, self).recvfrom(bufsize, flags),
            lambda r: f"{len(r[0])} bytes from {fmt_sockaddr(r[1])}",
        )
        return r

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        r: tuple[int, Any] = self._inward(
            "recvfrom_into",
            str(nbytes or len(buffer)),
            lambda: super(TracedSocket, self).recvfrom_into(buffer, nbytes, flags),
            lambda r: f"{r[0]} bytes from {fmt_sockaddr(r[1])}",
        )
        return r

    def send(self, data: Any, flags: int = 0) -> int:
        size = len(data)
        n: int = self._outward(
            "send",
            _nbytes(size),
            lambda: super(TracedSocket, self).send(data, flags),
            lambda n: None if n == size else f"{n} of {size} bytes",
        )
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._outward("sendall", _nbytes(len(data)), lambda: super(TracedSocket, self).sendall(data, flags))

    def sendto(self, data: Any, *args: Any) -> int:
        addr = args[-1]
        size = len(data)
        n: int = self._outward(
            "sendto",
            f"{_nbytes(size)}, {fmt_sockaddr(addr)}",
            lambda: super(TracedSocket, self).sendto(data, *args),
            lambda n: None if n == size else f"{n} of {size} bytes",
        )
        return n

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        n: int = self._outward(
            "sendfile",
            f"file fd {file.fileno()}, offset {offset}, {'to the end' if count is None else _nbytes(count)}",
            lambda: super(TracedSocket, self).sendfile(file, offset, count),
            _nbytes,
        )
        return n


def socket_class() -> type[socket.socket]:
    """The class new sockets should be made of: plain unless tracing is on."""
    return TracedSocket if _out is not None else socket.socket
