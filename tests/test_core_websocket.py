"""The WebSocket core (sockcat.core.websocket), pure: frames and handshakes fed what a hostile peer could send,
through the sans-I/O layer (Hypothesis, budgets fixed by conftest.fuzz) and over a real socket to a real listener.
The answer is always a clean end: a ``WsError`` with its Close status, or an HTTP error, never another exception."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest
from conftest import TIMEOUT, fuzz
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode

import sockcat as sc
from sockcat.core.websocket import (
    MAX_SEND,
    ClientHandshake,
    HandshakeReader,
    Keepalive,
    WsCore,
    WsError,
    answer,
)
from sockcat.core.wsoptions import WsOptions

KINDS = [Opcode.BINARY, Opcode.TEXT, Opcode.PING]


def masked(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame built by hand (so that it may be wrong), masked as clients must (a fixed key: the test ids
    must be the same in every pytest-xdist worker)."""
    key = b"\x37\xfa\x21\x3d"
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


def opened(**kw: object) -> tuple[WsCore, WsCore]:
    """A client core and a server core that completed the handshake with each other."""
    opts = WsOptions(**kw)  # type: ignore[arg-type]
    hs = ClientHandshake("localhost", 80, "/", opts, secure=False)
    request = HandshakeReader(response=False).feed(hs.request)
    ans = answer(request, "/", opts)  # type: ignore[arg-type]
    assert ans.core is not None
    client = hs.feed(ans.response)
    assert client is not None
    return client, ans.core


def drain(core: WsCore) -> bytes:
    out = b""
    while data := core.read(1 << 20):
        out += data
    return out


# --- frames, fuzzed ------------------------------------------------------------------------------------


@fuzz(400)
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_any_bytes_to_a_listener_end_cleanly(chunks: list[bytes]) -> None:
    _client, server = opened(max_message=1000)
    for chunk in [*chunks, b""]:
        try:
            server.feed(chunk)
            while server.read(4096):
                pass
        except WsError as exc:
            assert exc.code in (1002, 1007, 1009)
            # what is queued: the pongs owed for pings before the bad frame, then our Close with the status
            out, frames, i = bytes(server.out), [], 0
            while i < len(out):
                size = out[i + 1] & 0x7F  # (control frames: at most 125 bytes, unmasked from a server)
                frames.append((out[i], out[i + 2 : i + 2 + size]))
                i += 2 + size
            assert [op for op, _ in frames[:-1]] == [0x8A] * (len(frames) - 1), frames
            assert frames[-1][0] == 0x88 and int.from_bytes(frames[-1][1][:2], "big") == exc.code, frames
            assert server.peer_closed
            return


@fuzz(300)
@given(
    st.lists(
        st.tuples(st.sampled_from([Opcode.BINARY, Opcode.TEXT, Opcode.PING]), st.binary(max_size=2000)), max_size=8
    ),
    st.integers(min_value=1, max_value=97),
)
def test_valid_frames_in_any_cuts_give_the_payloads_in_order(messages: list[tuple[Opcode, bytes]], cut: int) -> None:
    _client, server = opened()
    wire = b"".join(masked(op, data if op is not Opcode.TEXT else data.hex().encode()) for op, data in messages)
    wire += masked(Opcode.CLOSE, Close(1000, "bye").serialize())
    got = b""
    for i in range(0, len(wire), cut):
        server.feed(wire[i : i + cut])
        while data := server.read(1000):
            got += data
    expected = b"".join(
        data if op is Opcode.BINARY else data.hex().encode() for op, data in messages if op is not Opcode.PING
    )
    assert got == expected
    assert server.read(10) == b""
    pings = sum(1 for op, _ in messages if op is Opcode.PING)
    assert server.take_out().count(b"\x8a") >= pings  # a pong for each ping


@fuzz(300)
@given(st.lists(st.binary(max_size=500), max_size=6))
def test_any_handshake_bytes_give_a_request_an_error_or_a_wait(chunks: list[bytes]) -> None:
    reader = HandshakeReader(response=False)
    for chunk in [*chunks, b""]:
        try:
            request = reader.feed(chunk)
        except WsError as exc:
            assert exc.code == 1002
            return
        if request is not None:
            ans = answer(request, "/", WsOptions())  # type: ignore[arg-type]
            assert ans.status in (101, 400, 403, 405, 426, 505)
            return


# --- frames, by hand: each rule and its status ----------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (masked(Opcode.BINARY, b"x" * 2000), 1009),  # over --max-message
        (
            masked(Opcode.BINARY, b"x" * 600, fin=False) + masked(Opcode.CONT, b"x" * 600),
            1009,
        ),  # the message, not a frame
        (masked(3, b"?"), 1002),  # reserved opcode
        (masked(Opcode.BINARY, b"x", rsv=4), 1002),  # RSV1 without an extension (none was negotiated here)
        (masked(Opcode.CONT, b"x"), 1002),  # a continuation of nothing
        (masked(Opcode.BINARY, b"x", fin=False) + masked(Opcode.BINARY, b"y"), 1002),  # a new message inside one
        (masked(Opcode.PING, b"x" * 200), 1002),  # a control frame over 125 bytes
        (masked(Opcode.PING, b"x", fin=False), 1002),  # a fragmented control frame
        (bytes([0x82, 0x05]) + b"hello", 1002),  # a client frame without a mask
        (bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 62) + b"\0\0\0\0", 1009),  # a 4 EiB length: refused unread
        (masked(Opcode.CLOSE, b"\x03\xe8\xff"), 1007),  # a Close reason that is not UTF-8
    ],
)
def test_each_broken_rule_gets_its_close_status(wire: bytes, code: int) -> None:
    _client, server = opened(max_message=1000, compress=False)
    with pytest.raises(WsError) as info:
        server.feed(wire)
        drain(server)
    assert info.value.code == code
    frame = server.take_out()
    assert frame[:1] == b"\x88" and struct.unpack("!H", frame[2:4])[0] == code


def test_compressed_garbage_is_a_protocol_error() -> None:
    _client, server = opened()  # permessage-deflate negotiated: RSV1 marks a compressed message
    with pytest.raises(WsError) as info:
        server.feed(masked(Opcode.BINARY, b"\xff" * 50, rsv=4))
        drain(server)
    assert info.value.code in (1002, 1007)


def test_text_mode_checks_utf8_even_across_fragments() -> None:
    _client, server = opened(text=True)
    server.feed(masked(Opcode.TEXT, "小".encode()[:2], fin=False))  # a character cut in two is fine
    server.feed(masked(Opcode.CONT, "小".encode()[2:]))
    assert drain(server) == "小\n".encode()
    with pytest.raises(WsError) as info:
        server.feed(masked(Opcode.TEXT, b"\xff\xfe"))
    assert info.value.code == 1007


def test_half_close_each_side_may_send_until_its_own_close() -> None:
    client, server = opened()
    server.feed(client.encode(b"last words") + client.encode_close())
    assert drain(server) == b"last words"
    assert server.read(1) == b""  # the client's direction has ended...
    client.feed(server.encode(b"still talking") + server.encode_close())  # ...and the server's goes on
    assert drain(client) == b"still talking"
    assert client.finished and server.finished
    with pytest.raises(WsError):
        server.encode(b"after my Close")


def test_an_error_close_from_the_peer_is_reported_after_its_bytes() -> None:
    client, server = opened()
    client.feed(
        server.encode(b"partial") + Frame(Opcode.CLOSE, Close(1011, "boom\x1b[2J").serialize()).serialize(mask=False)
    )
    assert client.read(100) == b"partial"
    with pytest.raises(WsError) as info:
        client.read(100)
    assert "1011" in info.value.reason and "\x1b" not in info.value.reason
    assert client.read(100) == b""


def test_large_writes_are_cut_into_bounded_messages_and_compression_round_trips() -> None:
    client, server = opened()  # both offer permessage-deflate
    assert client.extensions and server.extensions
    data = os.urandom(MAX_SEND) + b"z" * (3 * MAX_SEND)
    server.feed(client.encode(data))
    assert drain(server) == data
    assert server.messages == 4


# --- over a real socket, against sockcat's listener ---------------------------------------------------------


@fuzz(60)
@given(st.binary(min_size=1, max_size=400))
def test_garbage_after_a_good_handshake_gets_a_close_or_an_end_never_a_hang(garbage: bytes) -> None:
    with sc.listen("ws://127.0.0.1:0/", ws=WsOptions(max_message=1000)) as server:
        outcome: list[object] = []

        def serve() -> None:
            try:
                with server.accept() as conn:
                    conn.settimeout(TIMEOUT)
                    while conn.recv():
                        pass
                    outcome.append("end")
            except OSError as exc:
                outcome.append(exc)

        t = threading.Thread(target=serve)
        t.start()
        with socket.create_connection(("127.0.0.1", server.address.port), timeout=TIMEOUT) as raw:
            hs = ClientHandshake("127.0.0.1", server.address.port, "/", WsOptions(compress=False), secure=False)
            raw.sendall(hs.request)
            core = None
            while core is None:
                core = hs.feed(raw.recv(65536))
            raw.sendall(garbage)
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(65536):
                pass  # the listener ends the connection: with a Close after an error, or a plain end
        t.join(TIMEOUT)
        assert not t.is_alive()
    assert outcome and (outcome[0] == "end" or isinstance(outcome[0], OSError))


def test_incompressible_messages_go_out_uncompressed_and_compressible_ones_compressed() -> None:
    client, server = opened()  # permessage-deflate negotiated
    text = b"the same line again\n" * 3000
    wire = client.encode(text)
    assert wire[0] & 0x40 and len(wire) < len(text) // 10  # RSV1 set: deflated
    noise = os.urandom(64 * 1024)
    wire2 = client.encode(noise)
    assert wire2[0] & 0x40 == 0 and len(wire2) > len(noise)  # RSV1 clear: sent as it is
    wire3 = client.encode(text)  # (and the next ones for a while, without a probe)
    assert wire3[0] & 0x40 == 0
    server.feed(wire + wire2 + wire3)
    assert drain(server) == text + noise + text


def _outcome(wire: bytes, cut: int) -> tuple[bytes, int | None]:
    _client, server = opened(max_message=1000, compress=False)
    got = b""
    try:
        for i in range(0, len(wire), cut):
            server.feed(wire[i : i + cut])
            while data := server.read(1 << 20):
                got += data
    except WsError as exc:
        return got + bytes(server.inbox), exc.code  # (what arrived before the error, however it was cut)
    return got, None


@fuzz(400)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([Opcode.BINARY, Opcode.TEXT, Opcode.CONT, Opcode.PING, 3]),
            st.binary(max_size=300),
            st.booleans(),
        ),
        max_size=8,
    ),
    st.integers(min_value=2, max_value=4000),
)
def test_the_fast_path_and_websockets_parser_agree(frames: list[tuple[int, bytes, bool]], cut: int) -> None:
    """Whole small frames are parsed by sockcat's fast path; cut one byte at a time, every frame goes through the
    websockets parser. Both must give the same bytes and the same error, for valid and invalid frame sequences."""
    wire = b"".join(masked(op, data, fin=fin) for op, data, fin in frames)
    assert _outcome(wire, cut) == _outcome(wire, 1)


def test_keepalive_pings_each_period_stops_after_our_close_and_ends_a_silent_peer() -> None:
    client, server = opened()
    ka = Keepalive(every=5.0, heard=100.0)
    ping = ka.tick(client, 104.0)
    assert ping
    server.feed(ping)
    assert server.read(10) is None  # a ping is no data...
    pong = bytes(server.take_out())
    assert pong  # ...but is answered
    client.feed(pong)
    assert client.pongs == 1
    ka.heard = 105.0
    client.encode_close()
    assert ka.tick(client, 109.0) == b""  # after our Close no ping goes out...
    assert ka.tick(client, 115.0) == b""  # (heard 10 s ago: two periods, not more)
    assert ka.silent == 0
    assert ka.tick(client, 115.1) is None  # ...but a peer silent for over two periods ends the connection
    assert ka.silent == 10.0
    assert ka.silence() == "nothing heard for 10 s (--ping)"
