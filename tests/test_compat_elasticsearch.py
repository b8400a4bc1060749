"""Elasticsearch ingest pipelines to and from document pipelines: translation, report, export, round trip, the
``_import`` route and ``?format=elasticsearch``, and the ``import`` command."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from quidditch_pipeline import PipelineService
from quidditch_pipeline.cli import main
from quidditch_pipeline.compat import from_elasticsearch, import_pipeline, to_elasticsearch
from quidditch_pipeline.definitions import parse_definition
from quidditch_pipeline.errors import DefinitionError
from quidditch_pipeline.server import create_app
from quidditch_pipeline.server.engine import TantivyBackend

from .server_harness import serve_app

#: Every supported processor with options that differ from their defaults.
FULL: dict[str, Any] = {
    "description": "every supported processor",
    "version": 7,
    "_meta": {"owner": "ingest-team", "ticket": 42},
    "processors": [
        {"set": {"field": "status", "value": "new", "override": False, "tag": "status", "description": "default"}},
        {"remove": {"field": ["tmp", "debug"], "ignore_missing": True}},
        {"rename": {"field": "desc", "target_field": "description", "ignore_missing": True, "override": True}},
        {"lowercase": {"field": "title", "target_field": "title_lower"}},
        {"uppercase": {"field": "code", "ignore_missing": True}},
        {"trim": {"field": "name", "ignore_failure": True}},
        {"split": {"field": "tags", "separator": "\\s*,\\s*", "preserve_trailing": True}},
        {"join": {"field": "parts", "separator": "-", "target_field": "joined"}},
        {"convert": {"field": "price", "type": "float", "target_field": "price_f", "ignore_missing": True}},
        {"append": {"field": "labels", "value": ["a", "b"], "allow_duplicates": False}},
        {"pipeline": {"name": "common"}},
        {"fail": {"message": "never reached", "tag": "stop"}},
        {"drop": {"description": "drop everything past this point"}},
    ],
}


def translated(body: dict[str, Any], name: str = "p") -> dict[str, Any]:
    translation = from_elasticsearch(body, name)
    assert translation.lossy == []
    (definition,) = translation.definitions
    return definition


def test_supported_processors_become_native_stages_with_the_same_keys() -> None:
    definition = translated(FULL)
    assert (definition["version"], definition["type"]) == ("7.0.0", "document")
    assert definition["metadata"] == {"owner": "ingest-team", "ticket": 42}
    first, *_, pipeline, fail, drop = definition["stages"]
    assert first == {"name": "status", "description": "default", "type": "native",
                     "config": {"processor": "set", "field": "status", "value": "new", "override": False}}  # fmt: skip
    assert definition["stages"][5] == {"name": "trim-5", "on_failure": "continue", "type": "native",
                                       "config": {"processor": "trim", "field": "name"}}  # fmt: skip
    assert pipeline == {"name": "pipeline-10", "type": "pipeline", "config": {"pipeline": "common"}}
    assert fail["name"] == "stop" and drop["config"] == {"processor": "drop"}
    # The translation is a valid definition (every processor accepts the keys it was given).
    assert parse_definition(definition).stages[8].config.options["type"] == "float"


def test_source_prefix_is_stripped_and_metadata_fields_are_reported() -> None:
    translation = from_elasticsearch(
        {
            "processors": [
                {"set": {"field": "_source.a", "value": 1}},
                {"set": {"field": "_index", "value": "x"}},
                {"remove": {"field": ["ok", "_ingest.timestamp"]}},
            ]
        },
        "p",
    )
    (definition,) = translation.definitions
    assert [s["config"]["field"] for s in definition["stages"]] == ["a"]
    assert [f.path for f in translation.lossy] == ["processors[1].set.field", "processors[2].remove.field[1]"]


def test_what_has_no_equivalent_is_reported_with_its_position_never_dropped_silently() -> None:
    body = {
        "processors": [
            {"lowercase": {"field": "title"}},
            {"script": {"source": "ctx.x = 1"}},
            {"set": {"field": "a", "value": 1, "if": "ctx.b != null"}},
            {"grok": {"field": "message", "patterns": ["%{WORD:w}"]}},
            {"rename": {"field": "a", "target_field": "b", "on_failure": [{"set": {"field": "e", "value": 1}}]}},
            {"set": {"field": "greeting", "value": "hi {{name}}"}},
            {"convert": {"field": "ip", "type": "ip"}},
            {"remove": {"field": "a", "keep": ["b"]}},
            {"date": {"field": "ts", "formats": ["ISO8601"]}},
            {"pipeline": {"name": "other", "ignore_missing_pipeline": True}},
            {"set": {"field": "c", "value": 2, "if": "ctx.a?.b == 'x'"}},
        ],
        "on_failure": [{"set": {"field": "error", "value": "{{ _ingest.on_failure_message }}"}}],
    }
    translation = from_elasticsearch(body, "p")
    lossy = [(f.path, f.reason) for f in translation.lossy]
    assert lossy[:-1] == [
        ("processors[1]", "[script] has no equivalent"),
        ("processors[3]", "[grok] has no equivalent"),
        ("processors[6].convert.type", "conversion to [ip] has no equivalent"),
        ("processors[7].remove.keep", "option [keep] of [remove] has no equivalent"),
        ("processors[8]", "[date] has no equivalent"),
        ("processors[9].pipeline.ignore_missing_pipeline", "a pipeline stage's target must exist"),
    ]
    assert lossy[-1][0] == "processors[10].set.if" and "Painless-only condition" in lossy[-1][1]
    # Kept, with a note: a condition CEL reads alike, handler lists, templates (rendered here too).
    notes = [(f.path, f.lossy) for f in translation.findings if not f.lossy]
    assert ("processors[2].set.if", False) in notes
    # With the losses accepted, only fully translated processors remain: nothing half-translated.
    (definition,) = translation.definitions
    assert [s["name"] for s in definition["stages"]] == ["lowercase-0", "set-2", "rename-4", "set-5"]
    assert definition["stages"][1]["if"] == "ctx.b != null"
    assert definition["stages"][2]["on_failure"][0]["config"] == {"processor": "set", "field": "e", "value": 1}
    assert definition["stages"][3]["config"]["value"] == "hi {{name}}"
    assert definition["on_failure"][0]["config"]["value"] == "{{ _ingest.on_failure_message }}"
    with pytest.raises(DefinitionError) as refused:
        translation.require_lossless(False, "pass --accept-losses")
    assert refused.value.problems[-1] == ("", "nothing was stored; to go on without these: pass --accept-losses")
    translation.require_lossless(True, "unused")


def test_tags_that_cannot_be_stage_names_are_renamed_and_noted() -> None:
    translation = from_elasticsearch(
        {"processors": [{"trim": {"field": "a", "tag": "t"}}, {"trim": {"field": "b", "tag": "t"}}]}, "p"
    )
    (definition,) = translation.definitions
    assert [s["name"] for s in definition["stages"]] == ["t", "t-1"]
    assert [(f.path, f.lossy) for f in translation.findings] == [("processors[1].trim.tag", False)]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ([], ""),
        ({"processors": {}}, "processors"),
        ({"processors": [{"set": {}, "trim": {}}]}, "processors[0]"),
        ({"processors": [], "version": "1"}, "version"),
        ({"processors": [], "pipeline": "x"}, "pipeline"),
    ],
)
def test_what_is_not_an_ingest_pipeline_is_refused_naming_where(body: Any, path: str) -> None:
    with pytest.raises(DefinitionError) as refused:
        from_elasticsearch(body, "p")
    assert refused.value.problems[0][0] == path


def test_round_trip_elasticsearch_to_native_and_back_is_identity() -> None:
    assert to_elasticsearch(parse_definition(translated(FULL))) == FULL
    minimal = {"processors": [{"trim": {"field": "a"}}]}
    assert to_elasticsearch(translated(minimal)) == minimal


def test_conditions_and_failure_handlers_round_trip() -> None:
    body = {
        "processors": [
            {"set": {"field": "flag", "value": "spam", "tag": "flag", "if": "ctx.category == 'spam' && ctx.n > 10"}},
            {"rename": {"field": "a", "target_field": "b", "tag": "move",
                        "on_failure": [{"set": {"field": "error", "value": "{{ _ingest.on_failure_message }}",
                                                "tag": "record"}}]}},
        ],
        "on_failure": [{"set": {"field": "failed", "value": True, "tag": "mark"}}],
    }  # fmt: skip
    assert to_elasticsearch(parse_definition(translated(body))) == body


def test_export_refuses_a_condition_that_painless_reads_otherwise() -> None:
    stage = {"name": "s", "type": "native", "if": "has(ctx.x)", "config": {"processor": "trim", "field": "x"}}
    with pytest.raises(DefinitionError) as refused:
        to_elasticsearch({"name": "p", "version": "1.0.0", "type": "document", "stages": [stage]})
    assert [path for path, _ in refused.value.problems] == ["stages[0].if"]


def test_a_version_elasticsearch_cannot_hold_travels_in_meta() -> None:
    native = {"name": "p", "version": "2.3.1", "type": "document", "stages": []}
    exported = to_elasticsearch(native)
    assert exported == {"processors": [], "version": 2, "_meta": {"quidditch_version": "2.3.1"}}
    assert translated(exported)["version"] == "2.3.1"


def test_export_refuses_what_elasticsearch_cannot_express_naming_each() -> None:
    native = {
        "name": "p", "version": "1.0.0", "type": "document", "timeout_ms": 50,
        "stages": [
            {"name": "a", "type": "python", "config": {"udf_name": "u"}},
            {"name": "b", "type": "native", "on_failure": "retry", "config": {"processor": "trim", "field": "x"}},
            {"name": "c", "type": "native", "config": {"processor": "copy", "field": "x", "target_field": "y"}},
            {"name": "d", "type": "native", "config": {"processor": "drop", "field": "x", "value": 1}},
            {"name": "e", "type": "native", "enabled": False, "config": {"processor": "trim", "field": "x"}},
        ],
    }  # fmt: skip
    with pytest.raises(DefinitionError) as refused:
        to_elasticsearch(native)
    assert [path for path, _ in refused.value.problems] == [
        "timeout_ms", "stages[0].type", "stages[1].on_failure", "stages[2].config.processor",
        "stages[3].config.field", "stages[3].config.value", "stages[4].enabled",
    ]  # fmt: skip
    with pytest.raises(DefinitionError, match="a query pipeline is not an ingest pipeline"):
        to_elasticsearch({**native, "type": "query", "timeout_ms": None, "stages": []})


def test_imported_pipeline_runs_as_elasticsearch_documents_it(service: PipelineService) -> None:
    trim = {"name": "t", "type": "native", "config": {"processor": "trim", "field": "name"}}
    service.put_pipeline({"name": "common", "version": "1.0.0", "type": "document", "stages": [trim]})
    body = {"processors": [{"lowercase": {"field": "title"}}, {"pipeline": {"name": "common"}},
                           {"append": {"field": "tags", "value": "new"}}]}  # fmt: skip
    answer = import_pipeline(
        service, body, "tidy", "elasticsearch", accept_losses=False, dry_run=False, how_to_accept=""
    )
    assert answer["stored"] is True and answer["pipelines"][0]["revision"] == 1
    result = service.execute("tidy", {"title": "LAMP", "name": " x ", "tags": "old"})
    assert result["output"] == {"title": "lamp", "name": "x", "tags": ["old", "new"]}


def test_an_imported_condition_and_failure_handler_run_as_elasticsearch_documents_them(
    service: PipelineService,
) -> None:
    # Cases from the Elasticsearch reference: "Conditionally run a processor" and "Handling pipeline failures"
    # (ingest.html#conditionally-run-processor, #handling-pipeline-failures), on_failure_message in a template.
    body = {
        "processors": [
            {"set": {"field": "flag", "value": "spam", "if": "ctx.category == 'spam'"}},
            {"rename": {"field": "missing", "target_field": "x",
                        "on_failure": [{"set": {"field": "error", "value": "{{ _ingest.on_failure_message }}"}}]}},
        ]
    }  # fmt: skip
    answer = import_pipeline(
        service, body, "cond", "elasticsearch", accept_losses=False, dry_run=False, how_to_accept=""
    )
    assert answer["stored"] is True
    spam = service.execute("cond", {"category": "spam"}, verbose=False)["output"]
    toys = service.execute("cond", {"category": "toys"}, verbose=False)["output"]
    assert spam["flag"] == "spam" and "flag" not in toys
    assert "missing" in spam["error"] and "missing" in toys["error"] and "x" not in spam


# --- HTTP: _import and ?format=elasticsearch ---------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    data = tmp_path_factory.mktemp("compat")
    with (
        PipelineService.open(data) as service,
        TantivyBackend(data) as backend,
        serve_app(create_app(service, backend)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


def test_import_route_stores_and_export_route_round_trips(client: httpx.Client) -> None:
    body = copy.deepcopy(FULL)
    body["processors"] = [p for p in body["processors"] if "pipeline" not in p]
    answer = client.post("/_pipeline/full/_import", params={"from": "elasticsearch"}, json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] is True and answer.json()["report"] == []
    assert client.get("/_pipeline/full").json()["version"] == "7.0.0"
    assert client.get("/_pipeline/full", params={"format": "elasticsearch"}).json() == body


def test_import_route_refuses_a_lossy_translation_unless_accepted_and_dry_run_stores_nothing(
    client: httpx.Client,
) -> None:
    body = {"processors": [{"trim": {"field": "a"}}, {"grok": {"field": "m", "patterns": ["%{WORD:w}"]}}]}
    dry = client.post("/_pipeline/lossy/_import", params={"from": "elasticsearch", "dry_run": "true"}, json=body)
    assert dry.status_code == 200 and dry.json()["stored"] is False
    assert dry.json()["report"] == [{"path": "processors[1]", "reason": "[grok] has no equivalent", "lossy": True}]
    assert client.get("/_pipeline/lossy").status_code == 404
    refused = client.post("/_pipeline/lossy/_import", params={"from": "elasticsearch"}, json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["problems"][0] == {"path": "processors[1]", "message": "[grok] has no equivalent"}
    assert client.get("/_pipeline/lossy").status_code == 404
    accepted = client.post(
        "/_pipeline/lossy/_import", params={"from": "elasticsearch", "accept_losses": "true"}, json=body
    )
    assert accepted.status_code == 200 and accepted.json()["pipelines"][0]["name"] == "lossy"
    unknown = client.post("/_pipeline/x/_import", params={"from": "solr"}, json=body)
    assert unknown.status_code == 400


def test_export_route_names_what_cannot_be_expressed(client: httpx.Client) -> None:
    copier = {"name": "c", "type": "native", "config": {"processor": "copy", "field": "a", "target_field": "b"}}
    definition = {"version": "1.0.0", "type": "document", "stages": [copier]}
    assert client.put("/_pipeline/copier", json=definition).status_code == 200
    answer = client.get("/_pipeline/copier", params={"format": "elasticsearch"})
    assert answer.status_code == 400
    assert answer.json()["error"]["problems"] == [
        {"path": "stages[0].config.processor", "message": "[copy] has no Elasticsearch processor"}
    ]


# --- the import command ------------------------------------------------------------------------------------


def test_import_command_dry_run_prints_translation_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "Web Logs.json"
    source.write_bytes(orjson.dumps({"processors": [{"trim": {"field": "a"}}, {"script": {"source": "x"}}]}))
    assert main(["import", str(source), "--from", "elasticsearch", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    answer = orjson.loads(out)
    assert answer["stored"] is False and answer["definitions"][0]["name"] == "web-logs"
    assert "processors[1]" in err and "[script] has no equivalent" in err


def test_import_command_stores_into_a_data_dir_only_when_losses_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file holding a GET _ingest/pipeline/{id} answer: the id names the pipeline.
    source = tmp_path / "export.json"
    source.write_bytes(orjson.dumps({"logs": {"processors": [{"trim": {"field": "a"}}, {"grok": {"field": "m"}}]}}))
    data = tmp_path / "data"
    assert main(["import", str(source), "--from", "elasticsearch", "--data-dir", str(data)]) == 1
    assert "processors[1]" in capsys.readouterr().err
    with PipelineService.open(data) as service:
        assert service.list_pipelines()["total"] == 0
    assert main(["import", str(source), "--from", "elasticsearch", "--data-dir", str(data), "--accept-losses"]) == 0
    capsys.readouterr()
    with PipelineService.open(data) as service:
        assert [s["name"] for s in service.get_pipeline("logs")["stages"]] == ["trim-0"]
    assert main(["import", str(source), "--from", "elasticsearch"]) == 1
    assert "give --data-dir or --url" in capsys.readouterr().err


def test_import_command_through_a_server_url(
    client: httpx.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "p.json"
    source.write_bytes(orjson.dumps({"processors": [{"uppercase": {"field": "a"}}]}))
    assert (
        main(["import", str(source), "--from", "elasticsearch", "--url", str(client.base_url), "--name", "upper"]) == 0
    )
    assert orjson.loads(capsys.readouterr().out)["pipelines"][0]["name"] == "upper"
    assert client.get("/_pipeline/upper", params={"format": "elasticsearch"}).json() == orjson.loads(
        source.read_bytes()
    )
