"""The exception tree: every error sockcat raises derives from :class:`SockcatError`.

Address errors are also ``ValueError``; network errors are also ``OSError`` (and the matching
builtin subclass, so ``except ConnectionRefusedError`` and ``except TimeoutError`` keep working).
Errors are mapped once, at the I/O boundary, by :func:`network_error`.
"""

from __future__ import annotations

import errno as _errno
import re
import sys


class SockcatError(Exception):
    """Base class of every error sockcat raises. ``exit_code``: the command line's exit status for it."""

    exit_code = 1


class AddressError(SockcatError, ValueError):
    """A malformed address: the message quotes the whole address and names the bad part."""

    exit_code = 2

    def __init__(self, address: str, problem: str) -> None:
        super().__init__(f"bad address {address!r}: {problem}")
        self.address = address
        self.problem = problem


class UsageError(SockcatError, ValueError):
    """A bad argument or option (exit status 2 on the command line)."""

    exit_code = 2


class ProtocolError(SockcatError, ValueError):
    """A peer sent something the protocol does not allow (exit status 1): the message says what, escaped."""


class NetworkError(SockcatError, OSError):
    """A socket operation failed; ``errno`` is the system's, the message names the address."""

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


class ConnectionRefused(NetworkError, ConnectionRefusedError):
    pass


class ConnectionReset(NetworkError, ConnectionResetError):
    pass


class ConnectionAborted(NetworkError, ConnectionAbortedError):
    pass


class BrokenPipe(NetworkError, BrokenPipeError):
    pass


class Timeout(NetworkError, TimeoutError):
    pass


class SocketFileNotFound(NetworkError, FileNotFoundError):
    pass


class WouldBlock(NetworkError, BlockingIOError):
    """EAGAIN/EWOULDBLOCK/EINPROGRESS/EALREADY: a non-blocking operation could not complete now."""


class Interrupted(NetworkError, InterruptedError):
    pass


class FileExists(NetworkError, FileExistsError):
    pass


class IsADirectory(NetworkError, IsADirectoryError):
    pass


class NotADirectory(NetworkError, NotADirectoryError):
    pass


class PermissionDenied(NetworkError, PermissionError):
    pass


class IncompleteReadError(SockcatError, EOFError):
    """The peer closed before the requested bytes arrived; ``.partial`` holds what did."""

    def __init__(self, partial: bytes, expected: int | None) -> None:
        want = "a delimiter" if expected is None else f"{expected} bytes"
        super().__init__(f"peer closed after {len(partial)} bytes, wanted {want}")
        self.partial = partial
        self.expected = expected


class LimitOverrunError(SockcatError, ValueError):
    """A delimited read found no delimiter within ``max_size`` bytes (the bytes stay buffered)."""

    def __init__(self, max_size: int, consumed: int) -> None:
        super().__init__(f"no delimiter within {max_size} bytes")
        self.max_size = max_size
        self.consumed = consumed


_BY_ERRNO: dict[int, type[NetworkError]] = {
    _errno.ECONNREFUSED: ConnectionRefused,
    _errno.ECONNRESET: ConnectionReset,
    _errno.ECONNABORTED: ConnectionAborted,
    _errno.EPIPE: BrokenPipe,
    _errno.ESHUTDOWN: BrokenPipe,
    _errno.ETIMEDOUT: Timeout,
    _errno.EAGAIN: WouldBlock,
    _errno.EWOULDBLOCK: WouldBlock,
    _errno.EINPROGRESS: WouldBlock,
    _errno.EALREADY: WouldBlock,
    _errno.EINTR: Interrupted,
    _errno.EEXIST: FileExists,
    _errno.EISDIR: IsADirectory,
    _errno.ENOTDIR: NotADirectory,
    _errno.ENOENT: SocketFileNotFound,
    _errno.EACCES: PermissionDenied,
    _errno.EPERM: PermissionDenied,
}

_PLAIN_WORDS: dict[int, str] = {
    _errno.ECONNREFUSED: "connection refused",
    _errno.ECONNRESET: "connection reset by peer",
    _errno.EADDRINUSE: "address in use",
    _errno.EADDRNOTAVAIL: "address not available",
    _errno.EACCES: "permission denied",
    _errno.EPERM: "permission denied",
    _errno.ENOENT: "no such file or directory",
    _errno.ETIMEDOUT: "timed out",
    _errno.EHOSTUNREACH: "host unreachable",
    _errno.ENETUNREACH: "network unreachable",
    _errno.EPIPE: "broken pipe",
    _errno.ENOTSOCK: "not a socket",
    _errno.EPROTOTYPE: "wrong socket type",
}


# CPython's ssl errors end in their C source location, "(_ssl.c:1006)": noise for users.
_SOURCE_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)")
_SSL_NOISE = re.compile(r"^\[SSL(?:: [A-Z0-9_]+)?\]\s*|\s*\(_ssl\.c:\d+\)")


_NOT_TLS = frozenset({"unexpected message", "wrong version number", "record layer failure", "http request"})


def tls_reason(exc: BaseException) -> str:
    """The one wording of a TLS error for people: ``wrong version number``, ``certificate verify failed: …``, never
    ``[SSL: …] … (_ssl.c:1006)``."""
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        said = reason.lower().replace("_", " ")
        if said in _NOT_TLS:  # what OpenSSL says when the bytes that came back were not TLS at all
            return f"{said}: the peer does not speak TLS"
        return said
    strerror = getattr(exc, "strerror", None)
    text = _SSL_NOISE.sub("", strerror if isinstance(strerror, str) else str(exc)).strip()
    lines = text.splitlines()
    if lines and lines[0] in _NOT_TLS:
        return f"{lines[0]}: the peer does not speak TLS"
    return lines[0] if lines else type(exc).__name__


def describe(exc: BaseException) -> str:
    """A short human description of an OS error ("connection refused")."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    ssl = sys.modules.get("ssl")  # an SSLError's errno is an SSL_ERROR_* code, not an OS errno
    if ssl is not None and isinstance(exc, ssl.SSLError):
        return tls_reason(exc)
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in _PLAIN_WORDS:
        return _PLAIN_WORDS[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        text = _SOURCE_LOCATION.sub("", exc.strerror).strip()
        return text.lower() if text[:1].isupper() else text
    return _SOURCE_LOCATION.sub("", str(exc)).strip() or type(exc).__name__


def network_error(exc: OSError, what: str) -> NetworkError:
    """Map an ``OSError`` to sockcat's tree, with a message like ``connect tcp://h:1: connection refused``."""
    if isinstance(exc, NetworkError):
        return exc
    code = exc.errno
    if isinstance(exc, TimeoutError):
        cls: type[NetworkError] = Timeout
        code = code or _errno.ETIMEDOUT
    else:
        cls = _BY_ERRNO.get(code or 0, NetworkError)
    err = cls(code or 0, f"{what}: {describe(exc)}")
    err.__cause__ = exc
    return err
