#!/usr/bin/env python3
"""Bulk throughput through ``sockcat relay`` vs socat, ncat and direct iperf3 (loopback).

Run from the repository root::

    python bench/relay_throughput.py [--runs 5] [--size 2G] [--parallel 1,8] [--json]

Each run goes round-robin over every configuration (interleaved, so machine noise spreads evenly), for each
``--parallel`` value (iperf3 ``-P``). A measurement is: a one-off iperf3 server (``iperf3 -s -p P -1``), the
relay(s) started fresh, ``iperf3 -c 127.0.0.1 -p ENTRY -n SIZE -J [-P N]``, its ``end.sum_received`` rate, and
the CPU time the relay process(es) spent during the transfer; then everything is stopped.

Configurations (``tcp`` group: iperf3 -> relay -> iperf3):

* ``direct``: no relay (the ceiling);
* ``sockcat``: ``sockcat relay tcp://127.0.0.1:0 tcp://127.0.0.1:P``;
* ``socat``: ``socat TCP-LISTEN:R,fork,reuseaddr TCP:127.0.0.1:P``; ``socat -b 262144`` the same with a 256 KiB buffer;
* ``ncat``: ``ncat -lk 127.0.0.1 R --sh-exec "ncat 127.0.0.1 P"``.

``chain`` group (iperf3 cannot speak unix, so tcp -> unix -> tcp through two relays):

* ``chain sockcat``: ``sockcat relay tcp://127.0.0.1:0 unix:PATH`` + ``sockcat relay unix:PATH tcp://127.0.0.1:P``;
* ``chain socat`` / ``chain socat -b 262144``: the same chain from two socat processes.

Every process gets a time-out; only processes this script started (and their descendants) are signalled.
Progress goes to stderr; the result to stdout as Markdown tables, or one JSON object with ``--json``.
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    Procs,
    cpu_seconds,
    free_port,
    listening_address,
    machine,
    parse_size,
    source_digest,
    wait_tcp,
    wait_unix,
)

SOCAT_BIG = "262144"


# --- processes -----------------------------------------------------------------------------------


def sockcat_relay(procs: Procs, work: Path, listen: str, target: str) -> tuple[subprocess.Popen[bytes], str]:
    err = work / f"sockcat-{len(procs.started)}-{time.monotonic_ns()}.err"
    p = procs.start(["sockcat", "-q", "relay", "--grace", "1", listen, target], stderr=err)
    return p, listening_address(procs, p)


# --- configurations ------------------------------------------------------------------------------

Starter = Callable[[Procs, Path, int], tuple[int, list[subprocess.Popen[bytes]]]]


def _direct(procs: Procs, work: Path, port: int) -> tuple[int, list[subprocess.Popen[bytes]]]:
    return port, []


def _sockcat(procs: Procs, work: Path, port: int) -> tuple[int, list[subprocess.Popen[bytes]]]:
    p, addr = sockcat_relay(procs, work, "tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}")
    return int(addr.rsplit(":", 1)[1]), [p]


def _socat(*opts: str) -> Starter:
    def start(procs: Procs, work: Path, port: int) -> tuple[int, list[subprocess.Popen[bytes]]]:
        r = free_port()
        p = procs.start(["socat", *opts, f"TCP-LISTEN:{r},fork,reuseaddr", f"TCP:127.0.0.1:{port}"])
        wait_tcp(r, p)
        return r, [p]

    return start


def _ncat(procs: Procs, work: Path, port: int) -> tuple[int, list[subprocess.Popen[bytes]]]:
    r = free_port()
    p = procs.start(["ncat", "-lk", "127.0.0.1", str(r), "--sh-exec", f"ncat 127.0.0.1 {port}"])
    wait_tcp(r, p)
    return r, [p]


def _unix_path(work: Path) -> str:
    return str(work / f"chain-{time.monotonic_ns()}.sock")


def _chain_sockcat(procs: Procs, work: Path, port: int) -> tuple[int, list[subprocess.Popen[bytes]]]:
    path = _unix_path(work)
    back, _ = sockcat_relay(procs, work, f"unix:{path}", f"tcp://127.0.0.1:{port}")
    front, addr = sockcat_relay(procs, work, "tcp://127.0.0.1:0", f"unix:{path}")
    return int(addr.rsplit(":", 1)[1]), [front, back]


def _chain_socat(*opts: str) -> Starter:
    def start(procs: Procs, work: Path, port: int) -> tuple[int, list[subprocess.Popen[bytes]]]:
        path = _unix_path(work)
        back = procs.start(["socat", *opts, f"UNIX-LISTEN:{path},fork,unlink-early", f"TCP:127.0.0.1:{port}"])
        wait_unix(path, back)
        r = free_port()
        front = procs.start(["socat", *opts, f"TCP-LISTEN:{r},fork,reuseaddr", f"UNIX-CONNECT:{path}"])
        wait_tcp(r, front)
        return r, [front, back]

    return start


@dataclass
class Config:
    name: str
    group: str  # "tcp" or "chain"
    start: Starter
    command: str


CONFIGS = [
    Config("direct", "tcp", _direct, "iperf3 -c 127.0.0.1 -p P"),
    Config("sockcat", "tcp", _sockcat, "sockcat relay tcp://127.0.0.1:R tcp://127.0.0.1:P"),
    Config("socat", "tcp", _socat(), "socat TCP-LISTEN:R,fork,reuseaddr TCP:127.0.0.1:P"),
    Config(
        "socat -b 262144",
        "tcp",
        _socat("-b", SOCAT_BIG),
        "socat -b 262144 TCP-LISTEN:R,fork,reuseaddr TCP:127.0.0.1:P",
    ),
    Config("ncat", "tcp", _ncat, 'ncat -lk 127.0.0.1 R --sh-exec "ncat 127.0.0.1 P"'),
    Config(
        "chain sockcat",
        "chain",
        _chain_sockcat,
        "sockcat relay tcp://127.0.0.1:R unix:S + sockcat relay unix:S tcp://127.0.0.1:P",
    ),
    Config(
        "chain socat",
        "chain",
        _chain_socat(),
        "socat TCP-LISTEN:R,fork,reuseaddr UNIX-CONNECT:S + socat UNIX-LISTEN:S,fork,unlink-early TCP:127.0.0.1:P",
    ),
    Config(
        "chain socat -b 262144",
        "chain",
        _chain_socat("-b", SOCAT_BIG),
        "the same chain, both socat with -b 262144",
    ),
]
BASELINES = {
    "tcp": ("socat", "socat -b 262144"),
    "chain": ("chain socat", "chain socat -b 262144"),
}


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Sample:
    gbps: float | None = None
    relay_cpu_s: float | None = None
    seconds: float | None = None
    error: str | None = None


def measure(procs: Procs, work: Path, config: Config, size: str, parallel: int) -> Sample:
    sample = Sample()
    server: subprocess.Popen[bytes] | None = None
    relays: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        server = procs.start(["iperf3", "-s", "-p", str(port), "-1"])
        wait_tcp(port, server)
        entry, relays = config.start(procs, work, port)
        cpu0 = sum(cpu_seconds(p.pid) for p in relays)
        argv = ["iperf3", "-c", "127.0.0.1", "-p", str(entry), "-n", size, "-J"]
        if parallel > 1:
            argv += ["-P", str(parallel)]
        limit = 30.0 + parse_size(size) / 50e6  # generous: anything slower than ~0.4 Gbit/s is a failure anyway
        started = time.monotonic()
        try:
            out = subprocess.run(argv, capture_output=True, timeout=limit, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            sample.error = f"iperf3 client timed out after {limit:.0f} s"
            return sample
        sample.seconds = time.monotonic() - started
        time.sleep(0.3)  # let fork-per-connection children exit and be reaped into their parent's times
        sample.relay_cpu_s = sum(cpu_seconds(p.pid) for p in relays) - cpu0 if relays else None
        try:
            result = json.loads(out.stdout)
        except ValueError:
            sample.error = f"iperf3 exit {out.returncode}: {out.stderr.decode(errors='replace').strip()[:200]}"
            return sample
        if "error" in result:
            sample.error = str(result["error"])
        with contextlib.suppress(KeyError, TypeError):
            sample.gbps = float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
        if sample.gbps is None and sample.error is None:
            sample.error = "no end.sum_received in iperf3's JSON"
        return sample
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        sample.error = str(exc)
        return sample
    finally:
        for p in relays:
            procs.stop(p)
        if server is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=2)
            procs.stop(server)


# --- reporting -----------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Summary:
    samples: list[Sample] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [s.gbps for s in self.samples if s.gbps is not None]

    def as_dict(self) -> dict[str, Any]:
        cpus = [s.relay_cpu_s for s in self.samples if s.relay_cpu_s is not None]
        return {
            "median_gbps": median(self.rates),
            "runs_gbps": [s.gbps for s in self.samples],
            "median_relay_cpu_s": median(cpus),
            "errors": [s.error for s in self.samples if s.error],
        }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def build_report(
    results: dict[int, dict[str, Summary]], args: argparse.Namespace, facts: dict[str, Any]
) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": facts, "size": args.size, "runs": args.runs, "parallel": {}}
    for parallel, by_name in results.items():
        direct = median(by_name["direct"].rates)
        table: dict[str, Any] = {}
        for config in CONFIGS:
            entry = by_name[config.name].as_dict()
            med = entry["median_gbps"]
            base, big = BASELINES[config.group]
            entry["group"] = config.group
            entry["vs_direct"] = ratio(med, direct)
            entry["vs_socat"] = ratio(med, median(by_name[base].rates))
            entry["vs_socat_b262144"] = ratio(med, median(by_name[big].rates))
            table[config.name] = entry
        report["parallel"][str(parallel)] = table
    report["targets"] = targets(report)
    return report


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def check(what: str, value: float | None, need: float) -> None:
        out.append({"target": what, "need": need, "measured": value, "met": value is not None and value >= need})

    one = report["parallel"].get("1")
    if one:
        check("1 stream tcp->tcp: >= 2x socat default", one["sockcat"]["vs_socat"], 2.0)
        check("1 stream tcp->tcp: >= 1.15x socat -b 262144", one["sockcat"]["vs_socat_b262144"], 1.15)
        check("1 stream tcp->tcp: aim 0.8x direct", one["sockcat"]["vs_direct"], 0.8)
        check("1 stream tcp->unix->tcp chain: >= 2x socat default chain", one["chain sockcat"]["vs_socat"], 2.0)
        check(
            "1 stream tcp->unix->tcp chain: >= 1.15x socat -b 262144 chain",
            one["chain sockcat"]["vs_socat_b262144"],
            1.15,
        )
    eight = report["parallel"].get("8")
    if eight:
        check("8 streams tcp->tcp: aggregate >= socat -b 262144", eight["sockcat"]["vs_socat_b262144"], 1.0)
        check("8 streams chain: aggregate >= socat -b 262144 chain", eight["chain sockcat"]["vs_socat_b262144"], 1.0)
    return out


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    m = report["machine"]
    lines.append(
        f"Machine: {m['nproc']} CPUs, Linux {m['kernel']}, Python {m['python']} (uvloop {m['uvloop']}), "
        f"sockcat {m['sockcat']} (_relay.py sha256 {m['relay_source_sha256']}), socat {m['socat']}, "
        f"ncat {m['ncat']}, iperf3 {m['iperf3']}. "
        f"iperf3 `-n {report['size']}`, median of {report['runs']} interleaved runs."
    )
    for parallel, table in report["parallel"].items():
        lines.append("")
        lines.append(f"iperf3 `-P {parallel}`:" if parallel != "1" else "One TCP stream:")
        lines.append("")
        lines.append("| path | Gbit/s (median) | runs | × socat default | × socat -b 262144 | × direct | relay CPU s |")
        lines.append("|---|---:|---|---:|---:|---:|---:|")
        for name, e in table.items():
            runs = " ".join(_f(x, ".1f") for x in e["runs_gbps"])
            errors = f" ({len(e['errors'])} failed)" if e["errors"] else ""
            label = name if e["group"] == "tcp" else f"{name} (tcp→unix→tcp)"
            lines.append(
                f"| {label} | {_f(e['median_gbps'])} | {runs}{errors} | {_f(e['vs_socat'])} | "
                f"{_f(e['vs_socat_b262144'])} | {_f(e['vs_direct'])} | {_f(e['median_relay_cpu_s'])} |"
            )
    lines.append("")
    lines.append("Chain rows compare against the socat chain built the same way (default / -b 262144).")
    lines.append("")
    lines.append("| target | measured | met |")
    lines.append("|---|---:|---|")
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {_f(t['measured'])}× | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", default="2G", help="iperf3 -n (bytes to send; K/M/G suffixes)")
    ap.add_argument("--parallel", default="1,8", help="comma-separated iperf3 -P values")
    ap.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    parse_size(args.size)
    parallels = [int(x) for x in args.parallel.split(",") if x.strip()]
    for tool in ("iperf3", "socat", "ncat", "sockcat", "ss"):
        if shutil.which(tool) is None:
            print(f"relay_throughput: {tool} not found", file=sys.stderr)
            return 1
    facts = machine(relay_source_sha256=source_digest())
    configs = CONFIGS
    results: dict[int, dict[str, Summary]] = {p: {c.name: Summary() for c in CONFIGS} for p in parallels}
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        work = Path(tmp)
        try:
            for run in range(args.runs):
                for parallel in parallels:
                    for config in configs:
                        if args.only and config.name not in args.only.split(","):
                            continue
                        s = measure(procs, work, config, args.size, parallel)
                        results[parallel][config.name].samples.append(s)
                        print(
                            f"run {run + 1}/{args.runs} -P {parallel} {config.name:24s} "
                            f"{_f(s.gbps, '6.2f')} Gbit/s  relay cpu {_f(s.relay_cpu_s)} s"
                            + (f"  ERROR {s.error}" if s.error else ""),
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            procs.stop_all()
    report = build_report(results, args, facts)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
