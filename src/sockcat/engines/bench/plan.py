"""A run's plan: the modes and their defaults, :func:`make_plan` (every argument checked), and the kind and
sentence that name a failure in the error counts."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError, UsageError, describe, tls_reason
from sockcat.core.wsoptions import WsOptions
from sockcat.net.options import SockOpt
from sockcat.net.sockets import SockOpts, norm_opts

MODES = ("rtt", "throughput", "connect")
DEFAULT_CONNECTIONS = 16
DEFAULT_SIZE = {"rtt": 64, "connect": 64, "throughput": 128 * 1024}
DEFAULT_DATAGRAM_THROUGHPUT_SIZE = 1400
DEFAULT_DURATION = 10.0
DEFAULT_WARMUP = 0.5
DEFAULT_STREAM_TIMEOUT = 2.0
DEFAULT_DATAGRAM_TIMEOUT = 1.0
DEFAULT_CONNECT_TIMEOUT = 5.0
MAX_UDP_PAYLOAD = 65507
RECV_SIZE = 256 * 1024

Progress = Callable[[str, float, int, int, "float | None"], None]
"""``progress(phase, seconds_left_in_phase, requests, bytes, p99_us)``; phase is connecting, warm-up or measuring;
``p99_us`` is the p99 latency of the last whole second of the window, in microseconds (None before the first
second ends, and in throughput mode)."""


@dataclass(frozen=True)
class BenchPlan:
    """Everything a worker needs to know (inherited by forked workers, never pickled)."""

    address: Address
    mode: str = "rtt"
    connections: int = DEFAULT_CONNECTIONS
    size: int = 64
    duration: float | None = DEFAULT_DURATION
    requests: int | None = None
    pipeline: int = 1
    reverse: bool = False
    warmup: float = DEFAULT_WARMUP
    timeout: float = DEFAULT_STREAM_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    workers: int = 1
    sockopts: tuple[SockOpt, ...] = ()
    source: Address | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    sni: str | None = None
    ws: WsOptions = field(default_factory=WsOptions)  # a WebSocket address: messages carry the load

    @property
    def is_packet(self) -> bool:
        return self.address.type == socket.SOCK_SEQPACKET


def make_plan(
    address: Address | str,
    *,
    mode: str = "rtt",
    connections: int | None = None,
    size: int | None = None,
    duration: float | None = None,
    requests: int | None = None,
    pipeline: int = 1,
    reverse: bool = False,
    warmup: float = DEFAULT_WARMUP,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    workers: int = 1,
    sockopts: SockOpts = None,
    source: Address | str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    sni: str | None = None,
    ws: WsOptions | None = None,
) -> BenchPlan:
    """Check the arguments (UsageError for anything wrong) and fill in the defaults."""
    addr = Address.parse(address)
    if addr.is_stdio:
        raise UsageError("bench needs a socket address, not stdio:")
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if reverse and mode != "throughput":
        raise UsageError("--reverse is for --mode throughput")
    if reverse and addr.is_datagram:
        raise UsageError(
            "--reverse needs a stream address: a datagram chargen answers one datagram per request (use --mode rtt)"
        )
    if connections is None:
        connections = 1 if mode == "throughput" else DEFAULT_CONNECTIONS
    if connections < 1:
        raise UsageError("connections must be at least 1")
    if size is None:
        size = DEFAULT_SIZE[mode]
        if mode == "throughput" and addr.is_datagram:
            size = DEFAULT_DATAGRAM_THROUGHPUT_SIZE
    if size < 0 or (size == 0 and mode != "connect"):
        raise UsageError(f"--size must be at least 1{' (0 only in connect mode)' if mode != 'connect' else ''}")
    if addr.is_ip and addr.is_datagram and size > MAX_UDP_PAYLOAD:
        raise UsageError(f"--size {size} is more than a UDP datagram holds ({MAX_UDP_PAYLOAD} bytes)")
    if requests is not None:
        if mode == "throughput":
            raise UsageError("-n/--requests is for rtt and connect modes; throughput runs for -d seconds")
        if requests < 1:
            raise UsageError("-n/--requests must be at least 1")
    elif duration is None:
        duration = DEFAULT_DURATION
    if duration is not None and not duration > 0:
        raise UsageError("-d/--duration must be more than 0 seconds")
    if pipeline < 1:
        raise UsageError("--pipeline must be at least 1")
    if warmup < 0:
        raise UsageError("--warmup must be 0 or more seconds")
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if timeout is None:
        timeout = DEFAULT_DATAGRAM_TIMEOUT if addr.is_datagram else DEFAULT_STREAM_TIMEOUT
    if not timeout > 0:
        raise UsageError("--timeout must be more than 0 seconds")
    src = Address.parse(source) if source is not None else None
    ctx = ssl_context
    if addr.is_tls and ctx is None:
        from sockcat.net.tls import client_context

        ctx = client_context()
    return BenchPlan(
        address=addr,
        mode=mode,
        connections=connections,
        size=size,
        duration=duration,
        requests=requests,
        pipeline=pipeline,
        reverse=reverse,
        warmup=warmup,
        timeout=timeout,
        connect_timeout=connect_timeout if connect_timeout is not None else DEFAULT_CONNECT_TIMEOUT,
        workers=min(workers, connections),
        sockopts=norm_opts(sockopts),
        source=src,
        ssl_context=ctx,
        sni=sni,
        ws=ws or WsOptions(),
    )


# --- what went wrong, in a word and a sentence -------------------------------------------------------------


def _classify(exc: BaseException | None, where: str, connecting: bool) -> tuple[str, str]:
    if exc is None or isinstance(exc, EOFError):
        return "closed", f"{where}: connection closed by peer"
    if isinstance(exc, TimeoutError) and not isinstance(exc, NetworkError):
        return ("connect-timeout", f"connect {where}: timed out") if connecting else ("timeout", f"{where}: timed out")
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS handshake with {where}: {tls_reason(exc)}"
    if isinstance(exc, ConnectionRefusedError):
        kind = "refused"
    elif isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        kind = "reset"
    elif isinstance(exc, TimeoutError):
        kind = "connect-timeout" if connecting else "timeout"
    else:
        kind = "error"
    if isinstance(exc, NetworkError):
        return kind, str(exc)
    return kind, f"{'connect ' if connecting else ''}{where}: {describe(exc)}"


def _window(plan: BenchPlan) -> str:
    """The measuring window in words, for error messages (a -n run has no fixed length)."""
    return f"the {plan.duration:g} s window" if plan.duration is not None else "the run"
