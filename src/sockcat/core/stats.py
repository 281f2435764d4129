"""Benchmark statistics without I/O: a log-bucketed latency histogram and the result objects of ``bench``.

:class:`Histogram` is HdrHistogram's idea in a few lines: values below ``2**(P+1)`` get a bucket each;
above, every power of two is split into ``2**P`` equal buckets, so a bucket is never wider than
``1/2**P`` of the values it holds. A percentile is the middle of the bucket holding the sample of
nearest rank, which is within ``1/2**(P+1)`` (relative) of the exact sample; ``min``, ``max``,
``count`` and ``total`` are exact. Recording is O(1) and allocation-free; memory is fixed (a few
thousand counters) however many samples there are; two histograms merge by adding counters, so
worker processes each keep one and the parent adds them up.

Values are integers (``bench`` records nanoseconds); results report microseconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PRECISION_BITS = 8  # relative error of a percentile < 1/2**9 (about 0.2 %)
MAX_BITS = 44
_NO_MIN = 1 << 64  # values up to 2**44 ns (about 4.9 hours); larger ones land in the top bucket
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


class Histogram:
    """Counts of non-negative integers in log-spaced buckets (see the module docstring)."""

    __slots__ = ("_counts", "_linear", "_p", "_p1", "_top", "count", "low", "max", "total")

    def __init__(self, precision_bits: int = PRECISION_BITS, max_bits: int = MAX_BITS) -> None:
        if not 1 <= precision_bits <= 16 or max_bits <= precision_bits:
            raise ValueError("need 1 <= precision_bits <= 16 and max_bits > precision_bits")
        self._p = precision_bits
        self._p1 = precision_bits + 1
        self._linear = 1 << self._p1
        self._top = self._index((1 << max_bits) - 1)
        self._counts = [0] * (self._top + 1)
        self.count = 0
        self.total = 0
        self.low = _NO_MIN
        self.max = 0

    # --- bucket arithmetic --------------------------------------------------------------------------
    def _index(self, value: int) -> int:
        if value < self._linear:
            return value
        shift = value.bit_length() - self._p1
        return (shift << self._p) + (value >> shift)

    def bucket_bounds(self, index: int) -> tuple[int, int]:
        """The smallest and largest value that land in bucket ``index``."""
        if index < self._linear:
            return index, index
        shift = (index >> self._p) - 1
        low = (index - (shift << self._p)) << shift
        return low, low + (1 << shift) - 1

    @property
    def relative_error(self) -> float:
        """An upper bound on ``|percentile - exact| / exact`` (before clamping to ``min``/``max``)."""
        return 1.0 / (1 << self._p1)

    @property
    def precision_bits(self) -> int:
        return self._p

    # --- recording ------------------------------------------------------------------------------------
    def record(self, value: int) -> None:
        """Count one value (negative values count as 0). The hot path of ``bench``: keep it lean."""
        if value < self._linear:
            if value < 0:
                value = 0
            self._counts[value] += 1
        else:
            shift = value.bit_length() - self._p1
            index = (shift << self._p) + (value >> shift)
            self._counts[index if index <= self._top else self._top] += 1
        if value < self.low:
            self.low = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    @property
    def min(self) -> int:
        return self.low if self.count else 0

    # --- the inlined recording protocol (bench's hot path) ---------------------------------------------
    # A caller that records in its own code instead of calling :meth:`record` does, per value ``v`` >= 0:
    # ``counts[v if v < linear else index(v)] += 1`` (``counts``/``linear``/``top`` from :meth:`fast_state`),
    # ``h.total += v``, ``if v > h.max: h.max = v``, ``if v < h.low: h.low = v``; and calls :meth:`recount`
    # before the histogram is read (``count`` is not kept up to date by that path).
    @property
    def counts(self) -> list[int]:
        """The bucket counters themselves (mutable; see the inlined recording protocol)."""
        return self._counts

    def fast_state(self) -> tuple[list[int], int, int, int, int]:
        """``(counts, linear, precision_bits, precision_bits + 1, top)`` for inlined recording."""
        return self._counts, self._linear, self._p, self._p1, self._top

    def recount(self) -> int:
        """Make ``count`` agree with the counters (after inlined recording); returns it."""
        self.count = sum(self._counts)
        return self.count

    def reset(self) -> None:
        """Forget every value, keeping the same counter list (inlined recorders hold a reference to it)."""
        counts = self._counts
        counts[:] = [0] * len(counts)
        self.count = 0
        self.total = 0
        self.low = _NO_MIN
        self.max = 0

    def record_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(v)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to this histogram (both must have the same precision)."""
        if other._p != self._p or len(other._counts) != len(self._counts):
            raise ValueError("cannot merge histograms of different precision")
        if other.count == 0:
            return
        counts = self._counts
        for i, n in enumerate(other._counts):
            if n:
                counts[i] += n
        self.low = min(self.low, other.low)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def copy(self) -> Histogram:
        h = Histogram(self._p, self._max_bits())
        h.merge(self)
        return h

    def since(self, earlier: list[int]) -> Histogram:
        """The values counted since the counters were ``earlier`` (a copy of :attr:`counts`), as a histogram of
        their own (its min and max are bucket bounds: the exact ones were not kept)."""
        h = Histogram(self._p, self._max_bits())
        counts = h._counts
        for i, (now, then) in enumerate(zip(self._counts, earlier, strict=True)):
            if now != then:
                counts[i] = now - then
        filled = [i for i, n in enumerate(counts) if n]
        if filled:
            h.count = sum(counts)
            h.low, h.max = self.bucket_bounds(filled[0])[0], self.bucket_bounds(filled[-1])[1]
            h.total = sum(counts[i] * sum(self.bucket_bounds(i)) // 2 for i in filled)
        return h

    def _max_bits(self) -> int:
        return self.bucket_bounds(self._top)[1].bit_length()

    # --- reading --------------------------------------------------------------------------------------
    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, q: float) -> int | float:
        """The value at percentile ``q`` (0-100, nearest rank); 0 for an empty histogram."""
        return self.percentiles([q])[0]

    def percentiles(self, qs: Iterable[float]) -> list[int | float]:
        """Several percentiles in one pass over the buckets, in the order asked."""
        wanted = list(qs)
        if self.count == 0:
            return [0 for _ in wanted]
        ranks = [rank(q, self.count) for q in wanted]
        order = sorted(range(len(wanted)), key=lambda i: ranks[i])
        out: list[int | float] = [0] * len(wanted)
        seen = 0
        k = 0
        for index, n in enumerate(self._counts):
            if not n:
                continue
            seen += n
            while k < len(order) and ranks[order[k]] <= seen:
                out[order[k]] = self._representative(index)
                k += 1
            if k == len(order):
                break
        return out

    def _representative(self, index: int) -> int | float:
        low, high = self.bucket_bounds(index)
        if low == high:
            value: int | float = low
        else:
            value = (low + high) / 2
        # Exact bounds beat the bucket's middle: no percentile below min or above max.
        return min(max(value, self.min), self.max)

    def buckets(self) -> dict[int, int]:
        """The non-empty buckets, ``{index: count}`` (what :meth:`to_dict` carries)."""
        return {i: n for i, n in enumerate(self._counts) if n}

    def to_dict(self) -> dict[str, Any]:
        """A compact, JSON- and pickle-friendly form (only non-empty buckets)."""
        return {
            "precision_bits": self._p,
            "max_bits": self._max_bits(),
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
            "buckets": [[i, n] for i, n in self.buckets().items()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        h = cls(int(data["precision_bits"]), int(data["max_bits"]))
        for i, n in data["buckets"]:
            h._counts[int(i)] += int(n)
        h.count = int(data["count"])
        h.total = int(data["total"])
        h.low = int(data["min"]) if h.count else _NO_MIN
        h.max = int(data["max"])
        if sum(h._counts) != h.count:
            raise ValueError("histogram counts do not add up")
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (
            self._p == other._p
            and self._counts == other._counts
            and (self.count, self.total, self.min, self.max) == (other.count, other.total, other.min, other.max)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Histogram count={self.count} min={self.min} max={self.max}>"


def rank(q: float, count: int) -> int:
    """Nearest rank of percentile ``q`` among ``count`` samples: ``ceil(q/100 * count)``, at least 1.

    Computed in thousandths of a percent so that ``99.9`` of 1000 samples is rank 999, not 1000.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} out of range 0-100")
    milli = round(q * 1000)
    return max(1, min(count, -(-milli * count // 100_000)))


def exact_percentile(sorted_values: list[int], q: float) -> int:
    """The nearest-rank percentile of already sorted samples (what :meth:`Histogram.percentile` estimates)."""
    if not sorted_values:
        return 0
    return sorted_values[rank(q, len(sorted_values)) - 1]


# --- results -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Latency percentiles in microseconds."""

    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    min: float = 0.0
    mean: float = 0.0

    @classmethod
    def from_histogram(cls, h: Histogram, scale: float = 1e-3) -> Latency:
        """From a histogram of nanoseconds (``scale`` turns its unit into microseconds)."""
        p50, p90, p99, p999 = h.percentiles(q for _, q in PERCENTILES)

        def us(v: float) -> float:
            return round(v * scale, 1)

        return cls(us(p50), us(p90), us(p99), us(p999), us(h.max), us(h.min), us(h.mean))

    def to_dict(self) -> dict[str, float]:
        return {
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "p999": self.p999,
            "max": self.max,
            "min": self.min,
            "mean": self.mean,
        }


@dataclass
class WorkerResult:
    """What one bench worker measured during the window (warm-up excluded); merged by :func:`merge`."""

    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    cpu_seconds: float = 0.0
    connections: int = 0
    histogram: Histogram = field(default_factory=Histogram)
    # each second of the window (the last one may be shorter): (seconds since the start, requests, latencies)
    series: list[tuple[float, int, Histogram]] = field(default_factory=list)

    def last_p99(self) -> float | None:
        """The p99 of the last second in :attr:`series`, in µs (None before one, or without samples)."""
        h = self.series[-1][2] if self.series else None
        return h.percentile(99) / 1000 if h is not None and h.count else None

    def add_error(self, kind: str, message: str | None = None) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.first_error is None and message:
            self.first_error = message

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "errors": dict(self.errors),
            "first_error": self.first_error,
            "cpu_seconds": self.cpu_seconds,
            "connections": self.connections,
            "histogram": self.histogram.to_dict(),
            "series": [[t, n, h.to_dict()] for t, n, h in self.series],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerResult:
        return cls(
            requests=int(data["requests"]),
            bytes=int(data["bytes"]),
            seconds=float(data["seconds"]),
            errors={str(k): int(v) for k, v in data["errors"].items()},
            first_error=data.get("first_error"),
            cpu_seconds=float(data["cpu_seconds"]),
            connections=int(data["connections"]),
            histogram=Histogram.from_dict(data["histogram"]),
            series=[(float(t), int(n), Histogram.from_dict(h)) for t, n, h in data.get("series", [])],
        )


@dataclass(frozen=True)
class BenchResult:
    """The figures of one ``bench`` run; ``to_dict()`` gives the object ``--json`` prints (docs/reference.md#output),
    ``to_json()`` that object as the JSON text.

    ``requests`` counts round trips (rtt), connections opened, answered and closed (connect), or
    ``size``-byte messages moved (throughput); ``rate`` is ``requests`` per second of the window.
    ``seconds`` is the measured window, warm-up excluded. ``errors`` counts failed requests and
    connections; ``error_kinds`` splits them by cause. ``client_cpu_percent`` is the busiest worker's
    CPU use in percent of one core: near 100 the client, not the server, was the limit.
    """

    mode: str
    address: str
    connections: int
    size: int
    seconds: float
    requests: int
    rate: float
    bytes: int
    bytes_per_second: float
    latency: Latency | None
    errors: int
    error_kinds: dict[str, int]
    first_error: str | None
    workers: int
    pipeline: int
    warmup: float
    reverse: bool
    client_cpu_seconds: float
    client_cpu_percent: float
    histogram: Histogram | None = None
    series: tuple[dict[str, Any], ...] = ()  # per second: t (end of the second, s), rate (/s), p99_us (None: none)

    @property
    def client_saturated(self) -> bool:
        return self.client_cpu_percent >= 90.0

    def to_json(self) -> str:
        """What ``bench --json`` prints: :meth:`to_dict` as one line of JSON."""
        return json.dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        lat = (
            self.latency.to_dict()
            if self.latency is not None
            else dict.fromkeys(("p50", "p90", "p99", "p999", "max", "min", "mean"))
        )
        out: dict[str, Any] = {
            "mode": self.mode,
            "address": self.address,
            "connections": self.connections,
            "size": self.size,
            "seconds": round(self.seconds, 6),
            "requests": self.requests,
            "rate": round(self.rate, 3),
            "bytes": self.bytes,
            "bytes_per_second": round(self.bytes_per_second, 3),
            "latency_us": lat,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "first_error": self.first_error,
            "workers": self.workers,
            "pipeline": self.pipeline,
            "warmup": self.warmup,
            "client_cpu_seconds": round(self.client_cpu_seconds, 3),
            "client_cpu_percent": round(self.client_cpu_percent, 1),
            "series": [dict(x) for x in self.series],
        }
        if self.mode == "throughput":
            out["reverse"] = self.reverse
        return out


def merge(
    parts: list[WorkerResult],
    *,
    mode: str,
    address: str,
    size: int,
    workers: int,
    pipeline: int,
    warmup: float,
    reverse: bool,
) -> BenchResult:
    """Add up the workers' figures: counts and histograms add; the window is the longest worker's."""
    hist = Histogram()
    errors: dict[str, int] = {}
    first: str | None = None
    requests = nbytes = connections = 0
    seconds = cpu = busiest = 0.0
    for part in parts:
        hist.merge(part.histogram)
        for k, v in part.errors.items():
            errors[k] = errors.get(k, 0) + v
        first = first or part.first_error
        requests += part.requests
        nbytes += part.bytes
        connections += part.connections
        seconds = max(seconds, part.seconds)
        cpu += part.cpu_seconds
        if part.seconds > 0:
            busiest = max(busiest, 100.0 * part.cpu_seconds / part.seconds)
    series = _merge_series([part.series for part in parts], mode)
    # no completed round trip: no latency to report (null in --json, never a 0.0 that reads like a fast server)
    latency = Latency.from_histogram(hist) if mode != "throughput" and requests > 0 else None
    return BenchResult(
        mode=mode,
        address=address,
        connections=connections,
        size=size,
        seconds=seconds,
        requests=requests,
        rate=requests / seconds if seconds > 0 else 0.0,
        bytes=nbytes,
        bytes_per_second=nbytes / seconds if seconds > 0 else 0.0,
        latency=latency,
        errors=sum(errors.values()),
        error_kinds=errors,
        first_error=first,
        workers=workers,
        pipeline=pipeline,
        warmup=warmup,
        reverse=reverse,
        client_cpu_seconds=cpu,
        client_cpu_percent=busiest,
        histogram=hist if mode != "throughput" else None,
        series=series,
    )


def _merge_series(parts: list[list[tuple[float, int, Histogram]]], mode: str) -> tuple[dict[str, Any], ...]:
    """The workers' seconds added up, second by second: rate per second, and the p99 of that second's samples."""
    out: list[dict[str, Any]] = []
    before = 0.0
    for i in range(max((len(p) for p in parts), default=0)):
        slices = [p[i] for p in parts if i < len(p)]
        t = max(s[0] for s in slices)
        requests = sum(s[1] for s in slices)
        hist = Histogram()
        for s in slices:
            hist.merge(s[2])
        p99 = round(hist.percentile(99.0) / 1000, 3) if mode != "throughput" and hist.count else None
        span = t - before
        out.append({"t": round(t, 3), "rate": round(requests / span, 3) if span > 0 else 0.0, "p99_us": p99})
        before = t
    return tuple(out)
