"""Where a UDF call's time goes: per-call overhead, and the per-item cost of batches of 1, 100 and 1000.

Run: ``pytest -n 0 benchmarks/bench_udf_runtime.py --benchmark-only``. The components come from the test
fixtures' cache (tests/udf_fixtures.py), so the first run builds and compiles them.

* ``test_call_overhead`` — one call of the identity behaviour on a one-item batch: the floor every stage
  call pays (wasmtime's call ~4 us, the guest shim, encoding the request and decoding the answer).
* ``test_batch`` — ~1 KB JSON documents through ``recency_boost`` (a number back per item) and through the
  identity behaviour (the whole document back: the worst case for the way out). Per-item cost is the
  mean divided by the batch size.
* ``test_cold_load_from_cache`` — a fresh runtime loading a component it compiled before: map the
  serialised artifact back and create the first instance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from quidditch_pipeline.udf import UdfRuntime

if TYPE_CHECKING:  # imported for real by pytest, as the plugin below (before then, it could not be rewritten)
    from tests.udf_fixtures import BuiltUdf, UdfBuilds

pytest_plugins = ["tests.udf_fixtures"]

DOC = {
    "title": "Stainless steel electric kettle, 1.7 l",
    "body": "Boils a full jug in under four minutes; auto shut-off, boil-dry protection. " * 10,
    "price": 34.99,
    "tags": ["kitchen", "kettle", "electric"],
    "age_days": 12,
}


def hits(count: int) -> list[dict[str, Any]]:
    """``count`` distinct hits of ~1 KB each (distinct strings: nothing shared that encoding could reuse)."""
    return [
        {"_id": str(i), "_score": 1.0 + i % 7, "_source": {**DOC, "title": f"{DOC['title']} #{i}", "age_days": i % 60}}
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def runtime(udf_runtime: UdfRuntime) -> UdfRuntime:
    return udf_runtime


@pytest.fixture(scope="module")
def hostile(udf_builds: UdfBuilds, udf_runtime: UdfRuntime) -> BuiltUdf:
    udf = udf_builds.get("hostile")
    udf_runtime.load(udf.sha256, udf.path)
    return udf


@pytest.fixture(scope="module")
def recency(udf_builds: UdfBuilds, udf_runtime: UdfRuntime) -> BuiltUdf:
    udf = udf_builds.get("recency_boost")
    udf_runtime.load(udf.sha256, udf.path)
    return udf


def test_call_overhead(benchmark: Any, runtime: UdfRuntime, hostile: BuiltUdf) -> None:
    params = {"do": "echo"}
    metas = [{"id": "1"}]

    def once() -> Any:
        return runtime.call_batch(hostile.sha256, hostile.path, [1], params, metas, timeout_s=1.0)

    assert benchmark(once)[0].value == 1


@pytest.mark.parametrize("size", [1, 100, 1000])
@pytest.mark.parametrize("udf_name", ["recency_boost", "identity"])
def test_batch(
    benchmark: Any, runtime: UdfRuntime, hostile: BuiltUdf, recency: BuiltUdf, size: int, udf_name: str
) -> None:
    udf, params = (recency, {"days": 30}) if udf_name == "recency_boost" else (hostile, {"do": "echo"})
    values = hits(size)
    metas = [{"id": v["_id"], "index": "bench"} for v in values]
    benchmark.extra_info["items"] = size

    def once() -> Any:
        return runtime.call_batch(udf.sha256, udf.path, values, params, metas, timeout_s=30.0)

    results = benchmark(once)
    assert len(results) == size and all(r.ok for r in results)


@pytest.fixture
def compiled_cache(tmp_path: Path, runtime: UdfRuntime, recency: BuiltUdf) -> Iterator[Path]:
    path = runtime.compiled_path(recency.sha256)
    assert path is not None
    yield path.parent


def test_cold_load_from_cache(benchmark: Any, compiled_cache: Path, recency: BuiltUdf) -> None:
    runtimes: list[UdfRuntime] = []

    def fresh() -> tuple[tuple[UdfRuntime], dict[str, Any]]:
        runtimes.append(UdfRuntime(compiled_cache))
        return (runtimes[-1],), {}

    def load(rt: UdfRuntime) -> None:
        rt.load(recency.sha256, recency.path)

    benchmark.pedantic(load, setup=fresh, rounds=10)
    for rt in runtimes:
        assert rt.stats().compiles == 0
        rt.close()
