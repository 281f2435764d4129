"""The one serving scaffold: what every listening command does the same way.

An engine gives an address (or several) and a way to serve connections; the scaffold does the rest:

* **bind** every address (one backlog policy: :data:`BACKLOG`, capped by the kernel's ``somaxconn``) and raise the
  descriptor limit;
* **announce** it: one ``listening on ADDRESS`` line per address (the bound address, port 0 resolved) and a
  throwaway certificate's ``certificate sha256`` line — printed only once the stop signals are blocked, so a script
  that signals right after reading the line never kills a half-started server;
* **workers** (``--workers N``, at most :data:`MAX_WORKERS`): forked processes sharing the sockets, ended with the
  parent;
* **signals**: SIGTERM and SIGHUP stop gracefully (exit 0), SIGINT too but exits 130 (``KeyboardInterrupt``); a
  Unix socket file is removed either way;
* **admission**: ``--allow``/``--deny`` and ``--max-conns`` (:class:`Admission`).

Two ways to serve: :func:`serve_on_loop` runs a :class:`Service` on one event loop per process (relay, serve, chat);
:func:`serve_in_threads` gives each connection a thread (listen -k, recv -k), or serves one connection.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from sockcat.core.access import AccessPolicy
from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, UsageError, describe, network_error
from sockcat.core.log import SILENT, Log
from sockcat.net.sockets import bind_socket, to_address
from sockcat.serving.process import (
    STOP_SIGNALS,
    die_with_parent,
    end_workers,
    handled_promptly,
    new_runner,
    raise_nofile_limit,
    start_thread,
)
from sockcat.streams.sync import Listener

T = TypeVar("T")

BACKLOG = 4096  # pending connections per listening socket (the kernel caps it at net.core.somaxconn)
MAX_WORKERS = max(4 * (os.cpu_count() or 1), 8)  # --workers past this is a usage error, never a fork storm
DEFAULT_MAX_CONNS = 10_000  # connections at once, per process, where the engine sets no other default


@dataclass
class Settings:
    """What every listener takes from its command line."""

    log: Log = SILENT
    max_conns: int | None = DEFAULT_MAX_CONNS
    access: AccessPolicy = field(default_factory=AccessPolicy)
    idle_timeout: float | None = None
    sockopts: tuple[object, ...] = ()
    fingerprint: str | None = None
    workers: int = 1
    grace: float = 5.0  # seconds connections get to finish after SIGTERM


def check_workers(workers: int) -> None:
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be from 1 to {MAX_WORKERS} (4 per CPU) here, not {workers}")


def check_access(addresses: Sequence[Address], settings: Settings) -> None:
    """``--allow``/``--deny`` match IP addresses: on a Unix listener they could never apply, so they are refused
    rather than silently ignored (the socket file's permissions say who may connect there)."""
    for addr in addresses:
        if settings.access.active and addr.is_unix:
            raise UsageError(
                f"--allow/--deny match IP addresses; {addr} has none to match (use the socket file's permissions)"
            )


class Admission:
    """Who may connect, and how many at once: ``--allow``/``--deny`` first, then ``--max-conns``. A peer past the
    cap is accepted and closed at once (it sees EOF, never a hang), with a log line."""

    def __init__(self, settings: Settings, scheme: str) -> None:
        self.access = settings.access
        self.max_conns = settings.max_conns
        self.log = settings.log
        self.scheme = scheme
        self.active = 0
        self._lock = threading.Lock()

    def admit(self, peer: Address | None) -> bool:
        """Whether to serve a peer just accepted (counted until :meth:`release`)."""
        if self.access.active and not self.access.permits(peer.host if peer is not None else ""):
            self.log.info(f"refused {peer or 'a peer'}: not allowed by --allow/--deny")
            return False
        with self._lock:
            if self.max_conns is not None and self.active >= self.max_conns:
                self.log.info(f"refused {peer or 'a peer'}: --max-conns {self.max_conns} reached")
                return False
            self.active += 1
        return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1


@dataclass
class Bound:
    """A bound (and, for streams, listening) socket with its address; closing it removes its Unix socket file."""

    sock: socket.socket
    address: Address
    listener: Listener


def bind_all(addresses: Sequence[Address], settings: Settings) -> list[Bound]:
    """Bind every address (streams also listen); on a failure, what was bound is closed again."""
    bound: list[Bound] = []
    try:
        for addr in addresses:
            sock, where = bind_socket(addr, sockopts=settings.sockopts)  # type: ignore[arg-type]
            listener = Listener(sock, where)
            bound.append(Bound(sock, where, listener))
            if not where.is_datagram:
                try:
                    sock.listen(BACKLOG)
                except OSError as exc:
                    raise NetworkError(exc.errno or 0, f"listen {where}: {describe(exc)}") from None
    except BaseException:
        for b in bound:
            b.listener.close()
        raise
    return bound


def _announce(bound: list[Bound], settings: Settings) -> None:
    for b in bound:
        settings.log.always(f"listening on {b.address}")
    if settings.fingerprint:
        settings.log.always(f"certificate sha256 {settings.fingerprint}")


# --- on an event loop ------------------------------------------------------------------------------------------


class Service(Protocol):
    """An engine as the scaffold runs it, in each process."""

    async def start(self, bound: list[Bound]) -> None:
        """Begin serving on the bound sockets (shared with the other workers)."""

    async def stop(self, grace: float) -> None:
        """Stop accepting; give connections under way up to ``grace`` seconds; end the rest."""


def serve_on_loop(addresses: Sequence[Address], settings: Settings, make: Callable[[], Service]) -> None:
    """Bind, announce, fork the workers, and run ``make()``'s service in every process until a stop signal.
    Returns on SIGTERM/SIGHUP; raises KeyboardInterrupt on SIGINT (the command exits 130)."""
    check_workers(settings.workers)
    check_access(addresses, settings)
    raise_nofile_limit()
    bound = bind_all(addresses, settings)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # until each loop has its handlers
    try:
        _announce(bound, settings)
        children: list[int] = []
        parent = os.getpid()
        for _ in range(settings.workers - 1):
            pid = os.fork()
            if pid == 0:  # a worker: the same sockets, its own loop; only the parent removes socket files
                code = 1
                try:
                    for b in bound:
                        b.listener.socket_file = None
                    die_with_parent(parent)
                    _run_loop(bound, settings, make, [])
                    code = 0
                except KeyboardInterrupt:
                    code = 130
                finally:
                    os._exit(code)
            children.append(pid)
        try:
            _run_loop(bound, settings, make, children)
        finally:
            end_workers(children)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for b in bound:
            b.listener.close()


def _run_loop(bound: list[Bound], settings: Settings, make: Callable[[], Service], children: list[int]) -> None:
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    got: list[int] = []
    try:
        with new_runner() as runner:
            runner.run(_until_signal(bound, settings, make, got, children))
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
    if got and got[0] == signal.SIGINT:
        raise KeyboardInterrupt


async def _until_signal(
    bound: list[Bound], settings: Settings, make: Callable[[], Service], got: list[int], children: list[int]
) -> None:
    import asyncio  # (here: the threaded servers, a one-shot listen among them, start faster without it)

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal(signum: int) -> None:
        got.append(signum)
        for pid in children:  # the workers stop at the same time, each with its own grace
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        stopping.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    service = make()
    try:
        try:
            await service.start(bound)
        except OSError as exc:
            raise network_error(exc, f"listen {bound[0].address}") from None
        await stopping.wait()
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        await service.stop(settings.grace)


# --- one thread per connection -----------------------------------------------------------------------------------


class Stopped(BaseException):
    """SIGTERM or SIGHUP reached a threaded server: unwind and exit 0."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped()


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM or SIGHUP ends the block quietly (exit 0) for a server that runs in this thread."""
    try:
        with handled_promptly({signal.SIGTERM: _stop, signal.SIGHUP: _stop}):
            yield
    except Stopped:
        return


def serve_in_threads(
    address: Address,
    settings: Settings,
    handle: Callable[[T], None],
    *,
    prepare: Callable[[socket.socket, Address | None], T | None],
    keep_open: bool,
    ready: Callable[[Bound], None] | None = None,
) -> None:
    """Bind, announce (after ``ready``, which may print lines of its own first), and serve.

    Each admitted connection is first ``prepare``d (its TLS handshake, say: None drops it), then ``handle``d.
    With ``keep_open`` both run in the connection's own thread; without, the first connection that prepares well
    is handled in this thread, after the listener is closed (no more connections, a Unix socket file removed).
    Returns on SIGTERM/SIGHUP, or after the one connection."""
    check_access([address], settings)
    if keep_open:
        raise_nofile_limit()
    (b,) = bind_all([address], settings)
    admission = Admission(settings, b.address.scheme)
    with stopped_by_signals(), b.listener:
        if ready is not None:
            ready(b)
        _announce([b], settings)
        while True:
            accepted = _accept(b, settings.log)
            if accepted is None:
                continue
            conn, peer = accepted
            if not admission.admit(peer):
                conn.close()
                continue
            if keep_open:
                start_thread(_handled, prepare, handle, conn, peer, admission, name="sockcat connection")
                continue
            try:
                prepared = prepare(conn, peer)
                if prepared is None:
                    continue
                b.listener.close()
                handle(prepared)
                return
            finally:
                admission.release()


def _handled(
    prepare: Callable[[socket.socket, Address | None], T | None],
    handle: Callable[[T], None],
    conn: socket.socket,
    peer: Address | None,
    admission: Admission,
) -> None:
    try:
        prepared = prepare(conn, peer)
        if prepared is not None:
            handle(prepared)
    finally:
        admission.release()


def _accept(b: Bound, log: Log) -> tuple[socket.socket, Address | None] | None:
    """The next connection, or None for a passing failure (out of descriptors: wait a little)."""
    try:
        conn, sa = b.sock.accept()
    except OSError as exc:
        if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EMFILE, errno.ENFILE, errno.ENOBUFS):
            log.warning(f"accept on {b.address}: {describe(exc)}")
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                time.sleep(0.1)
            return None
        raise network_error(exc, f"accept on {b.address}") from None
    peer = None
    with contextlib.suppress(Exception):
        peer = to_address(b.address.scheme, sa) if sa else None
    return conn, peer
