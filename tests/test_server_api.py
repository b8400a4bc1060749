"""The HTTP API of DESIGN §6 over real HTTP (uvicorn on a loopback port), with the real service and tantivy:
every route's success and error paths, including 401, 404, 405, 409 and 413."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from quidditch_pipeline import PipelineService
from quidditch_pipeline.server import ServerLimits, TantivyBackend, create_app
from quidditch_pipeline.udf import UdfRuntime

from .server_harness import PYTHON, TEST_UDF_SOURCE, put_probe, serve_app, served_data_dir
from .udf_fixtures import BuiltUdf

WASM = {"content-type": "application/wasm"}
NDJSON = {"content-type": "application/x-ndjson"}


@dataclass
class Stack:
    service: PipelineService
    backend: TantivyBackend
    client: httpx.Client
    data_dir: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("api")
    with (
        served_data_dir(data) as (service, backend, url),
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        response = put_probe(client)
        assert response.status_code == 201, response.text
        yield Stack(service, backend, client, data)


@pytest.fixture
def client(stack: Stack) -> httpx.Client:
    return stack.client


_names = itertools.count()


@pytest.fixture
def index(client: httpx.Client) -> str:
    """A fresh index (refresh on every write is asked for explicitly by the tests that search)."""
    name = f"idx-{next(_names)}"
    assert client.put(f"/{name}").status_code == 200
    return name


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def native(name: str, processor: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


def python(name: str, **params: Any) -> dict[str, Any]:
    return {"name": name, "type": "python", "config": {"udf_name": "probe", "parameters": params}}


def put_pipeline(client: httpx.Client, kind: str, *stages: dict[str, Any], name: str | None = None) -> str:
    name = name or unique(kind)
    response = client.put(f"/_pipeline/{name}", json={"version": "1.0.0", "type": kind, "stages": list(stages)})
    assert response.status_code == 200, response.text
    return name


def error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """The ES-style error body of ``response``, checked for its status and type."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    assert body["error"]["type"] == error_type, body
    assert body["error"]["root_cause"][0]["type"] == error_type
    assert isinstance(body["error"]["reason"], str) and body["error"]["reason"]
    return dict(body["error"])


def bulk_body(*lines: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def search_ids(client: httpx.Client, index: str, body: dict[str, Any] | None = None, **params: str) -> list[str]:
    response = client.post(f"/{index}/_search", json=body or {}, params=params)
    assert response.status_code == 200, response.text
    return [hit["_id"] for hit in response.json()["hits"]["hits"]]


# --------------------------------------------------------------------------------------------- root and errors


def test_root_answers_server_info_and_ping(client: httpx.Client) -> None:
    info = client.get("/").json()
    assert info["version"]["distribution"] == "quidditch-pipeline"
    assert info["cluster_name"] == "quidditch"
    assert client.head("/").status_code == 200


def test_unknown_route_is_400_and_wrong_method_405_with_es_bodies(client: httpx.Client, index: str) -> None:
    reason = error(client.get("/a/b/c/d"), 400, "illegal_argument_exception")["reason"]
    assert reason == "no handler found for uri [/a/b/c/d] and method [GET]"
    response = client.patch(f"/{index}")
    error(response, 405, "method_not_allowed_exception")
    assert set(response.headers["allow"].split(", ")) == {"DELETE", "GET", "HEAD", "PUT"}


def test_parameter_validation_is_400_naming_the_field(client: httpx.Client, index: str) -> None:
    body = error(client.get("/_pipeline/x", params={"revision": "abc"}), 400, "illegal_argument_exception")
    assert "query.revision" in body["reason"]
    assert body["problems"][0]["path"] == "query.revision"
    body = error(
        client.put(f"/{index}/_doc/1", params={"refresh": "sometimes"}, json={}), 400, "illegal_argument_exception"
    )
    assert "query.refresh" in body["reason"]


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b""])
def test_bodies_must_be_json_objects(client: httpx.Client, index: str, payload: bytes) -> None:
    response = client.put(f"/{index}/_doc/1", content=payload, headers={"content-type": "application/json"})
    assert "request body" in error(response, 400, "parse_exception")["reason"]


def test_pretty_indents_json(client: httpx.Client) -> None:
    response = client.get("/", params={"pretty": ""})
    assert response.text.startswith("{\n  ")
    assert response.json()["cluster_name"] == "quidditch"
    assert int(response.headers["content-length"]) == len(response.content)


def test_openapi_schema_lists_every_route(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, methods in {
        "/_pipeline": {"get"},
        "/_pipeline/{name}": {"put", "post", "get", "delete"},
        "/_pipeline/{name}/_execute": {"post"},
        "/_pipeline/_execute": {"post"},
        "/_pipeline/{name}/_history": {"get"},
        "/_pipeline/{name}/_stats": {"get"},
        "/_pipeline/_stats": {"get"},
        "/_pipeline/{name}/_stats/_reset": {"post"},
        "/_udf": {"get"},
        "/_udf/{name}": {"get"},
        "/_udf/{name}/{version}": {"put", "delete"},
        "/_udf/{name}/_execute": {"post"},
        "/_udf/_execute": {"post"},
        "/": {"get", "head"},
        "/{index}": {"put", "get", "head", "delete"},
        "/{index}/_settings": {"get", "put"},
        "/{index}/_doc/{doc_id}": {"put", "post", "get", "head", "delete"},
        "/{index}/_doc": {"post"},
        "/_bulk": {"post", "put"},
        "/{index}/_bulk": {"post", "put"},
        "/{index}/_search": {"get", "post"},
        "/{index}/_count": {"get", "post"},
    }.items():
        assert methods <= set(paths[path]), path
    definition = schema["components"]["schemas"]["PipelineDefinition"]
    assert "stages" in definition["required"] and "name" not in definition["required"]


# --------------------------------------------------------------------------------------------- pipelines


def test_pipeline_put_revisions_get_list_history(client: httpx.Client) -> None:
    name = unique("crud")
    definition = {"version": "1.0.0", "type": "document", "stages": [native("lower", "lowercase", field="t")]}
    first = client.put(f"/_pipeline/{name}", json=definition).json()
    assert first == {"acknowledged": True, "name": name, "version": "1.0.0", "revision": 1, "created": True}
    second = client.post(f"/_pipeline/{name}", json={**definition, "name": name, "version": "1.1.0"}).json()
    assert (second["revision"], second["created"], second["version"]) == (2, False, "1.1.0")
    latest = client.get(f"/_pipeline/{name}").json()
    assert (latest["version"], latest["revision"]) == ("1.1.0", 2)
    assert {"created_at", "updated_at"} <= set(latest)
    assert client.get(f"/_pipeline/{name}", params={"revision": 1}).json()["version"] == "1.0.0"
    error(client.get(f"/_pipeline/{name}", params={"revision": 9}), 404, "resource_not_found_exception")
    history = client.get(f"/_pipeline/{name}/_history").json()
    assert [(r["revision"], r["version"]) for r in history["revisions"]] == [(1, "1.0.0"), (2, "1.1.0")]
    listed = client.get("/_pipeline", params={"type": "document"}).json()
    names = [p["name"] for p in listed["pipelines"]]
    assert name in names and names == sorted(names) and listed["total"] == len(names)
    assert name not in [p["name"] for p in client.get("/_pipeline", params={"type": "query"}).json()["pipelines"]]
    error(client.get("/_pipeline", params={"type": "nope"}), 400, "illegal_argument_exception")


def test_pipeline_yaml_body(client: httpx.Client) -> None:
    name = unique("yaml")
    text = (
        f"name: {name}\nversion: 1.0.0\ntype: query\nstages:\n  - name: s\n    type: native\n"
        "    config: {processor: set, field: size, value: 1}\n"
    )
    response = client.put(f"/_pipeline/{name}", content=text, headers={"content-type": "application/yaml"})
    assert response.status_code == 200, response.text
    assert client.get(f"/_pipeline/{name}").json()["type"] == "query"


def test_invalid_definitions_are_400_with_field_paths(client: httpx.Client) -> None:
    body = error(
        client.put(
            "/_pipeline/bad",
            json={"version": "1.0.0", "type": "document", "stages": [{"name": "p", "type": "python", "config": {}}]},
        ),
        400,
        "parse_exception",
    )
    assert any(p["path"].startswith("stages[0].config") for p in body["problems"])
    mismatch = client.put("/_pipeline/one", json={"name": "two", "version": "1.0.0", "type": "query", "stages": []})
    assert mismatch.status_code == 400
    error(
        client.put("/_pipeline/x", content=b"[]", headers={"content-type": "application/json"}), 400, "parse_exception"
    )
    target = client.put(
        "/_pipeline/calls-missing",
        json={
            "version": "1.0.0",
            "type": "document",
            "stages": [{"name": "c", "type": "pipeline", "config": {"pipeline": "does-not-exist"}}],
        },
    )
    assert target.status_code in {400, 404}


def test_pipeline_delete_404_and_409_while_used(client: httpx.Client) -> None:
    error(client.delete("/_pipeline/never-stored"), 404, "resource_not_found_exception")
    inner = put_pipeline(client, "document", native("s", "set", field="a", value=1))
    outer = put_pipeline(client, "document", {"name": "call", "type": "pipeline", "config": {"pipeline": inner}})
    assert inner in error(client.delete(f"/_pipeline/{inner}"), 409, "illegal_state_exception")["reason"]
    assert outer in error(client.delete(f"/_pipeline/{inner}"), 409, "illegal_state_exception")["reason"]
    name = unique("used")
    assert client.put(f"/{name}", json={"settings": {"index.document.default_pipeline": outer}}).status_code == 200
    assert f"index [{name}]" in error(client.delete(f"/_pipeline/{outer}"), 409, "illegal_state_exception")["reason"]
    assert client.delete(f"/{name}").status_code == 200
    assert client.delete(f"/_pipeline/{outer}").json() == {"acknowledged": True}
    assert client.delete(f"/_pipeline/{inner}").json() == {"acknowledged": True}
    error(client.get(f"/_pipeline/{inner}"), 404, "resource_not_found_exception")


def test_execute_stored_single_batch_and_failure(client: httpx.Client) -> None:
    name = put_pipeline(
        client, "document", native("lower", "lowercase", field="t"), native("num", "convert", field="n", type="int")
    )
    single = client.post(f"/_pipeline/{name}/_execute", json={"input": {"t": "ABC", "n": "4"}}).json()
    assert single["status"] == "success" and single["output"] == {"t": "abc", "n": 4}
    assert [s["name"] for s in single["stages"]] == ["lower", "num"]
    batch = client.post(
        f"/_pipeline/{name}/_execute", json={"inputs": [{"t": "X", "n": "1"}, {"t": "Y", "n": "z"}], "verbose": False}
    ).json()
    assert [r["status"] for r in batch["results"]] == ["success", "failed"]
    assert batch["results"][1]["error"]
    error(client.post("/_pipeline/never-stored/_execute", json={"input": {}}), 404, "resource_not_found_exception")
    error(client.post(f"/_pipeline/{name}/_execute", json={"input": [1]}), 400, "illegal_argument_exception")
    body = error(client.post(f"/_pipeline/{name}/_execute", json={"input": {}, "inputs": []}), 400, "parse_exception")
    assert body["problems"][0]["path"] == "input"
    error(client.post(f"/_pipeline/{name}/_execute", json={"input": {}, "extra": 1}), 400, "parse_exception")


def test_execute_inline_pipeline(client: httpx.Client) -> None:
    pipeline = {"type": "query", "stages": [native("size", "set", field="size", value=3)]}
    result = client.post("/_pipeline/_execute", json={"pipeline": pipeline, "input": {"query": {}}}).json()
    assert result["output"] == {"query": {}, "size": 3}
    error(client.post("/_pipeline/_execute", json={"input": {}}), 400, "parse_exception")
    body = error(
        client.post(
            "/_pipeline/_execute", json={"pipeline": {"type": "query", "stages": [{"name": "x"}]}, "input": {}}
        ),
        400,
        "parse_exception",
    )
    assert body["problems"]


def test_execute_with_the_wasm_udf(client: httpx.Client) -> None:
    name = put_pipeline(client, "document", python("flag", mode="flag", field="seen"))
    result = client.post(f"/_pipeline/{name}/_execute", json={"input": {"a": 1}}).json()
    assert result["status"] == "success" and result["output"] == {"a": 1, "seen": True}
    failing = put_pipeline(client, "document", python("boom", mode="fail"))
    failed = client.post(f"/_pipeline/{failing}/_execute", json={"input": {"a": 1}})
    assert failed.status_code == 200 and failed.json()["status"] == "failed"


def test_stats_and_reset(client: httpx.Client) -> None:
    name = put_pipeline(client, "document", native("s", "set", field="a", value=1))
    for _ in range(3):
        client.post(f"/_pipeline/{name}/_execute", json={"input": {}})
    stats = client.get(f"/_pipeline/{name}/_stats").json()
    assert stats["count"] == 3 and stats["stages"][0]["name"] == "s"
    assert name in client.get("/_pipeline/_stats").json()["pipelines"]
    assert client.post(f"/_pipeline/{name}/_stats/_reset").json() == {"acknowledged": True}
    assert client.get(f"/_pipeline/{name}/_stats").json()["count"] == 0
    assert client.post("/_pipeline/_stats/_reset").json() == {"acknowledged": True}
    error(client.get("/_pipeline/never-stored/_stats"), 404, "resource_not_found_exception")
    error(client.post("/_pipeline/never-stored/_stats/_reset"), 404, "resource_not_found_exception")


# --------------------------------------------------------------------------------------------- UDFs


def test_udf_upload_list_versions_delete(
    client: httpx.Client, stack: Stack, hostile_udf: BuiltUdf, udf_runtime: UdfRuntime
) -> None:
    wasm = hostile_udf.wasm  # a component from the session's cache
    # ... and its compiled form too (this test is about the routes, not compiling): the server's runtime maps
    # it back from its cache instead of compiling the component again.
    udf_runtime.load(hostile_udf.sha256, hostile_udf.path)
    compiled = udf_runtime.compiled_path(hostile_udf.sha256)
    target = stack.service.runtime.compiled_path(hostile_udf.sha256)
    assert compiled is not None and target is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(compiled, target)
    created = client.put("/_udf/copy/1.0.0", content=wasm, headers=WASM)
    assert created.status_code == 201
    assert created.json()["size"] == len(wasm) and len(created.json()["sha256"]) == 64
    again = client.put("/_udf/copy/1.0.0", content=wasm, headers=WASM)
    assert again.status_code == 200 and again.json()["created"] is False
    # Without a Content-Type the magic number tells a component from source.
    assert client.put("/_udf/copy/1.1.0", content=wasm).status_code == 201
    error(client.put("/_udf/copy/1.0.0", content=wasm + b"\0", headers=WASM), 409, "illegal_state_exception")
    listed = {u["name"]: u["versions"] for u in client.get("/_udf").json()["udfs"]}
    assert listed["copy"] == ["1.0.0", "1.1.0"]
    versions = client.get("/_udf/copy").json()
    assert [v["version"] for v in versions["versions"]] == ["1.0.0", "1.1.0"]
    error(client.get("/_udf/never-registered"), 404, "resource_not_found_exception")
    pinned = put_pipeline(
        client, "document", {"name": "p", "type": "python", "config": {"udf_name": "copy", "udf_version": "1.0.0"}}
    )
    error(client.delete("/_udf/copy/1.0.0"), 409, "illegal_state_exception")
    assert client.delete(f"/_pipeline/{pinned}").status_code == 200
    assert client.delete("/_udf/copy/1.0.0").json() == {"acknowledged": True}
    error(client.delete("/_udf/copy/1.0.0"), 404, "resource_not_found_exception")
    error(client.put("/_udf/Bad_Name/1.0.0", content=wasm, headers=WASM), 400, "parse_exception")
    error(client.put("/_udf/copy/not-semver", content=wasm, headers=WASM), 400, "parse_exception")


def test_udf_build_errors_are_400_with_the_line(client: httpx.Client) -> None:
    body = error(
        client.put(
            "/_udf/broken/1.0.0",
            content="def process(value, params):\n    return (\n",
            headers={"content-type": "text/x-python"},
        ),
        400,
        "udf_build_exception",
    )
    assert body["line"] is not None
    error(
        client.put("/_udf/broken/1.0.0", content=b"\xff\xfe", headers={"content-type": "text/x-python"}),
        400,
        "illegal_argument_exception",
    )


def test_udf_execute_shows_raw_and_mapped(client: httpx.Client) -> None:
    result = client.post("/_udf/probe/_execute", json={"input": {"a": 1}, "params": {"mode": "flag"}}).json()
    assert result["raw"] == {"flagged": True}
    assert result["mapped"] == {"a": 1, "flagged": True} and result["status"] == "success"
    hit = {"_id": "1", "_score": 1.0, "_source": {"rank": 7}}
    scored = client.post("/_udf/probe/_execute", json={"input": hit, "params": {"mode": "score"}, "type": "result"})
    assert scored.json()["raw"] == 7.0
    failed = client.post("/_udf/probe/_execute", json={"input": {}, "params": {"mode": "fail"}}).json()
    assert failed["status"] == "failed" and "on purpose" in failed["error"]["reason"]
    error(client.post("/_udf/never-registered/_execute", json={"input": {}}), 404, "resource_not_found_exception")
    body = error(client.post("/_udf/probe/_execute", json={"params": {}}), 400, "parse_exception")
    assert body["problems"][0]["path"] == "input"
    error(client.post("/_udf/probe/_execute", json={"input": {}, "type": "other"}), 400, "parse_exception")


# --------------------------------------------------------------------------------------------- indexes


def test_index_lifecycle_and_settings(stack: Stack) -> None:
    client, service = stack.client, stack.service
    doc = put_pipeline(client, "document", native("s", "set", field="a", value=1))
    query = put_pipeline(client, "query", native("s", "set", field="size", value=1))
    name = unique("life")
    created = client.put(
        f"/{name}",
        json={"settings": {"index": {"document": {"default_pipeline": doc}}, "index.refresh_interval": "2s"}},
    )
    assert created.json() == {"acknowledged": True, "shards_acknowledged": True, "index": name}
    assert service.associations(name) == {"document": doc}
    assert client.head(f"/{name}").status_code == 200
    got = client.get(f"/{name}").json()[name]
    assert got["settings"]["index"]["document"]["default_pipeline"] == doc
    assert got["settings"]["index"]["refresh_interval"] == "2s"
    flat = client.get(f"/{name}/_settings", params={"flat_settings": "true"}).json()[name]["settings"]
    assert flat["index.document.default_pipeline"] == doc and flat["index.number_of_shards"] == "1"
    assert client.put(f"/{name}/_settings", json={"index.query.default_pipeline": query}).status_code == 200
    assert service.associations(name) == {"document": doc, "query": query}
    assert client.put(f"/{name}/_settings", json={"index": {"document": {"default_pipeline": None}}}).status_code == 200
    assert service.associations(name) == {"query": query}
    nested = client.get(f"/{name}/_settings").json()[name]["settings"]["index"]
    assert "document" not in nested and nested["query"]["default_pipeline"] == query
    # A pipeline of the wrong type, or an unknown one, is refused and changes nothing.
    error(
        client.put(f"/{name}/_settings", json={"index.result.default_pipeline": query}), 409, "illegal_state_exception"
    )
    error(
        client.put(f"/{name}/_settings", json={"index.document.default_pipeline": "ghost"}),
        404,
        "resource_not_found_exception",
    )
    error(client.put(f"/{name}/_settings", json={"index.colour": "blue"}), 400, "illegal_argument_exception")
    assert service.associations(name) == {"query": query}
    assert client.delete(f"/{name}").json() == {"acknowledged": True}
    assert service.associations(name) == {}
    assert client.head(f"/{name}").status_code == 404
    error(client.get(f"/{name}"), 404, "index_not_found_exception")
    error(client.delete(f"/{name}"), 404, "index_not_found_exception")
    error(client.get(f"/{name}/_settings"), 404, "index_not_found_exception")
    error(client.put(f"/{name}/_settings", json={"index.refresh_interval": "1s"}), 404, "index_not_found_exception")


def test_objects_that_are_not_mapped_are_accepted_and_ignored(client: httpx.Client) -> None:
    """As a gateway creates its failure stores upstream: a schemaless index maps nothing to conflict anyway."""
    name = unique("unmapped")
    mappings = {"properties": {"document": {"properties": {"source": {"type": "object", "enabled": False}}},
                               "body": {"enabled": False}}}  # fmt: skip
    assert client.put(f"/{name}", json={"mappings": mappings}).status_code == 200
    put = client.put(f"/{name}/_doc/1?refresh=true", json={"document": {"source": {"a": [1, {"b": "x"}]}}})
    assert put.status_code == 201
    assert client.get(f"/{name}/_doc/1").json()["_source"] == {"document": {"source": {"a": [1, {"b": "x"}]}}}
    for refused in (
        {"properties": {"document": {"type": "object", "enabled": True}}},
        {"properties": {"document": {"properties": {"source": {"type": "keyword"}}}}},
        {"properties": {"body": {"type": "nested", "enabled": False}}},
        {"dynamic": False, "properties": {"body": {"enabled": False}}},
    ):
        answer = client.put(f"/{unique('mapped')}", json={"mappings": refused})
        assert "[mappings] is not supported" in error(answer, 400, "illegal_argument_exception")["reason"]


def test_index_creation_errors(client: httpx.Client, stack: Stack) -> None:
    name = unique("twice")
    assert client.put(f"/{name}").status_code == 200
    # Named as Elasticsearch names them: a gateway in front of this server maps them back by the index.
    assert error(client.put(f"/{name}"), 400, "resource_already_exists_exception")["index"] == name
    assert error(client.get(f"/{name}x/_settings"), 404, "index_not_found_exception")["index"] == f"{name}x"
    assert "lowercase" in error(client.put("/Upper"), 400, "invalid_index_name_exception")["reason"]
    error(client.put("/_underscore"), 400, "invalid_index_name_exception")
    error(
        client.put(f"/{unique('m')}", json={"mappings": {"properties": {"a": {"type": "text"}}}}),
        400,
        "illegal_argument_exception",
    )
    error(
        client.put(f"/{unique('s')}", json={"settings": {"index.number_of_shards": 3}}),
        400,
        "illegal_argument_exception",
    )
    ghost = unique("ghost")
    error(
        client.put(f"/{ghost}", json={"settings": {"index.document.default_pipeline": "ghost"}}),
        404,
        "resource_not_found_exception",
    )
    # A refused creation leaves no index and no association behind.
    assert client.head(f"/{ghost}").status_code == 404
    assert stack.service.associations(ghost) == {}


def test_cat_indices_and_refresh(client: httpx.Client, index: str) -> None:
    client.put(f"/{index}/_doc/1", json={"a": 1})
    assert client.post(f"/{index}/_refresh").status_code == 200
    rows = {row["index"]: row for row in client.get("/_cat/indices", params={"format": "json"}).json()}
    assert rows[index]["docs.count"] == "1"
    assert index in client.get("/_cat/indices").text
    assert client.post("/_refresh").status_code == 200
    error(client.post("/missing-index/_refresh"), 404, "index_not_found_exception")


# --------------------------------------------------------------------------------------------- documents


def test_document_crud(client: httpx.Client, index: str) -> None:
    created = client.put(f"/{index}/_doc/1", json={"title": "one"})
    assert created.status_code == 201
    assert created.json() | {"_shards": None} == {
        "_index": index,
        "_id": "1",
        "_version": 1,
        "result": "created",
        "_shards": None,
    }
    updated = client.post(f"/{index}/_doc/1", json={"title": "uno"})
    assert (updated.status_code, updated.json()["result"], updated.json()["_version"]) == (200, "updated", 2)
    got = client.get(f"/{index}/_doc/1").json()
    assert got == {"_index": index, "_id": "1", "_version": 2, "found": True, "_source": {"title": "uno"}}
    assert client.head(f"/{index}/_doc/1").status_code == 200
    auto = client.post(f"/{index}/_doc", json={"title": "auto"})
    assert auto.status_code == 201 and len(auto.json()["_id"]) == 20
    assert client.get(f"/{index}/_doc/{auto.json()['_id']}").json()["_source"] == {"title": "auto"}
    error(client.put(f"/{index}/_create/1", json={}), 409, "version_conflict_engine_exception")
    error(
        client.put(f"/{index}/_doc/1", params={"op_type": "create"}, json={}), 409, "version_conflict_engine_exception"
    )
    assert client.put(f"/{index}/_create/2", json={"title": "two"}).status_code == 201
    slash = client.put(f"/{index}/_doc/a%2Fb", json={"x": 1})
    assert slash.status_code == 201 and slash.json()["_id"] == "a/b"
    assert client.get(f"/{index}/_doc/a%2Fb").json()["_source"] == {"x": 1}
    deleted = client.delete(f"/{index}/_doc/1")
    assert (deleted.status_code, deleted.json()["result"]) == (200, "deleted")
    missing = client.get(f"/{index}/_doc/1")
    assert missing.status_code == 404 and missing.json() == {"_index": index, "_id": "1", "found": False}
    assert client.head(f"/{index}/_doc/1").status_code == 404
    gone = client.delete(f"/{index}/_doc/1")
    assert (gone.status_code, gone.json()["result"]) == (404, "not_found")
    error(client.put(f"/{index}/_doc/{'x' * 600}", json={}), 400, "illegal_argument_exception")


def test_document_routes_on_a_missing_index(client: httpx.Client) -> None:
    for response in (
        client.put("/no-such-index/_doc/1", json={}),
        client.post("/no-such-index/_doc", json={}),
        client.get("/no-such-index/_doc/1"),
        client.delete("/no-such-index/_doc/1"),
        client.post("/no-such-index/_search", json={}),
        client.get("/no-such-index/_count"),
    ):
        error(response, 404, "index_not_found_exception")
    assert client.head("/no-such-index/_doc/1").status_code == 404


def test_refresh_true_makes_a_write_searchable_at_once(client: httpx.Client) -> None:
    name = unique("slow")
    client.put(f"/{name}", json={"settings": {"index": {"refresh_interval": "-1"}}})
    client.put(f"/{name}/_doc/1", json={"title": "hidden"})
    assert search_ids(client, name) == []
    refreshed = client.put(f"/{name}/_doc/2", params={"refresh": "true"}, json={"title": "seen"})
    assert refreshed.json()["forced_refresh"] is True
    assert sorted(search_ids(client, name)) == ["1", "2"]
    client.put(f"/{name}/_doc/3", params={"refresh": "wait_for"}, json={})
    assert client.get(f"/{name}/_count").json()["count"] == 3


def test_document_pipeline_hook_drop_abort_override(client: httpx.Client) -> None:
    pipeline = put_pipeline(
        client,
        "document",
        native("lower", "lowercase", field="title"),
        python("spam", mode="keep_unless", path="spam"),
        native("price", "convert", field="price", type="float", ignore_missing=True),
    )
    other = put_pipeline(client, "document", native("tag", "set", field="via", value="other"))
    name = unique("hooked")
    client.put(f"/{name}", json={"settings": {"index.document.default_pipeline": pipeline}})
    assert client.put(f"/{name}/_doc/1", json={"title": "LOUD"}).status_code == 201
    assert client.get(f"/{name}/_doc/1").json()["_source"] == {"title": "loud"}
    dropped = client.put(f"/{name}/_doc/2", json={"title": "buy", "spam": True})
    assert dropped.status_code == 200 and dropped.json()["result"] == "noop"
    assert client.get(f"/{name}/_doc/2").status_code == 404
    body = error(
        client.put(f"/{name}/_doc/3", json={"title": "x", "price": "cheap"}), 400, "pipeline_execution_exception"
    )
    assert (body["pipeline"], body["stage"]) == (pipeline, "price")
    assert body["caused_by"]["reason"] and pipeline in body["reason"] and "price" in body["reason"]
    assert client.get(f"/{name}/_doc/3").status_code == 404
    skipped = client.put(f"/{name}/_doc/4", params={"pipeline": "_none"}, json={"title": "AS IS", "spam": True})
    assert skipped.status_code == 201
    assert client.get(f"/{name}/_doc/4").json()["_source"] == {"title": "AS IS", "spam": True}
    client.put(f"/{name}/_doc/5", params={"pipeline": other}, json={"title": "KEPT"})
    assert client.get(f"/{name}/_doc/5").json()["_source"] == {"title": "KEPT", "via": "other"}
    refused = client.put(f"/{name}/_doc/6", params={"pipeline": "ghost"}, json={})
    ghost = error(refused, 400, "illegal_argument_exception")
    assert f"index [{name}]: document pipeline [ghost] is unavailable" in ghost["reason"]  # fail closed


# --------------------------------------------------------------------------------------------- bulk


def test_bulk_mixed_actions_and_per_item_results(client: httpx.Client, index: str) -> None:
    payload = bulk_body(
        {"index": {"_index": index, "_id": "1"}}, {"n": 1},
        {"create": {"_index": index, "_id": "2"}}, {"n": 2},
        {"index": {"_index": index}}, {"n": 3},
        {"create": {"_index": index, "_id": "1"}}, {"n": 4},
        {"delete": {"_index": index, "_id": "2"}},
        {"delete": {"_index": index, "_id": "never"}},
        {"update": {"_index": index, "_id": "1"}}, {"doc": {"n": 5}},
        {"index": {"_index": "missing-index", "_id": "1"}}, {"n": 6},
        {"index": {"_index": "Bad Name", "_id": "1"}}, {"n": 7},
    )  # fmt: skip
    response = client.post("/_bulk", content=payload, headers=NDJSON, params={"refresh": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["errors"] is True and isinstance(body["took"], int)
    items = [(action, item.get("result"), item["status"]) for entry in body["items"] for action, item in entry.items()]
    assert items == [
        ("index", "created", 201),
        ("create", "created", 201),
        ("index", "created", 201),
        ("create", None, 409),
        ("delete", "deleted", 200),
        ("delete", "not_found", 404),
        ("update", None, 400),
        ("index", None, 404),
        ("index", None, 400),
    ]
    assert body["items"][7]["index"]["error"]["type"] == "index_not_found_exception"
    assert body["items"][8]["index"]["error"]["type"] == "invalid_index_name_exception"
    assert client.get(f"/{index}/_count").json()["count"] == 2


def test_bulk_with_default_index_and_json_content_type(client: httpx.Client, index: str) -> None:
    payload = bulk_body({"index": {"_id": "a"}}, {"v": 1}, {"index": {"_id": "b"}}, {"v": 2})
    response = client.put(f"/{index}/_bulk", content=payload, headers={"content-type": "application/json"})
    assert response.json()["errors"] is False
    assert [next(iter(i.values()))["_index"] for i in response.json()["items"]] == [index, index]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"index": {"_index": "x"}}\n', "needs a source line"),
        (b"not json\n", "not valid JSON"),
        (b'{"upsert": {}}\n{}\n', "unknown action"),
        (b'{"index": {"_index": "x", "colour": 1}}\n{}\n', "unknown action parameter"),
        (b'{"index": {}}\n{}\n', "index is missing"),
        (b'{"delete": {"_index": "x"}}\n', "id is missing"),
        (b'{"index": {"_index": "x"}, "delete": {}}\n{}\n', "one key"),
    ],
)
def test_malformed_bulk_requests_fail_whole(client: httpx.Client, payload: bytes, reason: str) -> None:
    assert reason in error(client.post("/_bulk", content=payload, headers=NDJSON), 400, "parse_exception")["reason"]


def test_bulk_runs_the_document_pipeline_per_item(client: httpx.Client, stack: Stack) -> None:
    pipeline = put_pipeline(
        client,
        "document",
        python("spam", mode="keep_unless", path="spam"),
        native("n", "convert", field="n", type="int"),
    )
    name = unique("bulkhook")
    client.put(f"/{name}", json={"settings": {"index.document.default_pipeline": pipeline}})
    client.post(f"/_pipeline/{pipeline}/_stats/_reset")
    payload = bulk_body(
        {"index": {"_id": "ok"}}, {"n": "1"},
        {"index": {"_id": "spam"}}, {"n": "2", "spam": True},
        {"index": {"_id": "bad"}}, {"n": "two"},
        {"index": {"_id": "ok2"}}, {"n": "4"},
        {"index": {"_id": "raw", "pipeline": "_none"}}, {"n": "5", "spam": True},
    ) + b'{"index": {"_id": "broken"}}\n{not json\n'  # fmt: skip
    body = client.post(f"/{name}/_bulk", content=payload, headers=NDJSON, params={"refresh": "true"}).json()
    results = {next(iter(i.values()))["_id"]: next(iter(i.values())) for i in body["items"]}
    assert results["ok"]["result"] == "created" and results["ok2"]["result"] == "created"
    assert results["spam"]["result"] == "noop" and results["spam"]["status"] == 200
    assert results["bad"]["status"] == 400
    assert results["bad"]["error"]["type"] == "pipeline_execution_exception"
    assert (results["bad"]["error"]["pipeline"], results["bad"]["error"]["stage"]) == (pipeline, "n")
    assert results["raw"]["result"] == "created"
    assert results["broken"]["error"]["type"] == "parse_exception"
    assert body["errors"] is True
    assert client.get(f"/{name}/_doc/ok").json()["_source"] == {"n": 1}
    assert client.get(f"/{name}/_doc/raw").json()["_source"] == {"n": "5", "spam": True}
    assert sorted(search_ids(client, name)) == ["ok", "ok2", "raw"]
    # One batch through the pipeline: the four documents that used it were counted once each.
    assert client.get(f"/_pipeline/{pipeline}/_stats").json()["count"] == 4


# --------------------------------------------------------------------------------------------- search


def _catalog(client: httpx.Client) -> str:
    name = unique("catalog")
    client.put(f"/{name}")
    payload = bulk_body(
        {"index": {"_id": "a"}}, {"title": "red notebook", "rank": 1},
        {"index": {"_id": "b"}}, {"title": "blue notebook", "rank": 3},
        {"index": {"_id": "c"}}, {"title": "green notebook", "rank": 2, "hidden": True},
        {"index": {"_id": "d"}}, {"title": "pen", "rank": 9},
    )  # fmt: skip
    client.post(f"/{name}/_bulk", content=payload, headers=NDJSON, params={"refresh": "true"})
    return name


def test_search_and_count(client: httpx.Client) -> None:
    name = _catalog(client)
    body = client.post(f"/{name}/_search", json={"query": {"match": {"title": "notebook"}}, "size": 2}).json()
    assert body["hits"]["total"] == {"value": 3, "relation": "eq"} and len(body["hits"]["hits"]) == 2
    assert body["timed_out"] is False and body["_shards"]["failed"] == 0
    assert search_ids(client, name, None, q="title:pen") == ["d"]
    get = client.request(
        "GET",
        f"/{name}/_search",
        content=orjson.dumps({"query": {"term": {"_id": "b"}}}),
        headers={"content-type": "application/json"},
    )
    assert [h["_id"] for h in get.json()["hits"]["hits"]] == ["b"]
    assert len(search_ids(client, name, None, size="1", **{"from": "1"})) == 1
    assert client.get(f"/{name}/_count", params={"q": "notebook"}).json()["count"] == 3
    assert client.post(f"/{name}/_count", json={"query": {"term": {"rank": 9}}}).json()["count"] == 1
    error(client.post(f"/{name}/_search", json={"query": {"wildcard": {}}}), 400, "parse_exception")
    error(
        client.post(f"/{name}/_search", json={"query": {"match_all": {}}}, params={"q": "x"}),
        400,
        "illegal_argument_exception",
    )
    error(client.get(f"/{name}/_search", params={"size": "-1"}), 400, "illegal_argument_exception")
    error(client.post(f"/{name}/_count", json={"size": 1}), 400, "parse_exception")


def test_query_and_result_pipelines(client: httpx.Client) -> None:
    name = _catalog(client)
    query = put_pipeline(
        client,
        "query",
        python("block", mode="keep_unless", path="ext.block"),
        native("narrow", "set", field="size", value=2),
    )
    result = put_pipeline(
        client, "result", python("hide", mode="keep_unless", path="_source.hidden"), python("rank", mode="score")
    )
    client.put(
        f"/{name}/_settings",
        json={"index": {"query": {"default_pipeline": query}, "result": {"default_pipeline": result}}},
    )
    notebooks = {"query": {"match": {"title": "notebook"}}}
    # The query pipeline cut the size to 2; tantivy's top 2 of 3 notebooks went through the result pipeline,
    # which removed the hidden one and re-scored the rest by rank.
    body = client.post(f"/{name}/_search", json={**notebooks, "size": 10}).json()
    hits = body["hits"]["hits"]
    assert len(hits) <= 2 and all(not h["_source"].get("hidden") for h in hits)
    assert [h["_score"] for h in hits] == sorted((h["_score"] for h in hits), reverse=True)
    assert all(h["_score"] == float(h["_source"]["rank"]) for h in hits)
    assert body["hits"]["max_score"] == (hits[0]["_score"] if hits else None)
    everything = client.post(
        f"/{name}/_search", json={"query": {"match_all": {}}}, params={"query_pipeline": "_none"}
    ).json()["hits"]["hits"]
    assert [h["_id"] for h in everything] == ["d", "b", "a"]
    rejected = error(
        client.post(f"/{name}/_search", json={**notebooks, "ext": {"block": True}}), 400, "query_rejected_exception"
    )
    assert rejected["pipeline"] == query
    skipped = client.post(
        f"/{name}/_search", json={**notebooks, "ext": {"block": True}}, params={"search_pipeline": "_none"}
    ).json()
    assert skipped["hits"]["total"]["value"] == 3 and len(skipped["hits"]["hits"]) == 3
    assert {h["_id"] for h in skipped["hits"]["hits"]} == {"a", "b", "c"}
    other = put_pipeline(client, "query", native("one", "set", field="size", value=1))
    assert len(search_ids(client, name, notebooks, query_pipeline=other, result_pipeline="_none")) == 1
    error(
        client.post(f"/{name}/_search", json=notebooks, params={"search_pipeline": "mine"}),
        400,
        "illegal_argument_exception",
    )
    error(
        client.post(f"/{name}/_search", json=notebooks, params={"query_pipeline": result}),
        400,
        "illegal_argument_exception",
    )
    failing = put_pipeline(client, "result", python("boom", mode="fail"))
    error(
        client.post(f"/{name}/_search", json=notebooks, params={"result_pipeline": failing}),
        400,
        "pipeline_execution_exception",
    )


# --------------------------------------------------------------------------------------------- admin token, limits


@pytest.fixture(scope="module")
def guarded(stack: Stack) -> Iterator[httpx.Client]:
    app = create_app(stack.service, stack.backend, admin_token="s3cret-token")
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


ADMIN = {"authorization": "Bearer s3cret-token"}


def test_admin_routes_need_the_token(guarded: httpx.Client) -> None:
    name = unique("guarded")
    definition = {"version": "1.0.0", "type": "document", "stages": [native("s", "set", field="a", value=1)]}
    calls = [
        ("PUT", f"/_pipeline/{name}", {"json": definition}),
        ("POST", f"/_pipeline/{name}/_execute", {"json": {"input": {}}}),
        ("POST", "/_pipeline/_execute", {"json": {"pipeline": definition, "input": {}}}),
        ("POST", f"/_pipeline/{name}/_stats/_reset", {}),
        ("POST", "/_pipeline/_stats/_reset", {}),
        ("PUT", f"/{name}", {}),
        ("PUT", f"/{name}/_settings", {"json": {"index.refresh_interval": "1s"}}),
        ("POST", "/_udf/probe/_execute", {"json": {"input": {}}}),
        ("PUT", "/_udf/probe/1.0.0", {"content": TEST_UDF_SOURCE, "params": {"mode": "source"}, "headers": PYTHON}),
        ("DELETE", f"/{name}", {}),
        ("DELETE", f"/_pipeline/{name}", {}),
    ]
    for method, path, kwargs in calls:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret-token"}):
            response = guarded.request(method, path, **{**kwargs, "headers": {**kwargs.get("headers", {}), **headers}})
            error(response, 401, "security_exception")
            assert response.headers["www-authenticate"].startswith("Bearer")
        authorised = guarded.request(method, path, **{**kwargs, "headers": {**kwargs.get("headers", {}), **ADMIN}})
        assert authorised.status_code in {200, 201}, (method, path, authorised.text)


def test_read_document_and_search_routes_stay_open(guarded: httpx.Client) -> None:
    name = unique("open")
    assert guarded.put(f"/{name}", headers=ADMIN).status_code == 200
    assert guarded.put(f"/{name}/_doc/1", json={"a": 1}, params={"refresh": "true"}).status_code == 201
    assert (
        guarded.post(f"/{name}/_bulk", content=bulk_body({"index": {"_id": "2"}}, {"a": 2}), headers=NDJSON).status_code
        == 200
    )
    for path in (
        f"/{name}/_doc/1",
        f"/{name}/_search",
        f"/{name}/_count",
        f"/{name}",
        f"/{name}/_settings",
        "/_pipeline",
        "/_pipeline/_stats",
        "/_udf",
        "/_udf/probe",
        "/",
    ):
        assert guarded.get(path).status_code == 200, path
    assert guarded.delete(f"/{name}/_doc/1").status_code == 200


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[httpx.Client]:
    limits = ServerLimits(max_body_bytes=2_000, max_bulk_items=3, max_udf_bytes=1_000)
    with (
        serve_app(create_app(stack.service, stack.backend, limits=limits)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


def test_request_limits_answer_413(limited: httpx.Client, index: str, hostile_udf: BuiltUdf) -> None:
    big = {"text": "x" * 3_000}
    error(limited.put(f"/{index}/_doc/1", json=big), 413, "request_entity_too_large_exception")
    error(
        limited.post(f"/{index}/_search", json={"query": {"match": {"text": "x" * 3_000}}}),
        413,
        "request_entity_too_large_exception",
    )
    four = bulk_body(*[line for i in range(4) for line in ({"index": {"_id": str(i)}}, {"n": i})])
    assert (
        "at most 3"
        in error(
            limited.post(f"/{index}/_bulk", content=four, headers=NDJSON), 413, "request_entity_too_large_exception"
        )["reason"]
    )
    three = bulk_body(*[line for i in range(3) for line in ({"index": {"_id": str(i)}}, {"n": i})])
    assert limited.post(f"/{index}/_bulk", content=three, headers=NDJSON).json()["errors"] is False
    error(
        limited.put("/_udf/toolarge/1.0.0", content=hostile_udf.wasm, headers=WASM),
        413,
        "request_entity_too_large_exception",
    )

    def chunks() -> Iterator[bytes]:
        # No Content-Length: the limit is enforced while the body streams in.
        for _ in range(10):
            yield b" " * 500

    streamed = limited.put(f"/{index}/_doc/2", content=chunks(), headers={"content-type": "application/json"})
    error(streamed, 413, "request_entity_too_large_exception")


def test_associations_follow_the_stored_settings_at_startup(stack: Stack) -> None:
    client, service = stack.client, stack.service
    pipeline = put_pipeline(client, "document", native("s", "set", field="a", value=1))
    name = unique("sync")
    client.put(f"/{name}", json={"settings": {"index.document.default_pipeline": pipeline}})
    service.disassociate(name, "document")
    create_app(service, stack.backend)
    assert service.associations(name) == {"document": pipeline}
