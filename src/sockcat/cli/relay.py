"""``sockcat relay LISTEN TARGET``: accept on LISTEN, connect to TARGET for each connection, copy both ways."""

from __future__ import annotations

import argparse
from typing import Any

from sockcat.cli.common import (
    access_options,
    address_of,
    connection_options,
    positive,
    proxy_of,
    proxy_option,
    seconds,
    ws_of,
    ws_options,
)
from sockcat.core.errors import UsageError
from sockcat.core.log import Log


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser(
        "relay",
        parents=[common],
        help="accept on LISTEN, connect to TARGET, copy both ways",
        description="Accept on LISTEN and, for each connection, connect to TARGET and copy both "
        "ways until both directions end (half-close and resets pass through). Any stream kinds "
        "mix (tcp, unix, unixpacket, tls…); udp/unixgram relay with a session per client.",
    )
    r.add_argument("listen_address", metavar="LISTEN")
    r.add_argument("target_address", metavar="TARGET")
    access_options(r, default="10,000; udp/unixgram: 1,024 sessions")
    r.add_argument(
        "--max-per-source",
        type=positive,
        default=256,
        metavar="N",
        help="udp/unixgram: sessions from one IPv4 /24 or IPv6 /64 (default 256)",
    )
    r.add_argument("--workers", type=positive, default=1, metavar="N", help="processes sharing the address")
    r.add_argument(
        "--grace",
        type=seconds,
        default=5.0,
        metavar="S",
        help="on SIGTERM, SIGHUP or SIGINT, let connections finish for S seconds (default 5)",
    )
    connection_options(r)
    proxy_option(r)
    ws_options(r)
    r.set_defaults(func=run)


def run(args: argparse.Namespace, log: Log) -> None:
    from sockcat.core.access import AccessPolicy
    from sockcat.engines.relay import RelayOptions, run_relay
    from sockcat.net.options import parse_sockopts

    listen_addr = address_of(args.listen_address)
    target = address_of(args.target_address)
    if (args.cert or args.key) and not listen_addr.is_tls:
        raise UsageError(f"--cert/--key are for a tls:// LISTEN address, not {listen_addr}")
    if (args.insecure or args.sni or args.pin) and not target.is_tls:
        raise UsageError(f"--insecure/--sni/--pin are for a tls:// TARGET, not {target}")
    if args.ca and not (listen_addr.is_tls or target.is_tls):
        raise UsageError("--ca is for a tls:// LISTEN (client certificates) or TARGET (trusted CAs)")
    opts = RelayOptions(
        log=log,
        connect_timeout=args.connect_timeout if args.connect_timeout is not None else 10.0,
        idle_timeout=args.idle_timeout,
        hexdump=args.hexdump,
        max_conns=args.max_conns,
        max_per_source=args.max_per_source,
        access=AccessPolicy.parse(args.allow, args.deny),
        sockopts=parse_sockopts(args.sockopt),
        source=address_of(args.source) if args.source else None,
        grace=args.grace,
        workers=args.workers,
        sni=args.sni,
        proxy=proxy_of(args),
    )
    ws = ws_of(args, listen_addr, target)
    if args.header and not target.is_ws:
        raise UsageError(f"-H/--header is for a WebSocket TARGET, not {target}")
    if args.origin and not listen_addr.is_ws:
        raise UsageError(f"--origin is for a WebSocket LISTEN address, not {listen_addr}")
    opts.server_ws = ws if listen_addr.is_ws else None
    opts.client_ws = ws if target.is_ws else None
    if listen_addr.is_tls:
        from sockcat.net.tls import server_context

        opts.server_ssl, opts.fingerprint = server_context(
            cert=args.cert, key=args.key, ca=args.ca, hosts=[listen_addr.host] if listen_addr.host else []
        )
    if target.is_tls:
        from sockcat.net.tls import client_context

        opts.client_ssl = client_context(ca=args.ca, insecure=args.insecure, pin=args.pin)
    run_relay(listen_addr, target, opts)
