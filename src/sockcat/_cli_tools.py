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


def _size(text: str) -> int:
    """BYTES: a whole number, optionally with K, M, G or T (powers of 1024; KiB, MB… read the same)."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 500M or 2G, got {text!r}")
    return int(m.group(1)) << (10 * " kmgt".index(m.group(2).lower() or " "))


def add_transfer_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    from .cli import _positive, _seconds, tls_connect_options, tls_listen_options

    s = sub.add_parser(
        "send",
        parents=[common],
        help="send files and directories to a 'sockcat recv'",
        description="Send files and directories (a directory D lands as DIR/D/…) to 'sockcat recv' at ADDR. "
        "Give the code the receiver printed with --code (or $SOCKCAT_CODE, which stays out of ps). "
        "Every file is checked by SHA-256 and renamed into place only when whole; running the same send again "
        "after an interruption sends only the missing bytes.",
    )
    s.add_argument("address", metavar="ADDR")
    s.add_argument("paths", metavar="PATH", nargs="+")
    s.add_argument("--code", metavar="CODE", help="the receiver's code (default: $SOCKCAT_CODE; none: --no-code)")
    s.add_argument("-w", "--connect-timeout", type=_seconds, metavar="S", help="give up connecting after S seconds")
    s.add_argument(
        "-i",
        "--idle-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="give up when the receiver sends nothing for S seconds (default 30)",
    )
    s.add_argument("--json", action="store_true", help="one JSON object on stdout at the end")
    t = tls_connect_options(s)
    t.add_argument("--cert", metavar="PEM", help="client certificate (for a recv started with --ca)")
    t.add_argument("--key", metavar="PEM", help="client private key (default: in the --cert file)")
    s.set_defaults(func=cmd_send)
    r = sub.add_parser(
        "recv",
        parents=[common],
        help="receive files from a 'sockcat send'",
        description="Listen on ADDR and receive one 'sockcat send' session into DIR (-k: sessions side by side "
        "until stopped). It prints a one-time code ('code: 7-crossover-clockwork') that the sender must give; "
        "files land only inside DIR, never through a link, and an existing different file is never replaced "
        "without --overwrite.",
    )
    r.add_argument("address", metavar="ADDR")
    r.add_argument("-o", "--output", default=".", metavar="DIR", help="where files land (default: .)")
    r.add_argument("-k", "--keep-open", action="store_true", help="keep receiving sessions, side by side")
    c = r.add_mutually_exclusive_group()
    c.add_argument("--code", metavar="CODE", help="use this code (default: $SOCKCAT_CODE, or a new random one)")
    c.add_argument("--no-code", action="store_true", help="no code: anyone who can connect may send (trusted networks)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing file whose content differs")
    r.add_argument("--max-size", type=_size, metavar="BYTES", help="refuse a session that would write more (e.g. 10G)")
    r.add_argument(
        "-i",
        "--idle-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="end a connection that sends nothing for S seconds (default 30)",
    )
    r.add_argument("--max-conns", type=_positive, default=10_000, metavar="N", help="connections at once (10000)")
    r.add_argument("--allow", action="append", default=[], metavar="CIDR", help="only these peers (repeatable)")
    r.add_argument("--deny", action="append", default=[], metavar="CIDR", help="never these peers (repeatable)")
    r.add_argument("--json", action="store_true", help="one JSON object per session on stdout")
    t = tls_listen_options(r)
    t.add_argument("--ca", metavar="PEM", help="require client certificates signed by these CAs")
    r.set_defaults(func=cmd_recv)


def _timeout(value: float) -> float | None:
    return value or None  # 0: no timeout


def cmd_send(args: argparse.Namespace, log: Log) -> int:
    from ._address import Address
    from ._errors import UsageError
    from ._xfer_run import code_from, run_send

    address = Address.parse(args.address)
    ctx = None
    if address.is_tls:
        from ._tls import client_context

        ctx = client_context(ca=args.ca, cert=args.cert, key=args.key, insecure=args.insecure)
    elif args.ca or args.insecure or args.sni or args.cert or args.key:
        raise UsageError(f"--ca/--insecure/--sni/--cert/--key need a tls:// address, not {address}")
    return run_send(
        address,
        args.paths,
        code=code_from(args.code),
        connect_timeout=args.connect_timeout,
        idle_timeout=_timeout(args.idle_timeout),
        log=log,
        json_out=args.json,
        ssl_context=ctx,
        sni=args.sni,
    )


def cmd_recv(args: argparse.Namespace, log: Log) -> int:
    from ._access import AccessPolicy
    from ._address import Address
    from ._errors import UsageError
    from ._xfer_run import RecvOptions, code_from, run_recv

    address = Address.parse(args.address)
    opts = RecvOptions(
        outdir=args.output,
        keep_open=args.keep_open,
        code=None if args.no_code else code_from(args.code),
        no_code=args.no_code,
        overwrite=args.overwrite,
        max_size=args.max_size,
        idle_timeout=_timeout(args.idle_timeout),
        max_conns=args.max_conns,
        access=AccessPolicy.parse(args.allow, args.deny),
        json_out=args.json,
    )
    if address.is_tls:
        from ._tls import server_context

        opts.ssl_context, opts.fingerprint = server_context(
            cert=args.cert, key=args.key, ca=args.ca, hosts=[address.host] if address.host else []
        )
    elif args.cert or args.key or args.ca:
        raise UsageError(f"--cert/--key/--ca need a tls:// address, not {address}")
    return run_recv(address, opts, log)
