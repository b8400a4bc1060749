"""A stage that answers a value of the wrong shape is a stage error under the stage's policy (issue 10 §9),
never an exception escaping to the caller; and no exit from a stage leaves a ``current`` gauge raised."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from quidditch_pipeline import PipelineService, StageError
from quidditch_pipeline.builder import BuildContext
from quidditch_pipeline.processors import PROCESSORS, register_processor
from quidditch_pipeline.stages import Status
from tests.engine_fakes import FakeUdfRuntime, UdfAnswer, build, cost, fake_processors, run


class Escape(BaseException):
    """Not an Exception: what a stage cannot catch (like KeyboardInterrupt) must still settle the gauges."""


class BadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: Literal["none", "list", "string", "no_score", "text_score", "escape", "bug"]


def _bad(value: dict[str, Any], config: BadConfig) -> Any:
    match config.answer:
        case "none":
            return None
        case "list":
            return [value]
        case "string":
            return "not an object"
        case "no_score":
            return {key: v for key, v in value.items() if key != "_score"}
        case "text_score":
            return {**value, "_score": "high"}
        case "escape":
            raise Escape()
        case _:
            raise RuntimeError("a bug in a host processor")


@pytest.fixture(scope="module", autouse=True)
def processors() -> Iterator[None]:
    register_processor("bad_answer", config=BadConfig)(_bad)
    yield from fake_processors()
    PROCESSORS.unregister("bad_answer")


def bad(name: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": "bad_answer", "answer": answer}, **extra}


def hits(*scores: float) -> dict[str, Any]:
    return {"hits": [{"_id": str(i), "_score": s, "_source": {"n": i}} for i, s in enumerate(scores)]}


@pytest.mark.parametrize(("answer", "kind"), [("none", "null"), ("list", "a list"), ("string", "a string")])
def test_a_host_processor_returning_a_non_object_fails_its_stage(answer: str, kind: str) -> None:
    p = build({"stages": [bad("bad", answer)]})
    [item] = run(p, [{"a": 1}])
    assert item.status is Status.FAILED and item.error is not None
    assert item.error.stage == "bad" and item.error.cause_type == "invalid_output"
    assert f"returned an invalid value: a document pipeline takes a JSON object, got {kind}" in item.error.message


def test_under_continue_a_wrong_answer_passes_the_input_on_unchanged() -> None:
    p = build({"stages": [bad("bad", "none", on_failure="continue"), cost("after")]})
    [item] = run(p, [{"a": 1}])
    assert item.status is Status.SUCCESS and item.value == {"a": 1, "ran": 1}
    assert p.metrics.snapshot()["stages"][0]["failed"] == 1


def test_a_query_stage_producing_a_non_object_body_fails() -> None:
    p = build({"type": "query", "stages": [bad("bad", "string")]})
    [item] = run(p, [{"query": {"match_all": {}}}])
    assert item.status is Status.FAILED and item.error is not None
    assert "a query pipeline takes a JSON object, got a string" in item.error.message


@pytest.mark.parametrize(
    ("answer", "problem"),
    [("none", "hit: a hit is an object"), ("no_score", "hit._score: field required"), ("text_score", "hit._score")],
)
def test_a_hit_stage_answering_a_malformed_hit_fails_for_that_hit(answer: str, problem: str) -> None:
    p = build({"type": "result", "stages": [bad("bad", answer, on_failure="continue")]})
    [item] = run(p, [hits(1.0, 2.0)])
    assert item.status is Status.SUCCESS
    assert item.value == hits(1.0, 2.0)  # each hit passed on unchanged
    stage = p.metrics.snapshot()["stages"][0]
    assert (stage["count"], stage["failed"]) == (2, 2)
    assert problem in (stage["last_error"] or {})["message"]


class ReplyingRuntime(FakeUdfRuntime):
    """A UDF runtime whose UDF answers what the test says (a response-scope UDF replacing ``hits``)."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def answer(self, values: Sequence[Any], timeout_s: float | None) -> list[UdfAnswer]:
        return [UdfAnswer(self.reply) for _ in values]


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ({"hits": 5}, "value.hits: a result pipeline's input needs a [hits] list"),
        ({"hits": [{"_id": "x", "_source": {}}]}, "value.hits[0]._score: field required"),
        ({"hits": [{"_id": "x", "_score": 1.0}]}, "value.hits[0]._source: field required"),
    ],
)
def test_a_response_scope_udf_replacing_hits_with_the_wrong_shape_fails_its_stage(reply: Any, problem: str) -> None:
    runtime = ReplyingRuntime(reply)
    stage = {"name": "u", "type": "python", "config": {"udf_name": "u", "scope": "response"}}
    p = build({"type": "result", "stages": [stage]}, BuildContext(runtime, runtime))
    [item] = run(p, [hits(1.0)])
    assert item.status is Status.FAILED and item.error is not None
    assert problem in item.error.message


def test_through_the_service_a_malformed_hit_is_a_stage_error_not_a_crash(service: PipelineService) -> None:
    register = {"name": "r", "version": "1.0.0", "type": "result", "stages": [bad("bad", "none")]}
    service.put_pipeline(register)
    service.associate("idx", "result", "r")
    response = {"hits": {"total": {"value": 1}, "hits": [{"_id": "1", "_score": 1.0, "_source": {}}]}}
    with pytest.raises(StageError, match=r"stage \[bad\].*hit: a hit is an object, got null") as raised:
        service.process_results("idx", {}, response)
    assert raised.value.status == 400


# --- the in-flight gauge ------------------------------------------------------------------------------------------


def currents(p: Any) -> list[int]:
    snap = p.metrics.snapshot()
    return [snap["current"], *(s["current"] for s in snap["stages"])]


def test_current_returns_to_zero_when_a_stage_raises_what_it_cannot_catch() -> None:
    p = build({"stages": [{"name": "g", "type": "composite", "config": {"stages": [bad("bad", "escape")]}}]})
    with pytest.raises(Escape):
        run(p, [{}, {}])
    assert currents(p) == [0, 0, 0]
    snap = p.metrics.snapshot()
    for metric in (snap, *snap["stages"]):
        assert (metric["count"], metric["failed"]) == (2, 2)


def test_current_returns_to_zero_after_a_stage_bug_and_after_a_passed_deadline() -> None:
    p = build({"stages": [bad("bug", "bug")]})
    [item] = run(p, [{}])
    assert item.error is not None and "RuntimeError: a bug in a host processor" in item.error.message
    assert currents(p) == [0, 0]
    late = build({"timeout_ms": 10, "on_failure": "continue", "stages": [cost("slow"), cost("after", field="x")]})
    run(late, [{"cost_ms": 50}])
    assert currents(late) == [0, 0, 0]
    assert late.metrics.snapshot()["stages"][1]["count"] == 1
