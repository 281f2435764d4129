"""The ``listen`` engine: one connection bridged to stdio, or many (``-k``), or a process per connection
(``--exec``/``--sh-exec``, inetd style); datagram kinds print payloads and answer the last sender. The serving
scaffold (:mod:`sockcat.serving.scaffold`) binds, announces, admits and stops; this module serves.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address, show
from sockcat.core.errors import NetworkError, UsageError, network_error
from sockcat.core.log import Log
from sockcat.core.untrusted import escape
from sockcat.core.wsoptions import WsOptions
from sockcat.engines.bridge import (
    DGRAM_MAX,
    BridgeOptions,
    _dumper,
    _read_stdin,
    _stream_end,
    _write_all,
    bridge,
    idle_watchdog,
    tls_server_end,
    ws_server_end,
)
from sockcat.engines.pump import Counter, End, FdEnd, SockEnd, copy
from sockcat.net.options import SockOpt
from sockcat.net.sockets import safe_name, to_address
from sockcat.serving.process import start_thread
from sockcat.serving.scaffold import (
    DEFAULT_MAX_CONNS,
    Settings,
    check_access,
    serve_in_threads,
    stopped_by_signals,
)
from sockcat.streams.datagram import open_datagram

if TYPE_CHECKING:
    import ssl

    from websockets.http11 import Request

EXEC_MAX_CONNS = 100


@dataclass
class ListenOptions:
    keep_open: bool = False
    exec_argv: Sequence[str] | None = None
    max_conns: int | None = None
    access: AccessPolicy = field(default_factory=AccessPolicy)
    sockopts: tuple[SockOpt, ...] = ()
    ssl_context: ssl.SSLContext | None = None
    fingerprint: str | None = None
    ws: WsOptions = field(default_factory=WsOptions)


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
        self.request: Request | None = None  # a WebSocket client's HTTP request


def _prepared(
    conn: socket.socket, peer: Address | None, address: Address, lopts: ListenOptions, log: Log
) -> _Accepted | None:
    """An admitted connection made ready: socket options applied, names taken, TLS and the WebSocket upgrade
    done (None if either failed)."""
    scheme = address.scheme
    if peer is None:
        peer = safe_name(conn, scheme, peer=True)
    for opt in lopts.sockopts:
        if opt.name not in ("reuseaddr", "reuseport", "v6only") and opt.applies_to(conn.family, conn.type):
            with contextlib.suppress(OSError):
                opt.apply(conn)
    acc = _Accepted(_stream_end(conn, show(peer, conn)), conn, safe_name(conn, scheme, peer=False), peer)
    if lopts.ssl_context is not None:
        try:
            acc.end = tls_server_end(acc.sock, lopts.ssl_context, acc.name)
        except NetworkError as exc:
            log.info(str(exc))
            return None
    if address.is_ws:
        try:
            end = ws_server_end(acc.sock, acc.end, address, lopts.ws, acc.name)
        except NetworkError as exc:
            log.info(str(exc))
            return None
        acc.end, acc.request = end, end.stream.request
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
    # A process per connection costs much more than a thread: --exec defaults to 100 at once (as ncat does).
    cap = lopts.max_conns if lopts.max_conns is not None else (EXEC_MAX_CONNS if lopts.exec_argv else DEFAULT_MAX_CONNS)
    settings = Settings(
        log=opts.log,
        max_conns=cap,
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
        acc = _prepared(conn, peer, address, lopts, opts.log)
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
        self.stdout = FdEnd(opts.stdout_fd, "stdout", shared=True)  # (every connection writes to it)

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
        stop_watch = threading.Event()
        if self.opts.idle_timeout is not None:  # -i: a peer that sends nothing for that long is closed
            start_thread(
                idle_watchdog, acc.end, counter, counter, self.opts, stop_watch, threading.Event(), name="sockcat idle"
            )
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
            stop_watch.set()
            self.remove(acc.end)
            acc.end.close()
            self.opts.log.info(f"closed {acc.name}: {counter.bytes} bytes received")


def _child_env(acc: _Accepted) -> dict[str, str]:
    env = dict(os.environ)
    # The address syntax (docs/reference.md#addresses), or empty when there is none to give (an unnamed Unix
    # socket, e.g. a client that never bound).
    # A Unix peer chooses its own name: a NUL, newline or escape in it reaches the child escaped (\x00), never raw.
    env["SOCKCAT_PEER"] = escape(str(acc.peer)) if acc.peer and not acc.peer.is_unnamed else ""
    env["SOCKCAT_LOCAL"] = escape(str(acc.local)) if acc.local and not acc.local.is_unnamed else ""
    if acc.request is not None:
        # (websockets: loaded only for a WebSocket address, ~40 ms of start-up)
        from sockcat.core.websocket import environment

        env.update(environment(acc.request))
    return env


def _run_child(acc: _Accepted, argv: Sequence[str], opts: BridgeOptions) -> int:
    """inetd style: the socket itself is the child's stdin and stdout (TLS, --hexdump and -i go through pipes, so
    that sockcat sees the bytes)."""
    if isinstance(acc.end, SockEnd) and not opts.hexdump and opts.idle_timeout is None:
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
    """Datagrams to stdout; stdin goes back to the last sender. Ends on a signal or ``-i`` idle time.
    ``--allow``/``--deny`` apply to every datagram's source: one that is not allowed is dropped unread."""
    check_access([address], Settings(access=lopts.access))
    with stopped_by_signals():
        _serve_datagrams(address, opts, lopts)


def _serve_datagrams(address: Address, opts: BridgeOptions, lopts: ListenOptions) -> None:
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
            peer = to_address(address.scheme, sa)
            if lopts.access.active and not lopts.access.permits(peer.host):
                if sa not in seen and len(seen) < 4096:
                    seen.add(sa)
                    opts.log.info(f"refused datagrams from {peer}: not allowed by --allow/--deny")
                continue
            last = time.monotonic()
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
