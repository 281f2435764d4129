#!/usr/bin/env python3
"""Echo servers side by side, in one run, interleaved: socat, ncat, a minimal uvloop echo, ``sockcat serve echo``.

Measured (medians of --reps runs, each a --seconds window after a 0.5 s warm-up):

* round trips/s at 128 connections x 64 B and x 1 KiB, by ``sockcat bench`` with one client process (the
  method behind the issue's reference figures: "one asyncio+uvloop client") and with two (``--workers 2``),
  and, for the "bench is not the bottleneck" check, by a minimal uvloop client (2 processes) written below;
* the server's CPU seconds per 100k round trips (/proc/PID/stat utime+stime of the server and its
  children, sampled inside the window);
* connections/s (``sockcat bench --mode connect``: open, one 64 B round trip, close);
* memory per idle connection at 10,000 connections (server RSS before/after; for socat's
  process-per-connection model, PSS of the whole process tree at 1,000 connections);
* ``sockcat bench --mode throughput`` against ``sockcat serve discard`` beside ``iperf3 -c`` against
  ``iperf3 -s`` (interleaved); unix stream beside tcp.

Run from the repository root: ``python bench/echo_rate.py`` (about 6 minutes; ``--reps 1 --seconds 1``
for a quick look). Results go to stdout as Markdown; ``--json FILE`` keeps the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from _common import cpu_seconds, descendants, free_port

PY = sys.executable
CONNS = 128
WARMUP = 0.5


# --- the minimal reference server and client (run as subprocesses of this script) ------------------------


def minimal_echo(port: int) -> None:
    """A minimal uvloop asyncio.Protocol echo server: the reference sockcat should reach 0.9x of."""
    import uvloop

    _raise_nofile()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
        await asyncio.Event().wait()

    uvloop.run(main())


def minimal_client(
    port: int, conns: int, size: int, seconds: float, procs: int, timed: bool = False, cpu: list[float] | None = None
) -> float:
    """A minimal uvloop client in ``procs`` processes: round trips/s during the window, summed.

    ``timed``: also take a timestamp per request and count its latency in a log2 bucket (the least a
    latency-measuring client must do). ``cpu``: append the clients' CPU µs per round trip (window only)."""
    r, w = os.pipe()
    pids = []
    share = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    start_at = time.monotonic() + 0.3
    for n in share:
        pid = os.fork()
        if pid == 0:
            os.close(r)
            count, used = _minimal_client_proc(port, n, size, seconds, start_at, timed)
            os.write(w, f"{count} {used}\n".encode())
            os._exit(0)
        pids.append(pid)
    os.close(w)
    with os.fdopen(r) as f:
        got = [tuple(map(float, line.split())) for line in f]
    for pid in pids:
        os.waitpid(pid, 0)
    total = sum(c for c, _ in got)
    if cpu is not None and total:
        cpu.append(sum(u for _, u in got) / total * 1e6)
    return total / seconds


def _minimal_client_proc(
    port: int, conns: int, size: int, seconds: float, start_at: float, timed: bool
) -> tuple[int, float]:
    import uvloop

    msg = b"x" * size
    state = {"count": 0, "on": False}
    buckets = [0] * 64
    clock = time.perf_counter_ns

    class Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.got = 0
            self.t0 = clock()
            self.t.write(msg)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            while self.got >= size:
                self.got -= size
                if timed:
                    now = clock()
                    if state["on"]:
                        buckets[(now - self.t0).bit_length()] += 1
                    self.t0 = now
                if state["on"]:
                    state["count"] += 1
                self.t.write(msg)  # type: ignore[attr-defined]

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        transports = [(await loop.create_connection(Client, "127.0.0.1", port))[0] for _ in range(conns)]
        await asyncio.sleep(max(0.0, start_at - time.monotonic()) + WARMUP)
        state["on"] = True
        cpu0 = time.process_time()
        await asyncio.sleep(seconds)
        state["on"] = False
        count = state["count"], time.process_time() - cpu0
        for t in transports:
            t.abort()
        return count

    return uvloop.run(main())


# --- process accounting ----------------------------------------------------------------------------------


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def tree_pss_kb(pid: int) -> int:
    total = 0
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError), open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


# --- servers ---------------------------------------------------------------------------------------------


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wait_path(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {path}")


class Server:
    def __init__(self, name: str, argv: list[str], address: str, port: int | None = None, path: str | None = None):
        self.name = name
        self.address = address
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if port is not None:
            wait_port(port)
        if path is not None:
            wait_path(path)
        time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        for p in reversed(descendants(self.proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, 15)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_servers(tmp: str) -> dict[str, Server]:
    out: dict[str, Server] = {}
    p = free_port()
    out["socat"] = Server("socat", ["socat", f"TCP-LISTEN:{p},fork,reuseaddr", "PIPE"], f"tcp://127.0.0.1:{p}", p)
    p = free_port()
    out["ncat"] = Server(
        "ncat",
        ["ncat", "-lk", "-e", "/bin/cat", "--max-conns", "1000", "127.0.0.1", str(p)],
        f"tcp://127.0.0.1:{p}",
        p,
    )
    p = free_port()
    out["uvloop-min"] = Server("uvloop-min", [PY, __file__, "--minimal-echo", str(p)], f"tcp://127.0.0.1:{p}", p)
    p = free_port()
    out["sockcat"] = Server(
        "sockcat", [PY, "-m", "sockcat", "serve", "echo", f"tcp://127.0.0.1:{p}"], f"tcp://127.0.0.1:{p}", p
    )
    path = os.path.join(tmp, "echo.sock")
    out["sockcat-unix"] = Server(
        "sockcat-unix", [PY, "-m", "sockcat", "serve", "echo", f"unix:{path}"], f"unix:{path}", path=path
    )
    return out


# --- measurements --------------------------------------------------------------------------------------------


def sockcat_bench(address: str, *args: str, seconds: float, warmup: float = WARMUP) -> dict[str, Any]:
    argv = [PY, "-m", "sockcat", "bench", address, "-d", str(seconds), "--warmup", str(warmup), "--json", *args]
    res = subprocess.run(argv, capture_output=True, timeout=seconds + warmup + 60)
    if not res.stdout:
        raise RuntimeError(f"{argv}: {res.stderr.decode()}")
    return dict(json.loads(res.stdout))


def rtt_with_cpu(server: Server, size: int, seconds: float, procs: int) -> tuple[dict[str, Any], float]:
    """``sockcat bench`` rtt run, plus the server's CPU seconds per second sampled inside the window."""
    argv = [
        PY, "-m", "sockcat", "bench", server.address, "-c", str(CONNS), "--size", str(size),
        "-d", str(seconds), "--warmup", str(WARMUP), "--workers", str(procs), "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.6 + WARMUP)  # start-up, connections, warm-up
    c0, t0 = cpu_seconds(server.pid), time.monotonic()
    time.sleep(seconds * 0.6)
    c1, t1 = cpu_seconds(server.pid), time.monotonic()
    out, err = proc.communicate(timeout=seconds + 60)
    if not out:
        raise RuntimeError(f"{argv}: {err.decode()}")
    return dict(json.loads(out)), (c1 - c0) / (t1 - t0)


@contextlib.contextmanager
def idle_connections(port: int | None, n: int, path: str | None = None) -> Iterator[None]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX if path else socket.AF_INET)
            s.settimeout(10)
            s.connect(path if path else ("127.0.0.1", port))
            socks.append(s)
        for s in socks:  # one round trip each: every connection accepted and used, then idle
            s.sendall(b"x")
        for s in socks:
            s.recv(1)
        time.sleep(1.0)
        yield
    finally:
        for s in socks:
            s.close()


def memory_per_connection(tmp: str, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in ("uvloop-min", "sockcat"):
        p = free_port()
        argv = (
            [PY, __file__, "--minimal-echo", str(p)]
            if name == "uvloop-min"
            else [PY, "-m", "sockcat", "serve", "echo", f"tcp://127.0.0.1:{p}"]
        )
        srv = Server(name, argv, "", p)
        try:
            time.sleep(0.5)
            before = rss_kb(srv.pid)
            with idle_connections(p, n):
                after = rss_kb(srv.pid)
            out[name] = (after - before) * 1024 / n
        finally:
            srv.stop()
    # socat forks a process per connection: the whole tree's PSS, at 1,000 connections.
    p = free_port()
    srv = Server("socat", ["socat", f"TCP-LISTEN:{p},fork,reuseaddr,backlog=1024", "PIPE"], "", p)
    try:
        time.sleep(0.5)
        before = tree_pss_kb(srv.pid)
        with idle_connections(p, 1000):
            after = tree_pss_kb(srv.pid)
        out["socat (1,000 conns, PSS of the tree)"] = (after - before) * 1024 / 1000
    finally:
        srv.stop()
    return out


def byte_count_agreement(seconds: float) -> float:
    """``bench --mode throughput`` bytes (no warm-up) over what ``sockcat -v serve discard`` says it received."""
    p = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([PY, "-m", "sockcat", "-v", "serve", "discard", f"tcp://127.0.0.1:{p}"], stderr=log)
        try:
            wait_port(p)
            time.sleep(0.3)
            d = sockcat_bench(f"tcp://127.0.0.1:{p}", "--mode", "throughput", seconds=seconds, warmup=0.0)
            time.sleep(0.3)
        finally:
            proc.terminate()
            proc.wait(5)
        log.seek(0)
        received = sum(
            int(line.split(b" bytes received")[0].rsplit(b" ", 1)[1])
            for line in log.read().splitlines()
            if b" bytes received" in line
        )
    return float(d["bytes"]) / received if received else float("nan")


def iperf3_run(port: int, seconds: float, omit: int) -> float:
    res = subprocess.run(
        ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(max(1, round(seconds))), "-O", str(omit), "-J"],
        capture_output=True,
        timeout=seconds + omit + 30,
    )
    data = json.loads(res.stdout)
    return float(data["end"]["sum_sent"]["bits_per_second"]) / 8


# --- the run -----------------------------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def compare_clients(reps: int, seconds: float, size: int = 64) -> None:
    """``sockcat bench`` / the minimal client against the same server, back to back, in alternating order;
    also each client's CPU µs per round trip (window only), the figure that does not depend on the sharing of cores."""
    _raise_nofile()
    load0 = os.getloadavg()[0]
    p = free_port()
    echo = Server("sockcat", [PY, "-m", "sockcat", "serve", "echo", f"tcp://127.0.0.1:{p}"], f"tcp://127.0.0.1:{p}", p)
    rates: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    try:
        for rep in range(reps):
            for procs in (1, 2):
                order = ("minimal", "bench") if rep % 2 == 0 else ("bench", "minimal")
                for who in order:
                    used = cpu.setdefault((who, procs), [])
                    if who == "minimal":
                        rate = minimal_client(p, CONNS, size, seconds, procs, cpu=used)
                    else:
                        args = ("-c", str(CONNS), "--size", str(size), "--workers", str(procs))
                        d = sockcat_bench(echo.address, *args, seconds=seconds)
                        rate = d["rate"]
                        used.append(d["client_cpu_seconds"] / max(1, d["requests"]) * 1e6)
                    rates.setdefault((who, procs), []).append(rate)
                m, b = rates[("minimal", procs)][-1], rates[("bench", procs)][-1]
                mc, bc = cpu[("minimal", procs)][-1], cpu[("bench", procs)][-1]
                print(
                    f"  rep {rep + 1} {procs} proc: minimal {m:9.0f}/s  bench {b:9.0f}/s  {b / m:.3f}"
                    f"   client CPU µs/rt: minimal {mc:.2f}  bench {bc:.2f}",
                    file=sys.stderr,
                )
    finally:
        echo.stop()
    print(
        f"Clients against `sockcat serve echo`, {CONNS} x {size} B, {seconds:g} s windows after {WARMUP:g} s warm-up, "
        f"{reps} interleaved reps; load average {load0:.1f} before / {os.getloadavg()[0]:.1f} after."
    )
    print(
        "| client processes | minimal client rt/s | `sockcat bench` rt/s | bench / minimal: ratio of medians "
        "| median of ratios | client CPU µs per round trip: minimal / bench |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for procs in (1, 2):
        mins, bens = rates[("minimal", procs)], rates[("bench", procs)]
        pairs = median([x / y for x, y in zip(bens, mins, strict=True) if y])
        mc, bc = median(cpu[("minimal", procs)]), median(cpu[("bench", procs)])
        print(
            f"| {procs} | {median(mins):,.0f} | {median(bens):,.0f} | {median(bens) / median(mins):.3f} | {pairs:.3f} "
            f"| {mc:.2f} / {bc:.2f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--idle", type=int, default=10_000, help="idle connections for the memory figure")
    ap.add_argument("--json", metavar="FILE", help="write the raw figures here too")
    ap.add_argument(
        "--clients",
        action="store_true",
        help="only compare the clients: `sockcat bench` against the minimal uvloop client, interleaved, "
        "one and two processes, 128 x 64 B against `sockcat serve echo` (quick: --reps 5 --seconds 2)",
    )
    ap.add_argument("--minimal-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.minimal_echo:
        minimal_echo(args.minimal_echo)
        return
    if args.clients:
        compare_clients(args.reps, args.seconds)
        return
    for tool in ("socat", "ncat", "iperf3"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed")
    _raise_nofile()
    secs = args.seconds
    raw: dict[str, Any] = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "reps": args.reps, "seconds": secs}
    # keyed (server, size, client processes)
    rtt: dict[tuple[str, int, int], list[float]] = {}
    cpu100k: dict[tuple[str, int, int], list[float]] = {}
    p99: dict[tuple[str, int, int], list[float]] = {}
    client_cmp: dict[tuple[str, str, int], list[float]] = {}
    conn_rate: dict[str, list[float]] = {}
    tput: dict[str, list[float]] = {}
    unix_cmp: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="sc-bench-") as tmp:
        servers = start_servers(tmp)
        iperf_port = free_port()
        iperf = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port)], stdout=subprocess.DEVNULL)
        p = free_port()
        discard = Server(
            "discard", [PY, "-m", "sockcat", "serve", "discard", f"tcp://127.0.0.1:{p}"], f"tcp://127.0.0.1:{p}", p
        )
        dpath = os.path.join(tmp, "discard.sock")
        discard_unix = Server(
            "discard-unix", [PY, "-m", "sockcat", "serve", "discard", f"unix:{dpath}"], f"unix:{dpath}", path=dpath
        )
        time.sleep(0.5)
        try:
            for rep in range(args.reps):
                print(f"# rep {rep + 1}/{args.reps}", file=sys.stderr)
                for size in (64, 1024):
                    for procs in (1, 2):
                        names = ["socat", "ncat", "uvloop-min", "sockcat"]
                        for name in names if rep % 2 == 0 else names[::-1]:
                            d, cpu_rate = rtt_with_cpu(servers[name], size, secs, procs)
                            key = (name, size, procs)
                            rtt.setdefault(key, []).append(d["rate"])
                            p99.setdefault(key, []).append(d["latency_us"]["p99"])
                            cpu100k.setdefault(key, []).append(cpu_rate / d["rate"] * 1e5 if d["rate"] else 0)
                            print(
                                f"  rtt {name:10} {size:5} B  {procs} client proc  {d['rate']:9.0f}/s  "
                                f"server cpu {cpu_rate:.2f}",
                                file=sys.stderr,
                            )
                    for name in ("uvloop-min", "sockcat"):  # the same servers, the minimal client
                        port = int(servers[name].address.rsplit(":", 1)[1])
                        rate = minimal_client(port, CONNS, size, secs, 2)
                        client_cmp.setdefault(("minimal", name, size), []).append(rate)
                        print(f"  min-client {name:10} {size:5} B  {rate:9.0f}/s", file=sys.stderr)
                    port = int(servers["sockcat"].address.rsplit(":", 1)[1])
                    rate = minimal_client(port, CONNS, size, secs, 2, timed=True)
                    client_cmp.setdefault(("timed", "sockcat", size), []).append(rate)
                    print(f"  min-client+timing sockcat {size:5} B  {rate:9.0f}/s", file=sys.stderr)
                # one client process against the minimal echo: the client is the limit, so this compares
                # the clients' own cost per request
                port = int(servers["uvloop-min"].address.rsplit(":", 1)[1])
                rate = minimal_client(port, CONNS, 64, secs, 1)
                client_cmp.setdefault(("minimal-1", "uvloop-min", 64), []).append(rate)
                d = sockcat_bench(servers["uvloop-min"].address, "-c", str(CONNS), seconds=secs)
                client_cmp.setdefault(("sockcat-1", "uvloop-min", 64), []).append(d["rate"])
                print(f"  one process: minimal {rate:9.0f}/s  sockcat bench {d['rate']:9.0f}/s", file=sys.stderr)
                for name in ("socat", "ncat", "uvloop-min", "sockcat"):
                    d = sockcat_bench(servers[name].address, "--mode", "connect", "-c", "32", "--workers", "2",
                                      seconds=secs)  # fmt: skip
                    conn_rate.setdefault(name, []).append(d["rate"])
                    print(f"  connect {name:10} {d['rate']:9.0f}/s errors {d['errors']}", file=sys.stderr)
                # throughput: iperf3 and sockcat, back to back
                bps = iperf3_run(iperf_port, secs, 1)
                tput.setdefault("iperf3", []).append(bps)
                # iperf3 takes whole seconds: the same window for both
                tsecs = float(max(1, round(secs)))
                d = sockcat_bench(discard.address, "--mode", "throughput", seconds=tsecs, warmup=1.0)
                tput.setdefault("sockcat", []).append(d["bytes_per_second"])
                u = sockcat_bench(discard_unix.address, "--mode", "throughput", seconds=tsecs, warmup=1.0)
                tput.setdefault("sockcat-unix", []).append(u["bytes_per_second"])
                print(f"  throughput iperf3 {bps * 8 / 1e9:.2f} Gbit/s  sockcat {d['bytes_per_second'] * 8 / 1e9:.2f}"
                      f"  unix {u['bytes_per_second'] * 8 / 1e9:.2f}", file=sys.stderr)  # fmt: skip
                # unix stream beside tcp, the same server code
                for name in ("sockcat", "sockcat-unix"):
                    d = sockcat_bench(servers[name].address, "-c", str(CONNS), "--workers", "2", seconds=secs)
                    unix_cmp.setdefault(name, []).append(d["rate"])
        finally:
            for srv in (*servers.values(), discard, discard_unix):
                srv.stop()
            iperf.terminate()
            iperf.wait(5)
        print("# bench's byte count against the server's", file=sys.stderr)
        agree = byte_count_agreement(secs)
        print("# memory per idle connection", file=sys.stderr)
        mem = memory_per_connection(tmp, args.idle)
    raw["load_after"] = os.getloadavg()

    # --- report ---------------------------------------------------------------------------------------------
    def r(name: str, size: int, procs: int) -> float:
        return median(rtt[(name, size, procs)])

    def best(name: str, size: int) -> list[float]:
        """The runs of the client configuration (1 or 2 processes) that gave this server its higher median."""
        return max((rtt[(name, size, 1)], rtt[(name, size, 2)]), key=median)

    lines = [
        f"Machine: {os.cpu_count()} cores, load average {raw['load_before'][0]:.1f} before / "
        f"{raw['load_after'][0]:.1f} after; medians of {args.reps} interleaved runs, {secs:g} s windows "
        f"after {WARMUP:g} s warm-up; {CONNS} connections; client `sockcat bench` with 1 process "
        "(the issue's method) and with `--workers 2`.",
        "",
        "| server | client processes | round trips/s 64 B | round trips/s 1 KiB | p99 64 B (µs) "
        "| server CPU s / 100k rt (64 B / 1 KiB) | connections/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("socat", "ncat", "uvloop-min", "sockcat"):
        for procs in (1, 2):
            lines.append(
                f"| {name} | {procs} | {r(name, 64, procs):,.0f} | {r(name, 1024, procs):,.0f} | "
                f"{median(p99[(name, 64, procs)]):,.0f} | "
                f"{median(cpu100k[(name, 64, procs)]):.2f} / {median(cpu100k[(name, 1024, procs)]):.2f} | "
                + (f"{median(conn_rate[name]):,.0f} |" if procs == 2 else "|")
            )

    def row(what: str, target: str, a: list[float], b: list[float]) -> str:
        """Ratio of medians, and the median of the per-rep ratios (each pair measured back to back)."""
        pairs = median([x / y for x, y in zip(a, b, strict=True) if y])
        return f"| {what} | {target} | {median(a) / median(b):.2f} | {pairs:.2f} |"

    lines += [
        "",
        "| ratio | target | ratio of medians | median of per-rep ratios |",
        "|---|---|---:|---:|",
    ]

    def rtt_row(name: str, other: str, target: str, size: int, procs: int) -> str:
        plural = "es" if procs > 1 else ""
        what = f"{name} / {other}, rt/s {size} B, {procs} client process{plural}"
        return row(what, target, rtt[(name, size, procs)], rtt[(other, size, procs)])

    for size in (64, 1024):
        lines += [rtt_row("sockcat", "socat", "≥ 2.5", size, procs) for procs in (1, 2)]
        lines.append(
            row(
                f"sockcat / socat, rt/s {size} B, each server with its better client configuration",
                "≥ 2.5",
                best("sockcat", size),
                best("socat", size),
            )
        )
    lines += [
        rtt_row("uvloop-min", "socat", "— (the issue's reference)", 64, 1),
        rtt_row("uvloop-min", "socat", "— (the issue's reference)", 64, 2),
        row(
            "socat / sockcat, server CPU per round trip, 64 B, 1 client process",
            "—",
            cpu100k[("socat", 64, 1)],
            cpu100k[("sockcat", 64, 1)],
        ),
        row("sockcat / socat, connections/s", "≥ 3", conn_rate["sockcat"], conn_rate["socat"]),
    ]
    lines += [rtt_row("sockcat", "uvloop-min", "≥ 0.9", size, procs) for size in (64, 1024) for procs in (1, 2)]
    for size in (64, 1024):
        for name in ("uvloop-min", "sockcat"):
            lines.append(
                row(
                    f"`sockcat bench` / minimal uvloop client vs {name} echo, {size} B",
                    "≥ 1",
                    rtt[(name, size, 2)],
                    client_cmp[("minimal", name, size)],
                )
            )
    for size in (64, 1024):
        lines.append(
            row(
                f"`sockcat bench` / minimal client with per-request timing vs sockcat echo, {size} B",
                "≥ 1",
                rtt[("sockcat", size, 2)],
                client_cmp[("timed", "sockcat", size)],
            )
        )
    one_min, one_sc = (
        median(client_cmp[("minimal-1", "uvloop-min", 64)]),
        median(client_cmp[("sockcat-1", "uvloop-min", 64)]),
    )
    lines.append(
        row(
            "one client process, client-bound: `sockcat bench` / minimal client, 64 B",
            "≥ 1",
            client_cmp[("sockcat-1", "uvloop-min", 64)],
            client_cmp[("minimal-1", "uvloop-min", 64)],
        )
    )
    t_ip, t_sc, t_un = median(tput["iperf3"]), median(tput["sockcat"]), median(tput["sockcat-unix"])
    lines.append(
        row("`bench --mode throughput` (→ serve discard) / iperf3", "0.9 – 1.1", tput["sockcat"], tput["iperf3"])
    )
    lines.append(f"| bench's byte count / bytes the discard server received (no warm-up) | 1 | {agree:.4f} | |")
    lines += [
        "",
        f"Throughput (one TCP stream, 128 KiB writes): iperf3 {t_ip * 8 / 1e9:.2f} Gbit/s, "
        f"`sockcat bench` → `sockcat serve discard` {t_sc * 8 / 1e9:.2f} Gbit/s; "
        f"unix stream {t_un * 8 / 1e9:.2f} Gbit/s.",
        "",
        "Unix stream beside TCP (`sockcat serve echo`, 128 × 64 B): "
        f"unix {median(unix_cmp['sockcat-unix']):,.0f} rt/s, tcp {median(unix_cmp['sockcat']):,.0f} rt/s.",
        "",
        "Minimal uvloop client (2 processes): "
        + ", ".join(
            f"{name} {size} B {median(client_cmp[('minimal', name, size)]):,.0f} rt/s"
            for size in (64, 1024)
            for name in ("uvloop-min", "sockcat")
        )
        + "; with per-request timing, against sockcat: "
        + ", ".join(f"{size} B {median(client_cmp[('timed', 'sockcat', size)]):,.0f} rt/s" for size in (64, 1024))
        + f". One client process against the minimal echo: minimal client {one_min:,.0f} rt/s, "
        f"`sockcat bench` {one_sc:,.0f} rt/s.",
        "",
        "Memory per idle connection (server RSS growth / connections): "
        + ", ".join(f"{k} {v:,.0f} B" for k, v in mem.items())
        + f" ({args.idle:,} connections for the asyncio servers).",
    ]
    print("\n".join(lines))
    raw.update(
        rtt={f"{k[0]}/{k[1]}/{k[2]}": v for k, v in rtt.items()},
        p99={f"{k[0]}/{k[1]}/{k[2]}": v for k, v in p99.items()},
        cpu_per_100k={f"{k[0]}/{k[1]}/{k[2]}": v for k, v in cpu100k.items()},
        clients={f"{k[0]}/{k[1]}/{k[2]}": v for k, v in client_cmp.items()},
        connect=conn_rate,
        throughput=tput,
        unix=unix_cmp,
        memory=mem,
        byte_count_agreement=agree,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
