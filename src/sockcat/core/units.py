"""Figures in the units people read: ``1.50 MiB``, ``9.41 Gbit/s``, ``850 µs`` (bench's table and report)."""

from __future__ import annotations

import math


def format_bytes(n: float) -> str:
    """``1.5 MiB`` style (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_bits(bytes_per_second: float) -> str:
    """``9.41 Gbit/s`` style (decimal units, like iperf3)."""
    bits = bytes_per_second * 8
    for unit in ("bit/s", "kbit/s", "Mbit/s", "Gbit/s"):
        if abs(bits) < 1000 or unit == "Gbit/s":
            return f"{bits:.2f} {unit}"
        bits /= 1000
    raise AssertionError("unreachable")


def format_us(us: float) -> str:
    """A latency in the most readable unit: ``850 µs``, ``1.21 ms``, ``2.5 s``."""
    if not math.isfinite(us):
        return "-"
    if us < 1000:
        return f"{us:.0f} µs" if us >= 10 else f"{us:.1f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1_000_000:.2f} s"
