"""``sockcat send`` and ``sockcat recv`` as commands: a connection for ``send``, a guarded listener for ``recv``.

``recv`` is a service that writes files, so it is careful about who it serves: a one-time code by default,
``--allow``/``--deny`` and a connection cap, an idle timeout on every connection (TLS handshakes included), and
with ``-k`` every session in its own thread, so one slow or hostile peer never holds up another.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field

from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, SockcatError, UsageError, describe
from sockcat.core.log import Log
from sockcat.core.pake import make_code, normalize_code
from sockcat.core.untrusted import escape
from sockcat.engines.transfer.common import IDLE_TIMEOUT, Bar, Report, TransferError
from sockcat.engines.transfer.recv import Receiver, recv_files
from sockcat.engines.transfer.send import build_manifest, send_files
from sockcat.serving.process import raise_nofile_limit, start_thread
from sockcat.streams.sync import Listener, Stream, connect, listen, tls_server_handshake, to_address

CODE_ENV = "SOCKCAT_CODE"
MAX_CONNS = 10_000
_stdout_lock = threading.Lock()


def code_from(given: str | None) -> str | None:
    """The code from ``--code`` or else ``$SOCKCAT_CODE`` (None if neither), checked."""
    text = given if given is not None else os.environ.get(CODE_ENV)
    if text is None:
        return None
    try:
        return normalize_code(text)
    except ValueError as exc:
        raise UsageError(f"bad code: {exc}") from None


def _print_json(report: Report) -> None:
    with _stdout_lock:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
        sys.stdout.flush()


def _stream_only(address: Address, command: str) -> None:
    if address.is_datagram or address.is_stdio:
        raise UsageError(f"{command} needs a stream address (tcp, unix, tls…), not {address}")


# --- send --------------------------------------------------------------------------------------------------------


def run_send(
    address: Address,
    paths: list[str],
    *,
    code: str | None,
    connect_timeout: float | None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    log: Log,
    json_out: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    sni: str | None = None,
) -> int:
    """``sockcat send ADDR PATH...``."""
    _stream_only(address, "send")
    manifest = build_manifest(list(paths))  # bad paths are a usage error before any connection
    report = Report(files=len(manifest[0]))
    try:
        with connect(address, connect_timeout=connect_timeout, ssl_context=ssl_context, sni=sni) as stream:
            bar = Bar(sum(s.entry.size for s in manifest[0]) or None, "send")
            try:
                report = send_files(
                    stream,
                    list(paths),
                    code=code,
                    idle_timeout=idle_timeout,
                    log=log,
                    progress=bar.advance,
                    manifest=manifest,
                )
            finally:
                bar.close()
    except SockcatError as exc:
        if json_out:
            report.error = str(exc)
            _print_json(report)
        raise
    log.info(
        f"sent {report.files} files: {report.bytes} of {report.total} bytes travelled"
        + (f", {report.skipped_files} already there" if report.skipped_files else "")
    )
    if json_out:
        _print_json(report)
    return 0


# --- recv --------------------------------------------------------------------------------------------------------


@dataclass
class RecvOptions:
    outdir: str = "."
    keep_open: bool = False
    code: str | None = None  # None with no_code: open mode
    no_code: bool = False
    overwrite: bool = False
    max_size: int | None = None
    idle_timeout: float | None = IDLE_TIMEOUT
    max_conns: int = MAX_CONNS
    access: AccessPolicy = field(default_factory=AccessPolicy)
    ssl_context: ssl.SSLContext | None = None
    fingerprint: str | None = None
    json_out: bool = False


def run_recv(address: Address, opts: RecvOptions, log: Log) -> int:
    """``sockcat recv ADDR``: one session (``-k``: sessions, side by side, until stopped)."""
    _stream_only(address, "recv")
    if opts.access.active and address.is_unix:
        raise UsageError("--allow/--deny match IP addresses; a unix: listener has none (use the socket file's mode)")
    code = None if opts.no_code else (opts.code or make_code())
    rx = Receiver.open(
        opts.outdir,
        code=code,
        overwrite=opts.overwrite,
        max_size=opts.max_size,
        idle_timeout=opts.idle_timeout,
        log=log,
    )
    if opts.keep_open:
        raise_nofile_limit()
    try:
        with listen(address, backlog=512) as server:
            if code is not None:
                log.always(f"code: {code}")
            else:
                log.warning(
                    f"recv --no-code: anyone who can connect to {server.address} can write files into "
                    f"{escape(opts.outdir)}"
                )
            log.always(f"listening on {server.address}")
            if opts.fingerprint:
                log.always(f"certificate sha256 {opts.fingerprint}")
            if opts.keep_open:
                _serve_many(server, rx, opts, log)
            while True:
                conn = _admit(server, opts, log)
                if conn is not None:
                    _serve_one(conn, server, rx, opts, log, single=True)
                    return 0
    finally:
        rx.close()


def _admit(server: Listener, opts: RecvOptions, log: Log) -> socket.socket | None:
    """The next connection, or None if --allow/--deny turned it away (or accept failed for a passing reason)."""
    try:
        conn, sa = server.socket.accept()
    except OSError as exc:
        if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EMFILE, errno.ENFILE, errno.ENOBUFS):
            log.warning(f"accept on {server.address}: {describe(exc)}")
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                time.sleep(0.1)
            return None
        raise
    if opts.access.active:
        peer = to_address(server.address.scheme, sa)
        if not opts.access.permits(peer.host):
            log.info(f"refused {peer}: not allowed by --allow/--deny")
            conn.close()
            return None
    return conn


def _serve_many(server: Listener, rx: Receiver, opts: RecvOptions, log: Log) -> None:
    active = [0]
    lock = threading.Lock()

    def session(conn: socket.socket) -> None:
        try:
            _serve_one(conn, server, rx, opts, log, single=False)
        finally:
            with lock:
                active[0] -= 1

    while True:
        conn = _admit(server, opts, log)
        if conn is None:
            continue
        with lock:
            if active[0] >= opts.max_conns:
                log.info(f"refused a connection: --max-conns {opts.max_conns} reached")
                conn.close()
                continue
            active[0] += 1
        start_thread(session, conn, name="sockcat recv session")


def _serve_one(
    conn: socket.socket, server: Listener, rx: Receiver, opts: RecvOptions, log: Log, *, single: bool
) -> None:
    """One session on an accepted connection; with ``single`` a failure is raised (exit 1), else a warning."""
    conn.settimeout(opts.idle_timeout)
    report = Report()
    peer = "a peer"
    try:
        try:
            tls = tls_server_handshake(conn, opts.ssl_context, server.address) if opts.ssl_context else None
        except NetworkError as exc:
            raise TransferError(exc.errno or 0, str(exc)) from None
        with Stream(conn, server.address.scheme, tls=tls) as stream:
            peer = str(stream.peer) if stream.peer is not None else "a unix peer"
            log.info(f"connection from {peer}")
            bar = Bar(None, "recv") if single else None
            try:
                report = recv_files(stream, rx, progress=bar.advance if bar else None)
            finally:
                if bar is not None:
                    bar.close()
    except Exception as exc:  # one session's end, whatever ended it, never the receiver's (with -k)
        conn.close()
        if isinstance(exc, SockcatError):
            message = str(exc)
        elif isinstance(exc, OSError):
            message = describe(exc)
        else:  # a bug: say so in one line (-vv shows where)
            message = f"internal error: {type(exc).__name__}: {exc}"
            if log.verbosity >= 2:
                import traceback

                traceback.print_exc()
        report.error = message
        if opts.json_out:
            _print_json(report)
        if single:
            raise TransferError(getattr(exc, "errno", 0) or 0, message) from None
        log.warning(f"session from {peer}: {message}")
        return
    log.info(
        f"received {report.files} files from {peer} into {escape(opts.outdir)}: {report.bytes} bytes travelled"
        + (f", {report.skipped_files} already there" if report.skipped_files else "")
    )
    if opts.json_out:
        _print_json(report)
