"""The transfer's pure parts, fed what a hostile peer could send: protocol lines, manifests, offers, the code's
key exchange and sealed records, and the escaping of untrusted text. Hypothesis runs with a fixed budget
(SOCKCAT_FUZZ_SCALE makes it longer)."""

from __future__ import annotations

import string

import pytest
from conftest import fuzz
from hypothesis import given
from hypothesis import strategies as st

from sockcat.core.pake import (
    MAX_NUMBER,
    RECORD,
    WORDS,
    CodeError,
    Opener,
    ReceiverHandshake,
    Sealer,
    SealError,
    SenderHandshake,
    make_code,
    normalize_code,
)
from sockcat.core.transfer import (
    FINAL,
    MAX_ENTRIES,
    PART_SUFFIX,
    FileEntry,
    Header,
    Manifest,
    ProtocolError,
    check_path,
    parse_line,
    parse_offers,
    part_name,
    peer_text,
)
from sockcat.core.untrusted import escape, unsafe_char

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(
    st.sampled_from(["file", "dir", "size", "mode", "files", "dirs", "bytes", "offers", "error", "x"]),
    json_values,
    max_size=5,
)


# --- lines -------------------------------------------------------------------------------------------------------


@fuzz(300)
@given(st.binary(max_size=300))
def test_any_bytes_as_a_line_parse_or_give_a_protocol_error(raw: bytes) -> None:
    try:
        obj = parse_line(raw, "line")
    except ProtocolError:
        return
    assert isinstance(obj, dict)


@pytest.mark.parametrize(
    "raw", [b"[" * 50_000, b"{" * 3000, b'{"a":NaN}', b'{"a":Infinity}', b'"x"', b"1e999", b"\xff"]
)
def test_nesting_constants_and_non_objects_are_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_line(raw, "line")


# --- paths -------------------------------------------------------------------------------------------------------


@fuzz(500)
@given(st.one_of(st.text(max_size=80), json_values))
def test_a_path_is_either_refused_or_clean(path: object) -> None:
    try:
        parts = check_path(path)
    except ProtocolError as exc:
        assert not any(unsafe_char(c) for c in str(exc))  # the error line itself is safe to print
        return
    assert isinstance(path, str) and "/".join(parts) == path
    for part in parts:
        assert part not in ("", ".", "..") and "\\" not in part and not part.endswith(PART_SUFFIX)
        assert not any(unsafe_char(c) for c in part)
        assert len(part.encode()) <= 255


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a//b",
        "./x",
        "a/.",
        "x\0y",
        "x\ny",
        "x\ry",
        "\x1b]0;title\x07",
        "a\u202egnp.exe",
        "a\\b",
        "\ud800",
        "x" * 256,
        "/".join(["d"] * 65),
        "f.sockcat-part",
        "a/.b.sockcat-part",
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(ProtocolError):
        check_path(path)


@pytest.mark.parametrize("path", ["report**.txt", "[x].txt", "*", "a b/c?d", "小王/你好.txt", ".hidden", "x.part"])
def test_ordinary_names_with_odd_characters_pass(path: str) -> None:
    assert check_path(path) == tuple(path.split("/"))


def test_part_names_fit_in_a_name() -> None:
    assert part_name("f.bin") == ".f.bin.sockcat-part"
    long = "x" * 250
    assert len(part_name(long).encode()) <= 255 and part_name(long).endswith(PART_SUFFIX)
    assert part_name(long) != part_name("y" * 250)


# --- manifests ---------------------------------------------------------------------------------------------------


@fuzz(300)
@given(json_objects, st.lists(json_objects, max_size=6))
def test_any_manifest_is_accepted_whole_or_refused_with_a_protocol_error(head: dict, entries: list[dict]) -> None:  # type: ignore[type-arg]
    try:
        m = Manifest(Header.parse(head))
        for e in entries:
            m.add(e)
        m.finish()
    except ProtocolError:
        return
    for f in m.files:
        assert type(f.size) is int and type(f.mode) is int and 0 <= f.mode <= 0o7777 and f.size >= 0
    assert len(m.files) + len(m.dirs) <= MAX_ENTRIES


@pytest.mark.parametrize(
    "entry",
    [
        {"file": "x", "size": 1e999, "mode": 420},
        {"file": "x", "size": 1.0, "mode": 420},
        {"file": "x", "size": True, "mode": 420},
        {"file": "x", "size": "1", "mode": 420},
        {"file": "x", "size": -1, "mode": 420},
        {"file": "x", "size": 1, "mode": True},
        {"file": "x", "size": 1, "mode": 0o10000},
        {"file": ["x"], "size": 1, "mode": 420},
        {"file": None, "size": 1, "mode": 420},
        {"dir": None},
        {"dir": 5},
        {"nothing": "x"},
    ],
)
def test_entries_are_checked_by_type(entry: dict) -> None:  # type: ignore[type-arg]
    m = Manifest(Header(1, 1, 1))
    with pytest.raises(ProtocolError):
        m.add(entry)


def test_whole_manifest_rules() -> None:
    with pytest.raises(ProtocolError, match="more than 100,000"):
        Header.parse({"files": 100_000, "dirs": 1, "bytes": 0})
    m = Manifest(Header(2, 0, 2))
    m.add({"file": "a", "size": 1, "mode": 420})
    with pytest.raises(ProtocolError, match="listed twice"):
        m.add({"file": "a", "size": 1, "mode": 420})
    m = Manifest(Header(2, 0, 2))
    m.add({"file": "a", "size": 1, "mode": 420})
    m.add({"file": "a/b", "size": 1, "mode": 420})
    with pytest.raises(ProtocolError, match="both a file and a directory"):
        m.finish()
    m = Manifest(Header(1, 0, 5))
    m.add({"file": "a", "size": 1, "mode": 420})
    with pytest.raises(ProtocolError, match="do not add up"):
        m.finish()
    m = Manifest(Header(1, 0, 5))
    with pytest.raises(ProtocolError, match="more bytes than announced"):
        m.add({"file": "a", "size": 6, "mode": 420})


# --- the receiver's answers, as the sender reads them -------------------------------------------------------------


@fuzz(300)
@given(json_objects | st.fixed_dictionaries({"offers": json_values}))
def test_any_offers_line_is_accepted_only_when_it_fits_the_manifest(obj: dict) -> None:  # type: ignore[type-arg]
    files = [FileEntry("a", 10, 420), FileEntry("b", 0, 420)]
    try:
        offers = parse_offers(obj, files)
    except ProtocolError:
        return
    for o in offers:
        assert 0 <= o.length <= files[o.index].size and (o.kind != FINAL or o.length == files[o.index].size)


@fuzz(200)
@given(json_objects)
def test_a_peers_error_text_is_always_safe_to_print(obj: dict) -> None:  # type: ignore[type-arg]
    shown = peer_text(obj)
    assert not any(unsafe_char(c) for c in shown) and len(shown) <= 2 + 6 * 300


def test_a_peers_error_text_is_escaped() -> None:
    assert peer_text({"error": "\x1b[2J\x1b]0;pwned\x07evil\r"}) == "\\x1b[2J\\x1b]0;pwned\\x07evil\\x0d"


# --- escaping ----------------------------------------------------------------------------------------------------


@fuzz(500)
@given(st.text())
def test_escaped_text_has_nothing_a_terminal_would_act_on(text: str) -> None:
    out = escape(text)
    assert not any(unsafe_char(c) for c in out)
    if all(c in string.printable[:-5] and c != "\\" for c in text):
        assert out == text


# --- the code ----------------------------------------------------------------------------------------------------


def test_codes_are_a_number_and_two_words() -> None:
    assert len(WORDS) == len(set(WORDS)) == 256
    for _ in range(50):
        n, a, b = make_code().split("-")
        assert 1 <= int(n) <= MAX_NUMBER and a in WORDS and b in WORDS
    assert normalize_code(" 7 Crossover-CLOCKWORK ") == "7-crossover-clockwork"
    with pytest.raises(ValueError):
        normalize_code(" - ")


def _exchange(sender_code: str, receiver_code: str) -> tuple[object, object]:
    s, r = SenderHandshake(sender_code), ReceiverHandshake(receiver_code)
    reply, confirm = r.respond(s.start())
    keys = s.finish(reply, confirm)
    return keys, r.check(keys.sender_confirm)


def test_the_same_code_agrees_and_another_does_not() -> None:
    ks, kr = _exchange("1-acorn-zebra", "1 ACORN zebra")
    assert ks.send_to_recv == kr.send_to_recv and ks.recv_to_send == kr.recv_to_send  # type: ignore[attr-defined]
    with pytest.raises(CodeError):
        _exchange("1-acorn-zebra", "1-acorn-zebu")


def test_a_replayed_sender_message_gets_another_key() -> None:
    s = SenderHandshake("5-apple-pie")
    first = s.start()
    r1, r2 = ReceiverHandshake("5-apple-pie"), ReceiverHandshake("5-apple-pie")
    reply1, confirm1 = r1.respond(first)
    keys = s.finish(reply1, confirm1)
    r2.respond(first)  # the recorded hello, replayed to a new session
    with pytest.raises(CodeError):
        r2.check(keys.sender_confirm)  # the recorded confirmation does not fit the new exchange


@fuzz(100)
@given(st.binary(max_size=80))
def test_any_key_exchange_message_is_refused_cleanly(msg: bytes) -> None:
    try:
        ReceiverHandshake("1-a-b").respond(msg)
    except CodeError:
        pass
    s = SenderHandshake("1-a-b")
    s.start()
    with pytest.raises(CodeError):
        s.finish(msg, b"\0" * 32)


@fuzz(200)
@given(st.lists(st.binary(max_size=2000), min_size=1, max_size=5), st.data())
def test_sealed_records_open_only_unchanged_and_in_order(chunks: list[bytes], data: st.DataObject) -> None:
    key = bytes(range(32))
    sealer = Sealer(key)
    records = [sealer.seal(c) for c in chunks]
    opener = Opener(key)
    assert [opener.open(h, b) for h, b in records] == chunks
    # one bit flipped anywhere, or a record out of place, and nothing opens
    i = data.draw(st.integers(0, len(records) - 1))
    header, body = records[i]
    where = data.draw(st.integers(0, len(body) * 8 - 1))
    flipped = bytearray(body)
    flipped[where // 8] ^= 1 << (where % 8)
    opener = Opener(key)
    for h, b in records[:i]:
        opener.open(h, b)
    with pytest.raises(SealError):
        opener.open(header, bytes(flipped))
    if len(records) > 1:
        with pytest.raises(SealError):
            Opener(key).open(*records[1])  # replayed out of order


def test_record_lengths_are_bounded() -> None:
    with pytest.raises(SealError):
        Opener.length((RECORD + 17).to_bytes(4, "big"))
    with pytest.raises(SealError):
        Opener.length((3).to_bytes(4, "big"))
    with pytest.raises(ValueError):
        Sealer(bytes(32)).seal(b"x" * (RECORD + 1))


def test_the_code_guard_spaces_guesses_and_bounds_the_queue() -> None:
    from sockcat.engines.transfer.common import CodeMismatch
    from sockcat.engines.transfer.recv import CodeGuard

    guard = CodeGuard()
    assert guard.turn() == 0.0  # no failure yet: no wait
    guard.done(ok=False)
    waits = [guard.turn() for _ in range(CodeGuard.MAX_WAITING)]
    assert waits == sorted(waits) and waits[0] > 0  # each waits its own, later turn
    with pytest.raises(CodeMismatch, match="too many tries"):
        guard.turn()
    for _ in waits:
        guard.done(ok=True)
    assert guard.failures == 1
