"""``sockcat send ADDR PATH...`` and ``sockcat recv ADDR``: verified, resumable file transfer (docs/transfer.md)."""

from __future__ import annotations

import argparse
from typing import Any

from sockcat.cli.common import access_options, seconds, size, timeout_or_none, tls_connect_options, tls_listen_options
from sockcat.core.log import Log


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
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
    s.add_argument(
        "--code",
        metavar="CODE",
        help="the code recv printed (default: $SOCKCAT_CODE; none if recv runs with --no-code)",
    )
    s.add_argument("-w", "--connect-timeout", type=seconds, metavar="S", help="give up connecting after S seconds")
    s.add_argument(
        "-i",
        "--idle-timeout",
        type=seconds,
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
    r.add_argument("--max-size", type=size, metavar="BYTES", help="refuse a session that would write more (e.g. 10G)")
    r.add_argument(
        "-i",
        "--idle-timeout",
        type=seconds,
        default=30.0,
        metavar="S",
        help="end a connection that sends nothing for S seconds (default 30)",
    )
    access_options(r, max_conns=10_000, cap="connections at once")
    r.add_argument("--json", action="store_true", help="one JSON object per session on stdout")
    t = tls_listen_options(r)
    t.add_argument("--ca", metavar="PEM", help="require client certificates signed by these CAs")
    r.set_defaults(func=cmd_recv)


def cmd_send(args: argparse.Namespace, log: Log) -> None:
    from sockcat.core.address import Address
    from sockcat.core.errors import UsageError
    from sockcat.engines.transfer.run import code_from, run_send

    address = Address.parse(args.address)
    ctx = None
    if address.is_tls:
        from sockcat.net.tls import client_context

        ctx = client_context(ca=args.ca, cert=args.cert, key=args.key, insecure=args.insecure, pin=args.pin)
    elif args.ca or args.insecure or args.sni or args.cert or args.key or args.pin:
        raise UsageError(f"--ca/--insecure/--sni/--pin/--cert/--key need a tls:// address, not {address}")
    run_send(
        address,
        args.paths,
        code=code_from(args.code),
        connect_timeout=args.connect_timeout,
        idle_timeout=timeout_or_none(args.idle_timeout),
        log=log,
        json_out=args.json,
        ssl_context=ctx,
        sni=args.sni,
    )


def cmd_recv(args: argparse.Namespace, log: Log) -> None:
    from sockcat.core.access import AccessPolicy
    from sockcat.core.address import Address
    from sockcat.core.errors import UsageError
    from sockcat.engines.transfer.run import RecvOptions, code_from, run_recv

    address = Address.parse(args.address)
    opts = RecvOptions(
        outdir=args.output,
        keep_open=args.keep_open,
        code=None if args.no_code else code_from(args.code),
        no_code=args.no_code,
        overwrite=args.overwrite,
        max_size=args.max_size,
        idle_timeout=timeout_or_none(args.idle_timeout),
        max_conns=args.max_conns,
        access=AccessPolicy.parse(args.allow, args.deny),
        json_out=args.json,
    )
    if address.is_tls:
        from sockcat.net.tls import server_context

        opts.ssl_context, opts.fingerprint = server_context(
            cert=args.cert, key=args.key, ca=args.ca, hosts=[address.host] if address.host else []
        )
    elif args.cert or args.key or args.ca:
        raise UsageError(f"--cert/--key/--ca need a tls:// address, not {address}")
    run_recv(address, opts, log)
