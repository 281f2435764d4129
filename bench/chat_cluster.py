#!/usr/bin/env python3
"""A chat cluster beside a single broker, in one run, interleaved: the same 1,000 clients on one
``sockcat chat`` without ``--cluster``, and spread over 2 brokers sharing one ``redis-server`` (``--cluster``).

* **flood**: ``--senders`` clients (spread over the brokers) write ``--lines`` lines of 64 B each as fast as the
  brokers take them; every client must get every other sender's line (the run fails unless each count is exact),
  and a sample of clients is checked for per-sender order. Deliveries per second, and the CPU of the brokers and of
  Redis per 100k deliveries.
* **latency**: one sender writes 50 lines a second for ``--seconds``; every delivery is timed: p50, p99, max.

Run from the repository root with the venv's bin first on PATH: ``python bench/chat_cluster.py --runs 3``.
The load client is one uvloop process (chat_flood.py's); brokers, Redis and the load client share the 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import cpu_seconds, free_port, wait_tcp
from chat_flood import PAD, SAMPLE, Receiver, _until_done, rss, timed_lines


async def connect_split(ports: list[int], clients: int) -> list[Receiver]:
    """``clients`` joined clients, dealt round-robin over the brokers' ports."""
    loop = asyncio.get_running_loop()
    out: list[Receiver] = []
    for i in range(clients):
        port = ports[i % len(ports)]
        _t, r = await loop.create_connection(functools.partial(Receiver, i < SAMPLE), "127.0.0.1", port)
        out.append(r)
    for r in out:
        await r.ready
    for i, r in enumerate(out):
        assert r.transport is not None
        r.transport.write(f"c{i}\n".encode())
    await _joined_and_quiet(out)  # (not counted)
    for r in out:
        r.lines, r.buf, r.seen, r.bad = 0, b"", {}, 0
    return out


async def _joined_and_quiet(rs: list[Receiver]) -> float:
    """Until every client has its "* hello" line, then until the join notices (each join is announced to everyone,
    across brokers too) have stopped for a second: when that quiet began, in seconds from now."""
    t0 = time.perf_counter()
    while any(r.lines == 0 for r in rs):
        await asyncio.sleep(0.01)
    total, quiet_since = -1, time.perf_counter()
    while time.perf_counter() - quiet_since < 1.0:
        now_total = sum(r.lines for r in rs)
        if now_total != total:
            total, quiet_since = now_total, time.perf_counter()
        await asyncio.sleep(0.05)
    return quiet_since - t0


async def flood(ports: list[int], clients: int, senders: int, lines: int) -> dict[str, Any]:
    rs = await connect_split(ports, clients)
    want = [(senders - (1 if i < senders else 0)) * lines for i in range(clients)]
    t0 = time.perf_counter()
    for s in range(senders):
        t = rs[s].transport
        assert t is not None
        t.write(b"".join(b"m%d %d %.6f %s\n" % (s, k, time.monotonic(), PAD) for k in range(lines)))
    secs = await _until_done(rs, want, t0)
    got = sum(min(r.lines, w) for r, w in zip(rs, want, strict=True))
    bad = sum(r.bad for r in rs[:SAMPLE])
    for r in rs:
        if r.transport is not None:
            r.transport.close()
    return {"seconds": secs, "deliveries": sum(want), "lost": sum(want) - got, "out_of_order": bad}


async def latency(ports: list[int], clients: int, seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = await timed_lines(await connect_split(ports, clients), seconds)
    return result


async def _brokers(redis_url: str, count: int, clients: int) -> tuple[list[int], list[subprocess.Popen[bytes]]]:
    """``count`` brokers on one Redis, room for ``clients`` each, all subscribed: their ports and processes."""
    ports, procs = [free_port() for _ in range(count)], []
    for port in ports:
        argv = ["sockcat", "-q", "chat", f"tcp://127.0.0.1:{port}", "--db", ":memory:", "--line-rate", "0"]
        p = subprocess.Popen([*argv, "--max-conns", str(clients + 10), "--cluster", redis_url])
        procs.append(p)
        wait_tcp(port, p)
    await asyncio.sleep(1.0)  # every broker subscribed
    return ports, procs


async def failover(redis_url: str, clients: int) -> dict[str, Any]:
    """``clients`` users on broker A; A is killed (SIGKILL); each user reconnects at once to broker B under the same
    name, retrying while the name is still held. Seconds from the kill until every user is back and hears a line."""
    ports, procs = await _brokers(redis_url, 2, clients)
    try:
        first = [await _join(ports[0], f"u{i}") for i in range(clients)]
        killed = time.perf_counter()
        procs[0].kill()
        for _r, w in first:
            w.close()
        names_back = await asyncio.gather(*(_rejoin(ports[1], f"u{i}") for i in range(clients)))
        joined = time.perf_counter() - killed
        probe_r, probe_w = await _join(ports[1], "probe")
        probe_w.write(b"are you there\n")
        await asyncio.gather(*(r.readuntil(b"<probe> are you there\n") for r, _w in names_back))
        heard = time.perf_counter() - killed
        for _r, w in [*names_back, (probe_r, probe_w)]:
            w.close()
        return {"all_rejoined_s": joined, "all_heard_s": heard}
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def scale(redis_url: str, clients: int, brokers: int, lines: int) -> dict[str, Any]:
    """``clients`` users joining ``brokers`` brokers on one Redis (dealt round-robin): seconds until all are
    joined, until the join notices (each join is announced to everyone) have all arrived, each broker's memory per
    client it holds; then one sender per broker writes ``lines`` lines and every client must get every other
    sender's lines, exactly."""
    loop = asyncio.get_running_loop()
    ports, procs = await _brokers(redis_url, brokers, clients)
    try:
        before = [rss(p.pid) for p in procs]
        t0 = time.perf_counter()
        rs: list[Receiver] = []
        for i in range(clients):
            _t, r = await loop.create_connection(functools.partial(Receiver, False), "127.0.0.1", ports[i % brokers])
            rs.append(r)
        for r in rs:
            await r.ready
        for i, r in enumerate(rs):
            assert r.transport is not None
            r.transport.write(f"c{i}\n".encode())
        while any(r.lines == 0 for r in rs):  # each one's "* hello" line
            await asyncio.sleep(0.01)
        joined = time.perf_counter() - t0
        settled = joined + await _joined_and_quiet(rs)
        notices = sum(r.lines for r in rs) - clients  # (without the hello lines)
        held = [len(range(b, clients, brokers)) for b in range(brokers)]
        per_client = [(rss(p.pid) - b0) / n for p, b0, n in zip(procs, before, held, strict=True)]
        for r in rs:
            r.lines = 0
        t1 = time.perf_counter()
        for s in range(brokers):  # client s sits on broker s
            t = rs[s].transport
            assert t is not None
            t.write(b"".join(b"m%d %d %.6f %s\n" % (s, k, time.monotonic(), PAD) for k in range(lines)))
        want = [(brokers - (1 if i < brokers else 0)) * lines for i in range(clients)]
        secs = await _until_done(rs, want, t1)
        lost = sum(want) - sum(min(r.lines, w) for r, w in zip(rs, want, strict=True))
        extra = sum(max(0, r.lines - w) for r, w in zip(rs, want, strict=True))
        for r in rs:
            if r.transport is not None:
                r.transport.close()
        return {
            "joined_s": joined,
            "notices_settled_s": settled,
            "join_notices": notices,
            "bytes_per_client": per_client,
            "deliveries": sum(want),
            "deliver_s": secs,
            "lost": lost,
            "extra": extra,
        }
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def _join(port: int, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await r.readline()
    w.write(f"{name}\n".encode())
    line = await r.readline()
    if not line.startswith(b"* hello"):
        w.close()
        raise RuntimeError(line.decode())
    return r, w


async def _rejoin(port: int, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await r.readline()
    while True:
        w.write(f"{name}\n".encode())
        line = await r.readline()
        if line.startswith(b"* hello"):
            return r, w
        await asyncio.sleep(0.1)  # "is taken": the dead broker's lease has not ended yet


def _loop(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


@contextlib.contextmanager
def fresh_redis(tmp: str) -> Iterator[str]:
    """A redis-server of this run's own on a free loopback port (no persistence): its URL, killed after."""
    port = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_tcp(port, redis_proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        redis_proc.kill()
        redis_proc.wait()


def run(config: str, what: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    redis_proc = None
    try:
        cluster: list[str] = []
        brokers = 1
        if config == "cluster":
            rport = free_port()
            redis_proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(rport),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp),
                ],
                stdout=subprocess.DEVNULL,
            )
            wait_tcp(rport, redis_proc)
            cluster = ["--cluster", f"redis://127.0.0.1:{rport}/0"]
            brokers = 2
        ports = []
        for _ in range(brokers):
            port = free_port()
            p = subprocess.Popen(
                [
                    "sockcat",
                    "-q",
                    "chat",
                    f"tcp://127.0.0.1:{port}",
                    "--db",
                    ":memory:",
                    "--line-rate",
                    "0",
                    "--max-conns",
                    str(args.clients + 10),
                    *cluster,
                ],
            )
            procs.append(p)
            wait_tcp(port, p)
            ports.append(port)
        time.sleep(0.5)
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        rcpu0 = cpu_seconds(redis_proc.pid) if redis_proc is not None else 0.0
        result: dict[str, Any]
        if what == "flood":
            result = _loop(flood(ports, args.clients, args.senders, args.lines))
        else:
            result = _loop(latency(ports, args.clients, args.seconds))
        result["broker_cpu"] = sum(cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True))
        result["redis_cpu"] = cpu_seconds(redis_proc.pid) - rcpu0 if redis_proc is not None else 0.0
        return dict(result)
    finally:
        for p in [*procs, *([redis_proc] if redis_proc is not None else [])]:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--failover", type=int, default=200, metavar="N", help="users moved by the failover test (0: none)")
    ap.add_argument("--scale", type=int, default=10_000, metavar="N", help="users of the scale test (0: none)")
    ap.add_argument("--scale-brokers", type=int, default=3, metavar="B", help="brokers of the scale test")
    args = ap.parse_args()
    for tool in ("sockcat", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (the venv's bin first on PATH; scripts/test installs redis)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.clients + 100)), hard))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    configs = ["single", "cluster"]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            for what in ("flood", "latency"):
                for config in configs if r % 2 == 0 else configs[::-1]:
                    res = run(config, what, args, Path(tmp))
                    results.setdefault((config, what), []).append(res)
                    print(f"run {r + 1}/{args.runs} {what:7} {config:8} {res}", file=sys.stderr)

        fails = []
        for _ in range(args.runs if args.failover else 0):
            with fresh_redis(tmp) as url:
                fails.append(_loop(failover(url, args.failover)))
            print(f"failover {fails[-1]}", file=sys.stderr)

        scales = []
        for _ in range(args.runs if args.scale else 0):
            with fresh_redis(tmp) as url:
                scales.append(_loop(scale(url, args.scale, args.scale_brokers, 20)))
            print(f"scale {scales[-1]}", file=sys.stderr)

    def med(config: str, what: str, key: str) -> float:
        return float(statistics.median(x[key] for x in results[(config, what)]))

    print(f"{args.clients} clients; flood: {args.senders} senders × {args.lines} lines; medians of {args.runs}\n")
    print("| brokers | deliveries/s | × single | lost | broker CPU s/100k | Redis CPU s/100k | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    single = statistics.median(x["deliveries"] / x["seconds"] for x in results[("single", "flood")])
    for config, label in (("single", "1, no --cluster"), ("cluster", "2 with --cluster, one Redis")):
        rate = statistics.median(x["deliveries"] / x["seconds"] for x in results[(config, "flood")])
        per = 100_000 / statistics.median(x["deliveries"] for x in results[(config, "flood")])
        lost = max(x["lost"] for x in results[(config, "flood")])
        cpu, rcpu = med(config, "flood", "broker_cpu") * per, med(config, "flood", "redis_cpu") * per
        p50, p99 = med(config, "latency", "p50_ms"), med(config, "latency", "p99_ms")
        print(
            f"| {label} | {rate:,.0f} | {rate / single:.2f} | {lost} | {cpu:.3f} | {rcpu:.3f} | {p50:.2f} | {p99:.2f} |"
        )
    if scales:
        joined = statistics.median(x["joined_s"] for x in scales)
        settled = statistics.median(x["notices_settled_s"] for x in scales)
        notices = statistics.median(x["join_notices"] for x in scales)
        mem = statistics.median(b for x in scales for b in x["bytes_per_client"])
        lost = max(x["lost"] + x["extra"] for x in scales)
        print(
            f"\nscale: {args.scale} users over {args.scale_brokers} brokers on one Redis: all joined in {joined:.2f} s;"
            f" the {notices:,.0f} join notices all delivered at {settled:.2f} s; {mem:,.0f} B per client per broker;"
            f" then {scales[0]['deliveries']:,} lines, {lost} lost or extra; medians of {len(scales)}"
        )
    if fails:
        back = statistics.median(f["all_rejoined_s"] for f in fails)
        heard = statistics.median(f["all_heard_s"] for f in fails)
        print(f"\nfailover: {args.failover} users of a SIGKILLed broker were all joined on the other one {back:.2f} s")
        print(
            f"after the kill (the name lease is 5 s), and all heard a new line at {heard:.2f} s; median of {len(fails)}"
        )


if __name__ == "__main__":
    main()
