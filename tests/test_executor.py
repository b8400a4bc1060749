"""The executor (DESIGN §4): policies, retries, deadlines, batches, compound stages, mapping, traces.

These tests drive built pipelines directly. Python stages use a fake UDF runner here (fast, and able to
misbehave on cue); tests/test_service_udf.py runs the same paths through real WebAssembly.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from quidditch_pipeline import _paths
from quidditch_pipeline._clock import SYSTEM_CLOCK
from quidditch_pipeline.builder import BuildContext, build_pipeline
from quidditch_pipeline.definitions import PipelineType, parse_definition
from quidditch_pipeline.errors import InputError, NotFoundError, UdfCallError, UdfTimeoutError
from quidditch_pipeline.executor import CompiledPipeline, validate_input
from quidditch_pipeline.mapping import ResultMapping, UnmappableResult
from quidditch_pipeline.processors import PROCESSORS, ProcessorError, register_processor
from quidditch_pipeline.stages import Item, Run, Status, UdfRef
from quidditch_pipeline.stats import StatsRegistry


class SleepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ms: float


class FlakyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    failures: int


FLAKY: dict[str, list[float]] = {}


@pytest.fixture(scope="module", autouse=True)
def test_processors() -> Iterator[None]:
    @register_processor("test_sleep", config=SleepConfig)
    def sleep(doc: dict[str, Any], config: SleepConfig) -> dict[str, Any]:
        time.sleep(config.ms / 1000)
        doc["slept"] = True
        return doc

    @register_processor("test_flaky", config=FlakyConfig)
    def flaky(doc: dict[str, Any], config: FlakyConfig) -> dict[str, Any]:
        calls = FLAKY.setdefault(config.key, [])
        calls.append(time.perf_counter())
        if len(calls) <= config.failures:
            raise ProcessorError(f"flaky failure {len(calls)}")
        doc["flaky_ok"] = len(calls)
        return doc

    yield
    PROCESSORS.unregister("test_sleep")
    PROCESSORS.unregister("test_flaky")


@dataclass
class FakeItemError:
    type: str
    message: str
    line: int | None


@dataclass
class FakeResult:
    ok: bool
    value: Any = None
    error: FakeItemError | None = None


class FakeRuntime:
    """Runs plain Python functions as UDFs; a function may raise to play a whole-call failure."""

    def __init__(self, udfs: Mapping[str, Callable[[Any, Mapping[str, Any], Mapping[str, Any]], Any]]) -> None:
        self.udfs = udfs
        self.calls: list[int] = []

    def resolve(self, name: str, version: str | None) -> UdfRef:
        return UdfRef(name, version or "1.0.0", name, Path("/nonexistent"))

    def load(self, sha256: str, wasm_path: Path) -> int:
        if sha256 not in self.udfs:
            raise NotFoundError("udf", sha256)
        return 3  # every fake takes (value, params, meta)

    def call_batch(
        self,
        sha256: str,
        wasm_path: Path,
        values: Sequence[Any],
        params: Mapping[str, Any],
        metas: Sequence[Mapping[str, Any]] | None,
        *,
        timeout_s: float | None,
        memory_limit_mb: int | None = None,
    ) -> list[FakeResult]:
        assert metas is not None
        self.calls.append(len(values))
        fn = self.udfs[sha256]
        out = []
        for value, meta in zip(values, metas, strict=True):
            try:
                out.append(FakeResult(True, fn(value, params, meta)))
            except UdfCallError:
                raise
            except Exception as exc:
                out.append(FakeResult(False, error=FakeItemError(type(exc).__name__, str(exc), 3)))
        return out


def build(definition: dict[str, Any], runtime: FakeRuntime | None = None, **extra: Any) -> CompiledPipeline:
    defn = parse_definition({"name": "p", "version": "1.0.0", **definition})
    ctx = BuildContext(runtime, runtime) if runtime else BuildContext()
    return build_pipeline(defn, 1, StatsRegistry().for_pipeline(defn.name), ctx)


def run(
    pipeline: CompiledPipeline,
    values: list[Any],
    *,
    params: dict[str, Any] | None = None,
    verbose: bool = True,
    pipelines: dict[str, CompiledPipeline] | None = None,
) -> list[Item]:
    items = [Item(i, f"d{i}", v, {"index": "idx"}, trace=[] if verbose else None) for i, v in enumerate(values)]
    resolve = (pipelines or {}).__getitem__
    pipeline.run(items, Run(params or {}, None, verbose, SYSTEM_CLOCK, resolve))
    return items


def native(name: str, processor: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


# --- order, abort, continue -----------------------------------------------------------------------------------


def test_stages_run_in_order_each_output_feeding_the_next() -> None:
    p = build(
        {
            "type": "document",
            "stages": [
                native("copy", "copy", field="title", target_field="raw"),
                native("lower", "lowercase", field="title"),
                native("split", "split", field="title", separator=" "),
            ],
        }
    )
    [item] = run(p, [{"title": "Red SHOES"}])
    assert item.status is Status.SUCCESS
    assert item.value == {"title": ["red", "shoes"], "raw": "Red SHOES"}
    assert [s["output"] for s in item.trace or []][1] == {"title": "red shoes", "raw": "Red SHOES"}


def test_abort_fails_the_input_and_names_pipeline_stage_input_and_cause() -> None:
    p = build(
        {
            "type": "document",
            "stages": [
                native("lower", "lowercase", field="title"),
                native("after", "set", field="x", value=1),
            ],
        }
    )
    source = {"name": "no title"}
    [item] = run(p, [source])
    assert item.status is Status.FAILED
    assert item.error is not None
    assert (item.error.pipeline, item.error.stage, item.error.input_id) == ("p", "lower", "d0")
    assert "field [title] not present" in item.error.message
    assert [s["status"] for s in item.trace or []] == ["error"]  # "after" never ran
    assert source == {"name": "no title"}


def test_continue_records_the_error_and_passes_the_input_on_unchanged() -> None:
    p = build(
        {
            "type": "document",
            "on_failure": "continue",
            "stages": [
                native("set", "set", field="a", value=1),
                native("lower", "lowercase", field="title"),
                native("after", "set", field="b", value=2),
            ],
        }
    )
    [item] = run(p, [{"x": 0}])
    assert item.status is Status.SUCCESS
    assert item.value == {"x": 0, "a": 1, "b": 2}
    trace = item.trace or []
    assert trace[1]["status"] == "error_ignored"
    assert "field [title] not present" in trace[1]["error"]
    assert p.metrics.snapshot()["stages"][1]["failed"] == 1


def test_stage_policy_overrides_the_pipeline_default() -> None:
    p = build(
        {
            "type": "document",
            "on_failure": "abort",
            "stages": [
                {**native("lower", "lowercase", field="title"), "on_failure": "continue"},
                native("fail", "fail", message="stop here"),
            ],
        }
    )
    [item] = run(p, [{}])
    assert item.status is Status.FAILED
    assert item.error is not None and item.error.stage == "fail"


def test_one_bad_document_does_not_fail_its_neighbours() -> None:
    p = build({"type": "document", "stages": [native("lower", "lowercase", field="title")]})
    items = run(p, [{"title": "A"}, {"other": 1}, {"title": "C"}])
    assert [i.status for i in items] == [Status.SUCCESS, Status.FAILED, Status.SUCCESS]
    assert items[0].value == {"title": "a"} and items[2].value == {"title": "c"}
    assert items[1].error is not None and items[1].error.input_id == "d1"


# --- retry ------------------------------------------------------------------------------------------------------


def test_retry_backs_off_exponentially_between_attempts_and_then_succeeds() -> None:
    FLAKY.pop("backoff", None)
    p = build(
        {
            "type": "document",
            "retry": {"max_attempts": 4, "initial_backoff_ms": 20, "multiplier": 2.0},
            "stages": [{**native("flaky", "test_flaky", key="backoff", failures=2), "on_failure": "retry"}],
        }
    )
    [item] = run(p, [{}])
    assert item.status is Status.SUCCESS and item.value == {"flaky_ok": 3}
    calls = FLAKY["backoff"]
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.020 and gaps[1] >= 0.040
    trace = (item.trace or [])[0]
    assert (trace["status"], trace["attempts"]) == ("retried", 3)
    stats = p.metrics.snapshot()["stages"][0]
    assert (stats["retries"], stats["succeeded"], stats["failed"]) == (2, 1, 0)


def test_retry_gives_up_after_max_attempts_then_aborts() -> None:
    FLAKY.pop("abort", None)
    p = build(
        {
            "type": "document",
            "retry": {"max_attempts": 3, "initial_backoff_ms": 1},
            "stages": [{**native("flaky", "test_flaky", key="abort", failures=10), "on_failure": "retry"}],
        }
    )
    [item] = run(p, [{}])
    assert item.status is Status.FAILED
    assert len(FLAKY["abort"]) == 3
    assert "flaky failure 3" in (item.error.message if item.error else "")


def test_retry_then_continue_passes_the_input_on() -> None:
    FLAKY.pop("then", None)
    p = build(
        {
            "type": "document",
            "retry": {"max_attempts": 2, "initial_backoff_ms": 1, "then": "continue"},
            "stages": [
                {**native("flaky", "test_flaky", key="then", failures=10), "on_failure": "retry"},
                native("after", "set", field="after", value=True),
            ],
        }
    )
    [item] = run(p, [{"a": 1}])
    assert item.status is Status.SUCCESS and item.value == {"a": 1, "after": True}
    assert (item.trace or [])[0]["status"] == "error_ignored"


def test_retry_never_sleeps_past_the_pipeline_deadline() -> None:
    FLAKY.pop("deadline", None)
    p = build(
        {
            "type": "document",
            "timeout_ms": 100,
            "retry": {"max_attempts": 5, "initial_backoff_ms": 2000},
            "stages": [{**native("flaky", "test_flaky", key="deadline", failures=10), "on_failure": "retry"}],
        }
    )
    start = time.perf_counter()
    [item] = run(p, [{}])
    assert time.perf_counter() - start < 1.0
    assert item.status is Status.FAILED
    assert len(FLAKY["deadline"]) == 1


# --- deadlines --------------------------------------------------------------------------------------------------


def test_a_stage_that_overruns_its_timeout_is_a_timeout_even_unpreempted() -> None:
    p = build(
        {
            "type": "document",
            "stages": [
                {**native("slow", "test_sleep", ms=40), "timeout_ms": 10},
            ],
        }
    )
    [item] = run(p, [{}])
    assert item.status is Status.FAILED
    assert item.error is not None and item.error.kind == "timeout"
    assert p.metrics.snapshot()["stages"][0]["timeouts"] == 1


def test_the_pipeline_deadline_stops_later_stages() -> None:
    p = build(
        {
            "type": "document",
            "timeout_ms": 20,
            "on_failure": "continue",
            "stages": [
                native("slow", "test_sleep", ms=40),
                native("after", "set", field="after", value=1),
            ],
        }
    )
    [item] = run(p, [{}])
    assert item.status is Status.FAILED
    assert item.error is not None and item.error.kind == "timeout"
    assert "deadline" in item.error.message


# --- enabled flags ----------------------------------------------------------------------------------------------


def test_disabled_stage_is_skipped_and_disabled_pipeline_passes_through() -> None:
    p = build(
        {
            "type": "document",
            "stages": [
                {**native("off", "set", field="a", value=1), "enabled": False},
                native("on", "set", field="b", value=2),
            ],
        }
    )
    [item] = run(p, [{}])
    assert item.value == {"b": 2}
    assert [s["status"] for s in item.trace or []] == ["skipped", "success"]
    assert p.metrics.snapshot()["stages"][0]["skipped"] == 1

    off = build({"type": "document", "enabled": False, "stages": [native("on", "set", field="b", value=2)]})
    [item] = run(off, [{"x": 1}])
    assert item.status is Status.SKIPPED and item.value == {"x": 1}
    assert off.metrics.snapshot()["skipped"] == 1


# --- drops, rejects, results ------------------------------------------------------------------------------------


def test_drop_in_a_document_pipeline_and_reject_in_a_query_pipeline() -> None:
    docs = build({"type": "document", "stages": [native("drop", "drop", field="spam", value=True)]})
    items = run(docs, [{"spam": True}, {"spam": False}])
    assert [i.status for i in items] == [Status.DROPPED, Status.SUCCESS]
    queries = build({"type": "query", "stages": [native("drop", "drop", field="q", value="bad")]})
    [item] = run(queries, [{"q": "bad"}])
    assert item.status is Status.REJECTED


def hits(*scores: float) -> dict[str, Any]:
    return {"hits": [{"_id": str(i), "_score": s, "_source": {"n": i}} for i, s in enumerate(scores)]}


def test_result_udf_scores_resort_hits_and_false_removes_a_hit() -> None:
    def rescore(hit: Any, params: Mapping[str, Any], meta: Mapping[str, Any]) -> Any:
        if hit["_source"]["n"] == 1:
            return False
        return hit["_score"] * (10 if hit["_source"]["n"] == 2 else 1)

    runtime = FakeRuntime({"rescore": rescore})
    p = build(
        {"type": "result", "stages": [{"name": "s", "type": "python", "config": {"udf_name": "rescore"}}]},
        runtime,
    )
    response = hits(3.0, 2.0, 1.0)
    [item] = run(p, [response])
    assert [(h["_id"], h["_score"]) for h in item.value["hits"]] == [("2", 10.0), ("0", 3.0)]
    assert runtime.calls == [3]  # one call for the whole result set
    assert [h["_id"] for h in response["hits"]] == ["0", "1", "2"]  # the input is untouched


def test_result_native_stage_runs_per_hit_on_the_hit_object() -> None:
    p = build({"type": "result", "stages": [native("up", "uppercase", field="_source.t")]})
    [item] = run(p, [{"hits": [{"_id": "a", "_score": 1.0, "_source": {"t": "x"}}]}])
    assert item.value["hits"][0]["_source"] == {"t": "X"}


def test_result_hit_failure_under_continue_leaves_that_hit_unchanged() -> None:
    def boom(hit: Any, params: Any, meta: Any) -> Any:
        if hit["_id"] == "1":
            raise ValueError("bad hit")
        return {"seen": True}

    p = build(
        {
            "type": "result",
            "on_failure": "continue",
            "stages": [{"name": "s", "type": "python", "config": {"udf_name": "boom"}}],
        },
        FakeRuntime({"boom": boom}),
    )
    [item] = run(p, [hits(2.0, 1.0)])
    assert [h["_source"] for h in item.value["hits"]] == [{"n": 0, "seen": True}, {"n": 1}]
    assert (item.trace or [])[0]["status"] == "error_ignored"


# --- UDF result mapping through a python stage --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returned", "target_field", "status", "value"),
    [
        (None, None, Status.SUCCESS, {"a": 1}),
        (True, None, Status.SUCCESS, {"a": 1}),
        (False, None, Status.DROPPED, None),
        ({"b": 2}, None, Status.SUCCESS, {"a": 1, "b": 2}),
        ('{"b": 3}', None, Status.SUCCESS, {"a": 1, "b": 3}),
        (7.5, "score.value", Status.SUCCESS, {"a": 1, "score": {"value": 7.5}}),
        (7.5, "score", Status.SUCCESS, {"a": 1, "score": 7.5}),  # one top-level name: the short path
        (3, "a", Status.SUCCESS, {"a": 3}),
        (7.5, None, Status.FAILED, None),
        ([1, 2], None, Status.FAILED, None),
        ("not json", None, Status.FAILED, None),
        ("[1]", None, Status.FAILED, None),
    ],
)
def test_document_udf_result_mapping(returned: Any, target_field: str | None, status: Status, value: Any) -> None:
    config: dict[str, Any] = {"udf_name": "u"}
    if target_field:
        config["target_field"] = target_field
    p = build(
        {"type": "document", "stages": [{"name": "s", "type": "python", "config": config}]},
        FakeRuntime({"u": lambda v, p, m: returned}),
    )
    [item] = run(p, [{"a": 1}])
    assert item.status is status
    if value is not None:
        assert item.value == value


def test_query_udf_false_rejects_and_dict_merges() -> None:
    runtime = FakeRuntime({"q": lambda v, p, m: False if v.get("bad") else {"size": 5}})
    p = build({"type": "query", "stages": [{"name": "s", "type": "python", "config": {"udf_name": "q"}}]}, runtime)
    ok, bad = run(p, [{"query": {}}, {"bad": True}])
    assert ok.value == {"query": {}, "size": 5}
    assert bad.status is Status.REJECTED


def test_parameters_merge_pipeline_then_execute_time_then_stage() -> None:
    runtime = FakeRuntime({"echo": lambda v, params, m: {"params": dict(params), "meta": dict(m)}})
    p = build(
        {
            "type": "document",
            "parameters": {"a": "pipeline", "b": "pipeline", "c": "pipeline"},
            "stages": [
                {"name": "s", "type": "python", "config": {"udf_name": "echo", "parameters": {"c": "stage"}}},
            ],
        },
        runtime,
    )
    [item] = run(p, [{}], params={"b": "execute", "c": "execute"})
    assert item.value["params"] == {"a": "pipeline", "b": "execute", "c": "stage"}
    assert item.value["meta"] == {
        "index": "idx",
        "id": "d0",
        "pipeline": "p",
        "stage": "s",
        "type": "document",
    }


def test_a_whole_batch_failure_is_isolated_to_the_unit_that_caused_it() -> None:
    def udf(value: Any, params: Any, meta: Any) -> Any:
        if value.get("loop"):
            raise UdfTimeoutError("epoch deadline reached")
        return {"ok": True}

    runtime = FakeRuntime({"u": udf})
    p = build(
        {"type": "document", "stages": [{"name": "s", "type": "python", "config": {"udf_name": "u"}}]},
        runtime,
    )
    items = run(p, [{"n": 0}, {"loop": True}, {"n": 2}])
    assert [i.status for i in items] == [Status.SUCCESS, Status.FAILED, Status.SUCCESS]
    assert items[1].error is not None and items[1].error.kind == "timeout"
    assert runtime.calls == [3, 1, 1, 1]


def test_udf_exception_names_type_message_and_line() -> None:
    def udf(value: Any, params: Any, meta: Any) -> Any:
        raise KeyError("price")

    p = build(
        {"type": "document", "stages": [{"name": "s", "type": "python", "config": {"udf_name": "u"}}]},
        FakeRuntime({"u": udf}),
    )
    [item] = run(p, [{}])
    assert item.error is not None
    assert "raised KeyError" in item.error.message and "(line 3)" in item.error.message


# --- compound stages ----------------------------------------------------------------------------------------------


def test_composite_with_continue_rolls_back_its_partial_changes() -> None:
    p = build(
        {
            "type": "document",
            "stages": [
                {
                    "name": "group",
                    "type": "composite",
                    "on_failure": "continue",
                    "config": {
                        "stages": [
                            native("set", "set", field="half", value=True),
                            native("fail", "fail", message="inner failure"),
                        ]
                    },
                },
                native("after", "set", field="after", value=True),
            ],
        }
    )
    [item] = run(p, [{"a": 1}])
    assert item.status is Status.SUCCESS
    assert item.value == {"a": 1, "after": True}
    group = (item.trace or [])[0]
    assert group["status"] == "error_ignored" and "inner failure" in group["error"]
    assert [s["name"] for s in group["stages"]] == ["set", "fail"]


def test_composite_failure_is_named_at_the_innermost_stage() -> None:
    p = build(
        {
            "type": "document",
            "stages": [
                {
                    "name": "outer",
                    "type": "composite",
                    "config": {
                        "stages": [
                            {
                                "name": "inner",
                                "type": "composite",
                                "config": {"stages": [native("boom", "fail", message="x")]},
                            },
                        ]
                    },
                },
            ],
        }
    )
    [item] = run(p, [{}])
    assert item.error is not None and item.error.stage == "outer/inner/boom"
    assert [s["name"] for s in p.metrics.snapshot()["stages"]] == ["outer", "outer/inner", "outer/inner/boom"]


def test_pipeline_stage_calls_another_pipeline_through_the_same_path() -> None:
    shared = build({"name": "shared", "type": "document", "stages": [native("lower", "lowercase", field="t")]})
    main = build(
        {
            "type": "document",
            "stages": [
                {"name": "call", "type": "pipeline", "config": {"pipeline": "shared"}},
                native("after", "set", field="after", value=1),
            ],
        }
    )
    [item] = run(main, [{"t": "ABC"}], pipelines={"shared": shared})
    assert item.value == {"t": "abc", "after": 1}
    assert shared.metrics.snapshot()["count"] == 1
    assert (item.trace or [])[0]["stages"][0]["name"] == "lower"


# --- inputs and stats ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        (PipelineType.DOCUMENT, [1], "takes a JSON object"),
        (PipelineType.QUERY, "q", "takes a JSON object"),
        (PipelineType.RESULT, {}, "input.hits"),
        (PipelineType.RESULT, {"hits": [{"_id": "a", "_score": 1.0}]}, "input.hits[0]._source"),
        (PipelineType.RESULT, {"hits": [{"_id": 1, "_score": 1.0, "_source": {}}]}, "input.hits[0]._id"),
    ],
)
def test_inputs_are_validated_by_pipeline_type(kind: PipelineType, value: Any, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_input(kind, value)


def test_stats_add_up_under_concurrent_batches() -> None:
    p = build(
        {
            "type": "document",
            "stages": [
                native("lower", "lowercase", field="t"),
                native("drop", "drop", field="t", value="drop"),
            ],
        }
    )

    def work() -> None:
        for _ in range(50):
            run(p, [{"t": "A"}, {"t": "DROP"}, {"x": 1}], verbose=False)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = p.metrics.snapshot()
    assert (snap["count"], snap["succeeded"], snap["dropped"], snap["failed"], snap["current"]) == (
        600,
        200,
        200,
        200,
        0,
    )
    assert snap["stages"][0]["failed"] == 200 and snap["stages"][1]["count"] == 400
    assert snap["duration_us"]["p50"] > 0 and snap["last_error"] is not None


@settings(deadline=None)  # a loaded machine must not fail a property
@given(
    st.dictionaries(st.sampled_from(["a", "b", "score", "s"]), st.integers() | st.text(max_size=2) | st.none()),
    st.sampled_from(["score", "a", "s.t", "score.value"]),
    st.integers() | st.floats(allow_nan=False),
)
def test_a_number_lands_at_target_field_as_paths_set_puts_it(doc: dict[str, Any], target: str, number: float) -> None:
    # A one-name target takes the mapping's short path; a dotted one the general walk: both as _paths.set_.
    mapping = ResultMapping(PipelineType.DOCUMENT, hit_scope=False, target_field=target)
    before = dict(doc)
    try:
        expected = _paths.set_(doc, _paths.split_path(target), number)
    except ValueError:  # a path through a non-object
        with pytest.raises(UnmappableResult):
            mapping.apply(number, doc)
    else:
        assert mapping.apply(number, doc) == expected
    assert doc == before  # the input is never changed
