"""Hypothesis against every parser that reads from the network, fed what a hostile peer could send: the chat's
lines and commands, a proxy's replies (over a real socket), datagrams through the relay. The transfer's parsers
are in test_transfer_proto.py, addresses in test_address.py. Budgets are fixed (conftest.fuzz); set
SOCKCAT_FUZZ_SCALE to run longer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from conftest import TIMEOUT, Proc, fuzz, sockcat
from hypothesis import given
from hypothesis import strategies as st

import sockcat as sc
from sockcat.core import chatproto as proto
from sockcat.core.untrusted import unsafe_char

# --- the chat ----------------------------------------------------------------------------------------------------


@fuzz(300)
@given(st.lists(st.binary(max_size=6000), max_size=8))
def test_any_bytes_make_bounded_lines_or_bad_line_markers(chunks: list[bytes]) -> None:
    reader = proto.LineReader()
    for chunk in chunks:
        for item in reader.feed(chunk):
            if isinstance(item, proto.BadLine):
                assert item.reason in ("too long", "not UTF-8")
            else:
                assert "\n" not in item and len(item.encode()) <= proto.MAX_LINE
        assert reader.pending <= proto.MAX_LINE + 1


@fuzz(500)
@given(st.text(max_size=200))
def test_any_line_parses_to_a_known_command(line: str) -> None:
    cmd = proto.parse(line)
    assert cmd.verb in ("say", "msg", "nick", "register", "who", "help", "quit", "unknown")
    if cmd.verb == "nick":
        assert 1 <= len(cmd.args) <= 2  # a name, and the rest of the line as the password


@fuzz(500)
@given(st.text(max_size=200))
def test_clean_text_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    assert not any(unsafe_char(c) and c != "\t" for c in proto.clean_text(text))


@fuzz(300)
@given(st.text(max_size=40))
def test_any_name_is_judged_without_error(name: str) -> None:
    problem = proto.name_problem(name)
    if problem is None:
        assert proto.skeleton(name) and proto.name_key(name) == proto.name_key(proto.name_key(name))
    else:
        assert not any(unsafe_char(c) for c in problem)


# --- a proxy's replies, over a real socket --------------------------------------------------------------------------


class FakeProxy:
    """A listener that answers every connection with the next scripted reply, then closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.reply = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)  # the client's greeting / request
                    conn.sendall(self.reply)  # then close: the client has all it will ever get
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def fake_proxy() -> Iterator[FakeProxy]:
    p = FakeProxy()
    yield p
    p.close()


@fuzz(40)
@given(
    scheme=st.sampled_from(["socks5", "socks4", "http"]),
    reply=st.one_of(
        st.binary(max_size=64),
        st.builds(lambda tail: b"\x05\x00" + tail, st.binary(max_size=20)),
        st.builds(lambda tail: b"HTTP/1.1 " + tail, st.binary(max_size=60)),
    ),
)
def test_any_proxy_reply_is_a_clean_error_or_a_tunnel(fake_proxy: FakeProxy, scheme: str, reply: bytes) -> None:
    fake_proxy.reply = reply
    try:
        with sc.connect("tcp://127.0.0.1:9", proxy=f"{scheme}://127.0.0.1:{fake_proxy.port}", timeout=2):
            pass
    except sc.SockcatError as exc:
        assert str(exc) and not any(unsafe_char(c) for c in str(exc))


# --- datagrams through the relay ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def udp_relay() -> Iterator[int]:
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def echo() -> None:
        target.settimeout(0.2)
        while not stop.is_set():
            try:
                data, sa = target.recvfrom(65536)
                target.sendto(data, sa)
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    p = Proc(sockcat("relay", "udp://127.0.0.1:0", f"udp://127.0.0.1:{target.getsockname()[1]}"))
    yield int(p.read_listening().rsplit(":", 1)[1])
    p.kill()
    stop.set()
    t.join()
    target.close()


@fuzz(60)
@given(st.binary(max_size=65507))
def test_any_datagram_crosses_the_relay_unchanged(udp_relay: int, data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(data, ("127.0.0.1", udp_relay))
        assert s.recv(65536) == data
