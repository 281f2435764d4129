"""``sockcat scan``, ``chat``, ``send`` and ``recv`` on the command line: arguments in, one library call out."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from ._log import Log

if TYPE_CHECKING:
    from ._scan import ScanResult


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    from .cli import _positive, _seconds

    p = sub.add_parser(
        "scan",
        parents=[common],
        help="scan HOST's ports: TCP connect scan, or --udp",
        description="TCP connect scan (connect_ex) of HOST, or a UDP probe scan with --udp. PORTS: a list like "
        "22,80,8000-8100, or - for all. Every port gets a state: open, closed, filtered (TCP: no answer), "
        "open|filtered (UDP: no answer). The table lists the ports that are not closed.",
    )
    p.add_argument("host", metavar="HOST")
    p.add_argument("ports", metavar="PORTS")
    p.add_argument("--udp", action="store_true", help="UDP: an empty datagram to each port (ICMP says closed)")
    p.add_argument("-w", "--timeout", type=_seconds, default=1.0, metavar="S", help="wait per port (default 1)")
    p.add_argument("-c", "--concurrency", type=_positive, metavar="N", help="ports probed at once (512; udp 64)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_scan)


def cmd_scan(args: argparse.Namespace, log: Log) -> int:
    from ._scan import scan

    result = scan(args.host, args.ports, udp=args.udp, timeout=args.timeout, concurrency=args.concurrency)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    else:
        print_table(result)
    return 0


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
    console.print(f"{len(result.results)} ports scanned in {result.seconds:.2f} s: {counts}")


def add_chat_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    from .cli import _positive, tls_listen_options

    p = sub.add_parser(
        "chat",
        parents=[common],
        help="chat broker for plain line clients (nc, telnet, sockcat connect)",
        description="A chat broker on ADDR (tcp, unix, tls…): named users, lines to everyone, /msg NAME TEXT "
        "(kept for offline users until they join), /register to protect a name, /who, /help, /quit.",
    )
    p.add_argument("address", metavar="ADDR")
    p.add_argument("--db", metavar="PATH", help="SQLite store (default $XDG_STATE_HOME/sockcat/chat.sqlite3; :memory:)")
    p.add_argument("--max-conns", type=_positive, metavar="N", help="close connections past N at once")
    tls_listen_options(p)
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace, log: Log) -> int:
    from ._address import Address
    from ._chat import ChatOptions, run_chat
    from ._errors import UsageError

    address = Address.parse(args.address)
    opts = ChatOptions(log=log, db=args.db, max_conns=args.max_conns)
    if (args.cert or args.key) and not address.is_tls:
        raise UsageError(f"--cert/--key need a tls:// address, not {address}")
    if address.is_tls:
        from ._tls import server_context

        opts.ssl_context, opts.fingerprint = server_context(
            cert=args.cert, key=args.key, hosts=[address.host] if address.host else []
        )
    return run_chat(address, opts)


def add_transfer_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    from .cli import _seconds, tls_connect_options, tls_listen_options

    s = sub.add_parser(
        "send",
        parents=[common],
        help="send files and directories to a 'sockcat recv'",
        description="Send files and directories (a directory D lands as DIR/D/…) to 'sockcat recv' at ADDR. "
        "Every file is checked by SHA-256 and renamed into place only when whole; running the same send again "
        "after an interruption sends only the missing bytes.",
    )
    s.add_argument("address", metavar="ADDR")
    s.add_argument("paths", metavar="PATH", nargs="+")
    s.add_argument("-w", "--connect-timeout", type=_seconds, metavar="S", help="give up connecting after S seconds")
    tls_connect_options(s)
    s.set_defaults(func=cmd_send)
    r = sub.add_parser(
        "recv",
        parents=[common],
        help="receive files from a 'sockcat send'",
        description="Listen on ADDR and receive one 'sockcat send' session into DIR (-k: one after another).",
    )
    r.add_argument("address", metavar="ADDR")
    r.add_argument("-o", "--output", default=".", metavar="DIR", help="where files land (default: .)")
    r.add_argument("-k", "--keep-open", action="store_true", help="keep receiving sessions")
    tls_listen_options(r)
    r.set_defaults(func=cmd_recv)


def cmd_send(args: argparse.Namespace, log: Log) -> int:
    from ._address import Address
    from ._transfer import run_send

    address = Address.parse(args.address)
    ctx = None
    if address.is_tls:
        from ._tls import client_context

        ctx = client_context(ca=args.ca, insecure=args.insecure)
    elif args.ca or args.insecure or args.sni:
        from ._errors import UsageError

        raise UsageError(f"--ca/--insecure/--sni need a tls:// address, not {address}")
    return run_send(address, args.paths, connect_timeout=args.connect_timeout, log=log, ssl_context=ctx, sni=args.sni)


def cmd_recv(args: argparse.Namespace, log: Log) -> int:
    from ._address import Address
    from ._transfer import run_recv

    return run_recv(
        Address.parse(args.address), args.output, keep_open=args.keep_open, log=log, cert=args.cert, key=args.key
    )
