"""The ``connect`` engine and the bridge it shares with ``listen`` (:mod:`sockcat.engines.listen`): a socket of
any kind bridged to stdio, or to a child process.

Streams: one thread per direction, zero-copy where possible (:mod:`sockcat.engines.pump`). stdin EOF becomes
shutdown(SHUT_WR) and the other direction keeps flowing until the peer closes. When the peer's
direction ends first, the upload goes on while stdin has anything to send (a peer that half-closed may
still be reading; one that closed makes the send fail: exit 1), and ends once stdin is idle.
Datagrams: each stdin read is one datagram; replies go to stdout.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sockcat.core.address import Address, show
from sockcat.core.errors import UsageError, network_error
from sockcat.core.hexdump import HexDumper
from sockcat.core.log import SILENT, Log
from sockcat.core.wsoptions import WsOptions
from sockcat.engines.pump import Counter, End, FdEnd, SockEnd, StreamEnd, TLSEnd, copy
from sockcat.net.options import SockOpt
from sockcat.net.proxy import Proxy
from sockcat.net.proxy import check_target as check_proxy_target
from sockcat.net.sockets import connect_socket, safe_name
from sockcat.serving.process import start_thread
from sockcat.streams.datagram import connect_datagram
from sockcat.streams.sync import Stream
from sockcat.streams.tlsio import handshake

if TYPE_CHECKING:
    import ssl  # only TLS needs it: imported where TLS runs

UPLOAD_GRACE = 0.5  # after the peer's EOF, stdin idle this long ends the session
DGRAM_MAX = 65507
DEFAULT_DGRAM_IDLE = 1.0


@dataclass
class BridgeOptions:
    """What every bridging engine shares: logging, idle time-out, hex dump, the stdio descriptors."""

    log: Log = SILENT
    idle_timeout: float | None = None
    hexdump: bool = False
    stdin_fd: int = 0
    stdout_fd: int = 1


def _dumper(opts: BridgeOptions, mark: str) -> HexDumper | None:
    return HexDumper(mark) if opts.hexdump else None


class _Upload(End):
    """stdin as the upload reads it: ``pending`` while bytes read from it are not all sent yet."""

    def __init__(self, inner: End) -> None:
        self.inner = inner
        self.name = inner.name
        self.is_pipe = inner.is_pipe
        self.packet = inner.packet
        self.pending = False
        fd = inner.splice_fd
        # Spliced straight from a pipe, unsent bytes stay in it (poll sees them); from a socket they
        # would wait in a hidden pipe, so a socket is copied through a buffer (where ``pending`` sees them).
        self.splice_fd = fd if fd is not None and (inner.is_pipe or not _is_socket(fd)) else None

    def readinto(self, buf: memoryview) -> int:
        self.pending = False  # the copy loop reads again only once the last chunk is sent
        n = self.inner.readinto(buf)
        self.pending = n > 0
        return n

    def read_packet(self) -> bytes:
        return self.inner.read_packet()

    def close_write(self) -> None:
        self.inner.close_write()

    def close(self) -> None:
        self.inner.close()


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _readable(fd: int | None) -> bool:
    """Data (or EOF) waits in ``fd`` now, so the upload is about to move (no descriptor: False)."""
    if fd is None or fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


def bridge(
    conn: End, stdin: End, stdout: End, peer: str, opts: BridgeOptions, *, wait_upload: bool = False
) -> tuple[int, int]:
    """Copy stdin -> conn and conn -> stdout with half-close; return (bytes sent, bytes received).

    When the peer's direction ends first (it may have only half-closed, and still be reading), the upload
    goes on while it has anything to send: bytes read from stdin or waiting in it are never dropped.
    It ends once stdin is idle (nothing to read for ``UPLOAD_GRACE``: a script whose stdin stays open is
    not left hanging) or at once if stdin is a terminal (like netcat). A send that fails (the peer reset
    or closed) is an error: bytes were left unsent. ``-i`` idle time bounds the wait too.
    ``wait_upload``: wait for the upload to its end (a child process's output).
    """
    up, down = Counter(), Counter()
    up_done = threading.Event()
    up_error: list[BaseException] = []
    idled = threading.Event()
    source = _Upload(stdin)
    stdin_fd = stdin.fd if isinstance(stdin, FdEnd) else None

    def upload() -> None:
        try:
            copy(source, conn, up, hexdump=_dumper(opts, ">"), emit=opts.log.always)
        except OSError as exc:
            up_error.append(exc)
        finally:
            up_done.set()

    start_thread(upload, name="sockcat upload")
    stop_watch = threading.Event()
    if opts.idle_timeout is not None:
        start_thread(idle_watchdog, conn, up, down, opts, stop_watch, idled, name="sockcat idle watch")
    try:
        try:
            copy(conn, stdout, down, hexdump=_dumper(opts, "<"), emit=opts.log.always)
        except OSError as exc:
            if exc.errno != errno.EPIPE:  # EPIPE here is our stdout going away: a normal end
                raise network_error(exc, f"connection with {peer}") from exc
        interactive = not wait_upload and stdin_fd is not None and _isatty(stdin_fd)
        busy = time.monotonic()
        while not up_done.wait(0.05):
            if wait_upload:
                continue
            if interactive or idled.is_set():
                break
            now = time.monotonic()
            if source.pending or _readable(stdin_fd):
                busy = now
            elif now - max(busy, up.last) > UPLOAD_GRACE:
                break
    finally:
        stop_watch.set()
    for err in up_error:
        if idled.is_set() or (isinstance(err, OSError) and err.errno == errno.EBADF):
            opts.log.info(f"upload to {peer} ended: {err}")
        elif isinstance(err, OSError):
            raise network_error(err, f"send to {peer} after {up.bytes} bytes")
    return up.bytes, down.bytes


def idle_watchdog(
    conn: End, up: Counter, down: Counter, opts: BridgeOptions, stop: threading.Event, idled: threading.Event
) -> None:
    idle = opts.idle_timeout or 0.0
    while not stop.wait(min(idle, 0.25)):
        if time.monotonic() - max(up.last, down.last) >= idle:
            opts.log.info(f"idle for {idle:g} s: closing")
            idled.set()
            sock = conn.sock if isinstance(conn, SockEnd) else conn.channel.sock if isinstance(conn, TLSEnd) else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return


def _stream_end(sock: socket.socket, name: str) -> SockEnd:
    sock.settimeout(None)
    return SockEnd(sock, name)


def tls_client_end(
    sock: socket.socket, addr: Address, context: ssl.SSLContext, sni: str | None, timeout: float | None
) -> TLSEnd:
    hostname = sni if sni is not None else (addr.host or None)
    channel = handshake(sock, context, server_side=False, where=addr, server_hostname=hostname, timeout=timeout)
    sock.settimeout(None)
    return TLSEnd(channel, str(addr))


def tls_server_end(sock: socket.socket, context: ssl.SSLContext, where: str) -> TLSEnd:
    channel = handshake(sock, context, server_side=True, where=where)
    sock.settimeout(None)
    return TLSEnd(channel, where)


def ws_client_end(sock: socket.socket, end: End, addr: Address, ws: WsOptions, timeout: float | None) -> StreamEnd:
    """A connected socket (``end``: plain or TLS) upgraded to a WebSocket client."""
    # (websockets: loaded only for a WebSocket address, ~40 ms of start-up)
    from sockcat.streams.wsio import client_handshake

    tls = end.channel if isinstance(end, TLSEnd) else None
    chan = client_handshake(sock, tls, addr, ws, timeout=timeout)
    sock.settimeout(None)
    return StreamEnd(Stream(sock, addr.scheme, tls=tls, ws=chan), str(addr))


def ws_server_end(sock: socket.socket, end: End, listen: Address, ws: WsOptions, where: str) -> StreamEnd:
    """An accepted socket (``end``: plain or TLS) whose WebSocket upgrade was answered; ``.stream.request`` is
    the client's request."""
    # (websockets: loaded only for a WebSocket address, ~40 ms of start-up)
    from sockcat.streams.wsio import server_handshake

    tls = end.channel if isinstance(end, TLSEnd) else None
    chan, ans = server_handshake(sock, tls, where, listen.resource, ws)
    sock.settimeout(None)
    stream = Stream(sock, listen.scheme, tls=tls, ws=chan)
    stream.request = ans.request
    return StreamEnd(stream, where)


# --- connect -------------------------------------------------------------------------------------


def run_connect(
    address: Address,
    opts: BridgeOptions,
    *,
    connect_timeout: float | None = None,
    source: Address | None = None,
    sockopts: tuple[SockOpt, ...] = (),
    ssl_context: ssl.SSLContext | None = None,
    sni: str | None = None,
    proxy: Proxy | None = None,
    ws: WsOptions | None = None,
) -> None:
    """``sockcat connect``: stdio <-> one connection."""
    if address.is_stdio:
        raise UsageError("connect needs a socket address, not stdio:")
    if proxy is not None:
        check_proxy_target(address)
    if address.is_datagram:
        _connect_datagram(address, opts, source=source, sockopts=sockopts, timeout=connect_timeout)
        return
    addr = address
    sock = connect_socket(address, timeout=connect_timeout, source=source, sockopts=sockopts, proxy=proxy)
    local = show(safe_name(sock, addr.scheme, peer=False))
    # through a proxy the socket's peer is the proxy: name the target, and the proxy after it
    peer = f"{addr} via {proxy}" if proxy is not None else show(safe_name(sock, addr.scheme, peer=True) or addr, sock)
    conn: End
    if addr.is_tls:
        from sockcat.net.tls import client_context

        conn = tls_client_end(sock, addr, ssl_context or client_context(), sni, connect_timeout)
    else:
        conn = _stream_end(sock, peer)
    if addr.is_ws:
        conn = ws_client_end(sock, conn, addr, ws or WsOptions(), connect_timeout)
    opts.log.info(f"connected to {peer} from {local}")
    try:
        sent, received = bridge(conn, FdEnd(opts.stdin_fd, "stdin"), FdEnd(opts.stdout_fd, "stdout"), peer, opts)
    finally:
        conn.close()
    opts.log.info(f"closed {peer}: {sent} bytes sent, {received} bytes received")
    return


def _connect_datagram(
    address: Address,
    opts: BridgeOptions,
    *,
    source: Address | None,
    sockopts: tuple[SockOpt, ...],
    timeout: float | None,
) -> None:
    dg = connect_datagram(address, source=source, sockopts=sockopts, timeout=timeout)
    sock = dg.socket
    sock.settimeout(None)
    opts.log.info(f"sending to {dg.peer} from {dg.address}")
    idle = opts.idle_timeout if opts.idle_timeout is not None else DEFAULT_DGRAM_IDLE
    eof_at: list[float] = []
    send_errors: list[OSError] = []
    up = _dumper(opts, ">")
    down = _dumper(opts, "<")
    counts = [0, 0]

    def upload() -> None:
        try:
            while data := _read_stdin(opts.stdin_fd):
                if up is not None:
                    for line in up.lines(data):
                        opts.log.always(line)
                sock.send(data)
                counts[0] += len(data)
        except OSError as exc:
            send_errors.append(exc)
        finally:
            eof_at.append(time.monotonic())

    start_thread(upload, name="sockcat upload")
    last = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([sock], [], [], 0.05)
            now = time.monotonic()
            if ready:
                data = sock.recv(DGRAM_MAX + 1)
                last = now
                counts[1] += len(data)
                if down is not None:
                    for line in down.lines(data):
                        opts.log.always(line)
                _write_all(opts.stdout_fd, data)
                continue
            if send_errors:
                raise send_errors[0]
            if eof_at and now - max(eof_at[0], last) >= idle:
                break
            if not eof_at and opts.idle_timeout is not None and now - last >= idle:
                break
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return
        raise network_error(exc, f"{dg.peer}") from None
    finally:
        dg.close()
    opts.log.info(f"closed {dg.peer}: {counts[0]} bytes sent, {counts[1]} bytes received")
    return


def _read_stdin(fd: int) -> bytes:
    try:
        return os.read(fd, DGRAM_MAX)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return b""
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
