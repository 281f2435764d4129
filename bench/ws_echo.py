#!/usr/bin/env python3
"""WebSocket echo servers side by side, in one run, interleaved, and the memory an idle WebSocket costs.

Round trips (medians of --runs; each a --seconds window after a 0.5 s warm-up): one Node.js load client on the
ws library (bench/node/ws_load.js: 128 connections, one 64 B binary message in flight on each) against

* ``node ws``: a minimal Node.js echo server on the ws library with bufferutil (tests/node/echo-server.js);
* ``sockcat``: ``sockcat serve echo ws://127.0.0.1:0/`` (uvloop);
* ``websockify + sockcat``: Debian's websockify in front of ``sockcat serve echo tcp://…``.

The servers' CPU seconds per 100k round trips come from /proc (the server and its children).

Idle connections (``--idle N``, default 10,000): N WebSocket connections opened and upgraded, then left idle,
against ``sockcat serve echo ws://…`` and the same number of plain TCP connections against ``sockcat serve echo
tcp://…``; the server's RSS growth per connection for each, and the difference.

Run from the repository root with the venv's bin first on PATH: ``python bench/ws_echo.py`` (about 2 minutes).
Output: Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import base64
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
from pathlib import Path

from _common import Procs, cpu_seconds, free_port, listening_address, wait_tcp

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start_server(procs: Procs, name: str) -> tuple[subprocess.Popen[bytes], int, list[subprocess.Popen[bytes]]]:
    """(the process whose CPU counts, its ws port, every process started)."""
    if name == "node ws":
        p = procs.start(["node", str(ROOT / "tests" / "node" / "echo-server.js")], stdout=subprocess.PIPE)
        assert p.stdout is not None
        port = int(p.stdout.readline().split()[-1])
        return p, port, [p]
    if name == "sockcat":
        p = procs.start(["sockcat", "-q", "serve", "echo", "ws://127.0.0.1:0/"])
        return p, int(listening_address(procs, p).rsplit(":", 1)[1].rstrip("/")), [p]
    echo = procs.start(["sockcat", "-q", "serve", "echo", "tcp://127.0.0.1:0"])
    eport = int(listening_address(procs, echo).rsplit(":", 1)[1])
    w = free_port()
    ws = procs.start(["websockify", f"127.0.0.1:{w}", f"127.0.0.1:{eport}"])
    wait_tcp(w, ws)
    return ws, w, [ws, echo]


def round_trips(procs: Procs, name: str, seconds: float) -> tuple[float, float, float]:
    """(round trips/s, p99 µs, server CPU s per 100k round trips)."""
    main, port, started = start_server(procs, name)
    try:
        cpu0 = cpu_seconds(main.pid)
        env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
        out = subprocess.run(
            ["node", str(ROOT / "bench" / "node" / "ws_load.js"), f"ws://127.0.0.1:{port}/", "128", "64", str(seconds)],
            capture_output=True,
            timeout=seconds + 30,
            env=env,
        )
        cpu = cpu_seconds(main.pid) - cpu0
        result = json.loads(out.stdout.decode().strip().splitlines()[-1])
        rate = float(result["rate"])
        # the CPU counts the warm-up and the set-up too: per round trip over the whole run, an upper bound
        total = rate * (seconds + 0.5)
        return rate, float(result["p99_us"]), cpu / total * 100_000
    finally:
        for p in started:
            procs.stop(p)


def idle_cost(procs: Procs, scheme: str, count: int) -> float:
    """Bytes of server RSS per idle connection (WebSocket upgraded, or plain TCP)."""
    p = procs.start(["sockcat", "-q", "serve", "echo", f"{scheme}://127.0.0.1:0" + ("/" if scheme == "ws" else "")])
    port = int(listening_address(procs, p).rsplit(":", 1)[1].rstrip("/"))
    socks: list[socket.socket] = []
    try:
        time.sleep(0.3)
        before = _rss(p.pid)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            if scheme == "ws":
                s.sendall(request)
            socks.append(s)
        if scheme == "ws":
            for s in socks:
                s.settimeout(10)
                assert s.recv(4096).startswith(b"HTTP/1.1 101")
        time.sleep(1.0)
        return (_rss(p.pid) - before) / count
    finally:
        for s in socks:
            s.close()
        procs.stop(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--idle", type=int, default=10_000)
    args = ap.parse_args()
    for tool in ("node", "sockcat", "websockify"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (the venv's bin first on PATH; scripts/test installs the peers)")
    if not (NODE_MODULES / "ws").is_dir():
        sys.exit("tests/node/node_modules is missing: run (cd tests/node && npm ci)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * args.idle + 1000)), hard))
    names = ["node ws", "sockcat", "websockify + sockcat"]
    results: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        procs = Procs(Path(tmp))
        try:
            for run in range(args.runs):
                for name in names if run % 2 == 0 else names[::-1]:
                    r = round_trips(procs, name, args.seconds)
                    results[name].append(r)
                    print(
                        f"run {run + 1}/{args.runs} {name:22} {r[0]:10,.0f} rt/s p99 {r[1]:8,.0f} µs", file=sys.stderr
                    )
            idle = {s: idle_cost(procs, s, args.idle) for s in ("tcp", "ws")} if args.idle else {}
        finally:
            procs.stop_all()
    ref = statistics.median(r[0] for r in results["node ws"])
    print(f"128 connections × 64 B, one Node ws load client, {args.seconds:g} s windows, medians of {args.runs}\n")
    print("| server | round trips/s | × node ws | p99 µs | server CPU s / 100k |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        rate = statistics.median(r[0] for r in results[name])
        p99 = statistics.median(r[1] for r in results[name])
        cpu = statistics.median(r[2] for r in results[name])
        print(f"| {name} | {rate:,.0f} | {rate / ref:.2f} | {p99:,.0f} | {cpu:.2f} |")
    if idle:
        print(f"\n{args.idle:,} idle connections on `sockcat serve echo`: RSS per connection")
        print(f"tcp {idle['tcp']:,.0f} B, ws {idle['ws']:,.0f} B, WebSocket's extra {idle['ws'] - idle['tcp']:,.0f} B")


if __name__ == "__main__":
    main()
