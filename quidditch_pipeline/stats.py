"""Execution statistics per pipeline and per stage (DESIGN §4), on HDR histograms.

A :class:`Metric` holds live counters behind a lock and is attached to its stage when the pipeline is built,
so the hot path never looks one up by name. :meth:`Metric.snapshot` produces the immutable dict that
``_stats`` serialises::

    {"count": int, "succeeded": int, "failed": int, "dropped": int, "skipped": int, "retries": int,
     "timeouts": int, "current": int,
     "duration_us": {"p50": int, "p95": int, "p99": int, "max": int, "mean": float},
     "last_error": {"message": str, "time": "2026-11-22T10:00:00.000000+00:00"} | None}

A pipeline's snapshot adds ``"name"`` and ``"stages": [{"name", "type", ...the same keys}]``; a stage inside
a composite is named by its path, ``group/inner``. Counts are per input (per hit for a hit-scoped stage), and
every input that reaches a pipeline or stage is counted once: ``count = succeeded + failed + dropped + skipped``.

Worker processes (:mod:`quidditch_pipeline.workers`) record into metrics of their own; after each batch they
:meth:`~Metric.take` what was recorded, as plain JSON data, and the parent :meth:`~Metric.merge` s it into its
metric: the very events an in-process run would have logged, so counts and percentiles are those of every
execution in every process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from hdrh.histogram import HdrHistogram

__all__ = ["Exposition", "Metric", "MetricDelta", "PipelineMetrics", "StatsRegistry"]

#: What :meth:`Metric.take` hands over: ``{"events": [...], "folded": {...} | None}`` (plain JSON data).
MetricDelta = dict[str, Any]

_MAX_US = 3_600_000_000  # an hour; longer durations are clamped rather than lost
_LOG_MAX = 4096
#: The counters of a metric, in the order ``_stats`` shows them.
_COUNTERS: Final = ("count", "succeeded", "failed", "dropped", "skipped", "retries", "timeouts", "current")
_BEGIN: Any = object()
_SKIP: Any = object()


class Metric:
    """Counters and a latency histogram for one pipeline or one stage; thread-safe.

    The hot path only appends an event to a deque (atomic, no lock: a lock round trip costs more than the
    whole recording); events are folded into the counters and the HDR histogram, under the lock, when a
    snapshot is taken or the log grows past a bound.
    """

    __slots__ = (
        "_hist",
        "_lock",
        "_log",
        "count",
        "current",
        "dropped",
        "failed",
        "last_error",
        "last_error_time",
        "retries",
        "skipped",
        "succeeded",
        "timeouts",
        "total_us",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hist = HdrHistogram(1, _MAX_US, 3)
        self._log: deque[tuple[Any, ...]] = deque()
        self.current = 0
        self._zero()

    def _zero(self) -> None:
        self.count = self.succeeded = self.failed = self.dropped = self.skipped = 0
        self.retries = self.timeouts = 0
        self.total_us = 0.0
        self.last_error: str | None = None
        self.last_error_time: float | None = None

    def begin(self, n: int = 1) -> None:
        """``n`` inputs are now in flight."""
        self._log.append((_BEGIN, n))

    def finish(
        self,
        n: int,
        total_us: float,
        *,
        succeeded: int = 0,
        failed: int = 0,
        dropped: int = 0,
        retries: int = 0,
        timeouts: int = 0,
        error: str | None = None,
    ) -> None:
        """Record ``n`` inputs that took ``total_us`` together (each is recorded as ``total_us / n``)."""
        log = self._log
        log.append((n, total_us, succeeded, failed, dropped, retries, timeouts, error, time.time() if error else 0))
        if len(log) > _LOG_MAX:
            self._drain()

    def skip(self, n: int = 1) -> None:
        self._log.append((_SKIP, n))

    def _drain(self) -> None:
        with self._lock:
            self._fold()

    def _fold(self) -> None:
        """Fold the logged events into the counters; the caller holds the lock."""
        log = self._log
        durations: dict[int, int] = {}
        while log:
            event = log.popleft()
            kind = event[0]
            if kind is _BEGIN:
                self.current += event[1]
            elif kind is _SKIP:  # counted too: count = succeeded + failed + dropped + skipped
                self.count += event[1]
                self.skipped += event[1]
            else:
                n, total_us, succeeded, failed, dropped, retries, timeouts, error, at = event
                self.current -= n
                self.count += n
                self.succeeded += succeeded
                self.failed += failed
                self.dropped += dropped
                self.retries += retries
                self.timeouts += timeouts
                if n:
                    self.total_us += total_us
                    per_item = min(max(int(total_us / n), 1), _MAX_US)
                    durations[per_item] = durations.get(per_item, 0) + n
                if error is not None:
                    self.last_error = error
                    self.last_error_time = at
        record = self._hist.record_value
        for value, count in durations.items():
            record(value, count)

    def reset(self) -> None:
        with self._lock:
            self._fold()  # in-flight work still finishes: ``current`` survives the reset
            self._hist.reset()
            self._zero()

    def take(self) -> MetricDelta | None:
        """Everything recorded since the last take, as plain JSON data, and forget it (None: nothing new).

        The logged events travel as they are; what a full log already folded into the counters and the
        histogram travels as those counters and the histogram's HDR encoding.
        """
        with self._lock:
            log = self._log
            events: list[list[Any]] = []
            while log:
                event = log.popleft()
                kind = event[0]
                if kind is _BEGIN:
                    events.append(["b", event[1]])
                elif kind is _SKIP:
                    events.append(["s", event[1]])
                else:
                    events.append(list(event))
            folded: dict[str, Any] | None = None
            hist = self._hist
            counters = (self.count, self.skipped, self.current, self.failed, self.timeouts, self.retries)
            if any(counters) or self.last_error is not None:
                folded = {
                    **self._counters(),
                    "total_us": self.total_us,
                    "last_error": self.last_error,
                    "last_error_time": self.last_error_time,
                    "hist": hist.encode().decode("ascii") if hist.get_total_count() else None,
                }
                hist.reset()
                self.current = 0
                self._zero()
        if not events and folded is None:
            return None
        return {"events": events, "folded": folded}

    def merge(self, delta: MetricDelta) -> None:
        """Add what another process's :meth:`take` handed over, exactly (the same events, the same buckets)."""
        log = self._log
        for event in delta["events"]:
            kind = event[0]
            if kind == "b":
                log.append((_BEGIN, event[1]))
            elif kind == "s":
                log.append((_SKIP, event[1]))
            else:
                log.append(tuple(event))
        folded = delta.get("folded")
        if folded is not None:
            with self._lock:
                for counter in _COUNTERS:
                    setattr(self, counter, getattr(self, counter) + folded[counter])
                self.total_us += folded["total_us"]
                if folded["last_error"] is not None:
                    self.last_error = folded["last_error"]
                    self.last_error_time = folded["last_error_time"]
                if folded["hist"] is not None:
                    self._hist.add(HdrHistogram.decode(folded["hist"].encode("ascii")))
        if len(log) > _LOG_MAX:
            self._drain()

    def _counters(self) -> dict[str, int]:
        """The counters by name, in the order ``_stats`` shows them (the caller holds the lock)."""
        return {counter: getattr(self, counter) for counter in _COUNTERS}

    def exposition(self, bounds_us: Sequence[float]) -> Exposition:
        """The counters and the latency distribution as cumulative buckets (for Prometheus), from one fold: for
        each bound (ascending, in microseconds) how many durations were at most that, plus their count and sum.

        Derived from the HDR histogram that ``_stats`` reads its percentiles from, at the time of asking (the
        hot path keeps no second bookkeeping); a duration is compared by the highest value of its HDR bucket,
        as those percentiles are, so the bucket holding ``_stats``' P99 holds at least 99% of the count."""
        with self._lock:
            self._fold()
            hist = self._hist
            total = hist.get_total_count()
            cumulative = [0] * len(bounds_us)
            i, seen, last = 0, 0, len(bounds_us)
            if total:
                for step in hist.get_recorded_iterator():
                    value = step.value_iterated_to
                    while i < last and bounds_us[i] < value:
                        cumulative[i] = seen
                        i += 1
                    seen += step.count_added_in_this_iter_step
            for j in range(i, last):
                cumulative[j] = seen
            return Exposition(self._counters(), cumulative, total, self.total_us)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._fold()
            hist = self._hist
            total = hist.get_total_count()
            # One pass over the buckets for all three (each get_value_at_percentile is a pass of its own).
            pct = hist.get_percentile_to_value_dict([50, 95, 99]) if total else {}
            return {
                **self._counters(),
                "duration_us": {
                    "p50": pct.get(50, 0),
                    "p95": pct.get(95, 0),
                    "p99": pct.get(99, 0),
                    "max": hist.get_max_value() if total else 0,
                    "mean": round(self.total_us / timed, 1) if (timed := self.count - self.skipped) else 0.0,
                },
                "last_error": None
                if self.last_error is None or self.last_error_time is None
                else {
                    "message": self.last_error,
                    "time": datetime.fromtimestamp(self.last_error_time, UTC).isoformat(),
                },
            }


@dataclass(frozen=True, slots=True)
class Exposition:
    """What :meth:`Metric.exposition` answers: the counters by name, the cumulative bucket counts, and the
    count and sum (microseconds) of the durations recorded (inputs skipped have none)."""

    counters: dict[str, int]
    cumulative: list[int]
    count: int
    sum_us: float


class PipelineMetrics:
    """The metric of one pipeline and of each of its stages (by stage path)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pipeline = Metric()
        self._lock = threading.Lock()
        self._stages: dict[str, tuple[str, Metric]] = {}
        self._order: list[str] = []
        self._tags: dict[str, str] = {}

    def stage(self, path: str, stage_type: str, tag: str | None = None) -> Metric:
        """The metric for the stage at ``path``; kept across re-puts while a stage of that name exists."""
        with self._lock:
            if tag:
                self._tags[path] = tag
            else:
                self._tags.pop(path, None)
            found = self._stages.get(path)
            if found is None or found[0] != stage_type:
                found = (stage_type, found[1] if found else Metric())
                self._stages[path] = found
            return found[1]

    def set_layout(self, paths: list[str]) -> None:
        """The stage paths of the current definition, in order; stats of removed stages are dropped."""
        with self._lock:
            self._order = list(paths)
            self._stages = {p: m for p, m in self._stages.items() if p in set(paths)}

    def reset(self) -> None:
        self.pipeline.reset()
        with self._lock:
            metrics = [m for _, m in self._stages.values()]
        for metric in metrics:
            metric.reset()

    def take(self) -> dict[str, Any] | None:
        """:meth:`Metric.take` of the pipeline and of every stage: ``{"pipeline": delta, "stages": {path:
        [type, delta]}}``, or None when nothing was recorded since the last take."""
        with self._lock:
            stages = list(self._stages.items())
        taken = {path: [stage_type, delta] for path, (stage_type, m) in stages if (delta := m.take()) is not None}
        own = self.pipeline.take()
        if own is None and not taken:
            return None
        return {"pipeline": own, "stages": taken}

    def merge(self, delta: dict[str, Any]) -> None:
        """Add another process's :meth:`take` (stages are matched by path and type)."""
        if delta["pipeline"] is not None:
            self.pipeline.merge(delta["pipeline"])
        for path, (stage_type, stage_delta) in delta["stages"].items():
            self.stage(path, stage_type).merge(stage_delta)

    def exposition(self, bounds_us: Sequence[float]) -> tuple[Exposition, list[tuple[str, str, str, Exposition]]]:
        """:meth:`Metric.exposition` of the pipeline and of each stage of its layout, as ``(path, type, tag,
        exposition)`` (``tag`` empty when the stage has none)."""
        with self._lock:
            stages = [(p, *self._stages[p]) for p in self._order if p in self._stages]
            tags = dict(self._tags)
        own = self.pipeline.exposition(bounds_us)
        return own, [(p, t, tags.get(p, ""), m.exposition(bounds_us)) for p, t, m in stages]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            stages = [(p, self._stages[p]) for p in self._order if p in self._stages]
            tags = dict(self._tags)
        out: dict[str, Any] = {"name": self.name, **self.pipeline.snapshot()}
        out["stages"] = [
            {"name": p, "type": t, **({"tag": tags[p]} if p in tags else {}), **m.snapshot()} for p, (t, m) in stages
        ]
        return out


class StatsRegistry:
    """Pipeline name -> :class:`PipelineMetrics`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipelines: dict[str, PipelineMetrics] = {}

    def for_pipeline(self, name: str) -> PipelineMetrics:
        with self._lock:
            return self._get(name)

    def _get(self, name: str) -> PipelineMetrics:
        metrics = self._pipelines.get(name)
        if metrics is None:
            metrics = self._pipelines[name] = PipelineMetrics(name)
        return metrics

    def discard(self, name: str) -> None:
        with self._lock:
            self._pipelines.pop(name, None)

    def take(self) -> dict[str, Any]:
        """:meth:`PipelineMetrics.take` of every pipeline that recorded something since the last take."""
        with self._lock:
            pipelines = list(self._pipelines.items())
        return {name: delta for name, metrics in pipelines if (delta := metrics.take()) is not None}

    def merge(self, deltas: dict[str, Any]) -> None:
        """Add what another process's :meth:`take` handed over."""
        for name, delta in deltas.items():
            self.for_pipeline(name).merge(delta)

    def snapshot(self, name: str | None = None) -> dict[str, Any]:
        if name is not None:
            return self.for_pipeline(name).snapshot()
        with self._lock:
            pipelines = sorted(self._pipelines.items())
        return {"pipelines": {n: m.snapshot() for n, m in pipelines}}

    def pipelines(self) -> list[tuple[str, PipelineMetrics]]:
        """Every pipeline's metrics, by name."""
        with self._lock:
            return sorted(self._pipelines.items())

    def reset(self, name: str | None = None) -> None:
        with self._lock:
            targets = list(self._pipelines.values()) if name is None else [self._get(name)]
        for metrics in targets:
            metrics.reset()
