"""The command line: it maps arguments to library calls and errors to exit statuses, nothing more.

Exit statuses (SPEC §2): 0 success (SIGTERM included), 1 network or runtime failure, 2 usage error,
130 interrupted by SIGINT. Errors are one stderr line, ``sockcat: error: WHAT``; ``-vv`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from ._errors import AddressError, SockcatError, UsageError, describe
from ._log import PROG, Log

if TYPE_CHECKING:
    from ._address import Address
    from ._bridge import BridgeOptions
    from ._proxy import Proxy

# Start-up time matters for a command line tool: what a command needs is imported when it runs
# (`sockcat --help` and `--version` load no socket code, TLS or asyncio).

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Terminated(BaseException):
    """SIGTERM: unwind (closing listeners, removing socket files) and exit 0."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
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


def sockopt_option(g: Any) -> None:
    """``--sockopt NAME=VALUE`` (repeatable), its help naming every option sockcat knows."""
    from ._options import NAMES as SOCKOPT_NAMES

    g.add_argument(
        "--sockopt",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"set a socket option (repeatable): {', '.join(SOCKOPT_NAMES)}",
    )


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
    return t


def _connection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection options")
    g.add_argument("-w", "--connect-timeout", type=_seconds, metavar="S", help="give up connecting after S seconds")
    g.add_argument("-i", "--idle-timeout", type=_seconds, metavar="S", help="close after S seconds without traffic")
    g.add_argument("-s", "--source", metavar="ADDR", help="bind to ADDR before connecting")
    sockopt_option(g)
    g.add_argument("--hexdump", action="store_true", help="show traffic as a hex dump on stderr")
    t = p.add_argument_group("TLS options (tls:// addresses)")
    t.add_argument("--cert", metavar="PEM", help="certificate (a listener without one makes a throwaway one)")
    t.add_argument("--key", metavar="PEM", help="private key (default: in the --cert file)")
    t.add_argument("--ca", metavar="PEM", help="trust these CA certificates (listener: require client certs)")
    t.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    t.add_argument("--sni", metavar="NAME", help="server name to send and verify (default: the address's host)")


def _proxy_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--proxy",
        metavar="URL",
        help="connect through a proxy: socks5://, socks5h:// (the proxy resolves names), socks4://, socks4a://, "
        "http:// (CONNECT); [USER:PASSWORD@]HOST[:PORT]",
    )


def _proxy(args: argparse.Namespace) -> Proxy | None:
    from ._proxy import Proxy

    return Proxy.parse(args.proxy) if args.proxy else None


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Sockets of every kind, one address syntax: connect, listen, relay, …",
        epilog="Addresses: tcp://HOST:PORT tcp4:// tcp6:// udp:// udp4:// udp6:// tls://HOST:PORT "
        "unix:PATH unix:@ABSTRACT unixgram:PATH unixpacket:PATH - (stdio)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _global_options(parser, suppress=False)
    common = Parser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    c = sub.add_parser(
        "connect",
        parents=[common],
        help="connect to ADDR and bridge it to stdin/stdout",
        description="Connect to ADDR; stdin goes to the socket, the socket to stdout. "
        "On stdin EOF the socket is half-closed and reading goes on until the peer closes.",
    )
    c.add_argument("address", metavar="ADDR")
    _connection_options(c)
    _proxy_option(c)
    c.set_defaults(func=cmd_connect)

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
    listen.add_argument("--max-conns", type=_positive, metavar="N", help="close connections past N at once")
    listen.add_argument("--allow", action="append", default=[], metavar="CIDR", help="only these peers (repeatable)")
    listen.add_argument("--deny", action="append", default=[], metavar="CIDR", help="never these peers (repeatable)")
    _connection_options(listen)
    listen.set_defaults(func=cmd_listen)

    from ._cli_services import add_parsers

    add_parsers(sub, common)

    from ._cli_tools import add_chat_parser, add_transfer_parsers
    from ._cli_tools import add_parser as add_scan

    add_chat_parser(sub, common)
    add_transfer_parsers(sub, common)
    add_scan(sub, common)

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
    r.add_argument("--max-conns", type=_positive, metavar="N", help="close connections past N at once")
    r.add_argument("--allow", action="append", default=[], metavar="CIDR", help="only these peers (repeatable)")
    r.add_argument("--deny", action="append", default=[], metavar="CIDR", help="never these peers (repeatable)")
    r.add_argument("--workers", type=_positive, default=1, metavar="N", help="processes sharing the address")
    r.add_argument(
        "--grace",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="on SIGTERM, let connections finish for S seconds (default 5)",
    )
    _connection_options(r)
    _proxy_option(r)
    r.set_defaults(func=cmd_relay)
    return parser


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def _address(text: str) -> Address:
    from ._address import Address

    return Address.parse(text)


def _bridge_options(args: argparse.Namespace, log: Log) -> BridgeOptions:
    from ._bridge import BridgeOptions

    return BridgeOptions(log=log, idle_timeout=args.idle_timeout, hexdump=args.hexdump)


def _check_tls_options(args: argparse.Namespace, addr: Address) -> None:
    given = [name for name in ("cert", "key", "ca", "sni") if getattr(args, name)]
    if args.insecure:
        given.append("insecure")
    if given and not addr.is_tls:
        raise UsageError(f"--{given[0]} needs a tls:// address, not {addr}")


def cmd_connect(args: argparse.Namespace, log: Log) -> int:
    from ._bridge import run_connect
    from ._options import parse_sockopts

    addr = _address(args.address)
    _check_tls_options(args, addr)
    source = _address(args.source) if args.source else None
    sockopts = parse_sockopts(args.sockopt)
    ctx = None
    if addr.is_tls:
        from ._tls import client_context

        ctx = client_context(ca=args.ca, cert=args.cert, key=args.key, insecure=args.insecure)
    return run_connect(
        addr,
        _bridge_options(args, log),
        connect_timeout=args.connect_timeout,
        source=source,
        sockopts=sockopts,
        ssl_context=ctx,
        sni=args.sni,
        proxy=_proxy(args),
    )


def cmd_listen(args: argparse.Namespace, log: Log) -> int:
    from ._access import AccessPolicy
    from ._bridge import ListenOptions, exec_argv, run_listen
    from ._options import parse_sockopts

    addr = _address(args.address)
    _check_tls_options(args, addr)
    if args.sni:
        raise UsageError("--sni is for connecting, not listening")
    if args.source:
        raise UsageError("--source is for connecting; give the address to listen on as ADDR")
    lopts = ListenOptions(
        keep_open=args.keep_open,
        exec_argv=exec_argv(args.exec_cmd, args.sh_exec),
        max_conns=args.max_conns,
        access=AccessPolicy.parse(args.allow, args.deny),
        sockopts=parse_sockopts(args.sockopt),
    )
    if addr.is_tls:
        from ._tls import server_context

        lopts.ssl_context, lopts.fingerprint = server_context(
            cert=args.cert, key=args.key, ca=args.ca, hosts=[addr.host] if addr.host else []
        )
    return run_listen(addr, _bridge_options(args, log), lopts)


def cmd_relay(args: argparse.Namespace, log: Log) -> int:
    from ._access import AccessPolicy
    from ._options import parse_sockopts
    from ._relay import RelayOptions, run_relay

    listen_addr = _address(args.listen_address)
    target = _address(args.target_address)
    if (args.cert or args.key) and not listen_addr.is_tls:
        raise UsageError(f"--cert/--key are for a tls:// LISTEN address, not {listen_addr}")
    if (args.ca or args.insecure or args.sni) and not target.is_tls:
        raise UsageError(f"--ca/--insecure/--sni are for a tls:// TARGET, not {target}")
    opts = RelayOptions(
        log=log,
        connect_timeout=args.connect_timeout if args.connect_timeout is not None else 10.0,
        idle_timeout=args.idle_timeout,
        hexdump=args.hexdump,
        max_conns=args.max_conns,
        access=AccessPolicy.parse(args.allow, args.deny),
        sockopts=parse_sockopts(args.sockopt),
        source=_address(args.source) if args.source else None,
        grace=args.grace,
        workers=args.workers,
        sni=args.sni,
        proxy=_proxy(args),
    )
    if listen_addr.is_tls:
        from ._tls import server_context

        opts.server_ssl, opts.fingerprint = server_context(
            cert=args.cert, key=args.key, hosts=[listen_addr.host] if listen_addr.host else []
        )
    if target.is_tls:
        from ._tls import client_context

        opts.client_ssl = client_context(ca=args.ca, insecure=args.insecure)
    return run_relay(listen_addr, target, opts)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, return the exit status (errors already reported)."""
    _ensure_stdio()
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = getattr(args, "verbose", 0) or 0
    log = Log(verbosity, quiet=getattr(args, "quiet", False))
    func: Callable[[argparse.Namespace, Log], int] | None = getattr(args, "func", None)
    if func is None:
        log.error(f"a COMMAND is required: {', '.join(_commands(parser))} (see '{PROG} --help')")
        return EXIT_USAGE
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    tracing = bool(getattr(args, "trace", False))
    if tracing:
        from ._trace import set_trace

        set_trace(sys.stderr)
    try:
        return func(args, log)
    except (UsageError, AddressError) as exc:
        log.error(str(exc))
        return EXIT_USAGE
    except (SockcatError, OSError) as exc:
        log.error(str(exc) if isinstance(exc, SockcatError) else _os_message(exc))
        if verbosity >= 2:
            import traceback

            traceback.print_exc()
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _Terminated:
        return EXIT_OK
    finally:
        if tracing:
            set_trace(None)
        signal.signal(signal.SIGTERM, old_term)


def _ensure_stdio() -> None:
    """Started with stdin/stdout/stderr closed, the first socket would become fd 0: give them /dev/null."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{describe(exc)}"


if __name__ == "__main__":
    main()
