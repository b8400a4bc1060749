"""Smoke test of ``python -m benchmarks.compare``: it runs end to end and reports every figure.

It checks that the benchmark works, not how fast anything is. The components come from the same on-disk
caches as the rest of the suite (``$QP_TEST_CACHE``, see tests/udf_fixtures.py; the naive peer's under
``$QP_TEST_CACHE/bench`` or ``~/.cache/quidditch-pipeline/bench``), which the subprocess inherits, so a
warm cache means no builds; only the "first compile" figure compiles, by design, into a throwaway folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = ("a", "b", "c", "d", "e", "d0", "w", "w2")
BATCH_SIZES = ("1", "100", "1000")


@pytest.mark.timeout(900)
def test_compare_quick_json_reports_every_contender_and_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--quick", "--json"],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(done.stdout)

    assert set(report["contenders"]) == set(CONTENDERS)
    for key in CONTENDERS:
        rates = report["contenders"][key]["docs_per_s"]
        assert set(rates) == set(BATCH_SIZES), key
        assert all(_positive(rate) for rate in rates.values()), (key, rates)
    for size in BATCH_SIZES:
        assert set(report["ratios"][size]) == {"d/a", "e/a", "e/b", "w/a", "w/b", "w/d", "w2/a", "w2/b", "w2/e"}
        assert all(_positive(ratio) for ratio in report["ratios"][size].values())

    query = report["query"]
    assert _positive(query["p50_us"]) and query["p99_us"] >= query["p50_us"]
    assert _positive(query["native_udf_p50_us"])
    assert math.isclose(query["overhead_p50_us"], query["p50_us"] - query["native_udf_p50_us"])
    assert _positive(report["cold_load"]["load_and_first_call_ms"])
    assert _positive(report["first_compile"]["load_s"])
    assert report["memory"]["instances"] == 4
    assert math.isfinite(report["memory"]["per_instance_mib"])

    names = {target["name"] for target in report["targets"]}
    assert len(names) == 18
    assert all(_positive(report["parent_cpu_us_per_doc"][size]) for size in BATCH_SIZES)
    assert _positive(report["query_in_worker"]["p50_us"])
    assert all(isinstance(target["met"], bool) for target in report["targets"])
    assert report["settings"]["quick"] is True


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_the_benchmark_cache_moves_with_the_package_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from benchmarks.compare import bench_cache_dir

    monkeypatch.delenv("QP_BENCH_CACHE", raising=False)
    monkeypatch.delenv("QP_TEST_CACHE", raising=False)
    monkeypatch.setenv("QUIDDITCH_CACHE_DIR", str(tmp_path))
    assert bench_cache_dir() == tmp_path / "bench"
    monkeypatch.setenv("QP_TEST_CACHE", str(tmp_path / "suite"))
    assert bench_cache_dir() == tmp_path / "suite" / "bench"
