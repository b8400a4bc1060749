"""Smoke test of ``python -m benchmarks.floors``: it runs end to end and reports every figure, on the runtime's
engine, and on the engine without epoch interruption for the probe's component (what ``--quick`` compiles twice).

It checks that the benchmark works, not how fast anything is. Components come from the suite's on-disk
caches (``$QP_TEST_CACHE``); the epochs-on compiled forms go to the runtime's compiled cache there (shared with
the suite and the compare benchmark), the epochs-off ones under the benchmark cache beside it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quidditch_pipeline.udf import UdfRuntime
from tests.udf_fixtures import _cache_root

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_floors_quick_json_reports_every_figure_and_the_probes_without_epochs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.floors", "--quick", "--json"],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    figures = report["figures"]
    assert {name.split(":")[0] for name in figures} == {"query", "documents", "guest"}
    assert len(figures) == 8
    assert report["settings"]["epochs_off"] == ["probe"]
    for name, figure in figures.items():
        assert figure["epochs_on"] > 0, name
        if "trivial UDF" in name or name.startswith("guest:"):  # the probe's component: timed both ways
            assert figure["epochs_off"] > 0, name
            assert math.isclose(figure["on_over_off"], figure["epochs_on"] / figure["epochs_off"]), name
        else:
            assert figure["epochs_off"] is None and figure["on_over_off"] is None, name
    # The request sizes say what crossed: the query body is more than a bare None, a batch more than one item.
    sizes = report["request_bytes"]
    assert sizes["query: trivial UDF, the query body"] > sizes["query: trivial UDF, value None"]
    assert sizes["documents: trivial UDF, per item of 1000"] > 1000 * 20
    # The epochs-on engine is the runtime's: its compiled forms are the runtime's cache entries, which the rest
    # of the suite (and benchmarks.compare) map back instead of compiling the same components again.
    assert set(report["components"]) == {"probe", "query_synonyms", "recency_boost"}
    with UdfRuntime(_cache_root() / "compiled") as runtime:
        for name, sha256 in report["components"].items():
            compiled = runtime.compiled_path(sha256)
            assert compiled is not None and compiled.is_file(), name
