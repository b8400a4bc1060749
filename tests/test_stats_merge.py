"""Worker statistics cross processes exactly: ``take`` in the worker, ``merge`` in the parent (stats.py)."""

from __future__ import annotations

import orjson

from quidditch_pipeline.stats import _LOG_MAX, Metric, PipelineMetrics, StatsRegistry


def _record(metric: Metric, batches: int, offset: int = 0) -> None:
    for i in range(batches):
        metric.begin(3)
        metric.finish(3, 30.0 * (i + 1 + offset), succeeded=2, failed=1, retries=1, timeouts=i % 2, error=f"e{i}")
    metric.skip(2)
    metric.finish(0, 0, timeouts=4, error="deadline passed")


def _through_the_wire(delta: object) -> object:
    return orjson.loads(orjson.dumps(delta))  # what crosses is plain JSON


def test_merged_events_give_the_snapshot_of_one_metric_that_saw_them_all() -> None:
    alone, worker_a, worker_b, parent = Metric(), Metric(), Metric(), Metric()
    _record(alone, 50)
    _record(alone, 70, offset=1000)
    _record(worker_a, 50)
    _record(worker_b, 70, offset=1000)
    for worker in (worker_a, worker_b):
        parent.merge(_through_the_wire(worker.take()))  # type: ignore[arg-type]
    want, got = alone.snapshot(), parent.snapshot()
    assert got["count"] == 364 and got["duration_us"]["max"] > 0  # 120 batches of 3, two skips of 2
    assert {k: v for k, v in got.items() if k != "last_error"} == {k: v for k, v in want.items() if k != "last_error"}
    assert got["last_error"]["message"] == "deadline passed"
    assert worker_a.take() is None  # taken means forgotten: nothing is sent twice


def test_a_log_folded_in_the_worker_crosses_as_counters_and_an_hdr_histogram() -> None:
    alone, worker, parent = Metric(), Metric(), Metric()
    batches = _LOG_MAX  # two events per batch: the worker's log folds on its own before the take
    _record(alone, batches)
    _record(worker, batches)
    delta = worker.take()
    assert delta is not None and delta["folded"] is not None and delta["folded"]["hist"]
    parent.merge(_through_the_wire(delta))  # type: ignore[arg-type]
    want, got = alone.snapshot(), parent.snapshot()
    assert {k: v for k, v in got.items() if k != "last_error"} == {k: v for k, v in want.items() if k != "last_error"}
    assert got["duration_us"]["p99"] == want["duration_us"]["p99"] > 0


def test_pipeline_and_registry_deltas_carry_stages_by_path() -> None:
    worker, parent = StatsRegistry(), StatsRegistry()
    metrics = worker.for_pipeline("p")
    metrics.set_layout(["a", "g/b"])
    metrics.pipeline.begin(4)
    metrics.pipeline.finish(4, 400.0, succeeded=4)
    metrics.stage("g/b", "native").finish(4, 100.0, succeeded=3, dropped=1)
    parent.for_pipeline("p").set_layout(["a", "g/b"])
    parent.merge(_through_the_wire(worker.take()))  # type: ignore[arg-type]
    snap = parent.snapshot("p")
    assert (snap["count"], snap["succeeded"], snap["current"]) == (4, 4, 0)
    assert [(s["name"], s["count"], s["dropped"]) for s in snap["stages"]] == [("g/b", 4, 1)]
    assert worker.take() == {}
    assert isinstance(PipelineMetrics("x").take(), type(None))
