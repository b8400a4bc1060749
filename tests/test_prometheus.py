"""``GET /_prometheus/metrics`` and its collector (``quidditch_pipeline.prometheus``): the counters and latency
histograms of ``_stats`` (workers merged in), UDF pools and load times; scraped while a real server is under
``_bulk`` load, parsed with prometheus-client's own parser."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quidditch_pipeline import PipelineService
from quidditch_pipeline.prometheus import BUCKETS_S, service_registry
from quidditch_pipeline.stats import Metric
from quidditch_pipeline.udf.runtime import UdfRuntime

from .server_harness import ServerProcess
from .udf_fixtures import BuiltUdf

NDJSON = {"content-type": "application/x-ndjson"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def native(name: str, processor: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


#: A document pipeline whose stages succeed, skip (a false condition) and drop.
PIPELINE = {
    "version": "1.0.0",
    "type": "document",
    "stages": [
        native("mark", "set", field="seen", value=True),
        {**native("spam", "set", field="spam", value=True), "if": "ctx.n % 2 == 0", "tag": "even"},
        native("drop-7", "drop", field="n", value=7),
    ],
}


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (parsed by prometheus-client's parser)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[name, frozenset(labels.items())]


def histogram_quantile(found: Samples, name: str, q: float, **labels: str) -> float:
    """The upper bound of the bucket holding quantile ``q``: the first whose cumulative count reaches the
    quantile's rank (rounded as HDR's percentiles round it; Prometheus interpolates inside that bucket)."""
    rank = max(int(q * value(found, f"{name}_count", **labels) + 0.5), 1)
    for bound in BUCKETS_S:
        if value(found, f"{name}_bucket", **labels, le=repr(bound)) >= rank:
            return bound
    return float("inf")


def assert_agrees_with_stats(found: Samples, stats: dict[str, Any], prefix: str, **labels: str) -> None:
    """Counters equal, and each of P50/P95/P99 lies in the bucket the histogram puts that quantile in."""
    for key, name in (
        ("count", "executions"),
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("dropped", "dropped"),
        ("skipped", "skipped"),
        ("retries", "retries"),
        ("timeouts", "timeouts"),
    ):
        assert value(found, f"{prefix}_{name}_total", **labels) == stats[key], (prefix, name, labels)
    assert value(found, f"{prefix}_in_flight", **labels) == stats["current"]
    timed = stats["count"] - stats["skipped"]
    assert value(found, f"{prefix}_duration_seconds_count", **labels) == timed
    assert value(found, f"{prefix}_duration_seconds_bucket", **labels, le="+Inf") == timed
    for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        upper = histogram_quantile(found, f"{prefix}_duration_seconds", q, **labels)
        lower = max([b for b in BUCKETS_S if b < upper], default=0.0)
        assert lower < stats["duration_us"][key] / 1e6 <= upper, (prefix, key, labels)


def test_exposition_derives_cumulative_buckets_from_the_hdr_histogram() -> None:
    metric = Metric()
    for took_us, n in ((3.0, 4), (40.0, 2), (900.0, 1), (7_000_000.0, 1)):
        metric.begin(n)
        metric.finish(n, took_us * n, succeeded=n)
    metric.skip(3)
    exposition = metric.exposition([1.0, 3.0, 10.0, 50.0, 1000.0, 5e6, 1e7])
    assert exposition.cumulative == [0, 4, 4, 6, 7, 7, 8]
    assert exposition.count == 8 and exposition.sum_us == 3 * 4 + 40 * 2 + 900 + 7_000_000
    assert exposition.counters["count"] == 11 and exposition.counters["skipped"] == 3


def test_pipeline_stage_and_udf_metrics_through_the_python_api(seeded_cache: Path, hostile_udf: BuiltUdf) -> None:
    with PipelineService.in_memory(compiled_cache_dir=seeded_cache) as svc:
        svc.put_udf("echo", "1.0.0", hostile_udf.wasm)
        python = {"name": "udf", "type": "python", "config": {"udf_name": "echo", "parameters": {"do": "none"}}}
        svc.put_pipeline({**PIPELINE, "name": "docs", "stages": [*PIPELINE["stages"], python]})
        svc.associate("shop", "document", "docs")
        outcomes = svc.process_documents("shop", [(str(n), {"n": n}) for n in range(50)])
        assert sum(o.status == "dropped" for o in outcomes) == 1
        found = samples(generate_latest(service_registry(svc)).decode())
        stats = svc.stats("docs")
        assert_agrees_with_stats(found, stats, "quidditch_pipeline", pipeline="docs", type="document")
        for stage in stats["stages"]:
            labels = {"pipeline": "docs", "type": "document", "stage": stage["name"]}
            labels.update(stage_type=stage["type"], tag=stage.get("tag", ""))
            assert_agrees_with_stats(found, stage, "quidditch_stage", **labels)
        assert value(found, "quidditch_stage_skipped_total", pipeline="docs", type="document", stage="spam",
                     stage_type="native", tag="even") == 25  # fmt: skip
        pool = {"sha256": hostile_udf.sha256[:12], "udf": "echo@1.0.0", "process": "server"}
        assert value(found, "quidditch_udf_pool_instances", **pool) >= 1
        assert value(found, "quidditch_udf_pool_busy", **pool) == 0
        assert value(found, "quidditch_udf_pool_size", **pool) == svc.runtime.pool_size
        # The component came from the compiled cache: mapped back, not compiled; both are timed.
        assert value(found, "quidditch_udf_cache_load_seconds_count") >= 1
        assert value(found, "quidditch_udf_cache_load_seconds_sum") > 0
        assert value(found, "quidditch_udf_compile_seconds_count") == svc.runtime.stats().compiles == 0
        assert value(found, "quidditch_udf_instantiate_seconds_count") == svc.runtime.stats().instances_created
        assert value(found, "quidditch_udf_build_seconds_count") == 0  # uploaded as a component


def test_the_udf_pools_and_load_times_of_worker_processes_are_exported_too(
    tmp_path: Path, udf_runtime: UdfRuntime, hostile_udf: BuiltUdf
) -> None:
    with PipelineService.open(tmp_path / "data", workers=2, runtime=udf_runtime) as svc:
        svc.put_udf("echo", "1.0.0", hostile_udf.wasm)
        python = {"name": "udf", "type": "python", "config": {"udf_name": "echo", "parameters": {"do": "none"}}}
        svc.put_pipeline({**PIPELINE, "name": "docs", "stages": [python]})
        svc.associate("shop", "document", "docs")
        # Enough documents that both workers get a chunk (and so load the component in their own runtime).
        outcomes = svc.process_documents("shop", [(str(n), {"n": n}) for n in range(400)])
        assert all(o.status == "success" for o in outcomes)
        found = samples(generate_latest(service_registry(svc)).decode())
        workers = svc.workers()
        assert [w["batches"] > 0 for w in workers] == [True, True]
        instantiated = 0
        for worker in workers:
            process = f"worker-{worker['slot']}"
            pool = {"sha256": hostile_udf.sha256[:12], "udf": "echo@1.0.0", "process": process}
            assert value(found, "quidditch_udf_pool_instances", **pool) >= 1
            assert value(found, "quidditch_udf_pool_size", **pool) == svc.runtime.pool_size
            assert value(found, "quidditch_udf_components_loaded", process=process) == 1
            instantiated += worker["udf_runtime"]["timings"]["instances_created"][0]
        # Load times sum every process's: the workers' instances are counted.
        own = svc.runtime.stats().instances_created
        assert value(found, "quidditch_udf_instantiate_seconds_count") == own + instantiated >= 2


def test_scraped_under_bulk_load_on_a_real_server_with_workers(tmp_path: Path) -> None:
    with (
        ServerProcess(tmp_path / "data", extra=("--workers", "2")) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        assert client.put("/_pipeline/docs", json=PIPELINE).status_code == 200
        settings = {"settings": {"index.document.default_pipeline": "docs"}}
        assert client.put("/shop", json=settings).status_code == 200
        ids = itertools.count()
        stop = threading.Event()
        errors: list[BaseException] = []

        def load() -> None:
            try:
                with httpx.Client(base_url=server.url, timeout=60) as loader:
                    while not stop.is_set():
                        lines = []
                        for _ in range(200):
                            n = next(ids)
                            lines.append(f'{{"index": {{"_id": "{n}"}}}}\n{{"n": {n % 10}}}\n')
                        answer = loader.post("/shop/_bulk", content="".join(lines), headers=NDJSON)
                        assert answer.status_code == 200
            except BaseException as exc:
                errors.append(exc)

        loaders = [threading.Thread(target=load) for _ in range(2)]
        for thread in loaders:
            thread.start()
        scrapes: list[float] = []
        deadline = time.monotonic() + 120
        try:  # scrape until 15 scrapes saw at least 3 different counts of the load in progress
            while (len(scrapes) < 15 or len(set(scrapes) - {0.0}) < 3) and time.monotonic() < deadline:
                answer = client.get("/_prometheus/metrics")
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("text/plain; version=")
                found = samples(answer.text)
                labels = {"pipeline": "docs", "type": "document"}
                executions = value(found, "quidditch_pipeline_executions_total", **labels)
                outcomes = sum(
                    value(found, f"quidditch_pipeline_{k}_total", **labels)
                    for k in ("succeeded", "failed", "dropped", "skipped")
                )
                assert outcomes == executions  # one fold per metric: consistent within a scrape
                count = value(found, "quidditch_pipeline_duration_seconds_count", **labels)
                assert value(found, "quidditch_pipeline_duration_seconds_bucket", **labels, le="+Inf") == count
                assert not scrapes or executions >= scrapes[-1]  # counters never go back under load
                scrapes.append(executions)
        finally:
            stop.set()
            for thread in loaders:
                thread.join(timeout=120)
        assert not errors, errors
        assert len(set(scrapes) - {0.0}) >= 3, scrapes  # the scrapes saw the load progress
        # Quiet now: the scrape and _stats agree exactly, for the pipeline and each stage, workers merged in.
        found = samples(client.get("/_prometheus/metrics").text)
        stats = client.get("/_pipeline/docs/_stats").json()
        assert stats["count"] == next(ids)
        assert_agrees_with_stats(found, stats, "quidditch_pipeline", pipeline="docs", type="document")
        for stage in stats["stages"]:
            labels = {"pipeline": "docs", "type": "document", "stage": stage["name"]}
            labels.update(stage_type=stage["type"], tag=stage.get("tag", ""))
            assert_agrees_with_stats(found, stage, "quidditch_stage", **labels)
        dropped = value(found, "quidditch_pipeline_dropped_total", pipeline="docs", type="document")
        assert dropped == stats["count"] // 10
        workers = client.get("/_pipeline/_stats").json()["workers"]
        assert sum(value(found, "quidditch_worker_items_total", slot=str(w["slot"])) for w in workers) == sum(
            w["items"] for w in workers
        )
        assert all(value(found, "quidditch_worker_alive", slot=str(w["slot"])) == 1 for w in workers)
