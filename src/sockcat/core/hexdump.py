"""Hex dump of traffic (``--hexdump``): pure formatting, like ``hexdump -C`` with a direction mark."""

from __future__ import annotations

_PRINTABLE = bytes(range(32, 127))
_TABLE = bytes(b if b in _PRINTABLE else ord(".") for b in range(256))


class HexDumper:
    """Formats successive chunks of one direction; offsets continue across chunks."""

    __slots__ = ("mark", "offset")

    def __init__(self, mark: str) -> None:
        self.mark = mark
        self.offset = 0

    def lines(self, data: bytes) -> list[str]:
        out: list[str] = []
        for i in range(0, len(data), 16):
            row = data[i : i + 16]
            hexes = " ".join(f"{b:02x}" for b in row[:8])
            if len(row) > 8:
                hexes += "  " + " ".join(f"{b:02x}" for b in row[8:])
            out.append(f"{self.mark} {self.offset + i:08x}  {hexes:<49} |{row.translate(_TABLE).decode('ascii')}|")
        self.offset += len(data)
        return out
