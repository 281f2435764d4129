"""``sockcat listen ADDR``: one connection bridged to stdio; ``-k`` keeps accepting; ``--exec`` inetd style."""

from __future__ import annotations

import argparse
from typing import Any

from sockcat.cli.common import access_options, address_of, check_tls_options, connection_options, ws_of, ws_options
from sockcat.cli.connect import bridge_options
from sockcat.core.log import Log


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    listen = sub.add_parser(
        "listen",
        parents=[common],
        help="accept a connection on ADDR and bridge it to stdio",
        description="Listen on ADDR and bridge one connection to stdin/stdout "
        "(-k: keep accepting; --exec: a process per connection, inetd style).",
    )
    listen.add_argument("address", metavar="ADDR")
    listen.add_argument("-k", "--keep-open", action="store_true", help="keep accepting connections")
    listen.add_argument("--exec", dest="exec_cmd", metavar="CMD", help="run CMD (no shell) for each connection")
    listen.add_argument("--sh-exec", metavar="CMD", help="run /bin/sh -c CMD for each connection")
    access_options(listen, default="10,000; 100 with --exec/--sh-exec")
    connection_options(listen, connecting=False)
    ws_options(listen, client=False)
    listen.set_defaults(func=run)


def run(args: argparse.Namespace, log: Log) -> None:
    from sockcat.core.access import AccessPolicy
    from sockcat.engines.listen import ListenOptions, exec_argv, run_listen
    from sockcat.net.options import parse_sockopts

    addr = address_of(args.address)
    check_tls_options(args, addr)
    lopts = ListenOptions(
        keep_open=args.keep_open,
        exec_argv=exec_argv(args.exec_cmd, args.sh_exec),
        max_conns=args.max_conns,
        access=AccessPolicy.parse(args.allow, args.deny),
        sockopts=parse_sockopts(args.sockopt),
        ws=ws_of(args, addr),
    )
    if addr.is_tls:
        from sockcat.net.tls import server_context

        lopts.ssl_context, lopts.fingerprint = server_context(
            cert=args.cert, key=args.key, ca=args.ca, hosts=[addr.host] if addr.host else []
        )
    run_listen(addr, bridge_options(args, log), lopts)
