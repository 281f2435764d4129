"""``sockcat serve SERVICE ADDR``: echo (RFC 862), discard (863), chargen (864), daytime (867)."""

from __future__ import annotations

import argparse
from typing import Any

from sockcat.cli.common import access_options, positive, seconds, sockopt_option, tls_listen_options, ws_of, ws_options
from sockcat.core.errors import UsageError
from sockcat.core.log import Log


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "serve",
        parents=[common],
        help="run a test service: echo, discard, chargen or daytime",
        description="Serve echo (RFC 862), discard (863), chargen (864) or daytime (867) on ADDR: "
        "tcp, tcp6, udp, unix, unixgram, unixpacket, tls, ws, wss or ws+unix. Runs until SIGTERM or ^C.",
    )
    s.add_argument("service", metavar="SERVICE", choices=("echo", "discard", "chargen", "daytime"))
    s.add_argument("address", metavar="ADDR")
    access_options(s)
    s.add_argument("--workers", type=positive, default=1, metavar="N", help="processes sharing the address")
    g = s.add_argument_group("connection options")
    g.add_argument("-i", "--idle-timeout", type=seconds, metavar="S", help="close connections idle for S seconds")
    sockopt_option(g)
    t = tls_listen_options(s)
    t.add_argument("--ca", metavar="PEM", help="require client certificates signed by these CAs")
    ws_options(s, client=False)
    s.set_defaults(func=run)


def run(args: argparse.Namespace, log: Log) -> None:
    from sockcat.core.access import AccessPolicy
    from sockcat.core.address import Address
    from sockcat.engines.services import ServeOptions, run_serve
    from sockcat.net.options import parse_sockopts

    addr = Address.parse(args.address)
    given = [name for name in ("cert", "key", "ca") if getattr(args, name)]
    if given and not addr.is_tls:
        raise UsageError(f"--{given[0]} needs a tls:// address, not {addr}")
    opts = ServeOptions(
        log=log,
        max_conns=args.max_conns,
        access=AccessPolicy.parse(args.allow, args.deny),
        sockopts=parse_sockopts(args.sockopt),
        idle_timeout=args.idle_timeout,
        workers=args.workers,
        ws=ws_of(args, addr),
    )
    if addr.is_tls:
        from sockcat.net.tls import server_context

        opts.ssl_context, opts.fingerprint = server_context(
            cert=args.cert, key=args.key, ca=args.ca, hosts=[addr.host] if addr.host else []
        )
    run_serve(args.service, addr, opts)
