"""``bench --report FILE.html``: one self-contained page of a run (docs/reference.md#bench).

Pure: a :class:`~sockcat.core.stats.BenchResult` in, HTML text out. The page has no script and fetches nothing:
its pictures are inline SVG drawn here, its style is inline CSS. Every text that came from the command line
(the address above all) is escaped.

- The latency histogram: the run's samples in log-spaced bins (a bench histogram's own buckets, gathered into about
  60 bins between the fastest and the slowest sample), with p50, p90, p99 and p99.9 marked.
- The run second by second: the rate as bars, the p99 of each second as a line on its own scale.
- The parameters and the figures, as ``bench`` prints them.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sockcat.core.stats import BenchResult, Histogram
from sockcat.core.units import format_bits, format_bytes, format_us

_W, _H = 760, 260  # each picture's size
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 84, 64, 16, 40
_PLOT_W, _PLOT_H = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B  # the plot inside the axes
_BINS = 60
_MARKS = (("p50", 50.0, "#2b7a2b"), ("p90", 90.0, "#b07d00"), ("p99", 99.0, "#c2410c"), ("p99.9", 99.9, "#9f1239"))
_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 800px; color: #1f2328; padding: 0 1em; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.sub { color: #57606a; margin-top: 0; word-break: break-all; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 2px 14px 2px 0; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
svg { display: block; max-width: 100%; height: auto; background: #fbfbfc; border: 1px solid #d0d7de; }
svg text { font: 11px system-ui, sans-serif; fill: #57606a; }
.none { color: #57606a; font-style: italic; }
"""


def render(result: BenchResult, *, when: str = "") -> str:
    """The report page for ``result`` (``when``: the run's date and time, as the caller words it)."""
    e = html.escape
    parts = [
        _head(f"sockcat bench: {result.mode} to {result.address}"),
        f"<h1>sockcat bench: {e(result.mode)}</h1>",
        f'<p class="sub">{e(result.address)}{" · " + e(when) if when else ""}</p>',
        _figures(result),
    ]
    if result.histogram is not None and result.histogram.count:
        parts += ['<h2 id="latency">Latency</h2>', _histogram_svg(result.histogram)]
    parts += ['<h2 id="seconds">Second by second</h2>', _series_svg(result)]
    parts += ['<h2 id="parameters">Parameters</h2>', _parameters(result), "</body></html>"]
    return "\n".join(parts) + "\n"


def _head(title: str) -> str:
    """The page's head: a policy that lets nothing run or load, the inline style, the title; ``<body>`` opened."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
    )


def _figures(r: BenchResult) -> str:
    rows: list[tuple[str, str]] = []
    if r.mode == "throughput":
        rows.append(("throughput", f"{format_bits(r.bytes_per_second)} ({format_bytes(r.bytes_per_second)}/s)"))
        rows.append(("moved", format_bytes(r.bytes)))
    else:
        rows.append(("rate", f"{r.rate:,.0f} {'connections' if r.mode == 'connect' else 'round trips'}/s"))
        rows.append(("requests", f"{r.requests:,}"))
        if r.latency is not None:
            lat = r.latency.to_dict()
            for key in ("p50", "p90", "p99", "p999", "max"):
                rows.append((f"latency {key}", format_us(lat[key])))
    rows.append(("errors", f"{r.errors}" + (f" ({_kinds(r.error_kinds)})" if r.errors else "")))
    rows.append(("client CPU", f"{r.client_cpu_percent:.0f}% of one core"))
    return _table(rows, 'id="figures"')


def _parameters(r: BenchResult) -> str:
    rows = [
        ("mode", r.mode),
        ("address", r.address),
        ("connections", str(r.connections)),
        ("size", f"{r.size:,} B"),
        ("window", f"{r.seconds:.2f} s after {r.warmup:g} s of warm-up"),
        ("workers", str(r.workers)),
    ]
    if r.mode == "rtt":
        rows.append(("pipeline", str(r.pipeline)))
    if r.mode == "throughput":
        rows.append(("direction", "download (reverse)" if r.reverse else "upload"))
    return _table(rows, 'id="parameters-table"')


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))


def _table(rows: list[tuple[str, str]], attrs: str) -> str:
    e = html.escape
    body = "".join(f'<tr><th scope="row">{e(k)}</th><td class="n">{e(v)}</td></tr>' for k, v in rows)
    return f"<table {attrs}>{body}</table>"


def _svg(inner: list[str], label: str, ident: str) -> str:
    return (
        f'<svg id="{ident}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="{html.escape(label)}">' + "".join(inner) + "</svg>"
    )


def _histogram_svg(h: Histogram) -> str:
    """Samples per log-spaced bin between min and max (µs on a log axis), with the percentiles marked."""
    lo_us, hi_us = max(h.min / 1000, 0.001), max(h.max / 1000, 0.002)
    if hi_us <= lo_us * 1.01:
        hi_us = lo_us * 1.5
    a, b = math.log10(lo_us), math.log10(hi_us)
    bins = [0] * _BINS
    for index, n in h.buckets().items():
        low, high = h.bucket_bounds(index)
        mid = max((low + high) / 2 / 1000, lo_us)
        k = min(_BINS - 1, max(0, int((math.log10(mid) - a) / (b - a) * _BINS)))
        bins[k] += n
    top = max(bins) or 1

    def x_of(us: float) -> float:
        return _PAD_L + (math.log10(max(us, lo_us)) - a) / (b - a) * _PLOT_W

    out: list[str] = []
    bar_w = _PLOT_W / _BINS
    for k, n in enumerate(bins):
        if n:
            bh = n / top * _PLOT_H
            out.append(
                f'<rect class="bin" x="{_PAD_L + k * bar_w:.1f}" y="{_PAD_T + _PLOT_H - bh:.1f}" '
                f'width="{max(bar_w - 1, 1):.1f}" height="{bh:.1f}" fill="#6e9fd6"><title>{n:,} samples</title></rect>'
            )
    out += _axes(f"{top:,}", "samples")
    for us in _log_ticks(lo_us, hi_us):
        x = x_of(us)
        out.append(f'<text x="{x:.1f}" y="{_H - 22}" text-anchor="middle">{html.escape(format_us(us))}</text>')
    out.append(f'<text x="{_PAD_L + _PLOT_W / 2:.0f}" y="{_H - 6}" text-anchor="middle">latency (log scale)</text>')
    for i, (name, q, color) in enumerate(_MARKS):
        us = h.percentile(q) / 1000
        x = x_of(us)
        out.append(
            f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{_PAD_T}" y2="{_PAD_T + _PLOT_H}" stroke="{color}" '
            f'stroke-width="1.5" stroke-dasharray="4 3"/>'
            f'<text x="{x + 3:.1f}" y="{_PAD_T + 12 + 13 * i}" style="fill:{color}">{name} {html.escape(format_us(us))}'
            "</text>"
        )
    return _svg(out, "latency histogram with percentiles", "histogram")


def _series_svg(r: BenchResult) -> str:
    series = list(r.series)
    if not series:
        return '<p class="none">The window was shorter than a second: no per-second figures.</p>'
    top_rate = max(s["rate"] for s in series) or 1.0
    p99s = [s["p99_us"] for s in series if s["p99_us"] is not None]
    top_p99 = max(p99s) if p99s else 0.0
    end = series[-1]["t"] or 1.0
    out: list[str] = []
    before = 0.0
    for s in series:
        x0, x1 = _PAD_L + before / end * _PLOT_W, _PAD_L + s["t"] / end * _PLOT_W
        bh = s["rate"] / top_rate * _PLOT_H
        out.append(
            f'<rect class="second" x="{x0 + 1:.1f}" y="{_PAD_T + _PLOT_H - bh:.1f}" width="{max(x1 - x0 - 2, 1):.1f}" '
            f'height="{bh:.1f}" fill="#9cc3e6"><title>{s["t"]:g} s: {s["rate"]:,.0f}/s</title></rect>'
        )
        before = s["t"]
    rate_label = "MiB/s" if r.mode == "throughput" else "per second"
    top_label = f"{top_rate * r.size / 1048576:,.0f}" if r.mode == "throughput" else f"{top_rate:,.0f}"
    out += _axes(top_label, rate_label)
    if top_p99 > 0:
        line = _points([(s["t"], s["p99_us"]) for s in series], end, top_p99)
        out.append(f'<polyline id="p99-line" points="{line}" fill="none" stroke="#c2410c" stroke-width="2"/>')
        out.append(
            f'<text x="{_W - _PAD_R + 4}" y="{_PAD_T + 10}" style="fill:#c2410c">'
            f"{html.escape(format_us(top_p99))}</text>"
            f'<text x="{_W - _PAD_R + 4}" y="{_PAD_T + 24}" style="fill:#c2410c">p99</text>'
        )
    out += _time_axis(end)
    return _svg(out, "rate and p99 per second", "series")


def _axis_lines() -> list[str]:
    base = _PAD_T + _PLOT_H
    return [
        f'<line x1="{_PAD_L}" x2="{_PAD_L + _PLOT_W}" y1="{base}" y2="{base}" stroke="#8c959f"/>',
        f'<line x1="{_PAD_L}" x2="{_PAD_L}" y1="{_PAD_T}" y2="{base}" stroke="#8c959f"/>',
    ]


def _axes(top: str, unit: str) -> list[str]:
    """Both axis lines, the top value with its unit, and 0 at the bottom (a linear scale)."""
    base = _PAD_T + _PLOT_H
    return [
        *_axis_lines(),
        f'<text x="{_PAD_L - 6}" y="{_PAD_T + 10}" text-anchor="end">{html.escape(top)}</text>',
        f'<text x="{_PAD_L - 6}" y="{_PAD_T + 24}" text-anchor="end">{html.escape(unit)}</text>',
        f'<text x="{_PAD_L - 6}" y="{base}" text-anchor="end">0</text>',
    ]


def _points(values: list[tuple[float, float | None]], end: float, top: float) -> str:
    """A polyline's points: one per second that has a value (``(end of the second, value)``), at the middle of the
    second, the value scaled so that ``top`` is the top of the picture."""
    points, before = [], 0.0
    for t, v in values:
        if v is not None:
            x = _PAD_L + (before + t) / 2 / end * _PLOT_W
            points.append(f"{x:.1f},{_PAD_T + _PLOT_H - v / top * _PLOT_H:.1f}")
        before = t
    return " ".join(points)


def _time_axis(end: float) -> list[str]:
    """The seconds axis under a picture of ``end`` seconds: its title, and ticks a 1-2-5 step apart, ten at most
    (a run of an hour, or a results file that claims 10^9 seconds, gets a few labels, not one per second)."""
    step, factors = 1.0, itertools.cycle((2.0, 2.5, 2.0))
    while end / step > 10:
        step *= next(factors)
    out = [f'<text x="{_PAD_L + _PLOT_W / 2:.0f}" y="{_H - 6}" text-anchor="middle">seconds into the window</text>']
    for k in range(int(end / step) + 1):
        x = _PAD_L + k * step / end * _PLOT_W
        out.append(f'<text x="{x:.1f}" y="{_H - 22}" text-anchor="middle">{k * step:g}</text>')
    return out


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 steps between ``lo`` and ``hi`` (at most about eight of them)."""
    ticks: list[float] = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**exp
            if lo <= v <= hi:
                ticks.append(v)
    if len(ticks) > 8:
        ticks = [t for t in ticks if math.log10(t).is_integer()] or ticks[:: len(ticks) // 8 + 1]
    return ticks


# --- several runs on one page (``sockcat bench-report A.json B.json -o cmp.html``) ---------------------------------

MAX_RUNS = 12
_COLORS = ("#1f6feb", "#c2410c", "#2b7a2b", "#8250df", "#b07d00", "#9f1239", "#0e7490", "#57606a")
_LADDER = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"), ("max", "max"))
_MAX_SERIES = 100_000


@dataclass(frozen=True)
class Run:
    """One ``bench --json`` object, checked: the figures a comparison shows."""

    label: str
    mode: str
    address: str
    connections: int
    seconds: float
    rate: float  # requests per second (throughput: bytes per second)
    latency_us: dict[str, float] | None
    errors: int
    series: list[tuple[float, float, float | None]]  # (t, rate, p99_us)


def run_from_json(label: str, obj: object) -> Run:
    """A :class:`Run` from one parsed ``bench --json`` object; ``ValueError`` naming what is wrong with it (a file
    handed in is checked by type and bound like anything from outside)."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    mode = obj.get("mode")
    if mode not in ("rtt", "connect", "throughput"):
        raise ValueError(f"mode {mode!r} is none of rtt, connect, throughput")
    address = obj.get("address")
    if not isinstance(address, str) or len(address) > 2048:
        raise ValueError("no address")
    latency = obj.get("latency_us")
    lat: dict[str, float] | None = None
    if mode != "throughput" and isinstance(latency, dict) and latency.get("p50") is not None:
        lat = {key: _number(latency.get(key), f"latency_us.{key}") for _, key in _LADDER}
    series_in = obj.get("series", [])
    if not isinstance(series_in, list) or len(series_in) > _MAX_SERIES:
        raise ValueError("series is not a list of at most 100,000 seconds")
    series: list[tuple[float, float, float | None]] = []
    for s in series_in:
        if not isinstance(s, dict):
            raise ValueError("a series entry is not an object")
        p99 = s.get("p99_us")
        series.append((_number(s.get("t"), "series t"), _number(s.get("rate"), "series rate"),
                       None if p99 is None else _number(p99, "series p99_us")))  # fmt: skip
    rate = _number(obj.get("bytes_per_second" if mode == "throughput" else "rate"), "rate")
    if mode == "throughput":  # per second, in bytes, as the rate above
        size = _number(obj.get("size"), "size")
        series = [(t, r * size, None) for t, r, _ in series]
    return Run(
        label=label,
        mode=mode,
        address=address,
        connections=int(_number(obj.get("connections"), "connections")),
        seconds=_number(obj.get("seconds"), "seconds"),
        rate=rate,
        latency_us=lat,
        errors=int(_number(obj.get("errors", 0), "errors")),
        series=series,
    )


def _number(v: object, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 or v > 1e18:
        raise ValueError(f"{what} is not a number of the right size: {v!r}"[:200])
    return float(v)


def render_comparison(runs: Sequence[Run]) -> str:
    """One page comparing ``runs`` (1 to :data:`MAX_RUNS`, of one mode): their figures side by side with each one's
    ratio to the first, the latency percentiles of each on one log scale, and the rate and p99 of every second."""
    if not 1 <= len(runs) <= MAX_RUNS:
        raise ValueError(f"compare 1 to {MAX_RUNS} runs")
    modes = {r.mode for r in runs}
    if len(modes) > 1:
        raise ValueError(f"runs of different modes ({', '.join(sorted(modes))}) do not compare")
    e = html.escape
    mode = runs[0].mode
    title = f"sockcat bench: {len(runs)} {mode} runs compared"
    parts = [
        _head(title),
        f"<h1>{e(title)}</h1>",
        '<p class="sub">Ratios are to the first run.</p>',
        _legend(runs),
        _comparison_table(runs),
    ]
    if mode != "throughput" and any(r.latency_us for r in runs):
        parts += ['<h2 id="latency">Latency percentiles</h2>', _ladder_svg(runs)]
    unit = "bytes per second" if mode == "throughput" else "per second"
    parts += [f'<h2 id="seconds">Rate, second by second ({unit})</h2>', _lines_svg(runs, 1, "rates", "rate")]
    if mode != "throughput":
        parts += ['<h2 id="p99s">p99, second by second</h2>', _lines_svg(runs, 2, "p99s", "p99 per second")]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _legend(runs: Sequence[Run]) -> str:
    items = "".join(
        f'<li class="run"><span style="color:{_color(i)}">&#9632;</span> {html.escape(r.label)} '
        f'<span class="sub">{html.escape(r.address)}, {r.connections} connections, {r.seconds:.1f} s</span></li>'
        for i, r in enumerate(runs)
    )
    return f'<ul id="legend">{items}</ul>'


def _comparison_table(runs: Sequence[Run]) -> str:
    e = html.escape
    first = runs[0]

    def cell(i: int, v: float, base: float, text: str) -> str:
        ratio = f" ({v / base:.2f}×)" if base > 0 and i > 0 else ""
        return f'<td class="n">{e(text)}{ratio}</td>'

    head = "".join(f'<th scope="col" style="color:{_color(i)}">{e(r.label)}</th>' for i, r in enumerate(runs))
    rate_text = format_bits if first.mode == "throughput" else (lambda v: f"{v:,.0f}/s")
    rates = "".join(cell(i, r.rate, first.rate, rate_text(r.rate)) for i, r in enumerate(runs))
    rows = [f'<tr><th scope="row">rate</th>{rates}']
    lats = [r.latency_us for r in runs if r.latency_us]
    if len(lats) == len(runs):
        for name, key in _LADDER:
            row = "".join(cell(i, lat[key], lats[0][key], format_us(lat[key])) for i, lat in enumerate(lats))
            rows.append(f'<tr><th scope="row">{name}</th>{row}')
    rows.append('<tr><th scope="row">errors</th>' + "".join(f'<td class="n">{r.errors}</td>' for r in runs))
    body = "</tr>".join(rows) + "</tr>"
    return f'<table id="comparison"><tr><th></th>{head}</tr>{body}</table>'


def _ladder_svg(runs: Sequence[Run]) -> str:
    """Each run's p50 … max on one log scale: a line per run."""
    values = [v for r in runs if r.latency_us for v in r.latency_us.values() if v > 0]
    lo, hi = (min(values), max(values)) if values else (1.0, 10.0)
    if hi <= lo * 1.01:
        hi = lo * 1.5
    a, b = math.log10(lo), math.log10(hi)
    out = _axis_lines()  # (a log scale: no 0 at the bottom)
    step = _PLOT_W / (len(_LADDER) - 1)
    for k, (name, _) in enumerate(_LADDER):
        out.append(f'<text x="{_PAD_L + k * step:.1f}" y="{_H - 22}" text-anchor="middle">{name}</text>')
    for us in _log_ticks(lo, hi):
        y = _PAD_T + _PLOT_H - (math.log10(us) - a) / (b - a) * _PLOT_H
        out.append(f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{html.escape(format_us(us))}</text>')
    for i, r in enumerate(runs):
        if not r.latency_us:
            continue
        ys = [_PAD_T + _PLOT_H - (math.log10(max(r.latency_us[key], lo)) - a) / (b - a) * _PLOT_H for _, key in _LADDER]
        points = " ".join(f"{_PAD_L + k * step:.1f},{y:.1f}" for k, y in enumerate(ys))
        out.append(f'<polyline class="run" points="{points}" fill="none" stroke="{_color(i)}" stroke-width="2"/>')
    return _svg(out, "latency percentiles of each run", "ladder")


def _lines_svg(runs: Sequence[Run], column: int, ident: str, label: str) -> str:
    """One line per run through its seconds: the rate (``column`` 1) or the p99 (2), against the seconds."""
    end = max((r.series[-1][0] for r in runs if r.series), default=0.0) or 1.0
    top = max((s[column] or 0.0 for r in runs for s in r.series), default=0.0) or 1.0
    top_text = format_us(top) if column == 2 else f"{top:,.0f}"
    out = _axes(top_text, "p99" if column == 2 else "")
    for i, r in enumerate(runs):
        points = _points([(s[0], s[column]) for s in r.series], end, top)
        if points:
            out.append(
                f'<polyline class="run" points="{points}" fill="none" stroke="{_color(i)}" '
                f'stroke-width="2"><title>{html.escape(r.label)}</title></polyline>'
            )
    return _svg(out + _time_axis(end), label, ident)
