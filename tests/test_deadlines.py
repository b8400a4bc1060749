"""Per-input time, judged per input (issue 10 §2): an input that finished within its own budget is never
failed because its batch neighbours were slow, for every stage type.

Most tests run on a fake clock that moves only when a processor spends time (tests/engine_fakes.py), so
they are exact; one test per path repeats it with ``time.sleep`` on the real clock, and
tests/test_service_udf.py does it with a runaway UDF in real WebAssembly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from quidditch_pipeline._clock import SYSTEM_CLOCK
from quidditch_pipeline.builder import BuildContext
from quidditch_pipeline.errors import UdfTimeoutError
from quidditch_pipeline.processors import PROCESSORS, register_processor
from quidditch_pipeline.stages import Item, Run, Status
from tests.engine_fakes import CALLS, CLOCK, FakeUdfRuntime, UdfAnswer, build, cost, fake_processors, run


class SleepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@pytest.fixture(scope="module", autouse=True)
def processors() -> Iterator[None]:
    def real_sleep(doc: dict[str, Any], config: SleepConfig) -> dict[str, Any]:
        time.sleep(float(doc.get("sleep_ms", 0)) / 1000)
        doc["ran"] = True
        return doc

    register_processor("real_sleep", config=SleepConfig)(real_sleep)
    yield from fake_processors()
    PROCESSORS.unregister("real_sleep")


def statuses(items: list[Item]) -> list[Status]:
    return [item.status for item in items]


def timed_out(item: Item) -> bool:
    return item.status is Status.FAILED and item.error is not None and item.error.kind == "timeout"


# --- native ---------------------------------------------------------------------------------------------------


def test_a_native_stage_times_out_only_the_input_that_overran_its_own_budget() -> None:
    p = build({"stages": [cost("c", timeout_ms=50)]})
    items = run(p, [{"cost_ms": 120}, {"cost_ms": 10}])  # together 130 ms, past 2 x 50
    assert timed_out(items[0]) and "past its budget of 50.0 ms" in str(items[0].error)
    assert items[1].status is Status.SUCCESS and items[1].value["ran"] == 1
    stage = p.metrics.snapshot()["stages"][0]
    assert (stage["count"], stage["succeeded"], stage["failed"], stage["timeouts"]) == (2, 1, 1, 1)


def test_the_pipeline_budget_is_per_input_not_shared_by_the_batch() -> None:
    p = build({"timeout_ms": 100, "stages": [cost("c"), cost("after", field="none", mark="after")]})
    # 350 ms for one input is past its own 100 ms; the batch as a whole (370 ms) is past 3 x 100 ms too.
    items = run(p, [{"cost_ms": 350}, {"cost_ms": 10}, {"cost_ms": 10}])
    assert timed_out(items[0])
    assert statuses(items)[1:] == [Status.SUCCESS, Status.SUCCESS]
    assert all(item.value["after"] == 1 for item in items[1:])


def test_an_input_past_its_own_pipeline_budget_fails_even_when_the_batch_is_within_its_total() -> None:
    p = build({"timeout_ms": 100, "stages": [cost("c")]})
    items = run(p, [{"cost_ms": 150}, {"cost_ms": 10}, {"cost_ms": 10}])  # 170 ms < 3 x 100 ms
    assert statuses(items) == [Status.FAILED, Status.SUCCESS, Status.SUCCESS]
    assert timed_out(items[0])


def test_a_later_stage_sees_what_each_input_has_left_of_its_own_budget() -> None:
    p = build({"timeout_ms": 100, "stages": [cost("first"), cost("second", field="then_ms")]})
    # Each input spends 60 ms, then 30 (within 100) or 50 (past it) in the second stage.
    items = run(p, [{"cost_ms": 60, "then_ms": 30}, {"cost_ms": 60, "then_ms": 50}])
    assert items[0].status is Status.SUCCESS
    assert timed_out(items[1]) and items[1].error is not None and items[1].error.stage == "second"


def test_a_retry_backoff_is_charged_to_the_input_that_waits_for_it() -> None:
    CALLS.clear()
    p = build(
        {
            "timeout_ms": 100,
            "retry": {"max_attempts": 3, "initial_backoff_ms": 30},
            "stages": [cost("flaky", on_failure="retry")],
        }
    )
    # a: 80 ms spent, a 30 ms backoff would take it past 100: it gives up. b has time for its retry.
    items = run(p, [{"key": "a", "failures": 1, "cost_ms": 80}, {"key": "b", "failures": 1}])
    assert statuses(items) == [Status.FAILED, Status.SUCCESS]
    assert CALLS == {"a": 1, "b": 2}
    assert p.metrics.snapshot()["stages"][0]["retries"] == 1


def test_native_per_input_time_with_the_real_clock() -> None:
    p = build({"stages": [{"name": "s", "type": "native", "timeout_ms": 50, "config": {"processor": "real_sleep"}}]})
    items = run(p, [{"sleep_ms": 150}, {"sleep_ms": 0}], clock=SYSTEM_CLOCK)
    assert timed_out(items[0])
    assert items[1].status is Status.SUCCESS and items[1].value["ran"] is True


# --- composite and pipeline stages -----------------------------------------------------------------------------


def test_a_composite_judges_each_input_by_the_time_it_spent_inside() -> None:
    p = build(
        {
            "stages": [
                {"name": "group", "type": "composite", "timeout_ms": 50, "config": {"stages": [cost("inner")]}},
            ]
        }
    )
    items = run(p, [{"cost_ms": 120}, {"cost_ms": 10}], verbose=True)
    assert timed_out(items[0]) and items[0].error is not None and items[0].error.stage == "group/inner"
    assert items[1].status is Status.SUCCESS and items[1].value["ran"] == 1
    assert (items[1].trace or [])[0]["took_us"] == pytest.approx(10_000, abs=1)


def test_a_composite_with_the_real_clock() -> None:
    inner = {"name": "inner", "type": "native", "config": {"processor": "real_sleep"}}
    p = build({"stages": [{"name": "group", "type": "composite", "timeout_ms": 50, "config": {"stages": [inner]}}]})
    items = run(p, [{"sleep_ms": 150}, {"sleep_ms": 0}], clock=SYSTEM_CLOCK)
    assert timed_out(items[0])
    assert items[1].status is Status.SUCCESS


def test_a_pipeline_stage_judges_each_input_by_the_time_it_spent_in_the_called_pipeline() -> None:
    target = build({"stages": [cost("work")]}, name="target")
    call = {"name": "call", "type": "pipeline", "timeout_ms": 50, "config": {"pipeline": "target"}}
    caller = build({"stages": [call]})
    items = run(caller, [{"cost_ms": 120}, {"cost_ms": 10}], pipelines={"target": target})
    assert timed_out(items[0])
    assert items[1].status is Status.SUCCESS and items[1].value["ran"] == 1


def test_a_called_pipeline_applies_its_own_per_input_budget() -> None:
    target = build({"timeout_ms": 50, "stages": [cost("work")]}, name="target")
    caller = build({"stages": [{"name": "call", "type": "pipeline", "config": {"pipeline": "target"}}]})
    items = run(caller, [{"cost_ms": 10}, {"cost_ms": 70}, {"cost_ms": 10}], pipelines={"target": target})
    assert statuses(items) == [Status.SUCCESS, Status.FAILED, Status.SUCCESS]


# --- python stages ----------------------------------------------------------------------------------------------


class PreemptingRuntime(FakeUdfRuntime):
    """A UDF runtime on the fake clock: each value costs ``cost_ms``; a call is preempted at its timeout."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float | None]] = []

    def answer(self, values: Sequence[Any], timeout_s: float | None) -> list[UdfAnswer]:
        self.calls.append((len(values), timeout_s))
        total = sum(float(v.get("cost_ms", 0)) for v in values) / 1000
        if timeout_s is not None and total > timeout_s:
            CLOCK.sleep(timeout_s)
            raise UdfTimeoutError("epoch deadline reached")
        CLOCK.sleep(total)
        return [UdfAnswer({"udf": True}) for _ in values]


def test_a_python_stage_reruns_each_input_alone_with_its_own_budget() -> None:
    runtime = PreemptingRuntime()
    stage = {"name": "u", "type": "python", "timeout_ms": 100, "config": {"udf_name": "u"}}
    p = build({"timeout_ms": 100, "stages": [stage]}, BuildContext(runtime, runtime))
    items = run(p, [{"cost_ms": 10}, {"cost_ms": 500}, {"cost_ms": 10}])
    # The batch call is preempted at 3 x 100 ms; then each input alone gets its own 100 ms, not what is left
    # of the batch's 300 ms (nothing).
    assert statuses(items) == [Status.SUCCESS, Status.FAILED, Status.SUCCESS]
    assert timed_out(items[1])
    assert items[0].value == {"cost_ms": 10, "udf": True}
    assert [n for n, _ in runtime.calls] == [3, 1, 1, 1]
    assert [t for _, t in runtime.calls] == pytest.approx([0.3, 0.1, 0.1, 0.1])


def test_a_callers_deadline_caps_every_input_of_the_run() -> None:
    p = build({"stages": [cost("a"), cost("b", field="then_ms")]})
    items = [Item(i, f"d{i}", v, {"index": "idx"}) for i, v in enumerate([{"cost_ms": 200}, {"then_ms": 10}])]
    p.run(items, Run({}, CLOCK.now() + 0.150, False, CLOCK, {}.__getitem__))
    # d0 overruns the caller's 150 ms in stage a; by then the caller's deadline has passed for d1 too.
    assert timed_out(items[0]) and items[0].error is not None and items[0].error.stage == "a"
    assert timed_out(items[1]) and items[1].error is not None and items[1].error.stage == "b"
    assert "deadline passed before this stage started" in items[1].error.message
