"""The benchmark command (`python -m bench`): a real quick run of the cheapest benchmark, and the report code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench.common import quantile, result
from bench.report import table

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = {"id", "measure", "baseline", "ratio", "goal", "met", "limit", "better", "context", "seconds"}


def test_quick_run_writes_the_report(tmp_path: Path) -> None:
    # P5: a real `sdserver serve` (no workers), 50 uploads, RSS and /proc/<pid>/maps read from outside.
    command = [sys.executable, "-m", "bench", "--quick", "--only", "p5", "--out", str(tmp_path), "--no-charts"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["mode"] == "quick"
    assert report["device"] in ("cpu", "cuda")
    assert {"date", "cpu", "cores"} <= set(report["machine"])
    [entry] = report["results"]
    assert set(entry) == RESULT_KEYS
    assert entry["id"] == "P5"
    assert entry["ratio"] > 0
    context = entry["context"]
    assert context["uploads"] == 50
    assert context["rss_after_start_mib"] > 10
    assert context["rss_after_uploads_mib"] > 10
    assert context["start_to_ready_s"] > 0
    # The API process never maps libtorch: an upload-only workload must not pull it in.
    assert context["torch_mapped"] is False
    assert "| P5 |" in run.stdout


def test_unknown_benchmark_is_refused() -> None:
    command = [sys.executable, "-m", "bench", "--quick", "--only", "P99"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode != 0
    assert "unknown benchmark P99" in run.stderr


def test_table_shows_ratio_goal_and_failures() -> None:
    met = result("P4", "upload p50", "floor", 1.23456, "≤ 2.0", True, limit=2.0, p50_ms=12.5, floor_median_ms=10.1)
    missed = result("P8", "UNet step", "fp32", 1.5, "≥ 2.5× faster", False, limit=2.5, better="higher")
    report = {"results": [met, missed, {"id": "P1", "error": "RuntimeError: boom"}]}
    lines = table(report).splitlines()
    assert lines[0].startswith("| id | measure | ratio | goal | met |")
    assert lines[2].startswith("| P4 | upload p50 | 1.235 | ≤ 2.0 | yes |")
    assert "p50_ms=12.5, floor_median_ms=10.1" in lines[2]
    assert "| P8 | UNet step | 1.500 | ≥ 2.5× faster | **no** |" in lines[3]
    assert lines[4].startswith("| P1 |") and "error" in lines[4] and "boom" in lines[4]


def test_result_rounds_and_quantile_is_nearest_rank() -> None:
    entry = result("P6", "fetch", "goal", 0.123456789, "p99 ≤ 25 ms", True, p99_ms=[1.23456789])
    assert entry["ratio"] == 0.1235
    assert entry["context"]["p99_ms"] == [1.2346]
    values = [float(value) for value in range(1, 101)]
    assert quantile(values, 0.99) == 99.0
    assert quantile(values, 0.5) == 50.0
    with pytest.raises(ValueError, match="no samples"):
        quantile([], 0.5)
