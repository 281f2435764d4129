"""sockcat.core.hexdump: the -x/--hex-dump lines (HexDumper), pure."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sockcat.core.hexdump import HexDumper

SETTINGS = settings(max_examples=200, deadline=None, database=None)


def test_hexdump_exact_format() -> None:
    h = HexDumper(">")
    lines = h.lines(b"0123456789abcdefXY\x00\x7f")
    assert lines == [
        "> 00000000  30 31 32 33 34 35 36 37  38 39 61 62 63 64 65 66  |0123456789abcdef|",
        "> 00000010  58 59 00 7f                                       |XY..|",
    ]


def test_hexdump_offsets_continue_across_chunks() -> None:
    h = HexDumper("<")
    assert h.lines(b"A" * 20)[-1].startswith("< 00000010  ")
    second = h.lines(b"hello world\n")
    assert second[0].startswith("< 00000014  68 65 6c 6c 6f 20 77 6f  72 6c 64 0a")
    assert second[0].endswith("|hello world.|")
    assert h.offset == 32
    assert h.lines(b"") == []
    assert h.offset == 32
    assert h.lines(b"\xff")[0].startswith("< 00000020  ff ")


LINE_RE = re.compile(r"^(.) ([0-9a-f]{8})  (.{49}) \|(.*)\|$")


@SETTINGS
@given(st.lists(st.binary(max_size=70), max_size=6))
def test_hexdump_roundtrip_property(chunks: list[bytes]) -> None:
    h = HexDumper(">")
    offset = 0
    for chunk in chunks:
        lines = h.lines(chunk)
        assert len(lines) == (len(chunk) + 15) // 16
        for i, line in enumerate(lines):
            m = LINE_RE.match(line)
            assert m, line
            assert int(m.group(2), 16) == offset + 16 * i
            row = chunk[16 * i : 16 * i + 16]
            assert bytes.fromhex(m.group(3)) == row
            assert m.group(4) == "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        offset += len(chunk)
        assert h.offset == offset
