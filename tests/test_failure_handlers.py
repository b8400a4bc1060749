"""Failure handlers (``on_failure`` as a list of stages), ``ignore_failure``, ``tag`` and ``description``."""

from __future__ import annotations

from typing import Any

import pytest

from quidditch_pipeline import DefinitionError, PipelineService, StageError


def native(name: str, processor: str = "set", **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


def pipeline(name: str, stages: list[dict[str, Any]], kind: str = "document", **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "type": kind, "stages": stages, **extra}


BOOM = native("boom", "fail", message="broken {{title}}")
RECORD = native("record", field="error", value="{{_ingest.on_failure_message}}")


def test_stage_handlers_run_instead_of_the_policy_and_read_failure_metadata(service: PipelineService) -> None:
    service.put_pipeline(
        pipeline(
            "p",
            [
                {
                    **BOOM,
                    "tag": "t-boom",
                    "on_failure": [
                        RECORD,
                        native(
                            "where",
                            field="where",
                            value="{{_ingest.on_failure_pipeline}}/{{_ingest.on_failure_stage}}"
                            ":{{_ingest.on_failure_stage_type}}:{{_ingest.on_failure_tag}}",
                        ),
                    ],
                },
                native("after", field="after", value=True),
            ],
        )
    )
    service.associate("i", "document", "p")
    out = service.process_document("i", "1", {"title": "T"})
    assert out == {"title": "T", "error": "broken T", "where": "p/boom:native:t-boom", "after": True}
    stats = {s["name"]: s for s in service.stats("p")["stages"]}
    assert stats["boom"]["failed"] == 1 and stats["boom"]["tag"] == "t-boom"
    assert stats["boom/on_failure/record"]["succeeded"] == 1
    trace = service.execute("p", {"title": "T"})["stages"]
    assert trace[0]["status"] == "error_handled" and trace[0]["tag"] == "t-boom"
    assert [h["name"] for h in trace[0]["on_failure"]] == ["record", "where"]


def test_a_failing_handler_aborts(service: PipelineService) -> None:
    service.put_pipeline(
        pipeline(
            "p",
            [
                {**BOOM, "on_failure": [native("worse", "fail", message="handler broke")]},
                native("after", field="after", value=True),
            ],
        )
    )
    out = service.execute("p", {"title": "T"})
    assert out["status"] == "failed" and out["error"]["cause"] == "handler broke"
    assert out["error"]["stage"] == "boom/on_failure/worse"


def test_handler_may_drop(service: PipelineService) -> None:
    service.put_pipeline(pipeline("p", [{**BOOM, "on_failure": [native("bye", "drop")]}]))
    service.associate("i", "document", "p")
    assert service.process_document("i", "1", {"title": "x"}) is None


def test_pipeline_handlers_catch_unhandled_failures_and_end_the_pipeline(service: PipelineService) -> None:
    service.put_pipeline(
        pipeline(
            "p",
            [native("first", field="first", value=1), BOOM, native("never", field="never", value=1)],
            on_failure=[RECORD, native("failed_at", field="failed_at", value="{{_ingest.on_failure_stage}}")],
        )
    )
    service.associate("i", "document", "p")
    outs = service.process_documents("i", [("1", {"title": "a"}), ("2", {"title": "b"})])
    assert [o.status for o in outs] == ["success", "success"]
    assert outs[0].source == {"title": "a", "first": 1, "error": "broken a", "failed_at": "boom"}
    stats = service.stats("p")
    assert (stats["succeeded"], stats["failed"]) == (2, 0)
    assert {s["name"]: s["count"] for s in stats["stages"]}["never"] == 0
    trace = service.execute("p", {"title": "a"})["stages"]
    assert trace[-1]["name"] == "on_failure" and [s["name"] for s in trace[-1]["stages"]] == ["record", "failed_at"]


def test_retry_then_abort_is_caught_by_pipeline_handlers(service: PipelineService) -> None:
    service.put_pipeline(
        pipeline(
            "p",
            [{**BOOM, "on_failure": "retry"}],
            on_failure=[RECORD],
            retry={"max_attempts": 2, "initial_backoff_ms": 0},
        )
    )
    out = service.execute("p", {"title": "x"})
    assert out["status"] == "success" and out["output"]["error"] == "broken x"
    boom = next(s for s in service.stats("p")["stages"] if s["name"] == "boom")
    assert boom["retries"] == 1


def test_ignore_failure_is_continue(service: PipelineService) -> None:
    service.put_pipeline(pipeline("p", [{**BOOM, "ignore_failure": True}, native("after", field="a", value=1)]))
    out = service.execute("p", {"title": "x"})
    assert out["status"] == "success" and out["output"] == {"title": "x", "a": 1}
    assert out["stages"][0]["status"] == "error_ignored"


@pytest.mark.parametrize(
    ("stage", "path", "message"),
    [
        ({**BOOM, "ignore_failure": True, "on_failure": "abort"}, "stages[0].ignore_failure", "contradicts"),
        ({**BOOM, "ignore_failure": True, "on_failure": "retry"}, "stages[0].ignore_failure", "contradicts"),
        ({**BOOM, "ignore_failure": True, "on_failure": [RECORD]}, "stages[0].ignore_failure", "contradicts"),
        ({**BOOM, "on_failure": []}, "stages[0].on_failure", "at least one handler stage"),
        ({**BOOM, "on_failure": "later"}, "stages[0].on_failure", "or a list of handler stages"),
        (
            {**BOOM, "on_failure": [{"name": "h", "type": "native", "config": {"processor": "nope"}}]},
            "stages[0].on_failure[0].config.processor",
            "unknown native processor",
        ),
        ({**BOOM, "on_failure": [RECORD, RECORD]}, "stages[0].on_failure[1].name", "duplicate stage name"),
    ],
)
def test_ambiguous_or_bad_handlers_refused_with_field_path(
    service: PipelineService, stage: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(DefinitionError) as err:
        service.put_pipeline(pipeline("p", [stage]))
    assert err.value.problems[0][0] == path and message in err.value.problems[0][1]


def test_handler_calling_a_missing_pipeline_is_refused(service: PipelineService) -> None:
    call = {"name": "c", "type": "pipeline", "config": {"pipeline": "ghost"}}
    with pytest.raises(DefinitionError) as err:
        service.put_pipeline(pipeline("p", [native("a", field="x", value=1)], on_failure=[call]))
    assert err.value.problems[0][0] == "on_failure[0].config.pipeline"


def test_tag_and_description_appear_in_errors_and_round_trip(service: PipelineService) -> None:
    service.put_pipeline(pipeline("p", [{**BOOM, "tag": "my-tag", "description": "fails on purpose"}]))
    stored = service.get_pipeline("p")
    assert stored["stages"][0]["tag"] == "my-tag" and stored["stages"][0]["description"] == "fails on purpose"
    service.associate("i", "document", "p")
    with pytest.raises(StageError) as err:
        service.process_document("i", "1", {"title": "x"})
    assert err.value.tag == "my-tag" and "tag [my-tag]" in err.value.message
    assert service.execute("p", {"title": "x"})["error"]["tag"] == "my-tag"


def test_unavailable_stage_is_never_handled(service: PipelineService) -> None:
    service.put_pipeline(pipeline("target", [native("a", field="x", value=1)]))
    service.put_pipeline(
        pipeline("p", [{"name": "call", "type": "pipeline", "config": {"pipeline": "target"}}], on_failure=[RECORD])
    )
    # the target vanishes behind the registry's back (as in tests/test_fail_closed.py): fail closed
    service.registry._history.pop("target")
    out = service.execute("p", {"title": "x"})
    assert out["status"] == "failed" and "unavailable" in out["error"]["reason"]


def test_handlers_of_a_hit_scoped_stage_run_per_hit(service: PipelineService) -> None:
    service.put_pipeline(
        pipeline(
            "r",
            [
                {
                    **native("price", "convert", field="_source.price", type="int"),
                    "on_failure": [native("mark", field="_source.bad_price", value="{{_ingest.on_failure_message}}")],
                }
            ],
            kind="result",
        )
    )
    service.associate("shop", "result", "r")
    response = {
        "hits": {
            "hits": [
                {"_id": "1", "_score": 2.0, "_source": {"price": "3"}},
                {"_id": "2", "_score": 1.0, "_source": {"price": "n/a"}},
            ]
        }
    }
    hits = service.process_results("shop", {}, response)["hits"]["hits"]
    assert [h["_source"] for h in hits] == [
        {"price": 3},
        {"price": "n/a", "bad_price": "field [_source.price]: cannot convert 'n/a' to int"},
    ]
    price = next(s for s in service.stats("r")["stages"] if s["name"] == "price")
    assert (price["count"], price["succeeded"], price["failed"]) == (2, 1, 1)


def test_a_hit_handler_that_drops_removes_only_that_hit(service: PipelineService) -> None:
    service.put_pipeline(
        pipeline(
            "r",
            [{**native("price", "convert", field="_source.price", type="int"), "on_failure": [native("bye", "drop")]}],
            kind="result",
        )
    )
    service.associate("shop", "result", "r")
    response = {
        "hits": {
            "hits": [
                {"_id": "1", "_score": 2.0, "_source": {"price": "x"}},
                {"_id": "2", "_score": 1.0, "_source": {"price": "4"}},
            ]
        }
    }
    hits = service.process_results("shop", {}, response)["hits"]["hits"]
    assert [(h["_id"], h["_source"]) for h in hits] == [("2", {"price": 4})]
