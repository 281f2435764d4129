"""sockcat.core.errors: the errno -> exception mapping (network_error) and the one wording of errors (describe)."""

from __future__ import annotations

import errno

import pytest

import sockcat
from sockcat import NetworkError, SockcatError
from sockcat.core.errors import describe, network_error


def test_refused_maps_to_connection_refused() -> None:
    orig = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    err = network_error(orig, "connect tcp://127.0.0.1:9")
    assert isinstance(err, ConnectionRefusedError)
    assert isinstance(err, sockcat.SockcatError)
    assert isinstance(err, NetworkError)
    assert isinstance(err, OSError)
    assert err.errno == errno.ECONNREFUSED
    assert str(err) == "connect tcp://127.0.0.1:9: connection refused"
    assert err.__cause__ is orig


@pytest.mark.parametrize("exc", [TimeoutError(), TimeoutError("timed out"), TimeoutError(errno.ETIMEDOUT, "x")])
def test_timeout_maps_to_timeout_error(exc: OSError) -> None:
    err = network_error(exc, "recv from x")
    assert isinstance(err, TimeoutError)
    assert isinstance(err, SockcatError)
    assert err.errno == errno.ETIMEDOUT
    assert str(err) == "recv from x: timed out"


@pytest.mark.parametrize(
    ("code", "builtin"),
    [
        (errno.ECONNRESET, ConnectionResetError),
        (errno.ECONNABORTED, ConnectionAbortedError),
        (errno.EPIPE, BrokenPipeError),
        (errno.ENOENT, FileNotFoundError),
        (errno.EACCES, PermissionError),
        (errno.EPERM, PermissionError),
        (errno.ETIMEDOUT, TimeoutError),
    ],
)
def test_errno_maps_to_builtin_subclass(code: int, builtin: type[OSError]) -> None:
    err = network_error(OSError(code, "whatever"), "op")
    assert isinstance(err, builtin)
    assert isinstance(err, SockcatError)
    assert err.errno == code


def test_address_in_use_and_unknown_errno() -> None:
    err = network_error(OSError(errno.EADDRINUSE, "Address already in use"), "listen tcp://:80")
    assert type(err) is NetworkError
    assert err.errno == errno.EADDRINUSE
    assert str(err) == "listen tcp://:80: address in use"
    other = network_error(OSError(errno.EIO, "Input/output error"), "recv")
    assert type(other) is NetworkError
    assert str(other) == "recv: input/output error"


def test_network_error_passes_through() -> None:
    e = NetworkError(errno.EPROTO, "tls: bad")
    assert network_error(e, "ignored") is e


def test_eagain_maps_to_blocking_io_error() -> None:
    err = network_error(BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"), "recv")
    assert isinstance(err, BlockingIOError)


@pytest.mark.parametrize(
    "code", [errno.EAGAIN, errno.EINPROGRESS, errno.EALREADY, errno.EINTR, errno.EEXIST, errno.ESHUTDOWN, errno.ENOTDIR]
)
def test_network_errors_keep_the_builtin_subclass_python_picks(code: int) -> None:
    """Whatever builtin OSError subclass Python raises for an errno, the mapped error is one too."""
    builtin = type(OSError(code, "x"))
    assert builtin is not OSError
    err = network_error(builtin(code, "x"), "op")
    assert isinstance(err, builtin) and isinstance(err, NetworkError) and isinstance(err, SockcatError)
    assert err.errno == code


def test_describe() -> None:
    assert describe(TimeoutError()) == "timed out"
    assert describe(OSError(errno.ECONNREFUSED, "Connection refused")) == "connection refused"
    assert describe(OSError(errno.EHOSTUNREACH, "No route")) == "host unreachable"


def test_describe_ssl_error_is_clean_and_not_an_errno() -> None:
    """An SSLError's errno is an SSL_ERROR_* code (1 = SSL_ERROR_SSL): it must not read as EPERM."""
    import socket
    import ssl

    from sockcat.core.errors import describe

    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"HTTP/1.0 200 OK\r\n\r\n" * 4)
        with pytest.raises(ssl.SSLError) as info:
            ssl.create_default_context().wrap_socket(a, server_hostname="example.test")
    text = describe(info.value)
    assert text == "wrong version number: the peer does not speak TLS"
    assert "_ssl.c" not in describe(ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)"))
