"""``sockcat connect ADDR``: stdin to the socket, the socket to stdout (docs/reference.md#connect)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from sockcat.cli.common import (
    address_of,
    check_tls_options,
    connection_options,
    proxy_of,
    proxy_option,
    ws_of,
    ws_options,
)
from sockcat.core.log import Log

if TYPE_CHECKING:
    from sockcat.engines.bridge import BridgeOptions


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser(
        "connect",
        parents=[common],
        help="connect to ADDR and bridge it to stdin/stdout",
        description="Connect to ADDR; stdin goes to the socket, the socket to stdout. "
        "On stdin EOF the socket is half-closed and reading goes on until the peer closes.",
    )
    c.add_argument("address", metavar="ADDR")
    connection_options(c)
    proxy_option(c)
    ws_options(c, listener=False)
    c.set_defaults(func=run)


def bridge_options(args: argparse.Namespace, log: Log) -> BridgeOptions:
    from sockcat.engines.bridge import BridgeOptions

    return BridgeOptions(log=log, idle_timeout=args.idle_timeout, hexdump=args.hexdump)


def run(args: argparse.Namespace, log: Log) -> None:
    from sockcat.engines.bridge import run_connect
    from sockcat.net.options import parse_sockopts

    addr = address_of(args.address)
    check_tls_options(args, addr)
    ctx = None
    if addr.is_tls:
        from sockcat.net.tls import client_context

        ctx = client_context(ca=args.ca, cert=args.cert, key=args.key, insecure=args.insecure, pin=args.pin)
    run_connect(
        addr,
        bridge_options(args, log),
        connect_timeout=args.connect_timeout,
        source=address_of(args.source) if args.source else None,
        sockopts=parse_sockopts(args.sockopt),
        ssl_context=ctx,
        sni=args.sni,
        proxy=proxy_of(args),
        ws=ws_of(args, addr),
    )
