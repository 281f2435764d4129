"""Pure framing: ReceiveBuffer properties (hypothesis), no I/O."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockcat import IncompleteReadError, LimitOverrunError, SockcatError
from sockcat.core.framing import ReceiveBuffer, to_bytes

SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Small alphabets make delimiters (and their partial prefixes) frequent.
ALPHABET = st.sampled_from(b"ab\r\n\x00")
payloads = st.lists(ALPHABET, max_size=120).map(bytes)
delims = st.sampled_from([b"\n", b"\r\n", b"ab", b"aa", b"\x00\x00", b"aba"]) | st.binary(min_size=1, max_size=3)


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def reference_split(data: bytes, delim: bytes) -> tuple[list[bytes], bytes]:
    """What splitting the whole string gives: records keeping the delimiter, and the tail."""
    records: list[bytes] = []
    pos = 0
    while (i := data.find(delim, pos)) >= 0:
        records.append(data[pos : i + len(delim)])
        pos = i + len(delim)
    return records, data[pos:]


def expected_outcome(buffered: bytes, delim: bytes, max_size: int) -> bytes | type[LimitOverrunError] | None:
    """The documented result of one take_until on what is buffered (max_size counts the delimiter)."""
    i = buffered.find(delim)
    if i >= 0:
        return buffered[: i + len(delim)] if i + len(delim) <= max_size else LimitOverrunError
    return LimitOverrunError if len(buffered) >= max_size else None


@SETTINGS
@given(st.data(), payloads, delims, st.booleans())
def test_take_until_any_chunking_gives_the_records_of_a_whole_split(
    data: st.DataObject, payload: bytes, delim: bytes, drop: bool
) -> None:
    chunks = data.draw(chunkings(payload))
    buf = ReceiveBuffer()
    got: list[bytes] = []
    big = len(payload) + len(delim) + 1
    for chunk in chunks:
        buf.feed(chunk)
        while (rec := buf.take_until(delim, big, drop=drop)) is not None:
            got.append(rec)
    records, tail = reference_split(payload, delim)
    if drop:
        records = [r[: -len(delim)] for r in records]
    assert got == records
    assert len(buf) == len(tail)
    assert buf.take_all() == tail


@SETTINGS
@given(st.data(), payloads, delims, st.integers(1, 40))
def test_take_until_each_step_matches_the_documented_bound(
    data: st.DataObject, payload: bytes, delim: bytes, max_size: int
) -> None:
    """After every feed the outcome (record / None / LimitOverrunError) is what the prefix dictates."""
    chunks = data.draw(chunkings(payload))
    buf = ReceiveBuffer()
    buffered = b""
    for chunk in chunks:
        buf.feed(chunk)
        buffered += chunk
        want = expected_outcome(buffered, delim, max_size)
        if want is LimitOverrunError:
            with pytest.raises(LimitOverrunError) as info:
                buf.take_until(delim, max_size)
            assert info.value.max_size == max_size
            assert isinstance(info.value, SockcatError)
            assert isinstance(info.value, ValueError)
            # The bytes stay buffered, untouched.
            assert len(buf) == len(buffered)
            assert buf.take_all() == buffered
            return
        got = buf.take_until(delim, max_size)
        assert got == want
        if got is not None:
            buffered = buffered[len(got) :]
        assert len(buf) == len(buffered)


@SETTINGS
@given(st.data(), payloads, st.lists(st.integers(0, 30), max_size=10))
def test_take_exactly_any_chunking(data: st.DataObject, payload: bytes, sizes: list[int]) -> None:
    chunks = data.draw(chunkings(payload))
    buf = ReceiveBuffer()
    fed = 0
    pos = 0
    got: list[bytes] = []
    pending = list(sizes)
    for chunk in chunks:
        buf.feed(chunk)
        fed += len(chunk)
        while pending and (rec := buf.take_exactly(pending[0])) is not None:
            assert len(rec) == pending[0]
            got.append(rec)
            pos += pending.pop(0)
        if pending:
            assert buf.take_exactly(pending[0]) is None  # not enough yet: nothing is consumed
        assert len(buf) == fed - pos
    want = []
    p = 0
    for n in sizes:
        if p + n > len(payload):
            break
        want.append(payload[p : p + n])
        p += n
    assert got == want
    assert b"".join(got) + buf.take_all() == payload


@SETTINGS
@given(payloads, delims)
def test_overrun_without_delimiter_keeps_every_byte(payload: bytes, delim: bytes) -> None:
    body = payload.replace(delim, b"")
    if delim in body or not body:
        return
    buf = ReceiveBuffer()
    buf.feed(body)
    with pytest.raises(LimitOverrunError):
        buf.take_until(delim, len(body))
    assert len(buf) == len(body)
    # Nothing was lost: a larger limit later finds the record once the delimiter arrives.
    buf.feed(delim)
    whole = body + delim
    end = whole.find(delim) + len(delim)
    assert buf.take_until(delim, len(whole)) == whole[:end]
    assert buf.take_all() == whole[end:]


def test_max_size_counts_the_delimiter() -> None:
    buf = ReceiveBuffer()
    buf.feed(b"abc\r\nrest")
    with pytest.raises(LimitOverrunError):
        buf.take_until(b"\r\n", 4)
    assert buf.take_until(b"\r\n", 5) == b"abc\r\n"
    assert buf.take_all() == b"rest"


def test_drop_strips_the_delimiter() -> None:
    buf = ReceiveBuffer()
    buf.feed(b"one\r\ntwo\r\n")
    assert buf.take_until(b"\r\n", 100, drop=True) == b"one"
    assert buf.take_until(b"\r\n", 100) == b"two\r\n"
    assert len(buf) == 0


def test_empty_delimiter_is_rejected() -> None:
    buf = ReceiveBuffer()
    buf.feed(b"x")
    with pytest.raises(ValueError):
        buf.take_until(b"", 10)


@SETTINGS
@given(payloads, st.integers(0, 130), payloads)
def test_unread_puts_bytes_first(payload: bytes, k: int, back: bytes) -> None:
    buf = ReceiveBuffer()
    buf.feed(payload)
    head = buf.take_some(k)
    assert head == payload[:k]
    buf.unread(back)
    assert len(buf) == len(back) + len(payload) - len(head)
    assert buf.take_all() == back + payload[len(head) :]


def test_unread_after_an_unfinished_scan_is_searched() -> None:
    """A delimiter inside pushed-back bytes is found although the old bytes were already scanned."""
    buf = ReceiveBuffer()
    buf.feed(b"no newline here")
    assert buf.take_until(b"\n", 1000) is None
    buf.unread(b"first\n")
    assert buf.take_until(b"\n", 1000) == b"first\n"
    assert buf.take_all() == b"no newline here"


def test_changing_delimiter_after_an_unfinished_scan() -> None:
    buf = ReceiveBuffer()
    buf.feed(b"key: value")
    assert buf.take_until(b"\n", 1000) is None
    assert buf.take_until(b":", 1000) == b"key:"


@SETTINGS
@given(payloads, st.one_of(st.none(), st.integers(0, 200)))
def test_incomplete_carries_partial_and_empties(payload: bytes, expected: int | None) -> None:
    buf = ReceiveBuffer()
    buf.feed(payload)
    err = buf.incomplete(expected)
    assert isinstance(err, IncompleteReadError)
    assert isinstance(err, EOFError)
    assert isinstance(err, SockcatError)
    assert err.partial == payload
    assert err.expected == expected
    assert len(buf) == 0
    assert not buf


def test_take_some_and_bool() -> None:
    buf = ReceiveBuffer()
    assert not buf
    assert buf.take_some(10) == b""
    buf.feed(b"hello")
    assert buf
    assert buf.take_some(2) == b"he"
    assert buf.take_exactly(3) == b"llo"
    assert buf.take_exactly(0) == b""


def test_to_bytes() -> None:
    assert to_bytes("héllo") == "héllo".encode()
    assert to_bytes(bytearray(b"ab")) == b"ab"
    assert to_bytes(memoryview(b"cd")) == b"cd"
