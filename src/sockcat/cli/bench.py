"""``sockcat bench ADDR``: load an echo, discard or chargen server and measure it; a table or ``--json``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from sockcat.cli.common import pin_option, positive, seconds, size, sockopt_option, ws_of, ws_options
from sockcat.core.errors import SockcatError, UsageError
from sockcat.core.log import Log

if TYPE_CHECKING:  # the rest loads when a command runs, not for every `sockcat --help`
    from sockcat.core.stats import BenchResult


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    b = sub.add_parser(
        "bench",
        parents=[common],
        help="load an echo, discard or chargen server and measure it",
        description="Measure a server: --mode rtt (round trips/s and latency percentiles, against echo), "
        "throughput (bytes/s: upload to discard, --reverse downloads from chargen) or connect "
        "(connections opened, one round trip, closed, per second). A warm-up comes first and is not "
        "counted; the window is -d seconds (or -n requests).",
    )
    b.add_argument("address", metavar="ADDR")
    b.add_argument("--mode", choices=("rtt", "throughput", "connect"), default="rtt", help="what to measure (rtt)")
    b.add_argument("-c", "--connections", type=positive, metavar="N", help="connections (rtt/connect: 16)")
    b.add_argument("-P", "--parallel", type=positive, metavar="N", help="throughput: parallel streams (1)")
    b.add_argument(
        "--size", type=size, metavar="BYTES", help="bytes per message (64; throughput: 128K, datagrams 1400)"
    )
    b.add_argument("-d", "--duration", type=seconds, metavar="S", help="seconds measured (10)")
    b.add_argument("-n", "--requests", type=positive, metavar="N", help="stop after N requests instead")
    b.add_argument("--pipeline", type=positive, default=1, metavar="N", help="requests in flight per connection")
    b.add_argument("-R", "--reverse", action="store_true", help="throughput: download from a chargen server")
    b.add_argument("--warmup", type=seconds, default=0.5, metavar="S", help="unmeasured seconds first (0.5)")
    b.add_argument(
        "--timeout", type=seconds, metavar="S", help="a reply later than S is an error (datagrams 1, streams 2)"
    )
    b.add_argument(
        "--workers", type=positive, default=1, metavar="N", help="client processes (default 1; at most 4 per CPU)"
    )
    b.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    b.add_argument(
        "--report", metavar="FILE.html", help="also write the run as one self-contained HTML page (pictures inline)"
    )
    g = b.add_argument_group("connection options")
    g.add_argument("-w", "--connect-timeout", type=seconds, metavar="S", help="give up connecting after S (5)")
    g.add_argument("-s", "--source", metavar="ADDR", help="bind to ADDR before connecting")
    sockopt_option(g)
    t = b.add_argument_group("TLS options (tls:// addresses)")
    t.add_argument("--ca", metavar="PEM", help="trust these CA certificates")
    t.add_argument("--cert", metavar="PEM", help="client certificate")
    t.add_argument("--key", metavar="PEM", help="client private key (default: in the --cert file)")
    t.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    t.add_argument("--sni", metavar="NAME", help="server name to send and verify")
    pin_option(t)
    ws_options(b, listener=False)
    b.set_defaults(func=run)


def run(args: argparse.Namespace, log: Log) -> None:
    from sockcat.core.address import Address
    from sockcat.engines.bench import make_plan, run_plan
    from sockcat.net.options import parse_sockopts
    from sockcat.serving.scaffold import check_workers

    check_workers(args.workers)  # a fork per worker: never an unbounded number
    addr = Address.parse(args.address)
    given = [name for name in ("cert", "key", "ca", "sni", "pin") if getattr(args, name)]
    if args.insecure:
        given.append("insecure")
    if given and not addr.is_tls:
        raise UsageError(f"--{given[0]} needs a tls:// address, not {addr}")
    if args.parallel is not None and args.mode != "throughput":
        raise UsageError("-P/--parallel is for --mode throughput (use -c for rtt and connect)")
    if args.parallel is not None and args.connections is not None and args.parallel != args.connections:
        raise UsageError("give -P or -c, not both")
    ctx = None
    if addr.is_tls:
        from sockcat.net.tls import client_context

        ctx = client_context(ca=args.ca, cert=args.cert, key=args.key, insecure=args.insecure, pin=args.pin)
    plan = make_plan(
        addr,
        mode=args.mode,
        connections=args.parallel if args.parallel is not None else args.connections,
        size=args.size,
        duration=args.duration,
        requests=args.requests,
        pipeline=args.pipeline,
        reverse=args.reverse,
        warmup=args.warmup,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        workers=args.workers,
        sockopts=parse_sockopts(args.sockopt),
        source=Address.parse(args.source) if args.source else None,
        ssl_context=ctx,
        sni=args.sni,
        ws=ws_of(args, addr),
    )
    show = _ProgressLine(plan.mode) if sys.stderr.isatty() and not log.quiet else None
    try:
        result = run_plan(plan, show.update if show is not None else None)
    finally:
        if show is not None:
            show.close()
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
        sys.stdout.flush()
    else:
        print_table(result)
    if args.report:
        _write_report(args.report, result)
    _verdict(result, log)


def _write_report(path: str, result: BenchResult) -> None:
    from sockcat.core.benchreport import render

    _write_page(path, render(result, when=time.strftime("%Y-%m-%d %H:%M:%S %Z")), "--report")


def _write_page(path: str, page: str, option: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as exc:
        raise SockcatError(f"{option} {path}: {exc.strerror or exc}") from None


# --- bench-report: several runs' --json on one page -------------------------------------------------------------

_MAX_JSON = 64 << 20  # bytes read from one results file


def add_report_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser(
        "bench-report",
        parents=[common],
        help="compare bench runs: their --json results on one HTML page",
        description="Write one self-contained HTML page comparing bench runs of one mode: their figures side by side "
        "(with ratios to the first), each run's latency percentiles, and the rate and p99 of every second. Each "
        "FILE holds what `bench --json` printed: one run per line.",
    )
    r.add_argument("files", nargs="+", metavar="FILE.json")
    r.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the page to write")
    r.set_defaults(func=run_report)


def run_report(args: argparse.Namespace, log: Log) -> None:
    import json
    from pathlib import Path

    from sockcat.core.benchreport import MAX_RUNS, Run, render_comparison, run_from_json

    runs: list[Run] = []
    for name in args.files:
        try:
            with open(name, "rb") as f:
                text = f.read(_MAX_JSON + 1)
        except OSError as exc:
            raise SockcatError(f"{name}: {exc.strerror or exc}") from None
        if len(text) > _MAX_JSON:
            raise SockcatError(f"{name}: larger than {_MAX_JSON >> 20} MiB")
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise SockcatError(f"{name}: no bench --json result in it")
        for k, line in enumerate(lines, 1):
            label = Path(name).name + (f" #{k}" if len(lines) > 1 else "")
            if len(runs) == MAX_RUNS:  # (before parsing the rest: a file may hold a million lines)
                raise UsageError(f"at most {MAX_RUNS} runs on one page; {name} line {k} is one more")
            try:
                runs.append(run_from_json(label, json.loads(line)))
            except ValueError as exc:  # (json's errors are ValueErrors too)
                raise SockcatError(f"{name}, line {k}: not a bench --json result: {exc}") from None
    try:
        page = render_comparison(runs)
    except ValueError as exc:
        raise SockcatError(str(exc)) from None
    _write_page(args.output, page, "-o")
    log.info(f"wrote {args.output}: {len(runs)} runs")


def _verdict(result: BenchResult, log: Log) -> None:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(result.error_kinds.items()))
    if result.requests == 0:
        what = "no round trip completed" if result.mode != "throughput" else "no data moved"
        why = result.first_error or "no reply"
        count = f" ({result.errors} errors: {kinds})" if result.errors else ""
        raise SockcatError(f"{what}: {why}{count}")
    if result.errors:
        log.warning(f"{result.errors} errors ({kinds}); first: {result.first_error}")


class _ProgressLine:
    """A one-line live display on stderr (a terminal only): the phase, the seconds since the start and those left in
    the phase, the rate since the last update, and the p99 of the last whole second (``measuring  2.5 s, 3.0 s left
    41,233 /s  p99 1.21 ms``)."""

    def __init__(self, mode: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.mode = mode
        self.console = Console(file=sys.stderr, highlight=False)
        self.live = Live("", console=self.console, transient=True, auto_refresh=False)
        self.live.start()
        self.last: tuple[float, int, int] | None = None
        self.start = time.monotonic()

    def update(self, phase: str, left: float, requests: int, nbytes: int, p99_us: float | None = None) -> None:
        from sockcat.core.units import format_bits, format_us

        now = time.monotonic()
        text = f"[bold]{phase}[/bold]  {now - self.start:.1f} s, {left:.1f} s left"
        if phase == "measuring" and self.last is not None and now > self.last[0]:
            dt = now - self.last[0]
            if self.mode == "throughput":
                text += f"  {format_bits((nbytes - self.last[2]) / dt)}"
            else:
                text += f"  {(requests - self.last[1]) / dt:,.0f} /s"
        if p99_us is not None:
            text += f"  p99 {format_us(p99_us)}"
        self.last = (now, requests, nbytes)
        self.live.update(text, refresh=True)

    def close(self) -> None:
        self.live.stop()


def print_table(result: BenchResult, file: Any = None) -> None:
    from sockcat.core.units import format_bits, format_bytes, format_us

    """A result for people: a two-column rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    r = result
    table = Table(title=f"sockcat bench {r.address}", show_header=False, title_justify="left", box=None)
    table.add_column(style="bold")
    table.add_column()
    workers = f", {r.workers} workers" if r.workers > 1 else ""
    if r.mode == "throughput":
        direction = "download (from chargen)" if r.reverse else "upload (to discard)"
        table.add_row(
            "mode", f"throughput, {direction}: {r.connections} streams × {format_bytes(r.size)} writes{workers}"
        )
    else:
        pipe = f", pipeline {r.pipeline}" if r.pipeline > 1 else ""
        table.add_row("mode", f"{r.mode}: {r.connections} connections × {format_bytes(r.size)}{pipe}{workers}")
    table.add_row("window", f"{r.seconds:.2f} s (after {r.warmup:g} s warm-up)")
    if r.mode == "throughput":
        table.add_row("throughput", f"{format_bits(r.bytes_per_second)}  ({format_bytes(r.bytes_per_second)}/s)")
        table.add_row("moved", format_bytes(r.bytes))
    else:
        unit = "connections" if r.mode == "connect" else "round trips"
        table.add_row("rate", f"{r.rate:,.0f} {unit}/s")
        table.add_row("requests", f"{r.requests:,}")
        if r.latency is not None and r.requests:
            lat = r.latency
            table.add_row(
                "latency",
                f"p50 {format_us(lat.p50)}   p90 {format_us(lat.p90)}   p99 {format_us(lat.p99)}   "
                f"p99.9 {format_us(lat.p999)}   max {format_us(lat.max)}",
            )
    if r.errors:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.error_kinds.items()))
        table.add_row("errors", f"[red]{r.errors:,}[/red] ({kinds})")
    else:
        table.add_row("errors", "0")
    cpu = f"{r.client_cpu_percent:.0f}% of one core" + (" (busiest worker)" if r.workers > 1 else "")
    if r.client_saturated:
        cpu += "  [yellow]saturated: the client may be the limit (try --workers)[/yellow]"
    table.add_row("client CPU", cpu)
    out = file or sys.stdout
    # On a terminal, its width; piped or redirected, wide enough that no row wraps (rich's default there is 80).
    width = None if out.isatty() else 160
    Console(file=out, highlight=False, width=width).print(table)
