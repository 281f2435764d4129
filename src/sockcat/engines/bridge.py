"""The ``connect`` and ``listen`` engines: a socket of any kind bridged to stdio, or to a child process.

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
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address, show
from sockcat.core.errors import NetworkError, UsageError, network_error
from sockcat.core.hexdump import HexDumper
from sockcat.core.log import SILENT, Log
from sockcat.engines.pump import Counter, End, FdEnd, SockEnd, TLSEnd, copy
from sockcat.net import trace as _trace
from sockcat.net.options import SockOpt
from sockcat.net.proxy import Proxy
from sockcat.net.proxy import check_target as check_proxy_target
from sockcat.serving.process import start_thread
from sockcat.serving.scaffold import Settings, serve_in_threads
from sockcat.streams.sync import _safe_name, connect_datagram, connect_socket, open_datagram, to_address

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


@dataclass
class ListenOptions:
    keep_open: bool = False
    exec_argv: Sequence[str] | None = None
    max_conns: int | None = None
    access: AccessPolicy = field(default_factory=AccessPolicy)
    sockopts: tuple[SockOpt, ...] = ()
    ssl_context: ssl.SSLContext | None = None
    fingerprint: str | None = None


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
        start_thread(_watchdog, conn, up, down, opts, stop_watch, idled, name="sockcat idle watch")
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


def _watchdog(
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
    import ssl

    from sockcat.streams.tlsio import TLSChannel, tls_error

    hostname = sni if sni is not None else (addr.host or None)
    channel = TLSChannel(sock, context, server_side=False, server_hostname=hostname)
    sock.settimeout(timeout if timeout is not None else 10.0)
    try:
        channel.handshake()
    except ssl.SSLError as exc:
        sock.close()
        raise tls_error(exc, f"TLS handshake with {addr}") from None
    except OSError as exc:
        sock.close()
        raise network_error(exc, f"TLS handshake with {addr}") from None
    sock.settimeout(None)
    _trace.emit(f"tls handshake -> {channel.version()} {channel.cipher()}")
    return TLSEnd(channel, str(addr))


def tls_server_end(sock: socket.socket, context: ssl.SSLContext, where: str) -> TLSEnd:
    import ssl

    from sockcat.streams.tlsio import TLSChannel, tls_error

    channel = TLSChannel(sock, context, server_side=True)
    sock.settimeout(10.0)
    try:
        channel.handshake()
    except ssl.SSLError as exc:
        sock.close()
        raise tls_error(exc, f"TLS handshake from {where}") from None
    except OSError as exc:
        sock.close()
        err = network_error(exc, f"TLS handshake from {where}")
        err.errno = errno.EPROTO
        raise err from None
    sock.settimeout(None)
    _trace.emit(f"tls handshake -> {channel.version()} {channel.cipher()}")
    return TLSEnd(channel, where)


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
) -> None:
    """``sockcat connect``: stdio <-> one connection."""
    if address.is_stdio:
        raise UsageError("connect needs a socket address, not stdio:")
    if proxy is not None:
        check_proxy_target(address)
    if address.is_datagram:
        _connect_datagram(address, opts, source=source, sockopts=sockopts, timeout=connect_timeout)
        return
    sock, addr = connect_socket(address, timeout=connect_timeout, source=source, sockopts=sockopts, proxy=proxy)
    local = show(_safe_name(sock, addr.scheme, peer=False))
    # through a proxy the socket's peer is the proxy: name the target, and the proxy after it
    peer = f"{addr} via {proxy}" if proxy is not None else show(_safe_name(sock, addr.scheme, peer=True) or addr, sock)
    conn: End
    if addr.is_tls:
        from sockcat.net.tls import client_context

        conn = tls_client_end(sock, addr, ssl_context or client_context(), sni, connect_timeout)
    else:
        conn = _stream_end(sock, peer)
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


# --- listen --------------------------------------------------------------------------------------


def exec_argv(exec_cmd: str | None, sh_exec: str | None) -> list[str] | None:
    """``--exec CMD`` split like a shell would (no shell runs), or ``--sh-exec CMD`` for /bin/sh -c."""
    import shlex

    if exec_cmd is not None and sh_exec is not None:
        raise UsageError("--exec and --sh-exec exclude each other")
    if sh_exec is not None:
        return ["/bin/sh", "-c", sh_exec]
    if exec_cmd is None:
        return None
    try:
        argv = shlex.split(exec_cmd)
    except ValueError as exc:
        raise UsageError(f"--exec {exec_cmd!r}: {exc}") from None
    if not argv:
        raise UsageError("--exec needs a command")
    if shutil.which(argv[0]) is None:
        raise UsageError(f"--exec: command not found: {argv[0]!r}")
    return argv


class _Accepted:
    """One accepted connection, TLS done, with its names."""

    def __init__(self, end: End, sock: socket.socket, local: Address | None, peer: Address | None) -> None:
        self.end = end
        self.sock = sock
        self.local = local
        self.peer = peer
        self.name = show(peer, sock)
        self.local_name = show(local)


def _prepared(
    conn: socket.socket, peer: Address | None, scheme: str, lopts: ListenOptions, log: Log
) -> _Accepted | None:
    """An admitted connection made ready: socket options applied, names taken, TLS done (None if TLS failed)."""
    if peer is None:
        peer = _safe_name(conn, scheme, peer=True)
    for opt in lopts.sockopts:
        if opt.name not in ("reuseaddr", "reuseport", "v6only") and opt.applies_to(conn.family, conn.type):
            with contextlib.suppress(OSError):
                opt.apply(conn)
    acc = _Accepted(_stream_end(conn, show(peer, conn)), conn, _safe_name(conn, scheme, peer=False), peer)
    if lopts.ssl_context is not None:
        try:
            acc.end = tls_server_end(acc.sock, lopts.ssl_context, acc.name)
        except NetworkError as exc:
            log.info(str(exc))
            return None
    return acc


def run_listen(address: Address, opts: BridgeOptions, lopts: ListenOptions) -> None:
    """``sockcat listen``: one connection (or many with ``keep_open``) bridged to stdio or a child."""
    if address.is_stdio:
        raise UsageError("listen needs a socket address, not stdio:")
    if address.is_datagram:
        if lopts.exec_argv:
            raise UsageError("--exec needs a stream address (tcp, unix, unixpacket, tls)")
        _listen_datagram(address, opts, lopts)
        return
    settings = Settings(
        log=opts.log,
        max_conns=lopts.max_conns,
        access=lopts.access,
        sockopts=lopts.sockopts,
        fingerprint=lopts.fingerprint,
    )
    handle: Callable[[_Accepted], None]
    if lopts.exec_argv:
        argv = lopts.exec_argv
        handle = lambda acc: _serve_child(acc, argv, opts)  # noqa: E731
    elif lopts.keep_open:
        handle = _Hub(opts).serve
    else:
        handle = lambda acc: _bridge_one(acc, opts)  # noqa: E731

    def prepare(conn: socket.socket, peer: Address | None) -> _Accepted | None:
        acc = _prepared(conn, peer, address.scheme, lopts, opts.log)
        if acc is not None:
            running = f": running {lopts.exec_argv[0]}" if lopts.exec_argv else ""
            opts.log.info(f"connection from {acc.name} on {acc.local_name}{running}")
        return acc

    serve_in_threads(address, settings, handle, prepare=prepare, keep_open=lopts.keep_open)
    return


def _bridge_one(acc: _Accepted, opts: BridgeOptions) -> None:
    try:
        sent, received = bridge(acc.end, FdEnd(opts.stdin_fd, "stdin"), FdEnd(opts.stdout_fd, "stdout"), acc.name, opts)
    finally:
        acc.end.close()
    opts.log.info(f"closed {acc.name}: {sent} bytes sent, {received} bytes received")


class _Hub:
    """``listen -k``: every connection's bytes go to stdout; stdin goes to every live connection."""

    def __init__(self, opts: BridgeOptions) -> None:
        self.opts = opts
        self.lock = threading.Lock()
        self.conns: set[End] = set()
        self.eof = False
        self.started = False
        self.stdout = FdEnd(opts.stdout_fd, "stdout")

    def add(self, end: End) -> None:
        with self.lock:
            self.conns.add(end)
            if self.eof:
                end.close_write()
            if not self.started:
                self.started = True
                start_thread(self._read_stdin, name="sockcat stdin")

    def remove(self, end: End) -> None:
        with self.lock:
            self.conns.discard(end)

    def _read_stdin(self) -> None:
        dump = _dumper(self.opts, ">")
        try:
            while data := _read_stdin(self.opts.stdin_fd):
                if dump is not None:
                    for line in dump.lines(data):
                        self.opts.log.always(line)
                with self.lock:
                    targets = list(self.conns)
                for end in targets:
                    with contextlib.suppress(OSError):
                        end.write(data)
        except OSError as exc:
            self.opts.log.warning(f"reading stdin: {exc.strerror or exc}")
        with self.lock:
            self.eof = True
            targets = list(self.conns)
        for end in targets:
            end.close_write()

    def serve(self, acc: _Accepted) -> None:
        """One connection of ``listen -k``: its bytes to stdout, stdin's to it, until it ends."""
        counter = Counter()
        try:
            self.add(acc.end)
            copy(
                acc.end,
                self.stdout,
                counter,
                hexdump=_dumper(self.opts, "<"),
                emit=self.opts.log.always,
                close_write=False,
            )
        except OSError as exc:
            self.opts.log.info(f"connection with {acc.name}: {exc.strerror or exc}")
        finally:
            self.remove(acc.end)
            acc.end.close()
            self.opts.log.info(f"closed {acc.name}: {counter.bytes} bytes received")


def _child_env(acc: _Accepted) -> dict[str, str]:
    env = dict(os.environ)
    # §1 syntax, or empty when there is none to give (an unnamed Unix socket, e.g. a client that never bound)
    env["SOCKCAT_PEER"] = str(acc.peer) if acc.peer and not acc.peer.is_unnamed else ""
    env["SOCKCAT_LOCAL"] = str(acc.local) if acc.local and not acc.local.is_unnamed else ""
    return env


def _run_child(acc: _Accepted, argv: Sequence[str], opts: BridgeOptions) -> int:
    """inetd style: the socket itself is the child's stdin and stdout (TLS goes through pipes)."""
    if isinstance(acc.end, SockEnd) and not opts.hexdump:
        acc.sock.setblocking(True)
        try:
            proc = subprocess.Popen(
                list(argv), stdin=acc.sock.fileno(), stdout=acc.sock.fileno(), env=_child_env(acc), close_fds=True
            )
        finally:
            acc.sock.close()
        return proc.wait()
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env(acc), close_fds=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    child_in = FdEnd(os.dup(proc.stdin.fileno()), "child stdin", owned=True)
    child_out = FdEnd(os.dup(proc.stdout.fileno()), "child stdout", owned=True)
    proc.stdin.close()
    proc.stdout.close()
    try:
        bridge(acc.end, child_out, child_in, acc.name, opts, wait_upload=True)
    except OSError as exc:
        opts.log.info(str(exc))
    finally:
        child_in.close()
        child_out.close()
        acc.end.close()
    return proc.wait()


def _serve_child(acc: _Accepted, argv: Sequence[str], opts: BridgeOptions) -> None:
    try:
        rc = _run_child(acc, argv, opts)
        opts.log.info(f"closed {acc.name}: {argv[0]} exited with status {rc}")
    except OSError as exc:
        opts.log.warning(f"cannot run {argv[0]!r} for {acc.name}: {exc.strerror or exc}")
        acc.end.close()


def _listen_datagram(address: Address, opts: BridgeOptions, lopts: ListenOptions) -> None:
    """Datagrams to stdout; stdin goes back to the last sender. Ends on a signal or ``-i`` idle time."""
    dg = open_datagram(address, sockopts=lopts.sockopts)
    sock = dg.socket
    sock.settimeout(None)
    opts.log.always(f"listening on {dg.address}")
    last_peer: list[object] = []
    have_peer = threading.Event()
    up = _dumper(opts, ">")
    down = _dumper(opts, "<")

    def upload() -> None:
        try:
            while data := _read_stdin(opts.stdin_fd):
                have_peer.wait()
                if up is not None:
                    for line in up.lines(data):
                        opts.log.always(line)
                try:
                    sock.sendto(data, last_peer[-1])  # type: ignore[call-overload]
                except OSError as exc:
                    opts.log.warning(f"sendto {to_address(address.scheme, last_peer[-1])}: {exc.strerror or exc}")
        except OSError as exc:
            opts.log.warning(f"reading stdin: {exc.strerror or exc}")

    start_thread(upload, name="sockcat upload")
    last = time.monotonic()
    seen: set[object] = set()
    with dg:
        while True:
            wait = None if opts.idle_timeout is None else max(0.0, opts.idle_timeout - (time.monotonic() - last))
            ready, _, _ = select.select([sock], [], [], wait)
            if not ready:
                opts.log.info(f"idle for {opts.idle_timeout:g} s: closing")
                return
            try:
                data, sa = sock.recvfrom(DGRAM_MAX + 1)
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EAGAIN):
                    continue  # an ICMP error for an earlier reply: not ours to die of
                raise network_error(exc, f"recvfrom on {dg.address}") from None
            last = time.monotonic()
            peer = to_address(address.scheme, sa)
            if sa and (not isinstance(sa, str | bytes) or sa):
                last_peer[:] = [sa]
                have_peer.set()
            if sa not in seen and len(seen) < 4096:
                seen.add(sa)
                if address.is_unix and not sa:
                    opts.log.info("datagram from an unbound unixgram socket: replies cannot reach it")
                else:
                    opts.log.info(f"datagram from {peer} on {dg.address}")
            if down is not None:
                for line in down.lines(data):
                    opts.log.always(line)
            try:
                _write_all(opts.stdout_fd, data)
            except BrokenPipeError:
                return
