"""``sockcat chat ADDR [ADDR...]``: a chat broker for plain line clients (docs/chat.md), one room across addresses."""

from __future__ import annotations

import argparse
from typing import Any

from sockcat.cli.common import access_options, pin_option, seconds, size, timeout_or_none, tls_listen_options
from sockcat.core.log import Log


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected lines per second, got {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"expected lines per second >= 0, got {text!r}")
    return value


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "chat",
        parents=[common],
        help="chat broker for plain line clients (nc, telnet, sockcat connect)",
        description="A chat broker on every ADDR (tcp, unix, tls, ws…), one room across them: named users, lines to "
        "everyone, /msg NAME TEXT (kept for offline users until they join), /register to protect a name, /who, "
        "/help, /quit. A name must come within 30 s of connecting.",
    )
    p.add_argument("addresses", metavar="ADDR", nargs="+")
    p.add_argument("--db", metavar="PATH", help="SQLite store (default $XDG_STATE_HOME/sockcat/chat.sqlite3; :memory:)")
    p.add_argument(
        "--line-rate",
        type=_rate,
        default=20.0,
        metavar="N",
        help="lines a second each client may send; faster ones are slowed, never dropped (default 20; 0: no limit)",
    )
    p.add_argument(
        "--cluster",
        metavar="URL",
        help="join the brokers sharing this Redis: redis://[USER:PASS@]HOST:PORT/DB, rediss://…, redis+unix:PATH",
    )
    c = p.add_argument_group("cluster TLS options (rediss:// URLs)")
    c.add_argument("--cluster-ca", metavar="PEM", help="trust these CAs for Redis (default: the system's)")
    c.add_argument("--cluster-cert", metavar="PEM", help="client certificate for Redis")
    c.add_argument("--cluster-key", metavar="PEM", help="its private key (default: in the --cluster-cert file)")
    pin_option(c)
    p.add_argument("-i", "--idle-timeout", type=seconds, metavar="S", help="disconnect joined users idle for S seconds")
    access_options(p, max_conns=10_000, cap="connections at once")
    t = tls_listen_options(p)
    t.add_argument("--ca", metavar="PEM", help="require client certificates signed by these CAs")
    w = p.add_argument_group("WebSocket options (ws://, wss://, ws+unix: addresses; GET / serves the chat page)")
    w.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another origin whose pages may join (repeatable; default: only the broker's own page)",
    )
    w.add_argument(
        "--max-message", type=size, default=None, metavar="BYTES", help="largest message taken (default 16M)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, log: Log) -> None:
    from sockcat.core.access import AccessPolicy
    from sockcat.core.address import Address
    from sockcat.core.errors import UsageError
    from sockcat.engines.chat import ChatOptions, run_chat

    addresses = [Address.parse(a) for a in args.addresses]
    opts = ChatOptions(
        log=log,
        db=args.db,
        max_conns=args.max_conns,
        access=AccessPolicy.parse(args.allow, args.deny),
        line_rate=args.line_rate,
        idle_timeout=timeout_or_none(args.idle_timeout),
    )
    if args.cluster is not None:
        from sockcat.engines.chat.cluster import parse_url

        parse_url(args.cluster)  # a bad URL is a usage error before anything starts
        opts.cluster = args.cluster
        opts.cluster_tls = {
            "ca_certs": args.cluster_ca,
            "certfile": args.cluster_cert,
            "keyfile": args.cluster_key,
            "pin": args.pin,
        }
    tls_given = [o for o in ("cluster_ca", "cluster_cert", "cluster_key", "pin") if getattr(args, o)]
    if tls_given and not (args.cluster or "").startswith("rediss:"):
        raise UsageError(f"--{tls_given[0].replace('_', '-')} needs a rediss:// --cluster URL")
    if args.pin:
        from sockcat.net.pin import parse_pin

        parse_pin(args.pin)  # a bad fingerprint is a usage error before anything starts
        if args.cluster_ca:
            raise UsageError("--pin and --cluster-ca: a pinned certificate is trusted without a CA; give one of them")
    if (args.origin or args.max_message) and not any(a.is_ws for a in addresses):
        raise UsageError("--origin/--max-message need a WebSocket address (ws://, wss:// or ws+unix:)")
    from sockcat.cli.common import check_origins
    from sockcat.core.wsoptions import DEFAULT_MAX_MESSAGE, WsOptions

    check_origins(args.origin)
    opts.ws = WsOptions(
        text=True, compress=False, max_message=args.max_message or DEFAULT_MAX_MESSAGE, origins=tuple(args.origin)
    )
    tls = [a for a in addresses if a.is_tls]
    if (args.cert or args.key or args.ca) and not tls:
        raise UsageError("--cert/--key/--ca need a tls:// address")
    if tls:
        from sockcat.net.tls import server_context

        hosts = sorted({a.host for a in tls if a.host})
        opts.ssl_context, opts.fingerprint = server_context(cert=args.cert, key=args.key, ca=args.ca, hosts=hosts)
    run_chat(addresses, opts)
