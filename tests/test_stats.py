"""Execution statistics: counters, HDR percentiles, reset, snapshot shape, thread safety."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from quidditch_pipeline.stats import Metric, PipelineMetrics, StatsRegistry

METRIC_KEYS = {
    "count",
    "succeeded",
    "failed",
    "dropped",
    "skipped",
    "retries",
    "timeouts",
    "current",
    "duration_us",
    "last_error",
}
DURATION_KEYS = {"p50", "p95", "p99", "max", "mean"}


def test_fresh_metric_snapshot_is_all_zero() -> None:
    snap = Metric().snapshot()
    assert snap == {
        "count": 0,
        "succeeded": 0,
        "failed": 0,
        "dropped": 0,
        "skipped": 0,
        "retries": 0,
        "timeouts": 0,
        "current": 0,
        "duration_us": {"p50": 0, "p95": 0, "p99": 0, "max": 0, "mean": 0.0},
        "last_error": None,
    }


def test_counters_add_up() -> None:
    m = Metric()
    m.begin(3)
    assert m.snapshot()["current"] == 3
    m.finish(3, 300.0, succeeded=1, failed=1, dropped=1, retries=4, timeouts=1)
    m.skip()
    m.skip(2)
    snap = m.snapshot()
    assert snap["count"] == 6  # skipped inputs reached the stage too: count = succeeded + failed + dropped + skipped
    assert snap["duration_us"]["mean"] == 100.0  # over the three that ran, not the skipped ones
    assert snap["succeeded"] == 1
    assert snap["failed"] == 1
    assert snap["dropped"] == 1
    assert snap["retries"] == 4
    assert snap["timeouts"] == 1
    assert snap["skipped"] == 3
    assert snap["current"] == 0


def test_current_counts_in_flight_work() -> None:
    m = Metric()
    m.begin()
    m.begin(2)
    assert m.snapshot()["current"] == 3
    m.finish(1, 10.0, succeeded=1)
    assert m.snapshot()["current"] == 2
    m.finish(2, 10.0, succeeded=2)
    assert m.snapshot()["current"] == 0


def test_percentiles_from_the_histogram() -> None:
    m = Metric()
    for us in range(1, 101):
        m.begin()
        m.finish(1, float(us), succeeded=1)
    d = m.snapshot()["duration_us"]
    assert d == {"p50": 50, "p95": 95, "p99": 99, "max": 100, "mean": 50.5}


def test_skewed_distribution_percentiles() -> None:
    m = Metric()
    for _ in range(990):
        m.begin()
        m.finish(1, 10.0, succeeded=1)
    for _ in range(10):
        m.begin()
        m.finish(1, 1000.0, succeeded=1)
    d = m.snapshot()["duration_us"]
    assert d["p50"] == 10
    assert d["p95"] == 10
    assert d["p99"] == 10
    assert d["max"] == 1000
    assert d["mean"] == pytest.approx(19.9, abs=0.1)


def test_batch_is_recorded_per_item() -> None:
    m = Metric()
    m.begin(4)
    m.finish(4, 400.0, succeeded=4)
    snap = m.snapshot()
    assert snap["count"] == 4
    assert snap["duration_us"]["p50"] == 100
    assert snap["duration_us"]["max"] == 100


def test_sub_microsecond_durations_count_as_one_microsecond() -> None:
    m = Metric()
    m.begin()
    m.finish(1, 0.2, succeeded=1)
    assert m.snapshot()["duration_us"]["max"] == 1


def test_durations_past_an_hour_are_clamped_not_lost() -> None:
    m = Metric()
    m.begin()
    m.finish(1, 1e13, succeeded=1)
    snap = m.snapshot()
    assert snap["count"] == 1
    # HDR with 3 significant digits: within 0.1% of the one-hour ceiling.
    assert snap["duration_us"]["max"] == pytest.approx(3_600_000_000, rel=1e-3)


def test_large_value_precision_is_three_significant_digits() -> None:
    m = Metric()
    m.begin()
    m.finish(1, 123_456.0, succeeded=1)
    assert m.snapshot()["duration_us"]["p50"] == pytest.approx(123_456, rel=1e-3)


def test_finish_of_zero_items_records_no_duration() -> None:
    m = Metric()
    m.finish(0, 0, timeouts=2, error="deadline passed")
    snap = m.snapshot()
    assert snap["count"] == 0
    assert snap["timeouts"] == 2
    assert snap["duration_us"]["max"] == 0
    assert snap["last_error"] is not None
    assert snap["last_error"]["message"] == "deadline passed"


def test_last_error_keeps_the_latest_with_its_time() -> None:
    m = Metric()
    before = datetime.now(UTC)
    m.begin()
    m.finish(1, 5.0, failed=1, error="first")
    m.begin()
    m.finish(1, 5.0, failed=1, error="second")
    m.begin()
    m.finish(1, 5.0, succeeded=1)  # a success does not clear the last error
    after = datetime.now(UTC)
    last = m.snapshot()["last_error"]
    assert last is not None
    assert set(last) == {"message", "time"}
    assert last["message"] == "second"
    when = datetime.fromisoformat(last["time"])
    assert when.tzinfo is not None
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert before.timestamp() - 1e-3 <= when.timestamp() <= after.timestamp() + 1e-3


def test_reset_clears_everything_but_current() -> None:
    m = Metric()
    m.begin(2)
    m.finish(2, 50.0, succeeded=1, failed=1, retries=2, timeouts=1, error="boom")
    m.skip(5)
    m.begin(3)  # three still in flight
    m.reset()
    snap = m.snapshot()
    assert snap == {
        "count": 0,
        "succeeded": 0,
        "failed": 0,
        "dropped": 0,
        "skipped": 0,
        "retries": 0,
        "timeouts": 0,
        "current": 3,
        "duration_us": {"p50": 0, "p95": 0, "p99": 0, "max": 0, "mean": 0.0},
        "last_error": None,
    }
    # The in-flight work finishes after the reset: current goes back to zero, never negative.
    m.finish(3, 30.0, succeeded=3)
    snap = m.snapshot()
    assert snap["current"] == 0
    assert snap["count"] == 3
    assert snap["succeeded"] == 3
    assert snap["duration_us"]["max"] == 10


def test_metric_snapshot_shape_and_types() -> None:
    m = Metric()
    m.begin()
    m.finish(1, 12.0, failed=1, error="e")
    snap = m.snapshot()
    assert set(snap) == METRIC_KEYS
    for key in METRIC_KEYS - {"duration_us", "last_error"}:
        assert type(snap[key]) is int, key
    assert set(snap["duration_us"]) == DURATION_KEYS
    for key in ("p50", "p95", "p99", "max"):
        assert type(snap["duration_us"][key]) is int, key
    assert type(snap["duration_us"]["mean"]) is float


def test_snapshot_is_independent_of_later_changes() -> None:
    m = Metric()
    m.begin()
    m.finish(1, 10.0, succeeded=1)
    snap = m.snapshot()
    m.begin()
    m.finish(1, 10.0, succeeded=1)
    assert snap["count"] == 1


def test_metric_is_thread_safe() -> None:
    m = Metric()
    threads_n, per_thread = 8, 2000
    barrier = threading.Barrier(threads_n)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            m.begin()
            if i % 4 == 0:
                m.finish(1, float(i % 50 + 1), failed=1, retries=1, error=f"t{t}")
            elif i % 4 == 1:
                m.finish(1, float(i % 50 + 1), dropped=1)
            else:
                m.finish(1, float(i % 50 + 1), succeeded=1)
            if i % 10 == 0:
                m.skip()
            if i == per_thread // 2:
                m.snapshot()  # a reader interleaves with the writers

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    total = threads_n * per_thread
    snap = m.snapshot()
    assert snap["count"] == total + snap["skipped"]
    assert snap["current"] == 0
    assert snap["failed"] == total // 4
    assert snap["retries"] == total // 4
    assert snap["dropped"] == total // 4
    assert snap["succeeded"] == total // 2
    assert snap["skipped"] == threads_n * (per_thread // 10)
    assert snap["duration_us"]["max"] == 50
    assert snap["last_error"] is not None


# --- PipelineMetrics and StatsRegistry ----------------------------------------------------------------------


def test_pipeline_snapshot_shape() -> None:
    pm = PipelineMetrics("p")
    a = pm.stage("a", "native")
    g = pm.stage("group", "composite")
    inner = pm.stage("group/inner", "native")
    pm.set_layout(["a", "group", "group/inner"])
    for metric in (pm.pipeline, a, g, inner):
        metric.begin()
        metric.finish(1, 7.0, succeeded=1)
    snap = pm.snapshot()
    assert set(snap) == METRIC_KEYS | {"name", "stages"}
    assert snap["name"] == "p"
    assert snap["count"] == 1
    assert [(s["name"], s["type"]) for s in snap["stages"]] == [
        ("a", "native"),
        ("group", "composite"),
        ("group/inner", "native"),
    ]
    for stage in snap["stages"]:
        assert set(stage) == METRIC_KEYS | {"name", "type"}
        assert stage["count"] == 1


def test_stage_metric_is_kept_across_layouts_and_dropped_when_removed() -> None:
    pm = PipelineMetrics("p")
    a = pm.stage("a", "native")
    pm.stage("b", "native")
    pm.set_layout(["a", "b"])
    a.begin()
    a.finish(1, 3.0, succeeded=1)
    # Same path, same type: the same metric (re-put of the pipeline keeps its stats).
    assert pm.stage("a", "native") is a
    # Same path, other type: the metric is kept but retyped.
    pm.set_layout(["a"])
    assert [s["name"] for s in pm.snapshot()["stages"]] == ["a"]
    assert pm.snapshot()["stages"][0]["count"] == 1
    retyped = pm.stage("a", "python")
    assert pm.snapshot()["stages"][0]["type"] == "python"
    assert retyped is a
    # b was dropped with the layout: asking again gives a fresh metric.
    assert pm.stage("b", "native").snapshot()["count"] == 0


def test_pipeline_reset_resets_stages() -> None:
    pm = PipelineMetrics("p")
    a = pm.stage("a", "native")
    pm.set_layout(["a"])
    for metric in (pm.pipeline, a):
        metric.begin()
        metric.finish(1, 3.0, succeeded=1)
    pm.reset()
    snap = pm.snapshot()
    assert snap["count"] == 0
    assert snap["stages"][0]["count"] == 0


def test_stats_registry() -> None:
    reg = StatsRegistry()
    p = reg.for_pipeline("p")
    assert reg.for_pipeline("p") is p
    q = reg.for_pipeline("q")
    for metric in (p.pipeline, q.pipeline):
        metric.begin()
        metric.finish(1, 3.0, succeeded=1)
    all_snap = reg.snapshot()
    assert list(all_snap) == ["pipelines"]
    assert list(all_snap["pipelines"]) == ["p", "q"]
    assert all_snap["pipelines"]["p"]["count"] == 1
    assert reg.snapshot("q")["name"] == "q"

    reg.reset("p")
    assert reg.snapshot("p")["count"] == 0
    assert reg.snapshot("q")["count"] == 1
    reg.reset()
    assert reg.snapshot("q")["count"] == 0

    reg.discard("p")
    assert list(reg.snapshot()["pipelines"]) == ["q"]
    assert reg.for_pipeline("p") is not p
