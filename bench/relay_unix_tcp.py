"""One-hop unix -> tcp bulk throughput through ``sockcat relay`` vs socat (iperf3 cannot speak Unix sockets).

Run from the repository root::

    python bench/relay_unix_tcp.py [--runs 7] [--size 2G] [--json]

A measurement: a TCP sink (a Python process reading with 4 MiB ``recv_into`` until EOF) on 127.0.0.1, one relay
from a Unix socket to it, and a Python source that connects to the Unix socket and ``sendall``s SIZE bytes from a
4 MiB buffer, then half-closes. The rate is SIZE over the time from the source's connect to the sink's EOF (the
sink reports its byte count, which must equal SIZE). Source and sink are the same for every relay, so the ratios
compare relays. Relays, interleaved round-robin, every run in alternating order:

* ``sockcat``: ``sockcat relay unix:S tcp://127.0.0.1:P``;
* ``socat`` / ``socat -b 262144``: ``socat [-b 262144] UNIX-LISTEN:S,fork TCP:127.0.0.1:P``;
* two references that are not products, to show where the ceiling is: ``copy loop``, the least a user-space
  relay can do (one Python process, one connection, ``recv_into`` a 4 MiB buffer then ``sendall``, no event
  loop, no second direction), and ``splice loop``, the same with ``os.splice`` through a 1 MiB pipe.

On two CPUs the source, the relay and the sink share the cores, and every byte is copied four times (source
into the kernel, relay out and back in, sink out): when ``copy loop`` is only a few per cent above socat
``-b 262144``, no relay can be much faster on that machine.

Only processes this script started are signalled.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_size

BUF = 4 << 20

SINK = r"""
import socket, sys, time
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
buf = bytearray(4 << 20)
total = 0
while True:
    n = conn.recv_into(buf)
    if not n:
        break
    total += n
print(total, time.perf_counter(), flush=True)
"""

# the reference relays: argv = mode, unix path, tcp port; one connection, one direction, then exit
LOOP = r"""
import fcntl, os, socket, sys
mode, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen()
c, _ = srv.accept()
u = socket.create_connection(("127.0.0.1", port))
if mode == "copy":
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    while n := c.recv_into(buf):
        u.sendall(view[:n])
else:
    r, w = os.pipe()
    size = fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ; 1 MiB is the default pipe-max-size
    while n := os.splice(c.fileno(), w, size):
        while n:
            n -= os.splice(r, u.fileno(), n)
u.shutdown(socket.SHUT_WR)
"""


def wait_for_path(path: str, deadline: float) -> None:
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"relay did not create {path}")
        time.sleep(0.02)


def one(name: str, size: int, tmp: str) -> float:
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    port = int(sink.stdout.readline())
    path = os.path.join(tmp, f"{name.replace(' ', '_')}.sock")
    with_b = ["-b", "262144"] if name == "socat -b 262144" else []
    if name == "sockcat":
        cmd = [sys.executable, "-m", "sockcat", "-q", "relay", f"unix:{path}", f"tcp://127.0.0.1:{port}"]
    elif name.endswith(" loop"):
        cmd = [sys.executable, "-c", LOOP, name.split()[0], path, str(port)]
    else:
        cmd = ["socat", *with_b, f"UNIX-LISTEN:{path},fork,unlink-early", f"TCP:127.0.0.1:{port}"]
    relay = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        wait_for_path(path, time.monotonic() + 10)
        time.sleep(0.2)
        data = memoryview(bytes(BUF))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as src:
            start = time.perf_counter()
            src.connect(path)
            left = size
            while left:
                n = min(left, BUF)
                src.sendall(data[:n])
                left -= n
            src.shutdown(socket.SHUT_WR)
            out, _ = sink.communicate(timeout=120)
        total, end = out.split()
        if int(total) != size:
            raise SystemExit(f"{name}: sink got {total} bytes, want {size}")
        return size * 8 / (float(end) - start) / 1e9
    finally:
        relay.terminate()
        relay.wait(timeout=10)
        if sink.poll() is None:
            sink.kill()
            sink.wait()
        Path(path).unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--size", default="2G")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = parse_size(args.size)
    names = ["sockcat", "socat", "socat -b 262144", "copy loop", "splice loop"]
    rates: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for name in names if run % 2 == 0 else names[::-1]:
                rates[name].append(one(name, size, tmp))
                print(f"run {run + 1}/{args.runs} {name:16} {rates[name][-1]:6.2f} Gbit/s", file=sys.stderr)
    med = {n: statistics.median(v) for n, v in rates.items()}
    if args.json:
        print(json.dumps({"size": size, "runs": rates, "median_gbit_s": med}))
        return
    print(f"unix -> tcp, one stream, {args.size} per run, median of {args.runs} interleaved runs (Gbit/s):\n")
    print("| relay | Gbit/s (median) | runs | × socat default | × socat -b 262144 |")
    print("|---|---:|---|---:|---:|")
    for n in names:
        runs = " ".join(f"{r:.1f}" for r in rates[n])
        print(f"| {n} | {med[n]:.2f} | {runs} | {med[n] / med['socat']:.2f} | {med[n] / med['socat -b 262144']:.2f} |")


if __name__ == "__main__":
    main()
