"""``sockcat chat ADDR``: a chat broker for plain line clients (SPEC §3)."""

from __future__ import annotations

import argparse
from typing import Any

from sockcat.cli.common import positive, tls_listen_options
from sockcat.core.log import Log


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "chat",
        parents=[common],
        help="chat broker for plain line clients (nc, telnet, sockcat connect)",
        description="A chat broker on ADDR (tcp, unix, tls…): named users, lines to everyone, /msg NAME TEXT "
        "(kept for offline users until they join), /register to protect a name, /who, /help, /quit.",
    )
    p.add_argument("address", metavar="ADDR")
    p.add_argument("--db", metavar="PATH", help="SQLite store (default $XDG_STATE_HOME/sockcat/chat.sqlite3; :memory:)")
    p.add_argument("--max-conns", type=positive, metavar="N", help="close connections past N at once")
    tls_listen_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, log: Log) -> None:
    from sockcat.core.address import Address
    from sockcat.core.errors import UsageError
    from sockcat.engines.chat import ChatOptions, run_chat

    address = Address.parse(args.address)
    opts = ChatOptions(log=log, db=args.db, max_conns=args.max_conns)
    if (args.cert or args.key) and not address.is_tls:
        raise UsageError(f"--cert/--key need a tls:// address, not {address}")
    if address.is_tls:
        from sockcat.net.tls import server_context

        opts.ssl_context, opts.fingerprint = server_context(
            cert=args.cert, key=args.key, hosts=[address.host] if address.host else []
        )
    run_chat(address, opts)
