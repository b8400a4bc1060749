"""Executor overhead (issue 2): per native stage, per pipeline of 1 and of 10 stages, and recording stats.

Run: ``pytest -n 0 benchmarks/bench_executor.py --benchmark-only`` (targets: <= 3 us per native stage,
<= 15 us for a one-stage pipeline at p50). Per-stage cost is (10-stage - 1-stage) / 9. The conditioned
variants put a two-clause CEL ``if`` on every stage (issue 13).
"""

from __future__ import annotations

from typing import Any

import pytest

from quidditch_pipeline._clock import SYSTEM_CLOCK
from quidditch_pipeline.builder import BuildContext, build_pipeline
from quidditch_pipeline.definitions import parse_definition
from quidditch_pipeline.executor import CompiledPipeline
from quidditch_pipeline.stages import Item, Run
from quidditch_pipeline.stats import Metric, StatsRegistry

DOC = {"title": "Red Running Shoes", "price": 79.5, "tags": ["sport", "shoes"], "brand": "acme"}


#: The two-clause condition of issue 13, true for DOC, on every stage of the conditioned pipelines.
CONDITION = "ctx.brand == 'acme' && ctx.price > 10"


def pipeline(stages: int, condition: str | None = None) -> CompiledPipeline:
    extra = {} if condition is None else {"if": condition}
    definition = parse_definition(
        {
            "name": f"bench-{stages}",
            "version": "1.0.0",
            "type": "document",
            "stages": [
                {"name": f"s{i}", "type": "native", "config": {"processor": "set", "field": f"f{i}", "value": i}}
                | extra
                for i in range(stages)
            ],
        }
    )
    return build_pipeline(definition, 1, StatsRegistry().for_pipeline(definition.name), BuildContext())


def run_once(p: CompiledPipeline) -> Any:
    item = Item(0, "1", DOC, {"index": "bench"})
    p.run([item], Run({}, None, False, SYSTEM_CLOCK, lambda name: p))
    return item.value


@pytest.mark.parametrize("stages", [1, 10])
def test_pipeline_of_n_native_stages(benchmark: Any, stages: int) -> None:
    p = pipeline(stages)
    out = benchmark(run_once, p)
    assert out[f"f{stages - 1}"] == stages - 1


@pytest.mark.parametrize("stages", [1, 10])
def test_pipeline_of_n_native_stages_with_a_condition_each(benchmark: Any, stages: int) -> None:
    """Target (issue 13): the 10-stage figure within 1.5x of the unconditioned one, same run."""
    p = pipeline(stages, CONDITION)
    out = benchmark(run_once, p)
    assert out[f"f{stages - 1}"] == stages - 1


def test_batch_of_100_through_10_native_stages(benchmark: Any) -> None:
    p = pipeline(10)

    def run_batch() -> list[Item]:
        items = [Item(i, str(i), DOC, {"index": "bench"}) for i in range(100)]
        p.run(items, Run({}, None, False, SYSTEM_CLOCK, lambda name: p))
        return items

    items = benchmark(run_batch)
    assert all(item.value["f9"] == 9 for item in items)


def test_recording_stats(benchmark: Any) -> None:
    metric = Metric()

    def record() -> None:
        metric.begin(1)
        metric.finish(1, 12.5, succeeded=1)

    benchmark(record)
    assert metric.snapshot()["count"] > 0
