"""Mustache templates (chevron) in set/append values and fields and fail messages, compiled when stored."""

from __future__ import annotations

from typing import Any

import pytest

from quidditch_pipeline import DefinitionError, PipelineService
from quidditch_pipeline.templates import Template, compile_value, render_value


def native(name: str, processor: str = "set", **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


def run(service: PipelineService, stages: list[dict[str, Any]], doc: dict[str, Any]) -> dict[str, Any]:
    service.put_pipeline({"name": "t", "version": "1.0.0", "type": "document", "stages": stages})
    out: dict[str, Any] = service.execute("t", doc, verbose=False)
    return out


def test_set_value_and_nested_paths(service: PipelineService) -> None:
    out = run(
        service,
        [native("greet", field="greeting", value="Hello {{user.name}} & {{{user.name}}}: {{title}} {{missing}}!")],
        {"title": "<b>x</b>", "user": {"name": "Ann"}},
    )
    # rendered without HTML escaping: a field value, not HTML
    assert out["output"]["greeting"] == "Hello Ann & Ann: <b>x</b> !"


def test_templated_field_name_and_nested_value(service: PipelineService) -> None:
    out = run(
        service,
        [native("count", field="counts.{{kind}}", value={"label": "{{kind}}", "n": 1, "tags": ["{{kind}}", 2]})],
        {"kind": "shoe"},
    )
    assert out["output"]["counts"] == {"shoe": {"label": "shoe", "n": 1, "tags": ["shoe", 2]}}


def test_field_template_rendering_to_an_empty_path_is_a_stage_error(service: PipelineService) -> None:
    out = run(service, [native("bad", field="{{missing}}", value=1)], {"kind": "x"})
    assert out["status"] == "failed" and "not a field path" in out["error"]["reason"]


def test_append_values(service: PipelineService) -> None:
    out = run(
        service, [native("a", "append", field="tags", value=["{{brand}}", "x"])], {"brand": "acme", "tags": ["y"]}
    )
    assert out["output"]["tags"] == ["y", "acme", "x"]


def test_fail_message(service: PipelineService) -> None:
    out = run(service, [native("f", "fail", message="bad price {{price}} for {{_id_hint}}")], {"price": 3})
    assert out["error"]["cause"] == "bad price 3 for "


def test_ingest_timestamp(service: PipelineService) -> None:
    out = run(service, [native("ts", field="ingested_at", value="{{_ingest.timestamp}}")], {})
    stamp = out["output"]["ingested_at"]
    assert stamp[:4].isdigit() and stamp.endswith("+00:00")


def test_plain_values_are_not_shared_between_documents(service: PipelineService) -> None:
    service.put_pipeline(
        {"name": "t", "version": "1.0.0", "type": "document", "stages": [native("s", field="obj", value={"a": []})]}
    )
    service.associate("i", "document", "t")
    first, second = service.process_documents("i", [("1", {}), ("2", {})])
    assert first.source is not None and second.source is not None
    assert first.source["obj"] is not second.source["obj"]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"processor": "set", "field": "x", "value": "{{#open}} never closed"}, "stages[0].config.value"),
        ({"processor": "set", "field": "x", "value": {"deep": ["{{a"]}}, "stages[0].config.value"),
        ({"processor": "set", "field": "{{a", "value": 1}, "stages[0].config.field"),
        ({"processor": "append", "field": "x", "value": "{{/stray}}"}, "stages[0].config.value"),
        ({"processor": "fail", "message": "{{a"}, "stages[0].config.message"),
        ({"processor": "set", "field": "x", "value": "{{> /etc/passwd}}"}, "stages[0].config.value"),
        ({"processor": "set", "field": "x", "value": "{{title.__class__}}"}, "stages[0].config.value"),
    ],
)
def test_template_errors_refused_when_stored(service: PipelineService, config: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as err:
        service.put_pipeline(
            {
                "name": "t",
                "version": "1.0.0",
                "type": "document",
                "stages": [{"name": "s", "type": "native", "config": config}],
            }
        )
    assert err.value.problems[0][0] == path and "template" in err.value.problems[0][1]


def test_compiled_once_and_rendered_per_input() -> None:
    compiled = compile_value({"a": "{{x}}-{{y}}", "b": 1})
    assert isinstance(compiled["a"], Template)
    assert render_value(compiled, {"x": 1, "y": "z"}, None) == {"a": "1-z", "b": 1}
    assert render_value(compiled, {"x": 2}, None) == {"a": "2-", "b": 1}
    plain = {"a": "no tags"}
    assert compile_value(plain) is plain
