#!/usr/bin/env python3
"""Bulk throughput of ``sockcat listen``/``sockcat connect`` through stdio, beside nc, ncat and socat.

Run from the repository root::

    python bench/stdio_throughput.py [--size 1G] [--runs 5] [--json]
                                     [--tools sockcat,socat,socat-b256k,nc,ncat] [--kind tcp|unix]

One measurement of a tool: a receiver listens on loopback (``tcp``: 127.0.0.1 on a free port; ``unix``: a socket
path under a temporary directory) with stdin ``/dev/null`` and stdout ``/dev/null``; once it listens, the clock
starts and ``head -c SIZE /dev/zero | SENDER`` is started (two Popen objects, no shell). The clock stops when both
the sender and the receiver have exited; throughput = SIZE / elapsed. The figure therefore includes each tool's
start-up (process creation, connect, for sockcat the Python interpreter and its imports) and its shutdown.

=============  =========================================================  ===========================================
tool           receiver                                                   sender (stdin: ``head -c SIZE /dev/zero``)
=============  =========================================================  ===========================================
sockcat        ``sockcat listen tcp://127.0.0.1:P``                       ``sockcat connect tcp://127.0.0.1:P``
socat          ``socat -u TCP-LISTEN:P,reuseaddr STDOUT``                 ``socat -u STDIN TCP:127.0.0.1:P``
socat-b256k    the same with ``-b 262144``                                the same with ``-b 262144``
nc             ``nc -l 127.0.0.1 P`` (OpenBSD netcat)                     ``nc -N 127.0.0.1 P``
ncat           ``ncat -l 127.0.0.1 P --recv-only``                        ``ncat --send-only 127.0.0.1 P``
=============  =========================================================  ===========================================

``--feeder dd`` writes the zeros with ``dd if=/dev/zero bs=1M count=SIZE iflag=count_bytes`` instead of ``head``
(which writes 4 KiB at a time and so spends more CPU: on a 2-CPU machine the feeder, the sender and the receiver
compete for the CPUs, and the feeder's share caps the fastest tools).

``--kind unix`` uses ``sockcat listen/connect unix:PATH``, ``socat UNIX-LISTEN:PATH`` / ``UNIX-CONNECT:PATH``,
``nc -U`` and ``ncat -U``.

Readiness: sockcat is ready once it printed its ``listening on`` line; the others once ``/proc/net/tcp`` (or
``/proc/net/unix``) shows their socket in the listening state. Nothing connects to probe (the listeners are
one-shot).

The timed runs go round-robin over the tools (run 1 of every tool, then run 2, ...), so machine noise hits every
tool alike. Before them, every tool makes one untimed verification run: ``--verify-size`` bytes of random data
from a temporary file (``cat FILE | SENDER``), the receiver's stdout into a file, and the SHA-256 of both compared
("byte-exact"). A timed run only counts if ``head``, the sender and the receiver all exit 0 (``head`` dying of
SIGPIPE means the sender stopped reading its input: a cut transfer that would look like a fast one).

CPU time (user + system) of the sender and the receiver comes from ``os.wait4`` on their PIDs (``head`` is not
counted) and is reported as CPU seconds per GiB moved.

Every process gets a time-out (``--timeout``, default 120 s); on expiry only the processes this script started are
killed, by PID. Progress goes to stderr; the result goes to stdout as a table (``rich`` if importable), or as one
JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from _common import free_port, machine, parse_size, sha256_file, tool_version

GIB = 1 << 30
MIB = 1 << 20
LISTEN_TIMEOUT = 10.0
SOCAT_BIG = "262144"
ALL_TOOLS = ("sockcat", "socat", "socat-b256k", "nc", "ncat")
LISTENING_LINE = re.compile(rb"^listening on (\S+)$", re.M)


# --- tools -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where a receiver listens: ``port`` for tcp, ``path`` for unix."""

    kind: str
    port: int = 0
    path: str = ""


@dataclass(frozen=True)
class Tool:
    name: str
    receiver: Callable[[Endpoint], list[str]]
    sender: Callable[[Endpoint], list[str]]
    prints_listening: bool = False  # sockcat: readiness from its ``listening on`` stderr line


def sockcat_argv() -> list[str]:
    """The ``sockcat`` console script next to this interpreter, else ``python -m sockcat``."""
    script = Path(sys.executable).with_name("sockcat")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "sockcat"]


def _sockcat_addr(ep: Endpoint) -> str:
    return f"tcp://127.0.0.1:{ep.port}" if ep.kind == "tcp" else f"unix:{ep.path}"


def _socat_tool(name: str, opts: Sequence[str]) -> Tool:
    def receiver(ep: Endpoint) -> list[str]:
        where = f"TCP-LISTEN:{ep.port},bind=127.0.0.1,reuseaddr" if ep.kind == "tcp" else f"UNIX-LISTEN:{ep.path}"
        return ["socat", *opts, "-u", where, "STDOUT"]

    def sender(ep: Endpoint) -> list[str]:
        where = f"TCP:127.0.0.1:{ep.port}" if ep.kind == "tcp" else f"UNIX-CONNECT:{ep.path}"
        return ["socat", *opts, "-u", "STDIN", where]

    return Tool(name, receiver, sender)


def build_tools() -> dict[str, Tool]:
    sc = sockcat_argv()

    def sockcat_rx(ep: Endpoint) -> list[str]:
        return [*sc, "listen", _sockcat_addr(ep)]

    def sockcat_tx(ep: Endpoint) -> list[str]:
        return [*sc, "connect", _sockcat_addr(ep)]

    def nc_rx(ep: Endpoint) -> list[str]:
        return ["nc", "-l", "127.0.0.1", str(ep.port)] if ep.kind == "tcp" else ["nc", "-l", "-U", ep.path]

    def nc_tx(ep: Endpoint) -> list[str]:
        return ["nc", "-N", "127.0.0.1", str(ep.port)] if ep.kind == "tcp" else ["nc", "-N", "-U", ep.path]

    def ncat_rx(ep: Endpoint) -> list[str]:
        where = ["127.0.0.1", str(ep.port)] if ep.kind == "tcp" else ["-U", ep.path]
        return ["ncat", "-l", *where, "--recv-only"]

    def ncat_tx(ep: Endpoint) -> list[str]:
        where = ["127.0.0.1", str(ep.port)] if ep.kind == "tcp" else ["-U", ep.path]
        return ["ncat", "--send-only", *where]

    return {
        "sockcat": Tool("sockcat", sockcat_rx, sockcat_tx, prints_listening=True),
        "socat": _socat_tool("socat", ()),
        "socat-b256k": _socat_tool("socat-b256k", ("-b", SOCAT_BIG)),
        "nc": Tool("nc", nc_rx, nc_tx),
        "ncat": Tool("ncat", ncat_rx, ncat_tx),
    }


def tool_missing(tool: Tool) -> str | None:
    """Why ``tool`` cannot run here, or None."""
    exe = tool.receiver(Endpoint("tcp", 1))[0]
    if shutil.which(exe) is None:
        return f"{exe} not found"
    if tool.name == "nc":
        out = subprocess.run(["nc", "-h"], capture_output=True, text=True, timeout=10)
        if "OpenBSD" not in out.stdout + out.stderr:
            return "nc is not OpenBSD netcat (needs -N and the OpenBSD -l syntax)"
    return None


# --- readiness -------------------------------------------------------------------------------------


def tcp_listening(port: int) -> bool:
    """Whether /proc/net/tcp shows a listener (state 0A) on 127.0.0.1:port or 0.0.0.0:port."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/tcp") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 3 and fields[1] in wanted and fields[3] == "0A":
                return True
    return False


def unix_listening(path: str) -> bool:
    """Whether /proc/net/unix shows a listening (``__SO_ACCEPTCON``) stream socket bound to ``path``."""
    with open("/proc/net/unix") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                return True
    return False


def wait_ready(tool: Tool, ep: Endpoint, proc: subprocess.Popen[bytes], stderr: Path) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while time.monotonic() < deadline:
        if tool.prints_listening:
            if LISTENING_LINE.search(stderr.read_bytes()):
                return
        elif tcp_listening(ep.port) if ep.kind == "tcp" else unix_listening(ep.path):
            return
        if proc.poll() is not None:
            err = stderr.read_text(errors="replace").strip()
            raise RuntimeError(f"{tool.name} receiver exited with {proc.returncode} before listening: {err}")
        time.sleep(0.005)
    raise RuntimeError(f"{tool.name} receiver not listening after {LISTEN_TIMEOUT:g} s")


# --- one transfer ----------------------------------------------------------------------------------


@dataclass
class Reaped:
    status: int  # exit code, negative for a signal (as Popen.returncode)
    cpu: float  # user + system seconds
    at: float  # perf_counter() when reaped


@dataclass
class Transfer:
    tool: str
    size: int
    seconds: float
    ok: bool
    cpu_sender: float
    cpu_receiver: float
    error: str = ""
    received: Path | None = None


def _reap(pid: int, flags: int) -> Reaped | None:
    got, status, usage = os.wait4(pid, flags)
    if got == 0:
        return None
    return Reaped(os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, time.perf_counter())


def reap_all(procs: dict[str, subprocess.Popen[bytes]], deadline: float) -> tuple[dict[str, Reaped], bool]:
    """Wait (os.wait4, for the CPU time) until every process exits or ``deadline``; then kill the rest by PID.

    Returns what was reaped and whether the deadline expired.
    """
    done: dict[str, Reaped] = {}
    pidfds: dict[int, str] = {}
    if hasattr(os, "pidfd_open"):
        for name, p in procs.items():
            with contextlib.suppress(OSError):
                pidfds[os.pidfd_open(p.pid)] = name
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    timed_out = False
    try:
        while len(done) < len(procs):
            left = deadline - time.perf_counter()
            if left <= 0:
                timed_out = True
                break
            if len(pidfds) == len(procs):
                poller.poll(min(left, 1.0) * 1000)
            else:
                time.sleep(0.001)
            for name, p in procs.items():
                if name not in done and (r := _reap(p.pid, os.WNOHANG)) is not None:
                    done[name] = r
                    p.returncode = r.status
        if timed_out:
            for name, p in procs.items():
                if name not in done:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGKILL)
            for name, p in procs.items():
                if name not in done and (r := _reap(p.pid, 0)) is not None:
                    done[name] = r
                    p.returncode = r.status
    finally:
        for fd in pidfds:
            os.close(fd)
    return done, timed_out


def _tail(path: Path, limit: int = 300) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip()
        return text[-limit:]
    return ""


def feeder_argv(feeder: str, size: int | str) -> list[str]:
    """What writes SIZE zero bytes into the sender's stdin pipe."""
    if feeder == "dd":
        return ["dd", "if=/dev/zero", "bs=1M", f"count={size}", "iflag=count_bytes", "status=none"]
    return ["head", "-c", str(size), "/dev/zero"]


def transfer(
    tool: Tool,
    kind: str,
    size: int,
    work: Path,
    timeout: float,
    source: Path | None = None,
    keep: bool = False,
    feeder: str = "head",
) -> Transfer:
    """One transfer of ``size`` bytes (zeros, or ``source``'s bytes) through ``tool``."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{tool.name}-", dir=work))
    ep = Endpoint("tcp", port=free_port()) if kind == "tcp" else Endpoint("unix", path=str(run_dir / "s.sock"))
    rx_err, tx_err = run_dir / "receiver.err", run_dir / "sender.err"
    received = run_dir / "received" if keep else None
    procs: dict[str, subprocess.Popen[bytes]] = {}
    result = Transfer(tool.name, size, 0.0, False, 0.0, 0.0)
    sink: IO[bytes] | None = None
    try:
        sink = open(received, "wb") if received is not None else open(os.devnull, "wb")  # noqa: SIM115
        with open(rx_err, "wb") as err:
            procs["receiver"] = subprocess.Popen(
                tool.receiver(ep), stdin=subprocess.DEVNULL, stdout=sink, stderr=err, close_fds=True
            )
        sink.close()
        wait_ready(tool, ep, procs["receiver"], rx_err)
        feed = ["cat", str(source)] if source is not None else feeder_argv(feeder, size)
        start = time.perf_counter()
        procs["head"] = head = subprocess.Popen(feed, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert head.stdout is not None
        try:
            with open(tx_err, "wb") as err:
                procs["sender"] = subprocess.Popen(
                    tool.sender(ep), stdin=head.stdout, stdout=subprocess.DEVNULL, stderr=err, close_fds=True
                )
        finally:
            head.stdout.close()
        done, timed_out = reap_all(procs, start + timeout)
        rx, tx, hd = done["receiver"], done["sender"], done["head"]
        result.seconds = max(rx.at, tx.at) - start
        result.cpu_receiver, result.cpu_sender = rx.cpu, tx.cpu
        problems = []
        if timed_out:
            problems.append(f"timed out after {timeout:g} s (killed)")
        for what, r in (("feeder", hd), ("sender", tx), ("receiver", rx)):
            if r.status != 0:
                problems.append(f"{what} exited with {r.status}")
        if problems:
            detail = " / ".join(x for x in (_tail(rx_err), _tail(tx_err)) if x)
            result.error = "; ".join(problems) + (f" ({detail})" if detail else "")
        else:
            result.ok = True
        result.received = received
    except (OSError, RuntimeError) as exc:
        result.error = str(exc)
    finally:
        if sink is not None:
            sink.close()
        leftover = {name: p for name, p in procs.items() if p.returncode is None}
        if leftover:
            reap_all(leftover, time.perf_counter())  # deadline now: kill by PID and reap
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return result


# --- verification ----------------------------------------------------------------------------------


def make_random_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


@dataclass
class Verification:
    exact: bool
    detail: str


def verify(tool: Tool, kind: str, source: Path, digest: str, work: Path, timeout: float) -> Verification:
    t = transfer(tool, kind, source.stat().st_size, work, timeout, source=source, keep=True)
    try:
        if not t.ok or t.received is None:
            return Verification(False, t.error or "transfer failed")
        got = t.received.stat().st_size
        if got != t.size:
            return Verification(False, f"received {got} of {t.size} bytes")
        if sha256_file(t.received) != digest:
            return Verification(False, "sha256 differs")
        return Verification(True, f"{got} bytes, sha256 {digest[:16]}…")
    finally:
        if t.received is not None:
            shutil.rmtree(t.received.parent, ignore_errors=True)


# --- report ----------------------------------------------------------------------------------------


@dataclass
class ToolResult:
    name: str
    command: str
    runs: list[Transfer] = field(default_factory=list)
    verification: Verification | None = None

    @property
    def good(self) -> list[Transfer]:
        return [r for r in self.runs if r.ok]

    def rates(self) -> list[float]:
        """Bytes per second of the successful runs."""
        return [r.size / r.seconds for r in self.good if r.seconds > 0 and r.size > 0]

    def median_rate(self) -> float | None:
        rates = self.rates()
        return statistics.median(rates) if rates else None

    def as_dict(self, size: int, references: dict[str, float | None]) -> dict[str, Any]:
        rates = self.rates()
        med = self.median_rate()
        gib = size / GIB if size else 0.0
        cpu_tx = [r.cpu_sender for r in self.good]
        cpu_rx = [r.cpu_receiver for r in self.good]

        def per_gib(values: list[float]) -> float | None:
            return statistics.median(values) / gib if values and gib else None

        return {
            "command": self.command,
            "runs": len(self.runs),
            "ok_runs": len(self.good),
            "seconds": [round(r.seconds, 4) for r in self.runs],
            "cpu_seconds": [
                {"sender": round(r.cpu_sender, 3), "receiver": round(r.cpu_receiver, 3)} for r in self.runs
            ],
            "median_seconds": statistics.median([r.seconds for r in self.good]) if self.good else None,
            "median_gbit_s": med * 8 / 1e9 if med else None,
            "min_gbit_s": min(rates) * 8 / 1e9 if rates else None,
            "max_gbit_s": max(rates) * 8 / 1e9 if rates else None,
            "median_mib_s": med / MIB if med else None,
            "min_mib_s": min(rates) / MIB if rates else None,
            "max_mib_s": max(rates) / MIB if rates else None,
            "ratios": {ref: (med / value if med and value else None) for ref, value in references.items()},
            "cpu_s_per_gib": {
                "sender": per_gib(cpu_tx),
                "receiver": per_gib(cpu_rx),
                "total": per_gib([a + b for a, b in zip(cpu_tx, cpu_rx, strict=True)]),
            },
            "byte_exact": None if self.verification is None else self.verification.exact,
            "verification": None if self.verification is None else self.verification.detail,
            "errors": [r.error for r in self.runs if not r.ok],
        }


def build_report(
    args: argparse.Namespace, results: dict[str, ToolResult], verify_size: int, load_start: tuple[float, ...]
) -> dict[str, Any]:
    refs = {ref: results[ref].median_rate() if ref in results else None for ref in ("socat", "socat-b256k")}
    info = machine(
        sockcat=tool_version([*sockcat_argv(), "--version"], r"sockcat (\S+)"),
        nc=tool_version(["nc", "-h"], r"(OpenBSD netcat \(Debian patchlevel [^)]*\)|OpenBSD netcat)"),
    )
    # Other work on the machine skews every figure: the load average before and after says how quiet it was.
    info["loadavg_start"] = [round(x, 2) for x in load_start]
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "benchmark": "stdio_throughput",
        "kind": args.kind,
        "size": args.size,
        "runs": args.runs,
        "verify_size": verify_size,
        "feeder": " ".join(feeder_argv(args.feeder, args.size)),
        "machine": info,
        "tools": {name: r.as_dict(args.size, refs) for name, r in results.items()},
    }


def human_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << (shift - 10 if shift > 10 else 0)) == 0:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} B"


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [
        "tool",
        "Gbit/s (median)",
        "MiB/s (median)",
        "MiB/s min–max",
        "s (median)",
        "× socat",
        "× socat-b256k",
        "CPU s/GiB (tx+rx)",
        "byte-exact",
        "ok runs",
    ]
    rows = []
    for name, t in report["tools"].items():
        exact = t["byte_exact"]
        cpu = t["cpu_s_per_gib"]
        rows.append(
            [
                name,
                _f(t["median_gbit_s"]),
                _f(t["median_mib_s"], ".0f"),
                "–" if t["min_mib_s"] is None else f"{t['min_mib_s']:.0f}–{t['max_mib_s']:.0f}",
                _f(t["median_seconds"], ".3f"),
                _f(t["ratios"]["socat"]),
                _f(t["ratios"]["socat-b256k"]),
                f"{_f(cpu['total'])} ({_f(cpu['sender'])}+{_f(cpu['receiver'])})",
                "–" if exact is None else ("yes" if exact else "NO"),
                f"{t['ok_runs']}/{t['runs']}",
            ]
        )
    return head, rows


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    title = (
        f"{human_size(report['size'])} through stdio over {report['kind']}, {report['runs']} runs, "
        f"fed by {report['feeder'].split()[0]}; "
        f"nproc {m['nproc']}, Linux {m['kernel']}, Python {m['python']}, "
        f"load {m.get('loadavg_start', ['?'])[0]} -> {m.get('loadavg_end', ['?'])[0]}"
    )
    head, rows = table_rows(report)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    else:
        table = Table(title=title)
        for i, h in enumerate(head):
            table.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            table.add_row(*r)
        Console(width=max(160, shutil.get_terminal_size().columns)).print(table)
    for name, t in report["tools"].items():
        for err in t["errors"]:
            print(f"{name}: failed run: {err}")
        if t["byte_exact"] is False:
            print(f"{name}: verification failed: {t['verification']}")


# --- main ------------------------------------------------------------------------------------------


def parse_tools(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ALL_TOOLS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown tool(s) {', '.join(bad)}; choose from {','.join(ALL_TOOLS)}")
    return names


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=parse_size, default=parse_size("1G"), help="bytes per timed run (default 1G)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per tool (default 5)")
    p.add_argument("--tools", type=parse_tools, default=list(ALL_TOOLS), help=f"default {','.join(ALL_TOOLS)}")
    p.add_argument("--kind", choices=("tcp", "unix"), default="tcp", help="socket kind (default tcp)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per transfer before killing (default 120)")
    p.add_argument(
        "--feeder",
        choices=("head", "dd"),
        default="head",
        help="what writes the zeros: head -c SIZE /dev/zero (default; 4 KiB writes) or\n"
        "dd if=/dev/zero bs=1M (less CPU, which leaves more of a small machine to the tools)",
    )
    p.add_argument("--verify-size", type=parse_size, default=parse_size("64M"), help="default 64M; 0 skips it")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")

    all_tools = build_tools()
    tools: list[Tool] = []
    for name in args.tools:
        why = tool_missing(all_tools[name])
        if why:
            log(f"skipping {name}: {why}")
        else:
            tools.append(all_tools[name])
    if not tools:
        log("no tool to run")
        return 1
    ep = Endpoint(args.kind, port=65535, path="PATH")
    results = {
        t.name: ToolResult(
            t.name,
            f"{' '.join(feeder_argv(args.feeder, 'SIZE'))} | {' '.join(t.sender(ep))}  ->  "
            f"{' '.join(t.receiver(ep))} > /dev/null".replace("65535", "P"),
        )
        for t in tools
    }

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sockcat-stdio-bench-") as tmp:
        work = Path(tmp)
        if args.verify_size:
            source = work / "random.bin"
            digest = make_random_file(source, args.verify_size)
            for t in tools:
                v = verify(t, args.kind, source, digest, work, args.timeout)
                results[t.name].verification = v
                log(f"verify {t.name:<12} byte-exact: {'yes' if v.exact else 'NO'} ({v.detail})")
            source.unlink()
        for run in range(1, args.runs + 1):
            for t in tools:
                r = transfer(t, args.kind, args.size, work, args.timeout, feeder=args.feeder)
                results[t.name].runs.append(r)
                if r.ok:
                    rate = r.size / r.seconds if r.seconds else 0.0
                    log(
                        f"run {run}/{args.runs} {t.name:<12} {r.seconds:7.3f} s  {rate * 8 / 1e9:6.2f} Gbit/s  "
                        f"cpu tx {r.cpu_sender:.2f} s rx {r.cpu_receiver:.2f} s"
                    )
                else:
                    log(f"run {run}/{args.runs} {t.name:<12} FAILED: {r.error}")

    report = build_report(args, results, args.verify_size, load_start)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    failed = any(len(r.good) < len(r.runs) for r in results.values()) or any(
        r.verification is not None and not r.verification.exact for r in results.values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
