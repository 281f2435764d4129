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

from sockcat.core.benchreport import render
from sockcat.core.stats import Histogram, WorkerResult, merge

pytestmark = pytest.mark.timeout(120)


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
