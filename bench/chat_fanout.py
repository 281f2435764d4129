"""Chat fan-out: ``sockcat chat`` beside ``ncat --chat``, the same clients and lines, interleaved.

Run from the repository root::

    python bench/chat_fanout.py [--clients 50] [--lines 40] [--runs 5]

A run starts a fresh broker, connects ``--clients`` clients (each joins with a name on sockcat; ncat names them
itself), waits until everyone is in, then every client sends ``--lines`` lines of 64 bytes at once (40 stays
inside sockcat's flood burst of 50: the flood limit is not what is measured). The time runs from the first
line sent until every client has received every other client's lines: clients x (clients - 1) x lines
deliveries. Every delivery is counted by its text; a missing one fails the run. Medians of deliveries per
second, and the broker's CPU seconds per 100k deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import time

from _common import cpu_seconds, free_port, machine, wait_tcp

PAYLOAD = "x" * 56


async def run_clients(port: int, clients: int, lines: int, named: bool) -> tuple[float, int]:
    conns = []
    for i in range(clients):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        if named:
            await reader.readline()  # the name prompt
            writer.write(f"c{i}\n".encode())
            await reader.readline()  # hello
        conns.append((reader, writer))
    await asyncio.sleep(0.5)  # join notices settle
    for reader, _w in conns:  # drop what arrived so far (join / announce lines)
        while True:
            try:
                await asyncio.wait_for(reader.readline(), 0.05)
            except TimeoutError:
                break
    want = (clients - 1) * lines
    marker = re.compile(rb"m(\d+)-(\d+) ")

    async def collect(reader: asyncio.StreamReader) -> int:
        got = 0
        while got < want:
            line = await reader.readline()
            if not line:
                break
            if marker.search(line):
                got += 1
        return got

    tasks = [asyncio.ensure_future(collect(r)) for r, _w in conns]
    t0 = time.perf_counter()
    for i, (_r, writer) in enumerate(conns):
        writer.write(b"".join(f"m{i}-{k} {PAYLOAD}\n".encode() for k in range(lines)))
    counts = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    secs = time.perf_counter() - t0
    for _r, writer in conns:
        writer.close()
    return secs, sum(counts)


def one(tool: str, clients: int, lines: int) -> tuple[float, float]:
    port = free_port()
    if tool == "sockcat chat":
        argv = [sys.executable, "-m", "sockcat", "chat", f"tcp://127.0.0.1:{port}", "--db", ":memory:"]
    else:
        argv = ["ncat", "-l", "--chat", "--max-conns", str(clients + 10), "127.0.0.1", str(port)]
    broker = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_tcp(port, broker)
        cpu0 = cpu_seconds(broker.pid)
        secs, delivered = asyncio.run(run_clients(port, clients, lines, named=tool == "sockcat chat"))
        cpu = cpu_seconds(broker.pid) - cpu0
    finally:
        broker.terminate()
        broker.wait(10)
    want = clients * (clients - 1) * lines
    if delivered != want:
        raise SystemExit(f"{tool}: {delivered} of {want} deliveries")
    return want / secs, cpu / want * 1e5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--lines", type=int, default=40)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tools = ["sockcat chat", "ncat --chat"]
    rates: dict[str, list[float]] = {t: [] for t in tools}
    cpus: dict[str, list[float]] = {t: [] for t in tools}
    for run in range(args.runs):
        for tool in tools if run % 2 == 0 else tools[::-1]:
            rate, cpu = one(tool, args.clients, args.lines)
            rates[tool].append(rate)
            cpus[tool].append(cpu)
            line = f"run {run + 1}/{args.runs} {tool:13} {rate:10,.0f} deliveries/s  cpu {cpu:.3f} s/100k"
            print(line, file=sys.stderr)
    med = {t: statistics.median(v) for t, v in rates.items()}
    print(
        f"{args.clients} clients x {args.lines} lines of 64 B, every line to every other client "
        f"({args.clients * (args.clients - 1) * args.lines:,} deliveries a run), {args.runs} interleaved runs; "
        f"{machine()}\n"
    )
    print("| broker | deliveries/s (median) | × ncat --chat | broker CPU s / 100k deliveries |")
    print("|---|---:|---:|---:|")
    for t in tools:
        print(f"| {t} | {med[t]:,.0f} | {med[t] / med['ncat --chat']:.2f} | {statistics.median(cpus[t]):.3f} |")


if __name__ == "__main__":
    main()
