#!/usr/bin/env python3
"""WebSocket relays side by side, in one run, interleaved: ``sockcat relay ws://… tcp://…`` against Debian's
websockify, with iperf3 carried through a tcp -> ws -> tcp pair of relays (loopback).

For every configuration the client-side relay is the same, ``sockcat relay tcp://127.0.0.1:0 ws://127.0.0.1:W/``
(it turns iperf3's TCP into WebSocket messages); only the server side (ws -> tcp, in front of ``iperf3 -s``)
differs:

* ``websockify``: ``websockify 127.0.0.1:W 127.0.0.1:P`` (it does not compress, so the client side is run with
  ``--no-compress``);
* ``sockcat``: ``sockcat relay ws://127.0.0.1:0/ tcp://127.0.0.1:P``, client side with ``--no-compress``;
* ``sockcat deflate``: the same pair with permessage-deflate negotiated (iperf3's payload compresses well, so
  this row shows the cost of compression, not a like-for-like figure).
* ``direct``: iperf3 with no relay, the ceiling.

A measurement is ``iperf3 -c 127.0.0.1 -p ENTRY -n SIZE -J``, its ``end.sum_received`` rate, and the CPU seconds
the *server-side* relay spent, per GiB moved. Medians of --runs. Run from the repository root:
``python bench/ws_relay.py [--runs 3] [--size 2G]``. Output: Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _common import Procs, cpu_seconds, free_port, listening_address, parse_size, wait_tcp

Server = Callable[[Procs, int], tuple[subprocess.Popen[bytes] | None, int]]


def _sockcat_server(procs: Procs, port: int) -> tuple[subprocess.Popen[bytes] | None, int]:
    p = procs.start(["sockcat", "-q", "relay", "--grace", "1", "ws://127.0.0.1:0/", f"tcp://127.0.0.1:{port}"])
    return p, int(listening_address(procs, p).rsplit(":", 1)[1].rstrip("/"))


def _websockify_server(procs: Procs, port: int) -> tuple[subprocess.Popen[bytes] | None, int]:
    w = free_port()
    p = procs.start(["websockify", f"127.0.0.1:{w}", f"127.0.0.1:{port}"])
    wait_tcp(w, p)
    return p, w


CONFIGS: dict[str, tuple[Server | None, list[str]]] = {
    "direct": (None, []),
    "websockify": (_websockify_server, ["--no-compress"]),
    "sockcat": (_sockcat_server, ["--no-compress"]),
    "sockcat deflate": (_sockcat_server, []),
}


def measure(procs: Procs, name: str, size: str) -> tuple[float | None, float | None, str | None]:
    """(Gbit/s, server-side relay CPU s per GiB, error)."""
    server_start, client_opts = CONFIGS[name]
    started: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        iperf = procs.start(["iperf3", "-s", "-p", str(port), "-1"])
        started.append(iperf)
        wait_tcp(port, iperf)
        entry, back = port, None
        if server_start is not None:
            back, ws_port = server_start(procs, port)
            assert back is not None
            started.append(back)
            front = procs.start(
                [
                    "sockcat",
                    "-q",
                    "relay",
                    "--grace",
                    "1",
                    *client_opts,
                    "tcp://127.0.0.1:0",
                    f"ws://127.0.0.1:{ws_port}/",
                ]
            )
            started.append(front)
            entry = int(listening_address(procs, front).rsplit(":", 1)[1])
        cpu0 = cpu_seconds(back.pid) if back is not None else 0.0
        limit = 60.0 + parse_size(size) / 50e6
        out = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", str(entry), "-n", size, "-J"],
            capture_output=True,
            timeout=limit,
            stdin=subprocess.DEVNULL,
        )
        cpu = cpu_seconds(back.pid) - cpu0 if back is not None else None
        result = json.loads(out.stdout)
        if "error" in result:
            return None, None, str(result["error"])
        received = float(result["end"]["sum_received"]["bytes"])
        gbps = float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
        return gbps, (cpu / (received / 2**30) if cpu is not None else None), None
    except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        return None, None, str(exc)
    finally:
        for p in reversed(started):
            procs.stop(p, grace=2.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", default="2G")
    args = ap.parse_args()
    for tool in ("iperf3", "websockify", "sockcat"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (run with the venv's bin first on PATH; scripts/test installs the peers)")
    rates: dict[str, list[float]] = {n: [] for n in CONFIGS}
    cpus: dict[str, list[float]] = {n: [] for n in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        procs = Procs(Path(tmp))
        try:
            for run in range(args.runs):
                names = list(CONFIGS) if run % 2 == 0 else list(CONFIGS)[::-1]
                for name in names:
                    gbps, cpu, error = measure(procs, name, args.size)
                    print(
                        f"run {run + 1}/{args.runs} {name:16} {gbps or 0:7.2f} Gbit/s cpu/GiB {cpu} {error or ''}",
                        file=sys.stderr,
                    )
                    if gbps is not None:
                        rates[name].append(gbps)
                    if cpu is not None:
                        cpus[name].append(cpu)
        finally:
            procs.stop_all()
    ref = statistics.median(rates["websockify"]) if rates["websockify"] else None
    ref_cpu = statistics.median(cpus["websockify"]) if cpus["websockify"] else None
    print(
        f"iperf3 -n {args.size} through sockcat relay tcp->ws (client side) and the server side below; "
        f"medians of {args.runs} interleaved runs\n"
    )
    print("| server side (ws -> tcp) | Gbit/s | × websockify | server-side CPU s/GiB | × websockify's CPU |")
    print("|---|---:|---:|---:|---:|")
    for name in CONFIGS:
        r = statistics.median(rates[name]) if rates[name] else None
        c = statistics.median(cpus[name]) if cpus[name] else None
        with contextlib.suppress(TypeError):
            print(
                f"| {name} | {r:.2f} | {r / ref:.2f} | "  # type: ignore[operator]
                f"{'' if c is None else f'{c:.2f}'} | {'' if c is None or not ref_cpu else f'{c / ref_cpu:.2f}'} |"
            )
            continue
        print(f"| {name} | n/a | | | |")


if __name__ == "__main__":
    main()
