"""What sockcat tells a person on stderr, by verbosity (docs/reference.md#output).

Without ``-v`` stderr carries only errors, the ``listening on`` line, a self-signed TLS listener's
``certificate sha256`` line and warnings; ``-q`` drops the warnings; ``-v`` adds one line per connection
(and its byte counts at close); ``-vv`` adds debug detail and tracebacks.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from sockcat.core.untrusted import escape_line

PROG = "sockcat"


class Log:
    def __init__(self, verbosity: int = 0, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.verbosity = verbosity
        self.quiet = quiet
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        """One line, whatever it holds: a control character, bidi override or line break that came from a
        peer (a name, a path, an error text) is shown escaped, never acted on by the terminal."""
        out = self._stream or sys.stderr
        line = escape_line(line)
        with self._lock:
            try:
                out.write(line + "\n")
                out.flush()
            except (OSError, ValueError):
                pass

    def always(self, line: str) -> None:
        """Lines scripts rely on (``listening on …``): printed even with ``-q``."""
        self._write(line)

    def error(self, message: str) -> None:
        self._write(f"{PROG}: error: {message}")

    def warning(self, message: str) -> None:
        if not self.quiet:
            self._write(f"{PROG}: warning: {message}")

    def info(self, message: str) -> None:
        if self.verbosity >= 1 and not self.quiet:
            self._write(f"{PROG}: {message}")

    def debug(self, message: str) -> None:
        if self.verbosity >= 2 and not self.quiet:
            self._write(f"{PROG}: debug: {message}")

    @property
    def verbose(self) -> bool:
        return self.verbosity >= 1 and not self.quiet


SILENT = Log(0, quiet=True)
