"""``sockcat scan`` beside ``nmap -sT`` (nmap's own TCP connect scan), interleaved, on loopback.

Run from the repository root::

    python bench/scan_rate.py [--runs 5] [--ports -]

Each run scans the same ports of 127.0.0.1 with both tools, in alternating order: ``sockcat scan 127.0.0.1 PORTS
--json`` and ``nmap -sT -Pn -n -p PORTS -oG - 127.0.0.1``. Wall time of each whole command (start-up included)
is measured; both must report the same open ports, or the run stops. A few listeners are opened first so there
is something to find. Medians and the median of the per-run ratios are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

from _common import machine


def run(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ports", default="-", help="what to scan (default - : all 65535)")
    args = ap.parse_args()
    if shutil.which("nmap") is None:
        sys.exit("nmap is needed")
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    nmap_ports = "1-65535" if args.ports == "-" else args.ports
    times: dict[str, list[float]] = {"sockcat": [], "nmap -sT": []}
    for i in range(args.runs):
        order = ["sockcat", "nmap -sT"] if i % 2 == 0 else ["nmap -sT", "sockcat"]
        found: dict[str, list[int]] = {}
        for name in order:
            if name == "sockcat":
                secs, out = run([sys.executable, "-m", "sockcat", "scan", "127.0.0.1", args.ports, "--json"])
                found[name] = json.loads(out)["open"]
            else:
                secs, out = run(["nmap", "-sT", "-Pn", "-n", "-p", nmap_ports, "-oG", "-", "127.0.0.1"])
                found[name] = sorted(int(p) for p in re.findall(r"(\d+)/open/tcp", out))
            times[name].append(secs)
            print(f"run {i + 1}/{args.runs} {name:9} {secs:6.2f} s  open {found[name]}", file=sys.stderr)
        if found["sockcat"] != found["nmap -sT"]:
            sys.exit(f"the tools disagree: {found}")
    for s in listeners:
        s.close()
    facts = machine(nmap=None)
    facts["nmap"] = subprocess.run(["nmap", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    med = {k: statistics.median(v) for k, v in times.items()}
    pairs = statistics.median(n / s for s, n in zip(times["sockcat"], times["nmap -sT"], strict=True))
    print(f"TCP connect scan of 127.0.0.1, ports {args.ports}, {args.runs} interleaved runs; {facts}\n")
    print("| tool | seconds (median) | runs | speed vs nmap -sT (time ratio of medians / median of ratios) |")
    print("|---|---:|---|---:|")
    for name, ts in times.items():
        runs = " ".join(f"{t:.2f}" for t in ts)
        ratio = f"{med['nmap -sT'] / med[name]:.2f} / {pairs if name == 'sockcat' else 1:.2f}"
        print(f"| {name} | {med[name]:.2f} | {runs} | {ratio} |")


if __name__ == "__main__":
    main()
