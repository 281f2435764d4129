"""TLS streams (sync, aio, the CLI): half-close never loses bytes already received, threads may share a
stream, closing with unread session tickets is not a reset, and error messages stay readable.

The half-close tests guard against OpenSSL's SSL_shutdown (run twice by ``SSLObject.unwrap()``) reading
and dropping the application data waiting in the incoming memory BIO: sockcat decrypts it first.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from conftest import Bg as _Bg
from conftest import await_until, queued_to_read, run_sockcat, wait_until
from helpers_streams import (
    pair,
    pair_to,
    read_to_eof,
    tcp_listener_fixture,  # noqa: F401  (the tcp_listener fixture)
)

import sockcat
from sockcat import NetworkError, SockcatError, aio
from sockcat.core.errors import tls_reason
from sockcat.net.tls import client_context, fingerprint_sha256
from sockcat.streams.tlsio import TLSChannel

T = 10.0
ANSWER = random.Random(4).randbytes(256 << 10)
ROUNDS = 30
pytestmark = pytest.mark.timeout(120)

VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
    pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
]


def insecure() -> ssl.SSLContext:
    return client_context(insecure=True)


def client_ctx(version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = client_context(insecure=True)
    ctx.maximum_version = version
    return ctx


class Bg(_Bg):
    TIMEOUT = 2 * T


def answer_then_read(lst: sockcat.Listener) -> bytes:
    """One server connection: send ANSWER at once, then read the question to EOF."""
    with lst.accept() as conn:
        conn.settimeout(T)
        conn.sendall(ANSWER)
        question = read_to_eof(conn)
        conn.shutdown_write()
        return question


@pytest.fixture
def tls_listener() -> Iterator[sockcat.Listener]:
    with sockcat.listen("tls://127.0.0.1:0") as lst:
        lst.settimeout(T)
        yield lst


# --- sync -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_sync_half_close_keeps_records_already_received(
    tls_listener: sockcat.Listener, version: ssl.TLSVersion
) -> None:
    """Deterministic: the first recv pulls several records into the BIO but returns a few bytes only."""
    for _ in range(5):
        server = Bg(answer_then_read, tls_listener)
        with sockcat.connect(str(tls_listener.address), timeout=T, ssl_context=client_ctx(version)) as c:
            first = c.recv(100)
            c.sendall(b"question")
            c.shutdown_write()
            assert len(first + read_to_eof(c)) == len(ANSWER)
        assert server.get() == b"question"


@pytest.mark.parametrize("version", VERSIONS)
def test_sync_half_close_while_another_thread_reads(tls_listener: sockcat.Listener, version: ssl.TLSVersion) -> None:
    """The netcat pattern: one thread prints the answer while the other hits stdin EOF at any moment."""
    rng = random.Random(1)
    for _ in range(ROUNDS):
        server = Bg(answer_then_read, tls_listener)
        with sockcat.connect(str(tls_listener.address), timeout=T, ssl_context=client_ctx(version)) as c:
            reader = Bg(read_to_eof, c)
            if rng.random() < 0.7:
                threading.Event().wait(rng.random() * 0.004)  # pacing: a random interleaving, not an event
            c.sendall(b"question")
            c.shutdown_write()
            assert reader.get() == ANSWER
        assert server.get() == b"question"


def test_sync_tls_stream_makefile(tls_listener: sockcat.Listener) -> None:
    acc = Bg(tls_listener.accept)
    c = sockcat.connect(str(tls_listener.address), timeout=T, ssl_context=client_context(insecure=True))
    with c, acc.get() as s:
        s.settimeout(T)
        f = c.makefile("rwb")
        f.write(b"hello over tls\n")
        f.flush()
        assert s.recv_line() == b"hello over tls\n"
        s.send_line("and back")
        assert f.readline() == b"and back\n"
        text = s.makefile("r", encoding="utf-8")
        c.send_line("ünïcode")
        assert text.readline() == "ünïcode\n"


def test_sync_tls_stream_send_and_timeouts(tls_listener: sockcat.Listener) -> None:
    acc = Bg(tls_listener.accept)
    c = sockcat.connect(str(tls_listener.address), timeout=T, ssl_context=client_context(insecure=True))
    with c, acc.get() as s:
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv()
        assert c.send(b"partial") == 7
        s.settimeout(T)
        assert s.recv_exactly(7) == b"partial"
        assert c.gettimeout() == T
        assert c.cipher()
        assert s.getpeercert() is None  # no client certificate asked for


def _ticketing_server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server context as a user would make it: TLS 1.3 session tickets on (OpenSSL sends two)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    assert ctx.num_tickets > 0
    return ctx


def test_sync_close_with_unread_session_tickets_is_not_a_reset() -> None:
    ca = trustme.CA()
    with sockcat.listen("tls://127.0.0.1:0", ssl_context=_ticketing_server_context(ca)) as lst:
        lst.settimeout(T)
        for _ in range(5):
            acc = Bg(lst.accept)
            client = sockcat.connect(str(lst.address), timeout=T, ssl_context=client_context(insecure=True))
            with acc.get() as server:
                server.settimeout(T)
                # the tickets reach the client's kernel buffer, unread
                wait_until(lambda c=client: queued_to_read(c.socket) > 0, "the session tickets arrive", T)
                client.close()
                assert server.recv() == b""


def test_server_contexts_send_no_session_tickets() -> None:
    from sockcat.net.tls import server_context

    ctx, _ = server_context()
    assert ctx.num_tickets == 0


# --- aio --------------------------------------------------------------------------------------------


async def a_read_to_eof(s: aio.Stream) -> bytes:
    out = bytearray()
    while data := await s.recv():
        out += data
    return bytes(out)


async def a_answer_then_read(lst: aio.Listener) -> bytes:
    conn = await lst.accept()
    async with conn:
        conn.timeout = T
        await conn.sendall(ANSWER)
        question = await a_read_to_eof(conn)
        await conn.shutdown_write()
        return question


@pytest.mark.parametrize("version", VERSIONS)
def test_aio_half_close_keeps_records_already_received(version: ssl.TLSVersion) -> None:
    async def main() -> None:
        async with await aio.listen("tls://127.0.0.1:0") as lst:
            for _ in range(5):
                server = asyncio.create_task(a_answer_then_read(lst))
                async with await aio.connect(str(lst.address), timeout=T, ssl_context=client_ctx(version)) as c:
                    while not (first := await c.recv(100)):
                        pass
                    # more records arrive in the socket; only a read brings them into the BIO
                    await await_until(lambda c=c: queued_to_read(c.socket) > 0, "more records arrive", T)
                    first += await c.recv(100)
                    await c.sendall(b"question")
                    await c.shutdown_write()
                    assert len(first + await a_read_to_eof(c)) == len(ANSWER)
                assert await server == b"question"

    asyncio.run(main())


@pytest.mark.parametrize("version", VERSIONS)
def test_aio_half_close_while_another_task_reads(version: ssl.TLSVersion) -> None:
    rng = random.Random(2)

    async def main() -> None:
        async with await aio.listen("tls://127.0.0.1:0") as lst:
            for _ in range(ROUNDS):
                server = asyncio.create_task(a_answer_then_read(lst))
                async with await aio.connect(str(lst.address), timeout=T, ssl_context=client_ctx(version)) as c:
                    reader = asyncio.create_task(a_read_to_eof(c))
                    for _ in range(rng.randrange(6)):
                        await asyncio.sleep(0)  # pacing: a random interleaving, not waiting for an event
                    await c.sendall(b"question")
                    await c.shutdown_write()
                    assert await reader == ANSWER
                assert await server == b"question"

    asyncio.run(main())


def test_aio_close_with_unread_session_tickets_is_not_a_reset() -> None:
    ca = trustme.CA()

    async def main() -> None:
        async with await aio.listen("tls://127.0.0.1:0", ssl_context=_ticketing_server_context(ca)) as lst:
            for _ in range(5):
                server, client = await asyncio.gather(
                    lst.accept(), aio.connect(str(lst.address), timeout=T, ssl_context=client_context(insecure=True))
                )
                server.timeout = T
                async with server:
                    # the tickets reach the client's kernel buffer, unread
                    await await_until(lambda c=client: queued_to_read(c.socket) > 0, "the session tickets arrive", T)
                    await client.aclose()
                    assert await server.recv() == b""

    asyncio.run(main())


# --- the command line -------------------------------------------------------------------------------


def test_cli_connect_tls_stdin_eof_keeps_the_answer(tls_listener: sockcat.Listener) -> None:
    """`sockcat connect tls://…` whose stdin ends at once still prints the whole answer."""

    def serve(n: int) -> list[bytes]:
        questions = []
        for _ in range(n):
            questions.append(answer_then_read(tls_listener))
        return questions

    rounds = 12
    server = Bg(serve, rounds)
    for _ in range(rounds):
        r = run_sockcat("connect", "--insecure", str(tls_listener.address), input=b"question")
        assert r.returncode == 0, r.stderr
        assert len(r.stdout) == len(ANSWER) and r.stdout == ANSWER
    assert server.get(60) == [b"question"] * rounds


# --- messages ---------------------------------------------------------------------------------------


def test_tls_reason_has_no_source_location_nor_library_prefix() -> None:
    exc = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    assert tls_reason(exc) == "wrong version number: the peer does not speak TLS"
    assert tls_reason(ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2580)")) == (
        "EOF occurred in violation of protocol"
    )


def test_handshake_error_message_is_clean() -> None:
    """A TLS client meeting a plain TCP server that answers garbage gets a readable one-line message."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def garbage() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" + os.urandom(64))

        bg = Bg(garbage)
        with pytest.raises(sockcat.NetworkError) as info:
            sockcat.connect(f"tls://127.0.0.1:{srv.getsockname()[1]}", timeout=T, ssl_context=client_context())
        bg.get()
    assert "_ssl.c" not in str(info.value)
    assert "TLS handshake with" in str(info.value)


def test_channel_is_used_for_sync_tls_streams(tls_listener: sockcat.Listener) -> None:
    acc = Bg(tls_listener.accept)
    c = sockcat.connect(str(tls_listener.address), timeout=T, ssl_context=client_context(insecure=True))
    with c, acc.get():
        assert isinstance(c._tls, TLSChannel)
        assert not isinstance(c.socket, ssl.SSLSocket)


# --- the sync library: TLS listeners, verification, half-close and timeouts ---------------------------

FINGERPRINT_RE = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


def test_tls_self_signed_listener(tls_listener: sockcat.Listener) -> None:
    assert tls_listener.address.scheme == "tls"
    assert tls_listener.address.port != 0
    assert tls_listener.fingerprint is not None
    assert FINGERPRINT_RE.match(tls_listener.fingerprint)
    client, server = pair(tls_listener, ssl_context=insecure())
    with client, server:
        # .socket is the real TCP socket: TLS runs over it (safe for a reading and a writing thread).
        assert type(client.socket) is socket.socket and not isinstance(client.socket, ssl.SSLSocket)
        assert client.tls_version in ("TLSv1.2", "TLSv1.3")
        der = client.getpeercert(binary_form=True)
        assert der is not None
        assert fingerprint_sha256(der) == tls_listener.fingerprint
        client.send_line("secret")
        assert server.recv_line() == b"secret\n"
        server.send_line(b"ack")
        assert client.recv_line(drop=True) == b"ack"


def test_tls_default_verification_fails(tls_listener: sockcat.Listener) -> None:
    def server_side() -> None:
        with pytest.raises(NetworkError):
            tls_listener.accept()

    bg = Bg(server_side)
    with pytest.raises(NetworkError) as info:
        sockcat.connect(str(tls_listener.address), timeout=T)
    assert isinstance(info.value, SockcatError)
    assert isinstance(info.value, OSError)
    assert "certificate verify failed" in str(info.value)
    bg.get()


def test_tls_iteration_skips_a_failed_handshake(tls_listener: sockcat.Listener) -> None:
    def serve() -> bytes:
        for conn in tls_listener:
            with conn:
                conn.settimeout(T)
                return conn.recv_line()
        return b""

    bg = Bg(serve)
    with pytest.raises(NetworkError):
        sockcat.connect(str(tls_listener.address), timeout=T)  # verification fails: server skips it
    with sockcat.connect(str(tls_listener.address), timeout=T, ssl_context=insecure()) as c:
        c.send_line("second")
        assert bg.get() == b"second\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_tls_trustme_ca_verifies(ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with sockcat.listen("tls://127.0.0.1:0", ssl_context=server_ctx) as lst:
        assert lst.fingerprint is None
        port = lst.address.port
        for target in (f"tls://127.0.0.1:{port}", f"tls://localhost:{port}"):
            client, server = pair_to(lst, target, ssl_context=client_context(ca=str(ca_file)))
            with client, server:
                client.sendall(b"verified")
                assert server.recv_exactly(8) == b"verified"
        # Wrong name: verification of the host name fails.
        bg = Bg(_expect_handshake_failure, lst)
        with pytest.raises(NetworkError) as info:
            sockcat.connect(
                f"tls://127.0.0.1:{port}", timeout=T, ssl_context=client_context(ca=str(ca_file)), sni="other.example"
            )
        assert "certificate verify failed" in str(info.value)
        bg.get()


def test_tls_listener_with_cert_and_key_files(ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    with sockcat.listen("tls://127.0.0.1:0", cert=str(cert_file), key=str(key_file)) as lst:
        assert lst.fingerprint is None
        client, server = pair(lst, ssl_context=client_context(ca=str(ca_file)))
        with client, server:
            server.sendall(b"from file cert")
            assert client.recv_exactly(14) == b"from file cert"


def _expect_handshake_failure(lst: sockcat.Listener) -> None:
    with pytest.raises(NetworkError):
        lst.accept()


def test_tls_half_close(tls_listener: sockcat.Listener) -> None:
    client, server = pair(tls_listener, ssl_context=insecure())
    with client, server:
        client.sendall(b"tls request")
        client.shutdown_write()
        assert read_to_eof(server) == b"tls request"
        server.sendall(b"tls reply")
        server.shutdown_write()
        assert read_to_eof(client) == b"tls reply"


def test_tls_timeout(tls_listener: sockcat.Listener) -> None:
    client, server = pair(tls_listener, ssl_context=insecure())
    with client, server:
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recv()
        server.sendall(b"after")
        client.settimeout(T)
        assert client.recv_exactly(5) == b"after"


def test_tls_handshake_timeout(tcp_listener: sockcat.Listener) -> None:
    """A TLS client facing a server that never answers the handshake gives up with TimeoutError."""
    acc = Bg(tcp_listener.accept)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        sockcat.connect(f"tls://127.0.0.1:{tcp_listener.address.port}", timeout=0.5, ssl_context=insecure())
    assert isinstance(info.value, SockcatError)
    assert time.monotonic() - t0 < 3
    acc.get().close()
