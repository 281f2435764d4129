"""``sockcat scan HOST PORTS``: a TCP connect scan (``connect_ex``), or ``--udp``; a table or ``--json``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import TYPE_CHECKING, Any

from sockcat.cli.common import positive, seconds
from sockcat.core.log import Log

if TYPE_CHECKING:
    from sockcat.engines.scan import ScanResult


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "scan",
        parents=[common],
        help="scan HOST's ports: TCP connect scan, or --udp",
        description="TCP connect scan (connect_ex) of HOST, or a UDP probe scan with --udp. PORTS: a list like "
        "22,80,8000-8100; a range may leave out an end (-1024, 60000-; - is every port). Every port gets a "
        "state: open, closed, filtered (TCP: no answer), "
        "open|filtered (UDP: no answer). The table lists the ports that are not closed.",
    )
    p.add_argument("host", metavar="HOST")
    p.add_argument("ports", metavar="PORTS")
    # PORTS may start with a dash (-1024, -,80): such a word is PORTS, not an option. argparse reads a word this
    # matcher matches as a positional one while the parser has no option that looks like it (none here).
    p._negative_number_matcher = re.compile(r"^-[\d,\-]*$")
    p.add_argument("--udp", action="store_true", help="UDP: an empty datagram to each port (ICMP says closed)")
    p.add_argument("-w", "--timeout", type=seconds, default=1.0, metavar="S", help="wait per port (default 1)")
    p.add_argument("-c", "--concurrency", type=positive, metavar="N", help="ports probed at once (512; udp 64)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, log: Log) -> None:
    from sockcat.engines.scan import scan

    result = scan(args.host, args.ports, udp=args.udp, timeout=args.timeout, concurrency=args.concurrency)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    else:
        print_table(result)


def print_table(result: ScanResult) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = [r for r in result.results if r.state != "closed"]
    table = Table(title=f"{result.host} ({result.address}), {result.proto}", title_justify="left")
    for name, justify in (("port", "right"), ("proto", "left"), ("state", "left"), ("service", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in shown:
        table.add_row(str(r.port), r.proto, r.state, r.service)
    console = Console(soft_wrap=True)
    if shown:
        console.print(table)
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items())
    scanned = len(result.results)
    console.print(f"{scanned} {'port' if scanned == 1 else 'ports'} scanned in {result.seconds:.2f} s: {counts}")
