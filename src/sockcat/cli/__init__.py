"""The command line: it maps arguments to library calls and errors to exit statuses, nothing more.

One module per command (``connect``, ``listen``, ``serve``, ``bench``, ``chat``, ``send``/``recv``, ``scan``,
``relay``), each with ``add_parser`` and the function that runs it; :mod:`.common` holds what they share.
Exit statuses (docs/reference.md#exit-statuses): 0 success (SIGTERM included), 1 network or runtime failure,
2 usage error, 130 interrupted by SIGINT. Errors are one stderr line, ``sockcat: error: WHAT``; ``-vv`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from sockcat import __version__
from sockcat.cli import bench, chat, connect, listen, relay, scan, serve, transfer
from sockcat.cli.common import EXIT_USAGE, Parser, global_options
from sockcat.core.errors import AddressError, SockcatError, UsageError, describe
from sockcat.core.log import PROG, Log
from sockcat.serving.process import handled_promptly

EXIT_OK, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 1, 130


class _Terminated(BaseException):
    """SIGTERM: unwind (closing listeners, removing socket files) and exit 0."""


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Sockets of every kind, one address syntax: connect, listen, relay, …",
        epilog="Addresses: tcp://HOST:PORT tcp4:// tcp6:// udp:// udp4:// udp6:// tls://HOST:PORT "
        "ws://HOST:PORT/PATH wss://… ws+unix:PATH unix:PATH unix:@ABSTRACT unixgram:PATH unixpacket:PATH - (stdio)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--completion",
        choices=("bash", "zsh"),
        action=_Completion,
        help="print the shell completion script for bash or zsh, and exit (see docs/reference.md#commands)",
    )
    global_options(parser, suppress=False)
    common = Parser(add_help=False)
    global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    connect.add_parser(sub, common)
    listen.add_parser(sub, common)
    serve.add_parser(sub, common)
    bench.add_parser(sub, common)
    bench.add_report_parser(sub, common)
    chat.add_parser(sub, common)
    transfer.add_parsers(sub, common)
    scan.add_parser(sub, common)
    relay.add_parser(sub, common)
    return parser


class _Completion(argparse.Action):
    """``--completion SHELL``: the completion script shtab makes from this very parser, on stdout."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: object, values: object, option: object = None
    ) -> None:
        import shtab  # (only for this option)

        sys.stdout.write(shtab.complete(parser, shell=str(values)))
        parser.exit()


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


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
    func: Callable[[argparse.Namespace, Log], None] | None = getattr(args, "func", None)
    if func is None:
        log.error(f"a COMMAND is required: {', '.join(_commands(parser))} (see '{PROG} --help')")
        return EXIT_USAGE
    as_json = bool(getattr(args, "trace_json", False))
    tracing = bool(getattr(args, "trace", False)) or as_json
    if tracing:
        from sockcat.net.trace import set_trace

        set_trace(sys.stderr, as_json=as_json)
    handlers: dict[signal.Signals, Callable[[int, FrameType | None], None]] = {signal.SIGTERM: _on_sigterm}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (not when started with ^C ignored)
        handlers[signal.SIGINT] = signal.default_int_handler
    try:
        with handled_promptly(handlers):
            func(args, log)
        return EXIT_OK
    except (SockcatError, OSError) as exc:  # each error says its exit status (usage errors: 2)
        log.error(str(exc) if isinstance(exc, SockcatError) else _os_message(exc))
        if verbosity >= 2 and not isinstance(exc, UsageError | AddressError):
            import traceback

            traceback.print_exc()
        return exc.exit_code if isinstance(exc, SockcatError) else EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _Terminated:
        return EXIT_OK
    finally:
        if tracing:
            from sockcat.net.trace import set_trace

            set_trace(None)


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
