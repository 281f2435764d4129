"""Chat at scale: ``sockcat chat --line-rate 0`` beside ``ncat --chat``, 1,000 clients, nothing may be lost.

Run from the repository root::

    python bench/chat_flood.py [--clients 1000] [--senders 4] [--lines 1000] [--runs 3]

Three measurements, each on a fresh broker, the tools interleaved:

* **flood**: ``--clients`` clients connect (and join, on sockcat); ``--senders`` of them write ``--lines`` lines of
  64 bytes each as fast as the broker takes them. Every other client must receive every line: the run fails
  unless each client's line count is exact, and for a sample of clients every sender's lines arrive complete and
  in order. Deliveries per second (clients x senders x lines, minus the senders' own) and the broker's CPU.
* **latency**: the same clients; one sender writes 50 lines a second for ``--seconds``; each line carries its send
  time, and every client's receive time gives a latency: p50, p99, max over every delivery.
* **memory**: the broker's resident memory with the clients connected (and joined) and idle, less its memory
  before they came, per client.

The load client is one uvloop process that counts lines in whole chunks (no per-line work but on the sample), so
that it is not the limit; its CPU is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import cpu_seconds, free_port, machine, wait_tcp

PAD = b"x" * 40
SAMPLE = 10  # clients whose every line is checked for completeness and order


class Receiver(asyncio.Protocol):
    def __init__(self, checked: bool) -> None:
        self.lines = 0
        self.checked = checked
        self.buf = b""
        self.seen: dict[bytes, int] = {}  # sender -> next expected sequence number (sampled clients)
        self.bad = 0
        self.latencies: list[float] | None = None
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.prompt = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.prompt += data
            if b"\n" in self.prompt:
                self.ready.set_result(None)
            return
        self.lines += data.count(b"\n")
        if not self.checked and self.latencies is None:
            return
        self.buf += data
        *complete, self.buf = self.buf.split(b"\n")
        now = time.monotonic()
        for line in complete:
            i = line.find(b"m")
            if i < 0:
                continue
            fields = line[i + 1 :].split(b" ", 3)
            if len(fields) < 3:
                continue
            try:
                sender, seq, sent = fields[0], int(fields[1]), float(fields[2])
            except ValueError:  # a garbled line (ncat --chat splices lines under this load): out of order
                self.bad += 1
                continue
            if self.latencies is not None:
                self.latencies.append(now - sent)
            if self.checked:
                want = self.seen.get(sender, 0)
                if seq != want:
                    self.bad += 1
                self.seen[sender] = seq + 1


async def connect_all(port: int, clients: int, named: bool) -> list[Receiver]:
    loop = asyncio.get_running_loop()
    out: list[Receiver] = []
    for i in range(clients):
        _t, r = await loop.create_connection(functools.partial(Receiver, i < SAMPLE), "127.0.0.1", port)
        out.append(r)
    if named:
        for r in out:
            await r.ready
        for i, r in enumerate(out):
            assert r.transport is not None
            r.transport.write(f"c{i}\n".encode())
    else:
        for r in out:
            r.ready.cancel()
    await asyncio.sleep(1.0)  # join notices settle (they are not counted: the count starts below)
    for r in out:
        r.ready = loop.create_future()
        r.ready.set_result(None)
        r.lines, r.buf, r.seen, r.bad = 0, b"", {}, 0
    return out


async def _until_done(rs: list[Receiver], want: list[int], t0: float) -> float:
    """Seconds from ``t0`` until every client has its lines; a broker that loses lines (ncat --chat does under
    this load) is waited for until nothing has arrived for 3 s, and that time is not counted."""
    last_total, last_change = -1, time.perf_counter()
    while True:
        total = sum(min(r.lines, w) for r, w in zip(rs, want, strict=True))
        now = time.perf_counter()
        if total == sum(want):
            return now - t0
        if total != last_total:
            last_total, last_change = total, now
        elif now - last_change > 3.0:
            return last_change - t0
        await asyncio.sleep(0.005)


async def flood(port: int, clients: int, senders: int, lines: int, named: bool) -> dict[str, Any]:
    rs = await connect_all(port, clients, named)
    want_each = [(senders - (1 if i < senders else 0)) * lines for i in range(clients)]
    t0 = time.perf_counter()
    for s in range(senders):
        t = rs[s].transport
        assert t is not None
        t.write(b"".join(b"m%d %d %.6f %s\n" % (s, k, time.monotonic(), PAD) for k in range(lines)))
    secs = await _until_done(rs, want_each, t0)
    got = sum(min(r.lines, w) for r, w in zip(rs, want_each, strict=True))
    lost = sum(want_each) - got
    out_of_order = sum(r.bad for r in rs[:SAMPLE]) + sum(
        1 for r in rs[:SAMPLE] for s in range(senders) if s != rs.index(r) and r.seen.get(b"%d" % s) != lines
    )
    for r in rs:
        if r.transport is not None:
            r.transport.close()
    return {"seconds": secs, "deliveries": sum(want_each), "lost": lost, "out_of_order": out_of_order}


async def latency(port: int, clients: int, seconds: float, named: bool) -> dict[str, Any]:
    return await timed_lines(await connect_all(port, clients, named), seconds)


async def timed_lines(rs: list[Receiver], seconds: float) -> dict[str, Any]:
    """One sender (``rs[0]``) writes 50 lines a second for ``seconds``; every other client's deliveries are timed."""
    clients = len(rs)
    for r in rs[1:]:
        r.latencies = []
    sender = rs[0].transport
    assert sender is not None
    n = int(seconds * 50)
    start = time.monotonic()
    for k in range(n):
        await asyncio.sleep(max(0.0, start + k / 50 - time.monotonic()))
        sender.write(b"m0 %d %.6f %s\n" % (k, time.monotonic(), PAD))
    await _until_done(rs[1:], [n] * (clients - 1), time.perf_counter())
    lat = sorted(x for r in rs[1:] for x in (r.latencies or []))
    for r in rs:
        if r.transport is not None:
            r.transport.close()
    return {
        "deliveries": len(lat),
        "lost": n * (clients - 1) - len(lat),
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
        "max_ms": 1000 * lat[-1],
    }


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024
    return 0


async def idle(port: int, clients: int, named: bool, pid: int) -> dict[str, Any]:
    before = rss(pid)
    rs = await connect_all(port, clients, named)
    await asyncio.sleep(1.0)
    after = rss(pid)
    for r in rs:
        if r.transport is not None:
            r.transport.close()
    return {"bytes_per_client": (after - before) / clients}


def start(tool: str, port: int, clients: int) -> subprocess.Popen[bytes]:
    if tool == "sockcat chat":
        argv = [
            sys.executable,
            "-m",
            "sockcat",
            "chat",
            f"tcp://127.0.0.1:{port}",
            "--db",
            ":memory:",
            "--line-rate",
            "0",
        ]
    else:
        argv = ["ncat", "-l", "--chat", "--max-conns", str(clients + 10), "127.0.0.1", str(port)]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_tcp(port, p)
    return p


def run(tool: str, what: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    broker = start(tool, port, args.clients)
    named = tool == "sockcat chat"
    try:
        cpu0 = cpu_seconds(broker.pid)
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        if what == "flood":
            out = _loop(flood(port, args.clients, args.senders, args.lines, named))
        elif what == "latency":
            out = _loop(latency(port, args.clients, args.seconds, named))
        else:
            out = _loop(idle(port, args.clients, named, broker.pid))
        out["broker_cpu"] = cpu_seconds(broker.pid) - cpu0
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        out["client_cpu"] = (me1.ru_utime + me1.ru_stime) - (me0.ru_utime + me0.ru_stime)
    finally:
        broker.terminate()
        broker.wait(10)
    return out


def _loop(coro: Any) -> dict[str, Any]:
    try:
        import uvloop

        out: dict[str, Any] = uvloop.run(coro)
    except ImportError:
        out = asyncio.run(coro)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0, help="latency: seconds at 50 lines a second")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * args.clients + 100)), hard))
    tools = ["sockcat chat", "ncat --chat"]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {t: {"flood": [], "latency": [], "idle": []} for t in tools}
    for r in range(args.runs):
        for what in ("flood", "latency", "idle"):
            for tool in tools if r % 2 == 0 else tools[::-1]:
                out = run(tool, what, args)
                results[tool][what].append(out)
                print(f"run {r + 1}/{args.runs} {what:7} {tool:13} {json.dumps(out)}", file=sys.stderr)
    if args.json:
        print(json.dumps({"results": results, "machine": machine(), "args": vars(args)}, indent=2))
        return
    med = statistics.median
    print(
        f"{args.clients} clients, one uvloop load process; flood: {args.senders} senders x {args.lines} lines of 64 B "
        f"flat out (sockcat --line-rate 0); latency: 50 lines/s for {args.seconds:g} s; medians of {args.runs} "
        f"interleaved runs; {machine()}\n"
    )
    head = (
        "| broker | flood deliveries/s | lost | × ncat | broker CPU s/100k | p50 ms | p99 ms | max ms | memory/client |"
    )
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    nc = results["ncat --chat"]
    nc_rate = med([x["deliveries"] / x["seconds"] for x in nc["flood"]])
    for t in tools:
        f, lat, idl = results[t]["flood"], results[t]["latency"], results[t]["idle"]
        rate = med([x["deliveries"] / x["seconds"] for x in f])
        lost = sum(x["lost"] + x["out_of_order"] for x in f) + sum(x["lost"] for x in lat)
        cpu = med([x["broker_cpu"] / x["deliveries"] * 1e5 for x in f])
        print(
            f"| {t} | {rate:,.0f} | {lost} | {rate / nc_rate:.2f} | {cpu:.3f} "
            f"| {med([x['p50_ms'] for x in lat]):.2f} | "
            f"{med([x['p99_ms'] for x in lat]):.2f} | {med([x['max_ms'] for x in lat]):.2f} | "
            f"{med([x['bytes_per_client'] for x in idl]):,.0f} B |"
        )
    print(
        f"\nload client CPU (flood, median): {med([x['client_cpu'] for t in tools for x in results[t]['flood']]):.2f} s"
    )


if __name__ == "__main__":
    main()
