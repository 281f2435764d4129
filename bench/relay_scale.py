#!/usr/bin/env python3
"""Idle-connection scale and connection set-up rate through ``sockcat relay`` (vs socat fork and direct).

Run from the repository root::

    python bench/relay_scale.py [--conns 10000] [--socat-conns 1000] [--runs 3] [--json]

(a) Idle scale. An upstream echo server (asyncio + uvloop, this script run as a separate process) holds every
connection until its client closes it; ``sockcat relay tcp://127.0.0.1:0 tcp://127.0.0.1:E`` sits in front; a
client process (this script again) opens N connections through the relay and holds them. The relay's VmRSS,
Pss, Threads and pipe descriptors (``/proc/PID/fd`` links starting ``pipe:``) are read after one warm-up
connection (before) and once the N connections are up (after; ``/proc/PID/fd`` must count about 2N sockets).
Two variants: ``silent`` (connect only) and ``one round trip`` (each connection echoes 16 bytes once, then
idles, so it went through the relay's data path before going idle). socat (``TCP-LISTEN:R,fork,reuseaddr``)
is measured the same way at a smaller N, its per-connection cost being the sum over its fork children.

(b) Connection set-up rate. 64 concurrent asyncio+uvloop clients loop on: connect, send 16 bytes, read them
back, close. Completed connections are counted over a 2 s window after 0.5 s of warm-up; direct to the echo
server, through ``sockcat relay``, and through ``socat TCP-LISTEN:R,fork,reuseaddr``; runs interleaved,
median of ``--runs``.

Every process this script starts is bounded by time-outs and stopped by its own PID. RLIMIT_NOFILE is raised
to the hard limit, and as root the hard limit up to /proc/sys/fs/nr_open, in every process (children inherit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from _common import (
    LISTEN_TIMEOUT,
    Procs,
    cpu_seconds,
    descendants,
    free_port,
    listening_address,
    machine,
    source_digest,
    wait_tcp,
)

from sockcat.serving.process import raise_nofile_limit  # the relay raises its own limit the same way

HERE = Path(__file__).resolve()
PING = b"0123456789abcdef"


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# --- roles run in their own processes ------------------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close once the client has closed


def role_echo() -> int:
    """Echo server on 127.0.0.1:0; prints ``listening on PORT``; runs until SIGTERM."""
    raise_nofile_limit()
    loop = new_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(_Echo, "127.0.0.1", 0, backlog=4096))
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.run_until_complete(stop.wait())
    server.close()
    return 0


async def _round_trip(sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
    await loop.sock_sendall(sock, PING)
    got = 0
    while got < len(PING):
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise ConnectionError("closed before the echo came back")
        got += len(data)


async def _hold(port: int, conns: int, touch: bool, concurrency: int, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal errors
        async with sem:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                async with asyncio.timeout(timeout):
                    await loop.sock_connect(s, ("127.0.0.1", port))
                    if touch:
                        await _round_trip(s, loop)
                socks.append(s)
            except (OSError, TimeoutError):
                errors += 1
                s.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    print(json.dumps({"established": len(socks), "errors": errors}), flush=True)
    # Hold until the parent closes our stdin.
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    for s in socks:
        s.close()
    return 0


def role_hold(port: int, conns: int, touch: bool, concurrency: int) -> int:
    raise_nofile_limit()
    loop = new_loop()
    try:
        return loop.run_until_complete(_hold(port, conns, touch, concurrency, 60.0))
    finally:
        loop.close()


async def _rate(port: int, concurrency: int, warmup: float, window: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    t0, t1 = start + warmup, start + warmup + window
    done = 0
    total = 0
    errors = 0
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal done, total, errors
        while loop.time() < t1:
            began = time.perf_counter()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            ok = True
            try:
                async with asyncio.timeout(5.0):
                    await loop.sock_connect(s, ("127.0.0.1", port))
                    await _round_trip(s, loop)
            except (OSError, TimeoutError):
                ok = False
            finally:
                s.close()
            end = loop.time()
            total += ok
            if t0 <= end <= t1:
                if ok:
                    done += 1
                    latencies.append(time.perf_counter() - began)
                else:
                    errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return {
        "completed": done,
        "total_completed": total,
        "errors": errors,
        "rate": done / window,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
    }


def role_rate(port: int, concurrency: int, warmup: float, window: float) -> int:
    raise_nofile_limit()
    loop = new_loop()
    try:
        print(json.dumps(loop.run_until_complete(_rate(port, concurrency, warmup, window))), flush=True)
    finally:
        loop.close()
    return 0


# --- process handling ----------------------------------------------------------------------------


def read_line(procs: Procs, p: subprocess.Popen[bytes], timeout: float) -> str:
    """One stdout line from ``p`` within ``timeout`` seconds."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"no output from {p.args!r} after {timeout:g} s")
        if select.select([fd], [], [], min(left, 0.2))[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"{p.args!r} ended: {procs.stderr_text(p)[-500:]}")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def me(role: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE), "--role", role, *args]


def start_echo(procs: Procs) -> tuple[subprocess.Popen[bytes], int]:
    p = procs.start(me("echo"), stdout=subprocess.PIPE)
    line = read_line(procs, p, LISTEN_TIMEOUT)
    return p, int(line.rsplit(" ", 1)[1])


def start_sockcat(procs: Procs, target_port: int, workers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    extra = ["--workers", str(workers)] if workers > 1 else []
    p = procs.start(
        ["sockcat", "-q", "relay", "--grace", "1", *extra, "tcp://127.0.0.1:0", f"tcp://127.0.0.1:{target_port}"]
    )
    return p, int(listening_address(procs, p).rsplit(":", 1)[1])


def start_socat(procs: Procs, target_port: int, extra: str = "") -> tuple[subprocess.Popen[bytes], int]:
    r = free_port()
    p = procs.start(["socat", f"TCP-LISTEN:{r},fork,reuseaddr{extra}", f"TCP:127.0.0.1:{target_port}"])
    wait_tcp(r, p)
    return p, r


# --- /proc ---------------------------------------------------------------------------------------


def status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1])
    return out


def fds(pid: int) -> tuple[int, int, int]:
    """(all descriptors, sockets, pipes) held by ``pid``."""
    total = sockets = pipes = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            total += 1
            sockets += link.startswith("socket:")
            pipes += link.startswith("pipe:")
    return total, sockets, pipes


@dataclass
class Snapshot:
    rss_kib: int
    pss_kib: int
    threads: int
    fds: int
    sockets: int
    pipes: int
    processes: int

    @classmethod
    def of(cls, pid: int, with_children: bool = False) -> Snapshot:
        pids = [pid, *(descendants(pid) if with_children else [])]
        snap = cls(0, 0, 0, 0, 0, 0, 0)
        for p in pids:
            st = status(p)
            if not st:
                continue
            total, socks, pipes = fds(p)
            snap.rss_kib += st.get("VmRSS", 0)
            snap.pss_kib += st.get("Pss", 0)
            snap.threads += st.get("Threads", 0)
            snap.fds += total
            snap.sockets += socks
            snap.pipes += pipes
            snap.processes += 1
        return snap


def one_round_trip(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(PING)
        got = b""
        while len(got) < len(PING):
            data = s.recv(4096)
            if not data:
                raise RuntimeError("warm-up connection closed early")
            got += data


def wait_sockets(pid: int, want: int, with_children: bool, timeout: float) -> Snapshot:
    """Wait until ``pid`` (and children) hold at least ``want`` sockets and the count is steady."""
    deadline = time.monotonic() + timeout
    last = -1
    snap = Snapshot.of(pid, with_children)
    while time.monotonic() < deadline:
        snap = Snapshot.of(pid, with_children)
        if snap.sockets >= want and snap.sockets == last:
            break
        last = snap.sockets
        time.sleep(0.5)
    return snap


def nofile_limit(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def idle_scale(procs: Procs, relay: str, conns: int, touch: bool, echo_port: int, workers: int = 1) -> dict[str, Any]:
    """One relay (``workers`` processes), ``conns`` held connections through it; memory, threads, pipes."""
    if relay == "sockcat":
        p, port = start_sockcat(procs, echo_port, workers)
    else:
        p, port = start_socat(procs, echo_port)
    children = relay == "socat" or workers > 1
    limit = nofile_limit(p.pid)
    if relay == "sockcat" and limit is not None and limit < 2 * conns // workers + 16:
        print(
            f"relay_scale: warning: the relay may open only {limit} files (RLIMIT_NOFILE), "
            f"fewer than {conns} connections need per process",
            file=sys.stderr,
        )
    client: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(16):  # warm-up (every --workers process): one-off costs (imports, pools) are not per connection
            one_round_trip(port)
        time.sleep(1.0)
        before = Snapshot.of(p.pid, children)
        concurrency = "256" if relay == "sockcat" else "64"
        args = ["--port", str(port), "--conns", str(conns), "--concurrency", concurrency]
        client = procs.start(
            me("hold", *args, *(["--touch"] if touch else [])), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        made = json.loads(read_line(procs, client, 180.0))
        time.sleep(1.0)  # past the relay's hand-back delay, so only truly idle state remains
        after = wait_sockets(p.pid, before.sockets + 2 * made["established"], children, 60.0)
        held = after.sockets - before.sockets
        assert client.stdin is not None
        client.stdin.close()
        client.wait(timeout=60)
        time.sleep(1.0)
        closed = wait_sockets(p.pid, 0, children, 10.0)
    finally:
        if client is not None:
            procs.stop(client)
        procs.stop(p)
    n = made["established"] or 1
    return {
        "relay": relay if workers == 1 else f"{relay} --workers {workers}",
        "relay_nofile_limit": limit,
        "variant": "one round trip" if touch else "silent",
        "conns": conns,
        "established": made["established"],
        "client_errors": made["errors"],
        "relay_sockets_added": held,
        "before": before.__dict__,
        "after": after.__dict__,
        "after_close": closed.__dict__,
        "rss_kib_per_conn": (after.rss_kib - before.rss_kib) / n,
        "pss_kib_per_conn": (after.pss_kib - before.pss_kib) / n,
        "threads_added": after.threads - before.threads,
        "pipes_added": after.pipes - before.pipes,
        "processes_added": after.processes - before.processes,
    }


def rate_run(procs: Procs, port: int, concurrency: int, relay_pid: int | None) -> dict[str, Any]:
    cpu0 = cpu_seconds(relay_pid) if relay_pid else 0.0
    client = procs.start(
        me("rate", "--port", str(port), "--concurrency", str(concurrency), "--warmup", "0.5", "--window", "2"),
        stdout=subprocess.PIPE,
    )
    try:
        result: dict[str, Any] = json.loads(read_line(procs, client, 30.0))
        client.wait(timeout=10)
        if relay_pid:
            time.sleep(0.3)  # fork children of the last connections exit and are reaped
            used = cpu_seconds(relay_pid) - cpu0
            result["relay_cpu_us_per_conn"] = 1e6 * used / max(1, result["total_completed"])
        return result
    finally:
        procs.stop(client)


def setup_rate(procs: Procs, echo_port: int, runs: int, concurrency: int) -> dict[str, Any]:
    sockcat, sc_port = start_sockcat(procs, echo_port)
    socat, so_port = start_socat(procs, echo_port)
    socat_bl, bl_port = start_socat(procs, echo_port, ",backlog=4096")
    targets = {"direct": echo_port, "sockcat": sc_port, "socat fork": so_port, "socat fork backlog=4096": bl_port}
    pids: dict[str, int | None] = {
        "direct": None,
        "sockcat": sockcat.pid,
        "socat fork": socat.pid,
        "socat fork backlog=4096": socat_bl.pid,
    }
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    try:
        for run in range(runs):
            for name, port in targets.items():
                r = rate_run(procs, port, concurrency, pids[name])
                samples[name].append(r)
                print(
                    f"rate run {run + 1}/{runs} {name:10s} {r['rate']:8.0f} conn/s "
                    f"p50 {_f(r['p50_ms'])} ms errors {r['errors']}",
                    file=sys.stderr,
                    flush=True,
                )
        relay_after = Snapshot.of(sockcat.pid).__dict__
    finally:
        procs.stop(sockcat)
        procs.stop(socat)
        procs.stop(socat_bl)
    out: dict[str, Any] = {"concurrency": concurrency, "runs": runs, "sockcat_relay_after": relay_after}
    for name, rs in samples.items():
        out[name] = {
            "median_rate": statistics.median(r["rate"] for r in rs),
            "rates": [r["rate"] for r in rs],
            "errors": sum(r["errors"] for r in rs),
            "median_p50_ms": statistics.median(r["p50_ms"] or 0 for r in rs),
            "median_p99_ms": statistics.median(r["p99_ms"] or 0 for r in rs),
            "median_relay_cpu_us_per_conn": statistics.median(r.get("relay_cpu_us_per_conn") or 0 for r in rs)
            if pids[name]
            else None,
        }
    out["sockcat_vs_socat"] = out["sockcat"]["median_rate"] / (out["socat fork"]["median_rate"] or 1)
    out["sockcat_vs_socat_backlog"] = out["sockcat"]["median_rate"] / (
        out["socat fork backlog=4096"]["median_rate"] or 1
    )
    out["sockcat_vs_direct"] = out["sockcat"]["median_rate"] / (out["direct"]["median_rate"] or 1)
    return out


# --- reporting -----------------------------------------------------------------------------------


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(target: str, measured: float, met: bool) -> None:
        out.append({"target": target, "measured": measured, "met": met})

    for s in report["idle"]:
        if not s["relay"].startswith("sockcat"):
            continue
        label = f"{s['relay']}: idle {s['conns']} conns ({s['variant']})"
        add(f"{label}: <= 8 KiB RSS per connection", s["rss_kib_per_conn"], s["rss_kib_per_conn"] <= 8.0)
        add(
            f"{label}: no thread per idle connection (threads added, want ≪ N)",
            s["threads_added"],
            s["threads_added"] <= s["conns"] // 1000,
        )
        add(f"{label}: no pipe held by an idle connection (pipes added)", s["pipes_added"], s["pipes_added"] <= 0)
        add(
            f"{label}: every connection relayed (sockets added, want 2N)",
            s["relay_sockets_added"],
            s["relay_sockets_added"] >= 2 * s["conns"],
        )
    rate = report.get("rate")
    if rate:
        add("setup rate >= 3x socat fork", rate["sockcat_vs_socat"], rate["sockcat_vs_socat"] >= 3.0)
    return out


def _f(x: Any, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['nproc']} CPUs, Linux {m['kernel']}, Python {m['python']} (uvloop {m['uvloop']}), "
        f"sockcat {m['sockcat']} (_relay.py sha256 {m['relay_source_sha256']}), socat {m['socat']}, "
        f"RLIMIT_NOFILE {m['nofile_limit']}.",
        "",
        "Idle connections held through the relay (after = all N connected and idle; KiB per connection = "
        "(after − before) / N; socat: parent + all fork children):",
        "",
        "| relay | variant | N | RSS before → after (KiB) | RSS KiB/conn | Pss KiB/conn | threads before → after "
        "| pipes before → after | processes | sockets added | after close: RSS, threads, pipes |",
        "|---|---|---:|---|---:|---:|---|---|---:|---:|---|",
    ]
    for s in report["idle"]:
        b, a, c = s["before"], s["after"], s["after_close"]
        lines.append(
            f"| {s['relay']} | {s['variant']} | {s['established']} | {b['rss_kib']} → {a['rss_kib']} | "
            f"{s['rss_kib_per_conn']:.2f} | {s['pss_kib_per_conn']:.2f} | {b['threads']} → {a['threads']} | "
            f"{b['pipes']} → {a['pipes']} | {a['processes']} | {s['relay_sockets_added']} | "
            f"{c['rss_kib']} KiB, {c['threads']}, {c['pipes']} |"
        )
    rate = report.get("rate")
    if rate:
        lines += [
            "",
            f"Connection set-up rate (connect, 16-byte round trip, close; {rate['concurrency']} concurrent clients, "
            f"2 s window after 0.5 s warm-up, median of {rate['runs']}):",
            "",
            "| path | conn/s (median) | runs | p50 ms | p99 ms | errors | relay CPU µs/conn |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for name in ("direct", "sockcat", "socat fork", "socat fork backlog=4096"):
            r = rate[name]
            runs = " ".join(f"{x:.0f}" for x in r["rates"])
            lines.append(
                f"| {name} | {r['median_rate']:.0f} | {runs} | {r['median_p50_ms']:.2f} | "
                f"{r['median_p99_ms']:.2f} | {r['errors']} | {_f(r['median_relay_cpu_us_per_conn'], '.0f')} |"
            )
        lines.append("")
        lines.append(
            f"sockcat / socat fork = {rate['sockcat_vs_socat']:.2f}×; sockcat / socat fork with backlog=4096 = "
            f"{rate['sockcat_vs_socat_backlog']:.2f}×; sockcat / direct = {rate['sockcat_vs_direct']:.2f}×."
        )
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {_f(t['measured'])} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=10000, help="idle connections through sockcat relay")
    ap.add_argument("--relay-workers", type=int, default=1, help="sockcat relay --workers for the idle test")
    ap.add_argument("--socat-conns", type=int, default=1000, help="idle connections through socat fork (0: skip)")
    ap.add_argument("--runs", type=int, default=3, help="set-up rate runs (median)")
    ap.add_argument("--concurrency", type=int, default=64, help="set-up rate: concurrent clients")
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--skip-rate", action="store_true")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    # Internal: the helper processes.
    ap.add_argument("--role", choices=["echo", "hold", "rate"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--touch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=float, default=0.5, help=argparse.SUPPRESS)
    ap.add_argument("--window", type=float, default=2.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "echo":
        return role_echo()
    if args.role == "hold":
        return role_hold(args.port, args.conns, args.touch, args.concurrency)
    if args.role == "rate":
        return role_rate(args.port, args.concurrency, args.warmup, args.window)

    for tool in ("sockcat", "socat", "ss"):
        if shutil.which(tool) is None:
            print(f"relay_scale: {tool} not found", file=sys.stderr)
            return 1
    raise_nofile_limit()  # inherited by every process started below
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    report: dict[str, Any] = {"machine": machine(nofile_limit=nofile, relay_source_sha256=source_digest()), "idle": []}
    with tempfile.TemporaryDirectory(prefix="relay-scale-") as tmp:
        procs = Procs(Path(tmp))
        try:
            echo, echo_port = start_echo(procs)
            if not args.skip_idle:
                plan = [("sockcat", args.conns, False), ("sockcat", args.conns, True)]
                if args.socat_conns:  # with its default backlog of 5, silent connections pile up unaccepted
                    plan += [("socat", args.socat_conns, True)]
                for relay, n, touch in plan:
                    s = idle_scale(procs, relay, n, touch, echo_port, args.relay_workers if relay == "sockcat" else 1)
                    report["idle"].append(s)
                    print(
                        f"idle {relay} {s['variant']}: {s['established']}/{n} up, "
                        f"{s['rss_kib_per_conn']:.2f} KiB/conn, threads +{s['threads_added']}, "
                        f"pipes +{s['pipes_added']}",
                        file=sys.stderr,
                        flush=True,
                    )
            if not args.skip_rate:
                report["rate"] = setup_rate(procs, echo_port, args.runs, args.concurrency)
            procs.stop(echo)
        finally:
            procs.stop_all()
    report["targets"] = targets(report)
    print(json.dumps(report, indent=1) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
