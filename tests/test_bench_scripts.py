"""The benchmark scripts under bench/ still run: each one's --help, and one tiny real run of the quickest.

These are not performance tests (no figure is checked against a threshold); they only keep the scripts that
docs/benchmarks.md quotes from rotting when the code or bench/_common.py changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def test_every_script_is_listed_in_the_readme() -> None:
    readme = (BENCH / "README.md").read_text()
    assert SCRIPTS, "no benchmark scripts found"
    missing = [name for name in SCRIPTS if name not in readme]
    assert not missing, f"bench/README.md does not describe {missing}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    res = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout


def test_relay_unix_tcp_tiny_run() -> None:
    """One 4 MiB run through every relay: each must deliver every byte (the script checks the sink's count)."""
    require("socat")
    res = subprocess.run(
        [sys.executable, str(BENCH / "relay_unix_tcp.py"), "--runs", "1", "--size", "4M", "--json"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=BENCH.parent,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["size"] == 4 << 20
    assert set(report["median_gbit_s"]) == {"sockcat", "socat", "socat -b 262144", "copy loop", "splice loop"}
    assert all(rate > 0 for rate in report["median_gbit_s"].values())
