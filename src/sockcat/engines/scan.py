"""``sockcat scan HOST PORTS``: a TCP connect scan (``connect_ex``) or a UDP probe scan, asyncio, bounded concurrency.

States, as nmap names them:

* TCP: ``open`` (the handshake completed), ``closed`` (refused: an RST), ``filtered`` (no answer within the
  timeout, or an ICMP unreachable).
* UDP: ``open`` (a reply came), ``closed`` (ICMP port unreachable, seen as ECONNREFUSED on a connected socket),
  ``open|filtered`` (nothing came back: a silent service and a firewall look alike).

Each port is one non-blocking socket: ``connect_ex`` starts the handshake, the loop waits until the socket is
writable, ``SO_ERROR`` says how it ended. At most ``concurrency`` sockets are open at once.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sockcat.core.errors import NetworkError, UsageError, network_error
from sockcat.net import trace as _trace

DEFAULT_TIMEOUT = 1.0
DEFAULT_CONCURRENCY = 512
UDP_CONCURRENCY = 64  # ICMP errors are rate-limited off loopback: fewer probes in flight loses fewer answers
MAX_PORTS_TEXT = 10_000
_REFUSED = {errno.ECONNREFUSED}
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM, errno.ETIMEDOUT}
STATES = ("open", "closed", "filtered", "open|filtered")


def _port(text: str, proto: str) -> int:
    """One port: ASCII digits (``٨٠`` is not 80, as in addresses), or a service name from the services database."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    if text and text.isascii() and (text[0].isalpha()) and all(c.isalnum() or c in "-_.+" for c in text):
        try:
            return socket.getservbyname(text, proto)
        except OSError:
            raise ValueError(f"unknown service name {text!r}") from None
    raise ValueError(f"{text!r} is not a port or a range A-B")


def parse_ports(text: str, proto: str = "tcp") -> list[int]:
    """``22,80,8000-8100`` or ``ssh,http`` (any order, overlaps merged); a range may leave out either end, as in
    nmap (``-1024`` is 1-1024, ``60000-`` up to 65535, ``-`` every port); sorted, without duplicates."""
    text = text.strip()
    if not text or len(text) > MAX_PORTS_TEXT:
        raise UsageError(f"bad ports {text[:40]!r}: want a list like 22,80,8000-8100, or - for all")
    ports: set[int] = set()
    for part in text.split(","):
        lo_text, dash, hi_text = (t.strip() for t in part.strip().partition("-"))
        if dash and not all(t.isdigit() or not t for t in (lo_text, hi_text)):
            lo_text, dash = part.strip(), ""  # a service name with a dash in it (``x11-ssh``, say)
        try:
            lo = _port(lo_text, proto) if lo_text or not dash else 1
            hi = (_port(hi_text, proto) if hi_text else 65535) if dash else lo
        except ValueError as exc:
            raise UsageError(f"bad ports {text!r}: {exc}") from None
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise UsageError(f"bad ports {text!r}: ports are 1-65535")
        if hi < lo:
            raise UsageError(f"bad ports {text!r}: range {lo}-{hi} goes backwards")
        ports.update(range(lo, hi + 1))
    return sorted(ports)


def service_name(port: int, proto: str) -> str:
    """The name /etc/services gives the port ("" if none)."""
    try:
        return socket.getservbyport(port, proto)
    except OSError:
        return ""


@dataclass(frozen=True)
class PortResult:
    port: int
    proto: str
    state: str
    service: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port, "proto": self.proto, "state": self.state, "service": self.service}


@dataclass
class ScanResult:
    """What a scan found. ``results`` holds every port scanned, in port order."""

    host: str
    address: str  # the IP address scanned
    proto: str
    results: list[PortResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def open(self) -> list[int]:
        return [r.port for r in self.results if r.state == "open"]

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(r.state for r in self.results)
        return {state: c[state] for state in STATES if c[state]}

    def to_dict(self) -> dict[str, Any]:
        """What ``scan --json`` prints (docs/reference.md#output): ``host``, ``open``, ``results`` (every port that
        is not closed), ``counts``, and ``address``, ``proto``, ``ports``, ``seconds``."""
        return {
            "host": self.host,
            "address": self.address,
            "proto": self.proto,
            "open": self.open,
            "results": [r.to_dict() for r in self.results if r.state != "closed"],
            "counts": self.counts,
            "ports": len(self.results),
            "seconds": round(self.seconds, 6),
        }


async def _resolve(host: str, udp: bool) -> tuple[int, str]:
    """(family, IP) for ``host``: an IP literal as it is, a name's first address."""
    host = host.strip("[]")
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=kind)
    except socket.gaierror as exc:
        raise NetworkError(errno.EINVAL, f"scan {host}: cannot resolve host ({exc.strerror})") from None
    if not infos:
        raise NetworkError(errno.EHOSTUNREACH, f"scan {host}: no address")
    fam, _kind, _proto, _canon, sa = infos[0]
    return fam, str(sa[0])


_LINGER_RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() resets, no TIME_WAIT left


def _tcp_state(sock: socket.socket, code: int, ip: str, port: int) -> str:
    """The state a finished ``connect_ex`` (its result or ``SO_ERROR``) means."""
    if code == 0:
        # Port P in the ephemeral range may be the very port the kernel picked for this socket: TCP's
        # simultaneous open then connects the socket to itself. Nothing listens there.
        try:
            if sock.getsockname()[:2] == sock.getpeername()[:2]:
                return "closed"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)  # close() resets: no TIME_WAIT
        except OSError:
            return "closed"
        return "open"
    if code in _REFUSED:
        return "closed"
    if code in _UNREACHABLE:
        return "filtered"
    raise network_error(OSError(code, os.strerror(code)), f"scan {ip} port {port}")


class _TcpSweep:
    """Every port's connect in flight at once, up to ``limit``: one non-blocking socket each, started with
    ``connect_ex``, finished by the loop's writable callback (``SO_ERROR`` says how) or by the deadline sweep
    (no answer: filtered). Callbacks, no task per port: a port costs a socket and a few system calls."""

    def __init__(self, fam: int, ip: str, ports: list[int], timeout: float, limit: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.fam, self.ip, self.timeout, self.limit = fam, ip, timeout, limit
        self.todo = iter(ports)
        self.exhausted = False
        self.states: dict[int, str] = {}
        self.pending: dict[int, tuple[socket.socket, int, float]] = {}  # fd -> (socket, port, deadline)
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.error: BaseException | None = None
        self.tick = min(timeout / 4, 0.1)  # how often the deadline sweep runs
        self.sweeper: asyncio.TimerHandle | None = None

    async def run(self) -> dict[int, str]:
        self._fill()
        self.sweeper = self.loop.call_later(self.tick, self._sweep)
        try:
            await self.done
        finally:
            if self.sweeper is not None:  # the one due next (each sweep schedules the following one)
                self.sweeper.cancel()
            for fd, (sock, _port, _deadline) in self.pending.items():
                self.loop.remove_writer(fd)
                sock.close()
            self.pending.clear()
        if self.error is not None:
            raise self.error
        return self.states

    def _fill(self) -> None:
        try:
            while len(self.pending) < self.limit and not self.exhausted:
                port = next(self.todo, None)
                if port is None:
                    self.exhausted = True
                    break
                self._start(port)
        except BaseException as exc:  # out of descriptors, an unexpected errno: the scan ends with it
            self._fail(exc)
            return
        if self.exhausted and not self.pending and not self.done.done():
            self.done.set_result(None)

    def _start(self, port: int) -> None:
        sock = _trace.socket_class()(self.fam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)  # (--trace shows each)
        try:
            code = sock.connect_ex((self.ip, port))
            if code in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
                # A refusal from a near host (loopback above all) is often there already: take it now,
                # without a round through the event loop.
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):  # under way (or just connected)
                fd = sock.fileno()
                self.pending[fd] = (sock, port, self.loop.time() + self.timeout)
                self.loop.add_writer(fd, self._ready, fd)
                return
            self.states[port] = _tcp_state(sock, code, self.ip, port)
        except BaseException:
            sock.close()
            raise
        sock.close()

    def _ready(self, fd: int) -> None:
        entry = self.pending.pop(fd, None)
        self.loop.remove_writer(fd)
        if entry is None:
            return
        sock, port, _deadline = entry
        try:
            self.states[port] = _tcp_state(sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), self.ip, port)
        except BaseException as exc:
            self._fail(exc)
            return
        finally:
            sock.close()
        self._fill()

    def _sweep(self) -> None:
        now = self.loop.time()
        late = [fd for fd, (_s, _p, deadline) in self.pending.items() if deadline <= now]
        for fd in late:
            sock, port, _deadline = self.pending.pop(fd)
            self.loop.remove_writer(fd)
            sock.close()
            self.states[port] = "filtered"
        if not self.done.done():
            self._fill()
            self.sweeper = self.loop.call_later(self.tick, self._sweep)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.done.done():
            self.done.set_result(None)


async def _udp_probe(fam: int, ip: str, port: int, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    sock = _trace.socket_class()(fam, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((ip, port))  # connected: an ICMP port unreachable comes back as ECONNREFUSED
        for _attempt in range(2):  # one retry: a datagram or its answer may be lost
            try:
                sock.send(b"")  # an empty datagram (sock_sendall would send nothing at all)
                async with asyncio.timeout(timeout / 2):
                    await loop.sock_recv(sock, 65535)
                return "open"
            except ConnectionRefusedError:
                return "closed"
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno in _UNREACHABLE:
                    return "filtered"
                raise network_error(exc, f"scan {ip} udp port {port}") from None
        return "open|filtered"
    finally:
        sock.close()


async def scan_async(
    host: str,
    ports: list[int] | str,
    *,
    udp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int | None = None,
) -> ScanResult:
    """Scan ``ports`` (a list, or text like ``22,80,8000-8100``) on ``host``; every port gets a state."""
    if not host.strip():
        raise UsageError("scan needs a host (a name or an address), not an empty one")
    port_list = parse_ports(ports, "udp" if udp else "tcp") if isinstance(ports, str) else sorted(set(ports))
    if not port_list or not all(1 <= p <= 65535 for p in port_list):
        raise UsageError("scan needs ports in 1-65535")
    if timeout <= 0:
        raise UsageError("the scan timeout must be positive")
    limit = concurrency or (UDP_CONCURRENCY if udp else DEFAULT_CONCURRENCY)
    if limit < 1:
        raise UsageError("concurrency must be at least 1")
    fam, ip = await _resolve(host, udp)
    proto = "udp" if udp else "tcp"
    start = time.monotonic()
    if udp:
        sem = asyncio.Semaphore(limit)

        async def one(port: int) -> str:
            async with sem:
                return await _udp_probe(fam, ip, port, timeout)

        states = dict(zip(port_list, await asyncio.gather(*(one(p) for p in port_list)), strict=True))
    else:
        states = await _TcpSweep(fam, ip, port_list, timeout, limit).run()
    results = [
        PortResult(port, proto, states[port], service_name(port, proto) if states[port] != "closed" else "")
        for port in port_list
    ]
    return ScanResult(host=host, address=ip, proto=proto, results=results, seconds=time.monotonic() - start)


def scan(
    host: str,
    ports: list[int] | str,
    *,
    udp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int | None = None,
) -> ScanResult:
    """The blocking form of :func:`scan_async` (its own event loop, uvloop when installed)."""
    from sockcat.serving.process import new_runner

    with new_runner() as runner:
        return runner.run(scan_async(host, ports, udp=udp, timeout=timeout, concurrency=concurrency))
