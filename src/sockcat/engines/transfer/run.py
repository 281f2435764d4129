"""``sockcat send`` and ``sockcat recv`` as commands: a connection for ``send``, a guarded listener for ``recv``.

``recv`` is a service that writes files, so it is careful about who it serves: a one-time code by default,
``--allow``/``--deny`` and a connection cap, an idle timeout on every connection (TLS handshakes included), and
with ``-k`` every session in its own thread, so one slow or hostile peer never holds up another.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field

from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, SockcatError, UsageError, describe
from sockcat.core.log import Log
from sockcat.core.pake import make_code, normalize_code
from sockcat.core.untrusted import escape
from sockcat.core.wsoptions import WsOptions
from sockcat.engines.transfer.common import IDLE_TIMEOUT, Bar, Report, TransferError
from sockcat.engines.transfer.recv import Receiver, recv_files
from sockcat.engines.transfer.send import build_manifest, send_files
from sockcat.serving.scaffold import Bound, Settings, serve_in_threads
from sockcat.streams.sync import Stream, connect
from sockcat.streams.tlsio import handshake

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


_WS = WsOptions(compress=False)


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
) -> None:
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


def run_recv(address: Address, opts: RecvOptions, log: Log) -> None:
    """``sockcat recv ADDR``: one session (``-k``: sessions, side by side, until stopped)."""
    _stream_only(address, "recv")
    code = None if opts.no_code else (opts.code or make_code())
    rx = Receiver.open(
        opts.outdir,
        code=code,
        overwrite=opts.overwrite,
        max_size=opts.max_size,
        idle_timeout=opts.idle_timeout,
        log=log,
    )
    settings = Settings(
        log=log,
        max_conns=opts.max_conns,
        access=opts.access,
        idle_timeout=opts.idle_timeout,
        fingerprint=opts.fingerprint,
    )

    def ready(b: Bound) -> None:
        if code is not None:
            log.always(f"code: {code}")
        else:
            log.warning(
                f"recv --no-code: anyone who can connect to {b.address} can write files into {escape(opts.outdir)}"
            )

    def handle(accepted: tuple[socket.socket, Address | None]) -> None:
        _serve_one(*accepted, address, rx, opts, log, single=not opts.keep_open)

    try:
        serve_in_threads(
            address, settings, handle, prepare=lambda conn, peer: (conn, peer), keep_open=opts.keep_open, ready=ready
        )
    finally:
        rx.close()


def _serve_one(
    conn: socket.socket,
    peer: Address | None,
    where: Address,
    rx: Receiver,
    opts: RecvOptions,
    log: Log,
    *,
    single: bool,
) -> None:
    """One session on an accepted connection; with ``single`` a failure is raised (exit 1), else a warning."""
    conn.settimeout(opts.idle_timeout)
    report = Report()
    who = str(peer) if peer is not None else "a unix peer"
    try:
        try:
            tls = handshake(conn, opts.ssl_context, server_side=True, where=where) if opts.ssl_context else None
            # over WebSocket, file bytes go uncompressed (most files worth sending compress badly, and it costs CPU)
            ws = None
            if where.is_ws:
                # (websockets: loaded only for a WebSocket address, ~40 ms of start-up)
                from sockcat.streams.wsio import server_handshake

                ws = server_handshake(conn, tls, where, where.resource, _WS)[0]
        except NetworkError as exc:
            raise TransferError(exc.errno or 0, str(exc)) from None
        with Stream(conn, where.scheme, tls=tls, ws=ws) as stream:
            if stream.peer is not None:
                who = str(stream.peer)
            log.info(f"connection from {who}")
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
        log.warning(f"session from {who}: {message}")
        return
    log.info(
        f"received {report.files} files from {who} into {escape(opts.outdir)}: {report.bytes} bytes travelled"
        + (f", {report.skipped_files} already there" if report.skipped_files else "")
    )
    if opts.json_out:
        _print_json(report)
