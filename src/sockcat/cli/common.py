"""What every command's parser shares: argument types, option groups, and the checks that go with them.

Start-up time matters for a command line tool: the command modules import their engine when the command runs, so
``sockcat --help`` and ``--version`` load no socket code, TLS or asyncio.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from sockcat.core.errors import UsageError
from sockcat.core.log import PROG

if TYPE_CHECKING:
    from sockcat.core.address import Address
    from sockcat.core.wsoptions import WsOptions
    from sockcat.net.proxy import Proxy

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


_SIZE = re.compile(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def size(text: str) -> int:
    """BYTES: a whole number, optionally with K, M, G or T (powers of 1024; KiB, MB… read the same, as dd and
    iperf3 read them)."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 64, 500M or 2G, got {text!r}")
    return int(m.group(1)) << (10 * " kmgt".index(m.group(2).lower() or " "))


def timeout_or_none(value: float | None) -> float | None:
    """``-i 0``: no timeout."""
    return value or None


def global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        help="log connections (-vv: debug detail, tracebacks)",
        **({"default": argparse.SUPPRESS} if suppress else {"default": 0}),
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only errors and the 'listening on' line", **d)
    p.add_argument("--trace", action="store_true", help="print every socket operation as it happens", **d)
    p.add_argument("--trace-json", action="store_true", help="--trace as one JSON object per call", **d)


def sockopt_option(g: Any) -> None:
    """``--sockopt NAME=VALUE`` (repeatable), its help naming every option sockcat knows."""
    from sockcat.net.options import NAMES as SOCKOPT_NAMES

    g.add_argument(
        "--sockopt",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"set a socket option (repeatable): {', '.join(SOCKOPT_NAMES)}",
    )


def access_options(
    p: Any,
    *,
    max_conns: int | None = None,
    cap: str = "connections at once; more are closed at once",
    default: str = "",
) -> None:
    """``--max-conns``, ``--allow``, ``--deny`` for a listener (``default`` words the cap's default for --help)."""
    default = default or (f"{max_conns:,}" if max_conns else "10,000")
    p.add_argument("--max-conns", type=positive, default=max_conns, metavar="N", help=f"{cap} (default {default})")
    p.add_argument("--allow", action="append", default=[], metavar="CIDR", help="only these peers (repeatable)")
    p.add_argument("--deny", action="append", default=[], metavar="CIDR", help="never these peers (repeatable)")


def tls_listen_options(p: argparse.ArgumentParser) -> Any:
    """``--cert``/``--key`` for a command that listens on a tls:// address; returns the group for more."""
    t = p.add_argument_group("TLS options (tls:// addresses)")
    t.add_argument("--cert", metavar="PEM", help="certificate (default: a throwaway self-signed one)")
    t.add_argument("--key", metavar="PEM", help="private key (default: in the --cert file)")
    return t


def tls_connect_options(p: argparse.ArgumentParser) -> Any:
    """``--ca``/``--insecure``/``--sni`` for a command that connects to a tls:// address."""
    t = p.add_argument_group("TLS options (tls:// addresses)")
    t.add_argument("--ca", metavar="PEM", help="trust these CA certificates")
    t.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    t.add_argument("--sni", metavar="NAME", help="server name to send and verify (default: the address's host)")
    pin_option(t)
    return t


def pin_option(t: Any) -> None:
    t.add_argument(
        "--pin",
        metavar="SHA256",
        help="trust exactly the certificate with this SHA-256 (AB:CD:… as a listener prints it, or plain hex)",
    )


def connection_options(p: argparse.ArgumentParser, *, connecting: bool = True) -> None:
    """What connect, listen and relay share: timeouts, socket options, hex dump, TLS. A command that only listens
    (``connecting=False``) gets no option of a connecting side (-w, -s, --insecure, --sni, --pin)."""
    g = p.add_argument_group("connection options")
    if connecting:
        g.add_argument("-w", "--connect-timeout", type=seconds, metavar="S", help="give up connecting after S seconds")
    g.add_argument("-i", "--idle-timeout", type=seconds, metavar="S", help="close after S seconds without traffic")
    if connecting:
        g.add_argument("-s", "--source", metavar="ADDR", help="bind to ADDR before connecting")
    sockopt_option(g)
    g.add_argument("--hexdump", action="store_true", help="show traffic as a hex dump on stderr")
    t = p.add_argument_group("TLS options (tls:// and wss:// addresses)")
    t.add_argument("--cert", metavar="PEM", help="certificate (a listener without one makes a throwaway one)")
    t.add_argument("--key", metavar="PEM", help="private key (default: in the --cert file)")
    t.add_argument("--ca", metavar="PEM", help="trust these CA certificates (listener: require client certs)")
    if connecting:
        t.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
        t.add_argument("--sni", metavar="NAME", help="server name to send and verify (default: the address's host)")
        pin_option(t)


def proxy_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--proxy",
        metavar="URL",
        help="connect through a proxy: socks5://, socks5h:// (the proxy resolves names), socks4://, socks4a://, "
        "http:// (CONNECT); [USER:PASSWORD@]HOST[:PORT]",
    )


def proxy_of(args: argparse.Namespace) -> Proxy | None:
    from sockcat.net.proxy import Proxy

    return Proxy.parse(args.proxy) if args.proxy else None


def address_of(text: str) -> Address:
    from sockcat.core.address import Address

    return Address.parse(text)


def check_tls_options(
    args: argparse.Namespace, addr: Address, names: tuple[str, ...] = ("cert", "key", "ca", "sni", "pin")
) -> None:
    """A TLS option given for an address that is not tls:// is a usage error, never silently ignored."""
    given = [name for name in names if getattr(args, name, None)]
    if getattr(args, "insecure", False):
        given.append("insecure")
    if given and not addr.is_tls:
        raise UsageError(f"--{given[0]} needs a tls:// address, not {addr}")


def ws_options(p: argparse.ArgumentParser, *, client: bool = True, listener: bool = True) -> None:
    """The WebSocket options (docs/websocket.md): what a client, a listener or both may be told."""
    w = p.add_argument_group("WebSocket options (ws://, wss://, ws+unix: addresses)")
    w.add_argument("--text", action="store_true", help="each line is one text message (checked as UTF-8)")
    w.add_argument("--ping", type=seconds, metavar="S", help="ping every S seconds; end after 2*S without a word")
    w.add_argument(
        "--max-message", type=size, default=None, metavar="BYTES", help="largest message taken (default 16M)"
    )
    w.add_argument("--no-compress", action="store_true", help="refuse permessage-deflate")
    w.add_argument(
        "--protocol", action="append", default=[], metavar="NAME", help="subprotocol to offer or accept (repeatable)"
    )
    if client:
        w.add_argument(
            "-H",
            "--header",
            action="append",
            default=[],
            metavar="'NAME: VALUE'",
            help="an extra request header (repeatable)",
        )
    if listener:
        w.add_argument(
            "--origin",
            action="append",
            default=[],
            metavar="ORIGIN",
            help="browsers may connect only from these origins (repeatable; default: any)",
        )


_HEADER = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\t]*)")
_ORIGIN = re.compile(r"(https?)://[A-Za-z0-9.:\[\]_-]+|null")


def check_origins(origins: list[str]) -> None:
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise UsageError(f"bad origin {origin!r}: expected e.g. https://example.org or http://localhost:8080")


def ws_of(args: argparse.Namespace, *addrs: Address) -> WsOptions:
    """The WebSocket options given; any of them without a WebSocket address among ``addrs`` is a usage error."""
    from sockcat.core.wsoptions import DEFAULT_MAX_MESSAGE, WsOptions

    given = [
        name
        for name in ("text", "ping", "max_message", "no_compress", "protocol", "header", "origin")
        if getattr(args, name, None)
    ]
    if given and not any(a.is_ws for a in addrs):
        option = "--" + given[0].replace("_", "-")
        raise UsageError(f"{option} needs a WebSocket address (ws://, wss:// or ws+unix:)")
    headers = []
    for text in getattr(args, "header", []):
        m = _HEADER.fullmatch(text)
        if not m:
            raise UsageError(f"bad header {text!r}: expected 'NAME: VALUE' in printable ASCII")
        headers.append((m.group(1), m.group(2).strip()))
    check_origins(getattr(args, "origin", []))
    protocols = tuple(args.protocol or ())
    for name in protocols:
        if not _HEADER.fullmatch(f"{name}:"):
            raise UsageError(f"bad subprotocol name {name!r}")
    return WsOptions(
        text=bool(getattr(args, "text", False)),
        max_message=args.max_message or DEFAULT_MAX_MESSAGE,
        compress=not args.no_compress,
        protocols=protocols,
        headers=tuple(headers),
        origins=tuple(args.origin) if getattr(args, "origin", None) else None,
        ping=args.ping or None,
    )
