"""The benchmarks run: every case end to end at a tiny size, as `nox -s bench` runs them at
full size. Nothing here is timed (figures belong in docs/benchmarks.md, not in a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.xdist_group("bench")
def test_every_benchmark_case_runs_at_a_tiny_size(tmp_path):
    sys.path.insert(0, str(REPO))
    try:
        from bench.__main__ import CASES
    finally:
        sys.path.remove(str(REPO))
    out = tmp_path / "benchmarks.md"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = out.read_text()
    assert "(case failed)" not in report, run.stderr[-4000:]
    for key in CASES:
        assert f"\n## {key}. " in report, f"case {key} missing from the report"
    assert "| **missed** |" in report or "| met |" in report  # the summary table was written
