"""Stage conditions (``if``, CEL): compiled when stored, evaluated per input, skipped in stats and trace."""

from __future__ import annotations

import contextlib
import copy
import threading
from typing import Any

import cel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quidditch_pipeline import DefinitionError, PipelineService
from quidditch_pipeline.conditions import Condition


def native(name: str, processor: str = "set", **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


def pipeline(name: str, stages: list[dict[str, Any]], kind: str = "document", **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "type": kind, "stages": stages, **extra}


def stage_stats(service: PipelineService, pipeline_name: str, stage: str) -> dict[str, Any]:
    stats = service.stats(pipeline_name)
    return next(s for s in stats["stages"] if s["name"] == stage)


def test_false_condition_skips_the_stage_per_input(service: PipelineService) -> None:
    service.put_pipeline(
        pipeline(
            "tag-spam",
            [
                {**native("flag", field="flagged", value=True), "if": "ctx.category == 'spam' && ctx.price > 10"},
                native("seen", field="seen", value=True),
            ],
        )
    )
    service.associate("products", "document", "tag-spam")
    outs = service.process_documents(
        "products",
        [("1", {"category": "spam", "price": 12}), ("2", {"category": "spam", "price": 5}), ("3", {"category": "ok"})],
    )
    assert [o.status for o in outs] == ["success"] * 3
    assert [o.source.get("flagged") for o in outs if o.source is not None] == [True, None, None]
    assert all(o.source is not None and o.source["seen"] for o in outs)
    flag = stage_stats(service, "tag-spam", "flag")
    assert (flag["count"], flag["succeeded"], flag["skipped"], flag["failed"]) == (3, 1, 2, 0)
    assert flag["count"] == flag["succeeded"] + flag["failed"] + flag["dropped"] + flag["skipped"]


def test_skipped_in_the_verbose_trace(service: PipelineService) -> None:
    service.put_pipeline(pipeline("p", [{**native("a", field="x", value=1), "if": "ctx.go"}]))
    skipped = service.execute("p", {"go": False})
    ran = service.execute("p", {"go": True})
    assert skipped["stages"][0]["status"] == "skipped" and skipped["output"] == {"go": False}
    assert ran["stages"][0]["status"] == "success" and ran["output"] == {"go": True, "x": 1}


def test_condition_reads_meta_and_params(service: PipelineService) -> None:
    service.put_pipeline(
        pipeline(
            "p",
            [
                {
                    **native("a", field="hit", value=True),
                    "tag": "t1",
                    "if": "meta.index == 'shop' && meta.tag == 't1' && ctx.price > params.min_price",
                }
            ],
            parameters={"min_price": 10},
        )
    )
    service.associate("shop", "document", "p")
    assert service.process_document("shop", "1", {"price": 11}) == {"price": 11, "hit": True}
    assert service.process_document("shop", "2", {"price": 9}) == {"price": 9}
    # execute-time params override the pipeline's
    assert service.execute("p", {"price": 9}, params={"min_price": 5})["output"] == {"price": 9}  # no meta.index


def test_evaluation_error_is_a_stage_error_under_the_policy(service: PipelineService) -> None:
    service.put_pipeline(pipeline("strict", [{**native("a", field="x", value=1), "if": "ctx.missing > 1"}]))
    service.put_pipeline(
        pipeline("lenient", [{**native("a", field="x", value=1), "if": "ctx.missing > 1", "on_failure": "continue"}])
    )
    failed = service.execute("strict", {"title": "t"})
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "condition_error" and "no such key" in failed["error"]["reason"]
    assert failed["error"]["stage"] == "a"
    passed = service.execute("lenient", {"title": "t"})
    assert passed["status"] == "success" and passed["output"] == {"title": "t"}
    assert passed["stages"][0]["status"] == "error_ignored"
    a = stage_stats(service, "strict", "a")
    assert (a["count"], a["failed"], a["skipped"]) == (1, 1, 0)


def test_non_boolean_condition_is_a_stage_error(service: PipelineService) -> None:
    service.put_pipeline(pipeline("p", [{**native("a", field="x", value=1), "if": "ctx.title"}]))
    out = service.execute("p", {"title": "t"})
    assert out["status"] == "failed" and "not a boolean" in out["error"]["reason"]


@pytest.mark.parametrize(
    ("condition", "message"),
    [("ctx.category ==", "Syntax error"), ("doc.price > 1", "unknown variable [doc]"), ("  ", "empty condition")],
)
def test_bad_condition_refused_when_stored_with_its_field_path(
    service: PipelineService, condition: str, message: str
) -> None:
    stages = [native("a", field="x", value=1), native("b", field="y", value=1), {**native("c", field="z", value=1)}]
    stages[2]["if"] = condition
    with pytest.raises(DefinitionError) as err:
        service.put_pipeline(pipeline("p", stages))
    [(path, reason)] = err.value.problems
    assert path == "stages[2].if" and message in reason
    assert not service.registry.exists("p")


def test_condition_inside_a_composite_and_handler_path(service: PipelineService) -> None:
    with pytest.raises(DefinitionError) as err:
        service.put_pipeline(
            pipeline(
                "p",
                [
                    {
                        "name": "g",
                        "type": "composite",
                        "config": {"stages": [{**native("a", field="x", value=1), "if": "nope.x"}]},
                    }
                ],
            )
        )
    assert err.value.problems[0] == (
        "stages[0].config.stages[0].if",
        "unknown variable [nope]; a condition reads ctx, meta, params and _ingest",
    )


def test_hit_scoped_condition_sees_the_hit(service: PipelineService) -> None:
    service.put_pipeline(
        pipeline(
            "r",
            [{**native("boost", field="_source.promoted", value=True), "if": "ctx._source.brand == 'acme'"}],
            kind="result",
        )
    )
    service.associate("shop", "result", "r")
    response = {
        "hits": {
            "hits": [
                {"_id": "1", "_score": 2.0, "_source": {"brand": "acme"}},
                {"_id": "2", "_score": 1.0, "_source": {"brand": "other"}},
            ]
        }
    }
    out = service.process_results("shop", {}, response)
    assert [h["_source"].get("promoted") for h in out["hits"]["hits"]] == [True, None]
    boost = stage_stats(service, "r", "boost")
    assert (boost["count"], boost["succeeded"], boost["skipped"]) == (2, 1, 1)


def test_query_condition_sees_the_search_body(service: PipelineService) -> None:
    service.put_pipeline(
        pipeline("q", [{**native("cap", field="size", value=100), "if": "has(ctx.size) && ctx.size > 100"}], "query")
    )
    service.associate("shop", "query", "q")
    assert service.process_query("shop", {"size": 500})["size"] == 100
    assert service.process_query("shop", {"size": 5})["size"] == 5


def test_projection_keeps_semantics_of_lists_and_methods() -> None:
    condition = Condition("ctx.tags.size() > 1 && 'b' in ctx.tags && ctx.user.name.startsWith('a')")
    assert condition.evaluate({"ctx": {"tags": ["a", "b"], "user": {"name": "ann", "x": 1}, "big": "x" * 100}})
    assert not condition.evaluate({"ctx": {"tags": ["b"], "user": {"name": "ann"}}})
    with pytest.raises(ValueError, match="no such key"):
        condition.evaluate({"ctx": {"tags": ["a", "b"]}})
    whole = Condition("size(ctx) == 2")  # the whole value: no projection
    assert whole.evaluate({"ctx": {"a": 1, "b": 2}})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
CONDITIONS = [
    "ctx.category == 'spam' && ctx.price > 10",
    "has(ctx.a) && ctx.a != null",
    "size(ctx) > 1",
    "ctx.a.b == 1 || ctx.c == 'x'",
    "params.x == 1 && meta.index == 'i'",
]


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.dictionaries(st.sampled_from(["category", "price", "a", "b", "c"]), JSON, max_size=5),
    expr=st.sampled_from(CONDITIONS),
)
def test_a_condition_never_changes_the_value_it_reads(doc: dict[str, Any], expr: str) -> None:
    condition = Condition(expr)
    params, meta = {"x": [1, {"y": 2}]}, {"index": "i", "id": None}
    before = copy.deepcopy((doc, params, meta))
    # an evaluation error is a stage error; either way the value is left as it was
    with contextlib.suppress(ValueError):
        condition.evaluate({"ctx": doc, "params": params, "meta": meta, "_ingest": {}})
    assert (doc, params, meta) == before


def test_the_python_attribute_name_is_not_a_field(service: PipelineService) -> None:
    with pytest.raises(DefinitionError) as err:
        service.put_pipeline(pipeline("p", [{**native("a", field="x", value=1), "if_": "true"}]))
    assert err.value.problems == [("stages[0].if_", "unknown field")]
    service.put_pipeline(pipeline("p", [{**native("a", field="x", value=1), "if": "true"}]))
    assert service.get_pipeline("p")["stages"][0]["if"] == "true"


EQUIVALENT = [
    *CONDITIONS,
    "ctx.a.size() > 0 && ctx.c == 'ctx.c'",
    "ctx.price > 10.0 || ctx.category in ['a', 'b']",
    "ctx.b.exists(x, x == 1)",
    'ctx.category + "ctx.price" == "xctx.price"',
]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.dictionaries(st.sampled_from(["category", "price", "a", "b", "c"]), JSON, max_size=5),
    expr=st.sampled_from(EQUIVALENT),
)
def test_binding_member_paths_gives_what_the_whole_value_gives(doc: dict[str, Any], expr: str) -> None:
    """Conditions bind the member paths they read as variables of their own (a speed-up): the answer, or that
    there is an error, is what CEL gives on the whole values."""
    variables = {"ctx": doc, "params": {"x": 1}, "meta": {"index": "i"}, "_ingest": {}}
    try:
        expected: Any = cel.compile(expr).execute({k: v for k, v in variables.items() if k in expr})
    except Exception:
        expected = "error"
    try:
        got: Any = Condition(expr).evaluate(variables)
    except ValueError:
        got = "error"
    if expected not in (True, False):
        expected = "error"  # a non-boolean answer is an error for a condition
    assert got == expected


def test_one_compiled_condition_is_evaluated_from_many_threads() -> None:
    """A built pipeline is shared by the service's threads: its compiled conditions are too."""
    condition = Condition("ctx.a == 'x' && ctx.b > 1")
    answers: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            answers.extend((b, condition.evaluate({"ctx": {"a": "x", "b": b}})) for b in range(500))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(answers) == 2000
    assert all(answer == (b > 1) for b, answer in answers)
