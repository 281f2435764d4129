"""One file from disk to disk over loopback: ``sockcat send``/``recv`` beside ``nc`` and ``socat`` pipes.

Run from the repository root::

    python bench/transfer_rate.py [--size 1G] [--runs 5]

Each run, in rotating order, moves the same random file from a temporary directory to another:

* ``sockcat recv tcp://127.0.0.1:0 -o OUT`` + ``sockcat send ADDR FILE``: it hashes the file before sending (to build
  the manifest) and while receiving, fsyncs, and renames into place;
* ``nc -l 127.0.0.1 P > OUT/FILE`` + ``nc -N 127.0.0.1 P < FILE`` (OpenBSD nc): no check at all;
* ``socat -u TCP-LISTEN:P OPEN:OUT/FILE,creat`` + ``socat -u FILE TCP:127.0.0.1:P`` (socat -b 262144 too);
* ``nc + sha256sum``: the same nc pipe with ``sha256sum`` of the source before and of the copy after, then
  ``sync`` of the copy: the like-for-like verified pipeline a careful user would script around nc.

The time is from starting the sender to the receiver's exit; every copy is then checked against the source's
SHA-256 (outside the timing). Medians, rates and ratios to ``nc`` are printed as Markdown. The page cache holds
the file after the first run, so these are network-and-CPU figures, not disk figures.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, machine, parse_size, sha256_file, wait_tcp


def one(tool: str, src: Path, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    dest = out / src.name
    if tool == "sockcat":
        recv = subprocess.Popen(
            [sys.executable, "-m", "sockcat", "recv", "tcp://127.0.0.1:0", "-o", str(out)], stderr=subprocess.PIPE
        )
        assert recv.stderr is not None
        m = re.match(r"listening on (\S+)", recv.stderr.readline().decode())
        assert m, "no listening line"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sockcat", "send", m.group(1), str(src)], check=True, timeout=600)
    else:
        port = free_port()
        if tool.startswith("nc"):
            with open(dest, "wb") as f:
                recv = subprocess.Popen(["nc", "-l", "127.0.0.1", str(port)], stdout=f)
            wait_tcp(port, recv)
            t0 = time.perf_counter()
            if tool == "nc + sha256sum":
                subprocess.run(["sha256sum", str(src)], check=True, capture_output=True, timeout=600)
            with open(src, "rb") as f:
                subprocess.run(["nc", "-N", "127.0.0.1", str(port)], stdin=f, check=True, timeout=600)
        else:
            b = ["-b", "262144"] if tool == "socat -b 262144" else []
            recv = subprocess.Popen(["socat", *b, "-u", f"TCP-LISTEN:{port},reuseaddr", f"OPEN:{dest},creat,trunc"])
            wait_tcp(port, recv)
            t0 = time.perf_counter()
            subprocess.run(["socat", *b, "-u", f"FILE:{src}", f"TCP:127.0.0.1:{port}"], check=True, timeout=600)
    if recv.wait(timeout=600) != 0:
        raise SystemExit(f"{tool}: the receiver failed")
    if tool == "nc + sha256sum":
        subprocess.run(["sha256sum", str(dest)], check=True, capture_output=True, timeout=600)
        subprocess.run(["sync", str(dest)], check=True, timeout=600)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    size = parse_size(args.size)
    tools = ["sockcat", "nc", "nc + sha256sum", "socat", "socat -b 262144"]
    times: dict[str, list[float]] = {t: [] for t in tools}
    with tempfile.TemporaryDirectory(prefix="sc-xfer-") as tmp:
        src = Path(tmp) / "data.bin"
        with open(src, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
        want = sha256_file(src)
        for run in range(args.runs):
            order = tools[run % len(tools) :] + tools[: run % len(tools)]
            for tool in order:
                out = Path(tmp) / f"out-{tool.replace(' ', '_')}-{run}"
                secs = one(tool, src, out)
                if sha256_file(out / src.name) != want:
                    raise SystemExit(f"{tool}: the copy differs from the source")
                (out / src.name).unlink()
                times[tool].append(secs)
                print(f"run {run + 1}/{args.runs} {tool:16} {secs:6.2f} s", file=sys.stderr)
    med = {t: statistics.median(v) for t, v in times.items()}
    print(f"One {args.size} file, disk to disk over 127.0.0.1, {args.runs} runs in rotating order; {machine()}\n")
    print("| tool | seconds (median) | MiB/s | × nc (speed) | verified by the tool |")
    print("|---|---:|---:|---:|---|")
    for t in tools:
        checks = {"sockcat": "SHA-256, fsync, atomic rename", "nc + sha256sum": "SHA-256 both ends, sync"}
        verified = checks.get(t, "no")
        print(f"| {t} | {med[t]:.2f} | {size / med[t] / (1 << 20):,.0f} | {med['nc'] / med[t]:.2f} | {verified} |")


if __name__ == "__main__":
    main()
