"""``bench --report FILE.html`` and the JSON ``series``: a real run against ``serve echo``, the page opened in
headless Chromium (Debian's), which must show the histogram with its percentile marks and one bar per second,
fetch nothing and run no script. ``SOCKCAT_SCREENSHOT=PATH`` keeps the screenshot (docs/images/bench-report.png
was made that way)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import Proc, headless_chromium, run_sockcat, sockcat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sockcat.core.benchreport import render, render_comparison, run_from_json
from sockcat.core.stats import Histogram, WorkerResult, merge

pytestmark = pytest.mark.timeout(120)
_KEYS = ["mode", "address", "connections", "seconds", "rate", "errors", "latency_us", "series", "size",
         "bytes_per_second", "t", "p99_us", "p50", "p90", "p99", "p999", "max"]  # fmt: skip


def test_report_of_a_real_run_renders_in_chromium(procs: list[Proc], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    server = Proc(sockcat("serve", "echo", "tcp://127.0.0.1:0"))
    procs.append(server)
    addr = server.read_listening()
    page = tmp_path / "run.html"
    r = run_sockcat("bench", addr, "-c", "4", "-d", "3", "--warmup", "0.2", "--json", "--report", str(page))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    series = d["series"]
    assert [round(s["t"]) for s in series] == [1, 2, 3], series  # a point per second of the window
    assert all(s["rate"] > 0 and s["p99_us"] > 0 for s in series), series
    assert abs(sum(s["rate"] * (s["t"] - (series[i - 1]["t"] if i else 0)) for i, s in enumerate(series))
               - d["requests"]) <= 0.01 * d["requests"] + 5  # fmt: skip
    text = page.read_text()
    assert "<script" not in text and not re.search(r"(src|href)=", text)  # nothing runs, nothing is fetched
    assert "default-src 'none'" in text  # and the page's policy forbids both anyway
    with headless_chromium(tmp_path / "profile") as browser:
        browser.get(page.as_uri())
        assert browser.title == f"sockcat bench: rtt to {addr}"
        bins = browser.find_elements(By.CSS_SELECTOR, "svg#histogram rect.bin")
        assert len(bins) >= 3
        marks = browser.find_elements(By.CSS_SELECTOR, "svg#histogram line.mark")
        assert len(marks) == 4
        labels = browser.find_element(By.ID, "histogram").text
        assert "p50" in labels and "p99" in labels and "p99.9" in labels
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg#series rect.second")) == 3
        assert browser.find_element(By.ID, "p99-line").is_displayed()
        box = browser.find_element(By.ID, "histogram").rect
        assert box["width"] > 600 and box["height"] > 150  # drawn, at size
        figures = browser.find_element(By.ID, "figures").text
        assert re.search(r"rate\s+[\d,]+ round trips/s", figures), figures
        shot = tmp_path / "bench-report.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    keep = os.environ.get("SOCKCAT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def test_throughput_series_and_report() -> None:
    """Throughput has rates but no latencies: the page says so in pictures without a histogram."""
    parts = [WorkerResult(requests=30, bytes=30 * 1024, seconds=2.0)]
    parts[0].series = [(1.0, 10, Histogram()), (2.0, 20, Histogram())]
    result = merge(parts, mode="throughput", address="tcp://h:9", size=1024, workers=1, pipeline=1, warmup=0.5,
                   reverse=False)  # fmt: skip
    assert result.to_dict()["series"] == [{"t": 1.0, "rate": 10.0, "p99_us": None}, {"t": 2.0, "rate": 20.0,
                                                                                       "p99_us": None}]  # fmt: skip
    text = render(result)
    assert 'id="histogram"' not in text and text.count('class="second"') == 2


def test_workers_seconds_add_up_and_hostile_addresses_are_escaped() -> None:
    a, b = WorkerResult(requests=3, seconds=1.0), WorkerResult(requests=5, seconds=1.02)
    for part, values in ((a, [1000, 2000, 3000]), (b, [10_000] * 5)):
        h = Histogram()
        h.record_many(values)
        part.histogram = h.copy()
        part.series = [(part.seconds, len(values), h)]
    result = merge([a, b], mode="rtt", address='tcp://"><img src=x onerror=alert(1)>:1', size=64, workers=2,
                   pipeline=1, warmup=0.5, reverse=False)  # fmt: skip
    (second,) = result.series
    assert second["t"] == 1.02 and second["rate"] == round(8 / 1.02, 3)
    assert second["p99_us"] == pytest.approx(10.0, rel=0.01)  # the slower worker's samples are the tail
    text = render(result, when="now")
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text


# --- bench-report: several runs' --json on one page ---------------------------------------------------------------


def test_bench_report_compares_real_runs_in_chromium(procs: list[Proc], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    server = Proc(sockcat("serve", "echo", "tcp://127.0.0.1:0"))
    procs.append(server)
    addr = server.read_listening()
    files = []
    for n in (1, 4):
        r = run_sockcat("bench", addr, "-c", str(n), "-d", "2", "--warmup", "0.2", "--json")
        assert r.returncode == 0, r.stderr
        files.append(tmp_path / f"c{n}.json")
        files[-1].write_bytes(r.stdout)
    page = tmp_path / "cmp.html"
    r = run_sockcat("bench-report", *map(str, files), "-o", str(page))
    assert r.returncode == 0 and r.stdout == b"", r.stderr
    text = page.read_text()
    assert "<script" not in text and not re.search(r"(src|href)=", text) and "default-src 'none'" in text
    with headless_chromium(tmp_path / "profile") as browser:
        browser.get(page.as_uri())
        assert browser.title == "sockcat bench: 2 rtt runs compared"
        legend = browser.find_element(By.ID, "legend").text
        assert "c1.json" in legend and "c4.json" in legend and "4 connections" in legend
        table = browser.find_element(By.ID, "comparison").text
        assert re.search(r"rate\s+[\d,]+/s\s+[\d,]+/s \([\d.]+×\)", table), table  # the second run's ratio
        assert re.search(r"p99\s+[\d.]+ [mµ]?s\s+[\d.]+ [mµ]?s \([\d.]+×\)", table), table
        for svg in ("ladder", "rates", "p99s"):
            lines = browser.find_elements(By.CSS_SELECTOR, f"svg#{svg} polyline.run")
            assert len(lines) == 2 and all(line.is_displayed() for line in lines), svg
        assert browser.find_element(By.ID, "rates").rect["width"] > 600


def test_bench_report_refuses_what_is_not_a_result(tmp_path: Path) -> None:
    good = {"mode": "rtt", "address": "tcp://h:7", "connections": 2, "seconds": 2.0, "rate": 10.0, "errors": 0,
            "latency_us": {"p50": 1, "p90": 2, "p99": 3, "p999": 4, "max": 5},
            "series": [{"t": 1.0, "rate": 10, "p99_us": 3}]}  # fmt: skip
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, rate=20.0)) + "\n")
    out = tmp_path / "out.html"
    r = run_sockcat("bench-report", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr  # two lines, two runs
    assert "runs.json #1" in out.read_text() and "runs.json #2" in out.read_text() and "(2.00×)" in out.read_text()
    for bad, why in (
        ("[1, 2]", "not a JSON object"),
        ('{"mode": "fast"}', "mode 'fast'"),
        (json.dumps(dict(good, rate=-1)), "rate is not a number"),
        (json.dumps(dict(good, series=[{"t": "1", "rate": 1}])), "series t"),
        (json.dumps(good).replace('"rate": 10.0', '"rate": NaN'), "rate is not a number"),
        ("{not json", "not a bench --json result"),
    ):
        path.write_text(bad + "\n")
        r = run_sockcat("bench-report", str(path), "-o", str(out))
        err = r.stderr.decode()
        assert r.returncode == 1 and why in err and err.count("\n") == 1, (bad, err)
    mixed = tmp_path / "tp.json"
    mixed.write_text(json.dumps(dict(good, mode="throughput", bytes_per_second=5.0, size=1024)))
    path.write_text(json.dumps(good))
    r = run_sockcat("bench-report", str(path), str(mixed), "-o", str(out))
    assert r.returncode == 1 and b"do not compare" in r.stderr
    r = run_sockcat("bench-report", *[str(path)] * 13, "-o", str(out))
    assert r.returncode == 2 and b"at most 12 runs" in r.stderr
    r = run_sockcat("bench-report", str(tmp_path / "missing.json"), "-o", str(out))
    assert r.returncode == 1 and b"missing.json" in r.stderr


def test_a_hostile_address_in_a_result_is_escaped() -> None:
    obj = {"mode": "rtt", "address": "<script>alert(1)</script>", "connections": 1, "seconds": 1.0, "rate": 1.0,
           "series": []}  # fmt: skip
    page = render_comparison([run_from_json("<b>x</b>.json", obj)])
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;.json" in page


def test_a_result_claiming_a_huge_window_gets_a_few_ticks_not_one_per_second() -> None:
    """A results file may claim any number of seconds (up to the 1e18 bound): the seconds axis has ten ticks at most,
    whatever it claims. It used to draw one label per second: a file claiming 1e9 s never rendered."""
    for end in (3.0, 10.0, 3600.0, 1e9, 1e17):
        obj = {"mode": "rtt", "address": "tcp://h:7", "connections": 1, "seconds": end, "rate": 1.0,
               "series": [{"t": end / 2, "rate": 1, "p99_us": 5}, {"t": end, "rate": 2, "p99_us": 7}]}  # fmt: skip
        page = render_comparison([run_from_json("f.json", obj)])
        ticks = re.findall(r'text-anchor="middle">([\d.e+]+)</text>', page.split('id="rates"')[1].split("</svg>")[0])
        assert 2 <= len(ticks) <= 11 and float(ticks[-1]) <= end, (end, ticks)
    short = render_comparison([run_from_json("f.json", dict(obj, series=[{"t": 3.0, "rate": 1, "p99_us": 5}]))])
    assert re.findall(r'text-anchor="middle">(\d+)</text>', short.split('id="rates"')[1])[:4] == ["0", "1", "2", "3"]


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=8),
        max_leaves=30,
    )
)
def test_any_json_is_a_run_or_a_value_error(obj: object) -> None:
    try:
        run = run_from_json("f.json", obj)
    except ValueError:
        return
    assert "<svg" in render_comparison([run, run])
