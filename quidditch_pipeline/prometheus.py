"""Prometheus metrics of a :class:`~quidditch_pipeline.PipelineService` (``GET /_prometheus/metrics``).

:class:`ServiceCollector` is a custom collector: at each scrape it reads what ``_stats`` reads (the live
metrics, every worker process's merged in) and the UDF runtime's pools and timings, so the hot path keeps no
second bookkeeping. Latency histograms are derived at scrape time from the HDR histograms behind ``_stats``'
P50/P95/P99, into fixed buckets ten to a decade (the R10 series 1, 1.25, 1.6, 2, 2.5, 3.15, 4, 5, 6.3, 8) from
1 µs to 100 s: a bucket is at most 26% wide, so ``histogram_quantile`` lands within a bucket of ``_stats``.

Metric names (``type`` is the pipeline type; ``stage`` the stage path, ``group/inner`` inside a composite):

* ``quidditch_pipeline_executions_total`` (``_stats`` ``count``), ``quidditch_pipeline_succeeded_total``,
  ``_failed_total``, ``_dropped_total``, ``_skipped_total``, ``_retries_total``, ``_timeouts_total``
  (counters), ``quidditch_pipeline_in_flight`` (gauge, ``current``) and ``quidditch_pipeline_duration_seconds``
  (histogram, per input); labels ``pipeline``, ``type``.
* ``quidditch_stage_*``: the same per stage; labels ``pipeline``, ``type``, ``stage``, ``stage_type``, ``tag``
  (empty when the stage has none).
* ``quidditch_udf_pool_instances``, ``_busy``, ``_waiting``, ``_size`` (gauges; labels ``sha256``, the first 12
  hex digits of the component, and ``udf``, the ``name@version`` of every version that is it), for this
  process's runtime; ``quidditch_udf_components_loaded`` (gauge); ``quidditch_udf_instances_discarded_total``.
* ``quidditch_udf_build_seconds`` (componentize-py builds of uploaded source), ``quidditch_udf_compile_seconds``
  (wasmtime compiles), ``quidditch_udf_cache_load_seconds`` (compiled components mapped back from the cache),
  ``quidditch_udf_instantiate_seconds`` (new instances): summaries (``_count`` and ``_sum``).
* With workers: ``quidditch_worker_batches_total``, ``_items_total``, ``_busy_seconds_total``,
  ``_restarts_total`` (counters) and ``quidditch_worker_alive`` (gauge); label ``slot``.

A ``_stats`` reset sets the counters back to zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from .errors import NotFoundError
from .stats import Exposition

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .service import PipelineService

__all__ = ["BUCKETS_S", "ServiceCollector", "service_registry"]

_R10: Final = (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0)
#: Histogram bucket upper bounds, in seconds: the R10 series from 1 µs to 100 s.
BUCKETS_S: Final = (*(round(m * 10.0**e, 12) for e in range(-6, 2) for m in _R10), 100.0)
_BUCKETS_US: Final = tuple(b * 1e6 for b in BUCKETS_S)
_LE: Final = (*(repr(b) for b in BUCKETS_S), "+Inf")

#: ``_stats`` counters exported as Prometheus counters, with the name each gets.
_COUNTERS: Final = (
    ("count", "executions", "inputs that reached it (succeeded + failed + dropped + skipped)"),
    ("succeeded", "succeeded", "inputs it passed on"),
    ("failed", "failed", "inputs it failed"),
    ("dropped", "dropped", "inputs it dropped (a query: rejected; a hit: removed)"),
    ("skipped", "skipped", "inputs it skipped (disabled, or a false condition)"),
    ("retries", "retries", "retried attempts"),
    ("timeouts", "timeouts", "inputs that ran out of time"),
)


class ServiceCollector(Collector):
    """Collects a service's pipeline, stage, UDF runtime and worker metrics at each scrape."""

    def __init__(self, service: PipelineService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        yield from self._pipelines()
        yield from self._runtime()
        yield from self._workers()

    def _pipelines(self) -> Iterator[Metric]:
        svc = self.service
        metrics = svc.metrics()
        kinds = {stored.definition.name: stored.definition.type.value for stored in svc.registry.pipelines()}
        families = {
            scope: _Families(f"quidditch_{scope}", labels)
            for scope, labels in (
                ("pipeline", ["pipeline", "type"]),
                ("stage", ["pipeline", "type", "stage", "stage_type", "tag"]),
            )
        }
        for name, pipeline in metrics.pipelines():
            kind = kinds.get(name)
            if kind is None:  # deleted meanwhile, or an _execute-only definition: not a stored pipeline
                continue
            own, stages = pipeline.exposition(_BUCKETS_US)
            families["pipeline"].add([name, kind], own)
            for path, stage_type, tag, exposition in stages:
                families["stage"].add([name, kind, path, stage_type, tag], exposition)
        for family in families.values():
            yield from family.all()

    def _runtime(self) -> Iterator[Metric]:
        """The UDF runtimes of the server process (``process="server"``) and of each worker process
        (``worker-<slot>``, as of its last answer): pool gauges per process, load times and discards summed."""
        svc = self.service
        names = self._udf_names()
        gauges = {
            key: GaugeMetricFamily(f"quidditch_udf_pool_{key}", doc, labels=["sha256", "udf", "process"])
            for key, doc in (
                ("instances", "instances alive of a loaded UDF component"),
                ("busy", "instances serving a call"),
                ("waiting", "threads waiting for a free instance"),
                ("size", "the most instances the component may have"),
            )
        }
        loaded = GaugeMetricFamily("quidditch_udf_components_loaded", "UDF components loaded", labels=["process"])
        runtimes = [("server", svc.runtime.snapshot())]
        runtimes += [(f"worker-{worker['slot']}", worker["udf_runtime"]) for worker in svc.workers()]
        timings: dict[str, tuple[int, float]] = {}
        discarded = 0
        for process, runtime in runtimes:
            if not runtime:  # a worker that has not answered yet
                continue
            for sha256, _source, live, busy, waiting, size in runtime["pools"]:
                labels = [sha256[:12], ", ".join(sorted(names.get(sha256, ()))), process]
                for key, gauge_value in (("instances", live), ("busy", busy), ("waiting", waiting), ("size", size)):
                    gauges[key].add_metric(labels, gauge_value)
            loaded.add_metric([process], len(runtime["pools"]))
            for key, (count, seconds) in runtime["timings"].items():
                before = timings.get(key, (0, 0.0))
                timings[key] = (before[0] + int(count), before[1] + float(seconds))
            discarded += runtime["discarded"]
        yield from gauges.values()
        yield loaded
        yield CounterMetricFamily(
            "quidditch_udf_instances_discarded",
            "instances thrown away (trapped, timed out, out of memory), all processes",
            value=discarded,
        )
        count, seconds = svc.udfs.builds
        doc = "componentize-py builds of uploaded source"
        yield SummaryMetricFamily("quidditch_udf_build_seconds", doc, count_value=count, sum_value=seconds)
        for key, name, doc in (
            ("compiles", "compile", "wasmtime compiles of UDF components, all processes"),
            ("cache_loads", "cache_load", "compiled components mapped back from the on-disk cache, all processes"),
            ("instances_created", "instantiate", "new UDF instances, all processes"),
        ):
            count, seconds = timings.get(key, (0, 0.0))
            yield SummaryMetricFamily(f"quidditch_udf_{name}_seconds", doc, count_value=count, sum_value=seconds)

    def _udf_names(self) -> dict[str, set[str]]:
        """Component sha256 -> the ``name@version`` of every UDF version that is it."""
        registry = self.service.registry
        names: dict[str, set[str]] = {}
        for name in registry.udf_names():
            for version in self.service.udfs.versions(name):
                try:
                    record = registry.udf(name, version)
                except NotFoundError:  # deleted meanwhile
                    continue
                names.setdefault(record.sha256, set()).add(f"{name}@{version}")
        return names

    def _workers(self) -> Iterator[Metric]:
        workers = self.service.workers()
        if not workers:
            return
        counters = {
            key: CounterMetricFamily(f"quidditch_worker_{name}", doc, labels=["slot"])
            for key, name, doc in (
                ("batches", "batches", "batches a worker process ran"),
                ("items", "items", "inputs a worker process ran"),
                ("busy_ms", "busy_seconds", "seconds a worker process was busy"),
                ("restarts", "restarts", "times a worker process was replaced"),
            )
        }
        alive = GaugeMetricFamily("quidditch_worker_alive", "1 while the worker process runs", labels=["slot"])
        for worker in workers:
            slot = [str(worker["slot"])]
            for key, family in counters.items():
                value = worker[key] / 1000 if key == "busy_ms" else worker[key]
                family.add_metric(slot, value)
            alive.add_metric(slot, 1 if worker["alive"] else 0)
        yield from counters.values()
        yield alive


class _Families:
    """The counter, gauge and histogram families of one scope (pipelines or stages)."""

    def __init__(self, prefix: str, labels: list[str]) -> None:
        self.counters = [
            (key, CounterMetricFamily(f"{prefix}_{name}", doc, labels=labels)) for key, name, doc in _COUNTERS
        ]
        self.in_flight = GaugeMetricFamily(f"{prefix}_in_flight", "inputs in flight", labels=labels)
        self.duration = HistogramMetricFamily(
            f"{prefix}_duration_seconds", "time per input (the HDR histogram behind _stats' percentiles)", labels=labels
        )

    def add(self, labels: list[str], exposition: Exposition) -> None:
        counters = exposition.counters
        for key, family in self.counters:
            family.add_metric(labels, counters[key])
        self.in_flight.add_metric(labels, counters["current"])
        buckets = [(le, float(n)) for le, n in zip(_LE, (*exposition.cumulative, exposition.count), strict=True)]
        self.duration.add_metric(labels, buckets, exposition.sum_us / 1e6)

    def all(self) -> Iterator[Metric]:
        for _, family in self.counters:
            yield family
        yield self.in_flight
        yield self.duration


def service_registry(service: PipelineService) -> CollectorRegistry:
    """A registry holding the service's collector (apart from the process-global default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    return registry
