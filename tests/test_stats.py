"""The bench statistics (pure, no I/O): the log-bucketed histogram, its percentiles and merge, result JSON."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockcat.core.stats import (
    PERCENTILES,
    BenchResult,
    Histogram,
    Latency,
    WorkerResult,
    exact_percentile,
    merge,
    rank,
)
from sockcat.core.units import format_bits, format_bytes, format_us

values = st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=400)
percentile = st.sampled_from([0.0, 1.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0])


def hist_of(vs: list[int]) -> Histogram:
    h = Histogram()
    h.record_many(vs)
    return h


@settings(max_examples=300, deadline=None)
@given(values, percentile)
def test_percentile_within_relative_error_of_exact(vs: list[int], q: float) -> None:
    h = hist_of(vs)
    exact = exact_percentile(sorted(vs), q)
    got = h.percentile(q)
    assert abs(got - exact) <= exact * h.relative_error + 0.5  # +0.5: the middle of a 2-value bucket


@settings(max_examples=200, deadline=None)
@given(values)
def test_percentiles_ordered_and_bounded(vs: list[int]) -> None:
    h = hist_of(vs)
    ps = h.percentiles(q for _, q in PERCENTILES)
    assert min(vs) <= ps[0] and ps == sorted(ps) and ps[-1] <= max(vs)
    assert (h.min, h.max, h.count, h.total) == (min(vs), max(vs), len(vs), sum(vs))


@settings(max_examples=200, deadline=None)
@given(values, values)
def test_merge_is_additive(a: list[int], b: list[int]) -> None:
    merged = hist_of(a)
    merged.merge(hist_of(b))
    assert merged == hist_of(a + b)
    assert merged.count == len(a) + len(b)
    assert sum(merged.buckets().values()) == merged.count


@settings(max_examples=100, deadline=None)
@given(values)
def test_dict_round_trip_survives_json(vs: list[int]) -> None:
    h = hist_of(vs)
    assert Histogram.from_dict(json.loads(json.dumps(h.to_dict()))) == h


@given(st.integers(min_value=0, max_value=2**44))
def test_bucket_holds_its_value_and_is_narrow(v: int) -> None:
    h = Histogram()
    low, high = h.bucket_bounds(h._index(v))
    assert low <= v <= high
    assert high - low + 1 <= max(1, low * 2 * h.relative_error)


def test_small_values_are_exact() -> None:
    h = hist_of(list(range(500)))
    assert h.percentile(50) == 249  # nearest rank: ceil(0.5 * 500) = 250th value
    assert h.percentile(100) == 499


def test_rank_uses_exact_decimal_percent() -> None:
    assert rank(99.9, 1000) == 999  # not 1000, as 99.9/100*1000 in floating point would give
    assert rank(50, 1) == 1
    assert rank(0, 10) == 1
    with pytest.raises(ValueError):
        rank(101, 10)


def test_empty_histogram() -> None:
    h = Histogram()
    assert h.percentiles([50, 99]) == [0, 0]
    assert h.mean == 0.0
    lat = Latency.from_histogram(h)
    assert lat.p50 == lat.max == 0.0


def test_huge_values_clamp_to_top_bucket() -> None:
    h = hist_of([2**60])
    assert h.max == 2**60
    assert h.percentile(50) == 2**60  # clamped to the exact max


def test_merge_rejects_other_precision() -> None:
    with pytest.raises(ValueError):
        Histogram(8).merge(Histogram(6))


def _part(requests: int, seconds: float, cpu: float, lat_ns: list[int], errors: dict[str, int]) -> WorkerResult:
    part = WorkerResult(requests=requests, bytes=requests * 64, seconds=seconds, cpu_seconds=cpu, connections=64)
    part.histogram.record_many(lat_ns)
    for kind, n in errors.items():
        for _ in range(n):
            part.add_error(kind, f"{kind} happened")
    return part


def test_merge_of_worker_results_and_json_fields() -> None:
    a = _part(1000, 2.0, 1.9, [50_000] * 10, {"timeout": 2})
    b = _part(3000, 2.0, 1.0, [100_000] * 30, {"reset": 1})
    r = merge(
        [a, b], mode="rtt", address="tcp://127.0.0.1:7", size=64, workers=2, pipeline=1, warmup=0.5, reverse=False
    )
    assert isinstance(r, BenchResult)
    j = r.to_dict()
    assert json.loads(json.dumps(j)) == j
    for key in (
        "mode",
        "address",
        "connections",
        "size",
        "seconds",
        "requests",
        "rate",
        "bytes_per_second",
        "latency_us",
        "errors",
    ):
        assert key in j
    assert j["connections"] == 128  # total across workers
    assert j["requests"] == 4000 and j["rate"] == 2000.0
    assert j["errors"] == 3 and isinstance(j["errors"], int)
    assert j["error_kinds"] == {"timeout": 2, "reset": 1}
    lat = j["latency_us"]
    assert lat["p50"] == pytest.approx(100.0, rel=0.01) and lat["max"] == 100.0
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert j["client_cpu_percent"] == 95.0 and r.client_saturated  # the busiest worker: 1.9 s of 2 s
    assert j["first_error"] == "timeout happened"


def test_throughput_result_has_no_latency() -> None:
    part = WorkerResult(requests=10, bytes=10 << 17, seconds=1.0, connections=1)
    r = merge(
        [part], mode="throughput", address="tcp://h:9", size=1 << 17, workers=1, pipeline=1, warmup=0.5, reverse=True
    )
    j = r.to_dict()
    assert j["bytes_per_second"] == 10 << 17 and j["reverse"] is True
    assert j["latency_us"]["p50"] is None


def test_formatting() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bits(1.25e9) == "10.00 Gbit/s"
    assert format_us(850) == "850 µs"
    assert format_us(1210) == "1.21 ms"
    assert format_us(2_500_000) == "2.50 s"


# --- bench's inlined recording (the reply callbacks) against Histogram.record -------------------------------


class _FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused = True


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**46), min_size=1, max_size=200), st.sampled_from([1, 3]))
def test_inlined_recording_equals_record(lat: list[int], pipeline: int) -> None:
    """The sessions' inlined bucket arithmetic gives exactly the histogram ``record`` gives."""
    from sockcat.engines.bench import make_plan
    from sockcat.engines.bench import sessions as _sessions
    from sockcat.engines.bench.worker import _Worker

    plan = make_plan("tcp://127.0.0.1:9", size=4, pipeline=pipeline, duration=1.0)
    w = _Worker(plan, 1, None)
    w.hist.record(12345)  # a warm-up sample: the window's start forgets it
    w.begin_window()
    session: _sessions._RttOne | _sessions._RttStream = (
        _sessions._RttOne(w, None) if pipeline == 1 else _sessions._RttStream(w, None)  # type: ignore[arg-type]
    )
    w.sessions.add(session)
    clock = [10**12]
    real = _sessions.perf_counter_ns
    _sessions.perf_counter_ns = lambda: clock[0]  # type: ignore[assignment]
    loop = asyncio.new_event_loop()  # (only to run the first write, which waits one iteration of it)
    w._loop = loop
    try:
        t = _FakeTransport()
        session.connection_made(t)  # type: ignore[arg-type]
        loop.run_until_complete(asyncio.sleep(0))
        assert t.written, "the first request went out"
        for v in lat:
            clock[0] += v
            session.data_received(b"x" * (4 * pipeline) if pipeline > 1 else b"xx")  # a whole burst / half a reply
            if pipeline == 1:
                session.data_received(b"yy")
    finally:
        _sessions.perf_counter_ns = real  # type: ignore[assignment]
        w._loop = None
        loop.close()
    w.finish()
    assert t.paused  # the window's end stops reading
    expected = Histogram()
    for v in lat:
        expected.record_many([v] * pipeline)
    assert w.result.histogram == expected
    assert w.requests == len(lat) * pipeline


def test_reset_keeps_the_counter_list() -> None:
    h = hist_of([1, 1000, 10**6])
    counts = h.counts
    h.reset()
    assert h.counts is counts and h.count == 0 and h.total == 0 and h.max == 0 and not any(counts)
    counts[5] += 2
    assert h.recount() == 2
