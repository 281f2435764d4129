"""sockcat chat (docs/chat.md): a real broker process, real clients (Python sockets, OpenBSD nc, socat), and the
pure protocol on a fake wire."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from conftest import TIMEOUT, Proc, require, sockcat, wait_until
from hypothesis import given
from hypothesis import strategies as st

from sockcat.core import chatproto as proto
from sockcat.engines.chat.store import ChatStore

PROMPT = proto.PROMPT.encode() + b"\n"


class Client:
    """A line client on a real socket."""

    def __init__(self, address: str) -> None:
        if address.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(address[5:])
        else:
            host, port = address.rsplit("//", 1)[1].rsplit(":", 1)
            self.sock = socket.create_connection((host, int(port)))
        self.sock.settimeout(TIMEOUT)
        self.file = self.sock.makefile("rb")
        assert self.line() == proto.PROMPT

    def send(self, text: str | bytes) -> None:
        self.sock.sendall((text.encode() if isinstance(text, str) else text) + b"\n")

    def line(self) -> str:
        raw = self.file.readline()
        assert raw.endswith(b"\n"), f"connection ended: {raw!r}"
        return raw[:-1].decode()

    def join(self, name: str) -> Client:
        self.send(name)
        hello = self.line()
        assert hello.startswith(f"* hello {name};"), hello
        return self

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Broker:
    def __init__(
        self, procs: list[Proc], db: Path | str, address: str = "tcp://127.0.0.1:0", extra: tuple[str, ...] = ()
    ) -> None:
        self.proc = Proc(sockcat("chat", address, "--db", str(db), *extra))
        procs.append(self.proc)
        self.address = self.proc.read_listening()

    def client(self, name: str | None = None) -> Client:
        c = Client(self.address)
        return c.join(name) if name is not None else c

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.p.send_signal(sig)
        return self.proc.wait(TIMEOUT)


@pytest.fixture
def broker(procs: list[Proc], tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    def start(db: Path | str | None = None, address: str = "tcp://127.0.0.1:0", extra: tuple[str, ...] = ()) -> Broker:
        return Broker(procs, db if db is not None else tmp_path / "chat.sqlite3", address, extra)

    yield start


def test_names_broadcast_and_direct_messages(broker: Callable[..., Broker]) -> None:
    b = broker()
    wang = b.client("小王")
    zhang = b.client()
    zhang.send("/nick zhang")
    assert zhang.line().startswith("* hello zhang; 1 other online")
    assert wang.line() == "* zhang joined"
    zhang.send("hello, everyone")
    assert wang.line() == "<zhang> hello, everyone"
    wang.send("/msg zhang 你好")
    assert zhang.line() == "*小王* 你好"
    wang.send("/who")
    assert wang.line() == "* online (2): zhang, 小王"
    wang.send("//not a command")
    assert zhang.line() == "<小王> /not a command"
    zhang.send("/quit")
    assert zhang.line() == "* bye"
    assert wang.line() == "* zhang left"


def test_refused_names_ask_again_and_keep_the_connection(broker: Callable[..., Broker]) -> None:
    b = broker()
    holder = b.client("taken")  # kept open: the name stays taken
    c = b.client()
    for bad, words in [
        ("taken", "is taken"),
        ("TAKEN", "is taken"),  # names are case-insensitive
        ("two words", "not allowed"),
        ("x" * 33, "at most 32"),
        ("emoji😀", "not allowed"),
    ]:
        c.send(bad)
        reply = c.line()
        assert reply.startswith("! ") and words in reply and reply.endswith("your name?"), (bad, reply)
    c.join("ok_name-2")
    holder.close()


def test_offline_messages_are_stored_in_order_and_delivered_once(broker: Callable[..., Broker]) -> None:
    b = broker()
    wang = b.client("wang")
    for i in range(3):
        wang.send(f"/msg li message {i}")
        assert wang.line() == "* li is offline; message stored"
    li = b.client("li")
    assert [li.line() for _ in range(3)] == [f"*wang* message {i}" for i in range(3)]
    li.send("/quit")
    assert li.line() == "* bye"
    li.close()
    li = b.client("li")  # nothing twice
    li.send("/who")
    assert li.line().startswith("* online")


def test_stored_messages_survive_a_clean_restart_and_a_kill(broker: Callable[..., Broker], tmp_path: Path) -> None:
    db = tmp_path / "persist.sqlite3"
    b = broker(db)
    wang = b.client("wang")
    wang.send("/msg li before the restart")
    assert wang.line() == "* li is offline; message stored"
    assert b.stop() == 0  # SIGTERM: clean, exit 0
    b = broker(db)
    li = b.client("li")
    assert li.line() == "*wang* before the restart"
    li.send("/quit")
    li.line()
    wang = b.client("wang")
    wang.send("/msg li before the kill")
    assert wang.line() == "* li is offline; message stored"
    b.stop(signal.SIGKILL)  # the acknowledgement came after the commit: nothing is lost
    b = broker(db)
    li = b.client("li")
    assert li.line() == "*wang* before the kill"
    assert b.stop() == 0
    b = broker(db)
    li = b.client("li")  # delivered before the clean stop: not again
    li.send("/who")
    assert li.line() == "* online (1): li"


def test_register_protects_a_name(broker: Callable[..., Broker], tmp_path: Path) -> None:
    db = tmp_path / "reg.sqlite3"
    b = broker(db)
    wang = b.client("wang")
    wang.send("/register s3cret")
    assert wang.line() == "* wang is protected: next time, /nick wang PASSWORD"  # never echoed
    wang.send("/quit")
    wang.line()
    b.stop()
    b = broker(db)
    c = b.client()
    c.send("wang")
    assert c.line() == "! wang is protected: /nick wang PASSWORD; your name?"
    c.send("/nick wang wrong")
    assert c.line() == "! wrong password for wang; your name?"
    c.send("/nick wang s3cret")
    assert c.line().startswith("* hello wang;")
    store = ChatStore(db)
    try:
        (row,) = store._query("SELECT hash FROM users")
        assert b"s3cret" not in row[0]  # only a hash is kept
    finally:
        store.close()


def test_bad_input_gets_error_lines_and_the_broker_lives(broker: Callable[..., Broker]) -> None:
    b = broker()
    c = b.client("wang")
    c.send(b"x" * 5000)
    assert c.line() == f"! line too long (at most {proto.MAX_LINE} bytes); ignored"
    c.send(b"\xff\xfe bad")
    assert c.line() == "! line not UTF-8 (send UTF-8); ignored"
    c.send("/bogus")
    assert c.line().startswith("! unknown command /bogus")
    c.send("/msg")
    assert c.line() == "! usage: /msg NAME TEXT"
    c.send("/who")  # still connected, still named
    assert c.line() == "* online (1): wang"
    # 10 MB without a line end: memory stays bounded, one error line
    c.sock.sendall(b"y" * 10_000_000 + b"\n")
    assert c.line() == f"! line too long (at most {proto.MAX_LINE} bytes); ignored"
    c.send("/who")
    assert c.line() == "* online (1): wang"


def test_a_flood_is_slowed_never_dropped_and_others_are_served(broker: Callable[..., Broker]) -> None:
    """--line-rate: a client over its budget is read more slowly; every one of its lines arrives, in order, and the
    others are not held up."""
    b = broker(extra=("--line-rate", "100"))
    calm = b.client("calm")
    flood = b.client("flood")
    assert calm.line() == "* flood joined"
    started = time.monotonic()
    flood.sock.sendall(b"".join(b"spam %d\n" % i for i in range(400)))
    calm.send("/who")
    got = []
    while len(got) < 400:
        line = calm.line()
        if line.startswith("* online"):
            assert len(got) < 400  # answered while the flood was still being paced
            continue
        got.append(line)
    assert got == [f"<flood> spam {i}" for i in range(400)]
    assert time.monotonic() - started >= 1.0  # 400 lines at 100 a second, after a burst of 250: paced
    flood.send("/who")
    assert flood.line() == "* online (2): calm, flood"  # never an error, never disconnected


def test_a_client_that_never_reads_is_dropped_not_waited_for(broker: Callable[..., Broker]) -> None:
    """Forty talkers (who read) each send one burst of 4 KB lines within the flood limit: 7 MB for a client that
    never reads, more than the kernel buffers for it (tcp_wmem's 4 MB at most) plus the broker's 1 MiB. The broker
    drops that client instead of buffering without end, and goes on serving the others."""
    b = broker()
    sleeper = b.client("sleeper")
    talkers = [b.client(f"talker{i}") for i in range(40)]
    for t in talkers:  # read everything, in the background
        t.sock.settimeout(None)
        threading.Thread(target=_drain, args=(t.file,), daemon=True).start()
    line = ("z" * 4000 + "\n").encode()
    for t in talkers:
        t.sock.sendall(line * 45)
    probe = b.client("probe")
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        probe.send("/who")
        while not (reply := probe.line()).startswith("* online"):
            pass
        if "sleeper" not in reply:
            break
        time.sleep(0.2)  # pacing the probes, not waiting for an event
    else:
        pytest.fail("the sleeping client was never dropped")
    assert "probe" in reply  # the others are served (talkers that read too slowly for this storm may go too)
    assert b.proc.p.poll() is None
    sleeper.close()
    for t in talkers:
        with contextlib.suppress(OSError):
            t.sock.shutdown(socket.SHUT_RDWR)


def _drain(f: BinaryIO) -> None:
    with contextlib.suppress(OSError, ValueError):
        while f.read(65536):
            pass


def test_plain_line_clients_nc_and_socat(broker: Callable[..., Broker], procs: list[Proc]) -> None:
    """OpenBSD nc and socat as the clients, the way people use a broker like this."""
    b = broker()
    port = b.address.rsplit(":", 1)[1]
    watcher = b.client("watcher")
    nc = Proc([require("nc"), "-N", "127.0.0.1", port], stdin=subprocess.PIPE)
    procs.append(nc)
    assert nc.p.stdin is not None and nc.p.stdout is not None
    nc.p.stdin.write(b"netcat\nhello from nc\n")
    nc.p.stdin.flush()
    assert watcher.line() == "* netcat joined"
    assert watcher.line() == "<netcat> hello from nc"
    res = subprocess.run(
        [require("socat"), "-t", "2", "-", f"TCP:127.0.0.1:{port}"],
        input=b"socat\r\n/msg watcher over socat\r\n/quit\r\n",  # CRLF line ends too
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert watcher.line() == "* socat joined"
    assert watcher.line() == "*socat* over socat"
    assert res.stdout.startswith(PROMPT) and res.stdout.endswith(b"* bye\n"), res.stdout
    assert watcher.line() == "* socat left"
    nc.p.stdin.close()
    nc.p.stdin = None
    assert nc.wait(TIMEOUT) == 0
    assert watcher.line() == "* netcat left"


def test_unix_socket_and_memory_store(broker: Callable[..., Broker], short_tmp: Path) -> None:
    b = broker(":memory:", f"unix:{short_tmp / 'chat.sock'}")
    a = b.client("a")
    other = b.client("b")
    assert a.line() == "* b joined"
    other.close()


def test_bad_store_and_address_are_one_line() -> None:
    for args, words in [
        (["chat", "udp://127.0.0.1:0", "--db", ":memory:"], "chat needs stream addresses"),
        (["chat", "tcp://127.0.0.1:0", "--db", "/proc/nope/chat.sqlite3"], "chat store"),
    ]:
        res = subprocess.run(sockcat(*args), capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        lines = res.stderr.decode().splitlines()
        assert res.returncode in (1, 2) and len(lines) == 1 and words in lines[0], (args, lines)


def test_default_store_follows_xdg_state_home(procs: list[Proc], tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    p = Proc(sockcat("chat", "tcp://127.0.0.1:0"), env=env)
    procs.append(p)
    p.read_listening()
    assert (tmp_path / "state" / "sockcat" / "chat.sqlite3").exists()


# --- the pure protocol --------------------------------------------------------------------------------------------


def test_line_reader_on_a_fake_wire() -> None:
    r = proto.LineReader(max_line=10)
    assert r.feed(b"ab") == []
    assert r.feed(b"c\r\nde\n") == ["abc", "de"]
    assert r.feed(b"x" * 30) == [proto.BadLine("too long")]
    assert r.feed(b"x" * 30) == []  # still the same long line: reported once
    assert r.pending <= 11
    assert r.feed(b"tail\nok\n") == ["ok"]
    assert r.feed(b"\xc3\x28\n") == [proto.BadLine("not UTF-8")]
    assert r.feed("小王\n".encode()) == ["小王"]


LINE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20)


@given(st.lists(LINE_TEXT, max_size=10), st.integers(1, 7))
def test_line_reader_any_chunking(lines: list[str], chunk: int) -> None:
    """However the bytes are cut, the same lines come out."""
    data = "".join(f"{line}\n" for line in lines).encode()
    r = proto.LineReader(max_line=1000)
    out: list[str | proto.BadLine] = []
    for i in range(0, len(data), chunk):
        out += r.feed(data[i : i + chunk])
    assert out == lines


@given(st.text(min_size=1, max_size=32))
def test_name_rule(name: str) -> None:
    """Whatever a name is refused for, an accepted one is short, normal, visible, and of one script (or an allowed
    mix); and its key is its case-folded form."""
    import unicodedata

    if proto.name_problem(name) is not None:
        return
    assert 1 <= len(name) <= proto.MAX_NAME and unicodedata.normalize("NFKC", name) == name
    assert all(
        ch in "_-" or unicodedata.category(ch) in ("Nd",) or unicodedata.category(ch)[0] in "LM" for ch in name
    ), name
    assert proto.name_key(name) == name.casefold()
    assert proto.clean_text(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("аlice", "mixes scripts"),  # a Cyrillic а
        ("ａｌｉｃｅ", "normal form"),
        ("alice\u3164", "shows as nothing"),
        ("\u3164", "shows as nothing"),
        ("²³", "normal form"),
        ("a b", "not allowed"),
        ("x\x1b", "not allowed"),
        ("", "at least one"),
        ("x" * 33, "at most 32"),
    ],
)
def test_look_alike_and_invisible_names_are_refused(name: str, why: str) -> None:
    problem = proto.name_problem(name)
    assert problem is not None and why in problem, problem
    assert not any(c in problem for c in "\x1b\u3164")  # the reason shows the character escaped


@pytest.mark.parametrize("name", ["小王", "王小明", "Wang", "ひらがなカタカナ漢字", "राम", "user_1", "x-y"])
def test_names_in_any_script_pass(name: str) -> None:
    assert proto.name_problem(name) is None


def test_skeletons_catch_look_alikes() -> None:
    assert proto.skeleton("alice") == proto.skeleton("aIice") == proto.skeleton("ALICE".lower())
    assert proto.skeleton("paypal") != proto.skeleton("paypa")


def test_clean_text_escapes_what_a_terminal_would_act_on() -> None:
    line = "nothing\r<admin> please /msg alice your password\x1b[K\x1b]0;title\x07\x0b\x0c\u202e\x85\tok"
    clean = proto.clean_text(line)
    assert clean == (
        "nothing\\x0d<admin> please /msg alice your password\\x1b[K\\x1b]0;title\\x07\\x0b\\x0c\\u202e\\x85\tok"
    )


def test_parse() -> None:
    assert proto.parse("hello") == proto.Command("say", ("hello",))
    assert proto.parse("/msg li  hi there ") == proto.Command("msg", ("li", "hi there"))
    assert proto.parse("/nick wang pw") == proto.Command("nick", ("wang", "pw"))
    assert proto.parse("/WHO") == proto.Command("who")
    assert proto.parse("//x") == proto.Command("say", ("/x",))
    assert proto.parse("/frob") == proto.Command("unknown", ("frob",))


def test_room_lines_and_own_lines_keep_their_order_in_one_burst(broker: Callable[..., Broker]) -> None:
    """Lines for the room are queued once on the broker and private ones on each client; in one burst they still
    reach everyone in the order they were sent, and the sender never sees its own room lines. A client that joins
    afterwards gets none of them."""
    b = broker(db=":memory:", extra=("--line-rate", "0"))
    a, c = b.client("ann"), b.client("cat")
    assert a.line() == "* cat joined"
    a.send("a1\n/msg cat p1\na2\n/who\na3\n/msg ann to myself\na4")
    assert [c.line() for _ in range(5)] == ["<ann> a1", "*ann* p1", "<ann> a2", "<ann> a3", "<ann> a4"]
    assert a.line() == "* online (2): ann, cat"  # its /who answer, then its message to itself, in order
    assert a.line() == "*ann* to myself"
    late = b.client("late")
    assert c.line() == "* late joined"
    c.send("after")
    assert late.line() == "<cat> after"
    assert a.line() == "* late joined"
    assert a.line() == "<cat> after"


def test_a_page_of_mail_is_never_handed_out_twice_when_its_deletion_commits_mid_read(tmp_path: Path) -> None:
    """The next page is read while the last one's deletion is being committed: the read's snapshot may predate
    the commit while the writer has already forgotten those ids. Forced here: the deletion commits between the
    query and the filter. The second page must still be the second page."""
    store = ChatStore(tmp_path / "chat.sqlite3")
    try:

        async def fill() -> None:
            for i in range(2 * store.quotas.page):
                await store.store("wang", f"zhang{i % 2}", f"zhang{i % 2}", "o", f"m{i}")

        asyncio.run(fill())
        first = store.page("wang")
        assert [text for _id, _s, text in first] == [f"m{i}" for i in range(store.quotas.page)]
        real_query = store._query
        busy, release = threading.Event(), threading.Event()
        store.submit(lambda db: (busy.set(), release.wait(TIMEOUT)), lambda value, error: None)
        assert busy.wait(TIMEOUT)  # the writer is held: the deletion below waits in its queue
        store.delivered([r[0] for r in first])

        def query_then_commit(sql: str, args: tuple[object, ...] = ()) -> list[object]:
            rows = real_query(sql, args)  # the snapshot: the first page's rows still there
            release.set()  # ...and now their deletion commits, and the writer forgets them
            wait_until(lambda: not store._gone, "the deletion committed")
            return rows

        store._query = query_then_commit  # type: ignore[method-assign]
        second = store.page("wang")
        store._query = real_query  # type: ignore[method-assign]
        assert [text for _id, _s, text in second] == [f"m{i}" for i in range(store.quotas.page, 2 * store.quotas.page)]
    finally:
        store.close()
