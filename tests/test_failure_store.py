"""The failure store (``index.failure_store.enabled``): documents whose pipeline failed kept as they arrived in
``X::failures`` (Elasticsearch 9's shape and ``"failure_store": "used"``), searched with the ``::failures``
selector, re-driven with ``_failure_store/_reprocess``; failed searches kept bounded, newest first; and
``POST /{index}/_simulate``, which runs what a write would and writes nothing. Over real HTTP, with the
Python API beside it."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from elasticsearch import Elasticsearch
from elasticsearch.exceptions import GeneralAvailabilityWarning
from opensearchpy import OpenSearch

from quidditch_pipeline import PipelineService, StageError
from quidditch_pipeline.errors import PipelineUnavailableError, QueryRejectedError, StorageError
from quidditch_pipeline.failures import document_failure, pipeline_trace, redirectable
from quidditch_pipeline.server import TantivyBackend, create_app
from quidditch_pipeline.server.engine import IndexNotFoundError, InvalidIndexNameError
from quidditch_pipeline.server.failure_store import FailedDocument, FailureStore

from .server_harness import ServerProcess, kill_during_bulks, serve_app, served_data_dir

NDJSON = {"content-type": "application/x-ndjson"}
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_data_dir(tmp_path_factory.mktemp("failure-store")) as (_, _, url):
        yield url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as http:
        yield http


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def native(name: str, processor: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


def put(client: httpx.Client, name: str, kind: str, *stages: dict[str, Any], **extra: Any) -> None:
    body = {"version": "1.0.0", "type": kind, "stages": list(stages), **extra}
    answer = client.put(f"/_pipeline/{name}", json=body)
    assert answer.status_code == 200, answer.text


#: Marks every document, then refuses those with ``bad`` (a condition, a tag): what fails never shows ``seen``.
def checking_pipeline(client: httpx.Client, name: str) -> None:
    put(
        client,
        name,
        "document",
        native("mark", "set", field="seen", value=True),
        {**native("check", "fail", message="bad document {{bad}}"), "if": "has(ctx.bad)", "tag": "t-check"},
    )


def make_index(client: httpx.Client, index: str, **settings: Any) -> None:
    answer = client.put(f"/{index}", json={"settings": settings})
    assert answer.status_code == 200, answer.text


def bulk(client: httpx.Client, index: str, docs: list[tuple[str | None, dict[str, Any]]], query: str = "") -> Any:
    lines = b"".join(
        orjson.dumps({"index": {} if doc_id is None else {"_id": doc_id}}) + b"\n" + orjson.dumps(source) + b"\n"
        for doc_id, source in docs
    )
    answer = client.post(f"/{index}/_bulk?refresh=true{query}", content=lines, headers=NDJSON)
    assert answer.status_code == 200, answer.text
    return answer.json()


def failures(client: httpx.Client, index: str, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    body = {"size": 100, **({"query": query} if query else {})}
    answer = client.post(f"/{index}::failures/_search", json=body)
    assert answer.status_code == 200, answer.text
    return [hit["_source"] for hit in answer.json()["hits"]["hits"]]


# --------------------------------------------------------------------------------------------- documents


def test_a_failed_document_is_kept_as_it_arrived_and_the_bulk_item_says_used(client: httpx.Client) -> None:
    pipeline, index = unique("check"), unique("idx")
    checking_pipeline(client, pipeline)
    make_index(client, index, **{"index.document.default_pipeline": pipeline, "index.failure_store.enabled": True})
    docs: list[tuple[str | None, dict[str, Any]]] = [
        ("1", {"title": "good"}),
        ("2", {"title": "broken", "bad": "x", "nested": {"deep": [1, "two"]}}),
        (None, {"title": "no id", "bad": "y"}),
        ("4", {"title": "good too"}),
    ]
    answer = bulk(client, index, docs)
    assert answer["errors"] is False  # as Elasticsearch: a redirected document is not an error
    items = [item["index"] for item in answer["items"]]
    assert [item["status"] for item in items] == [201, 201, 201, 201]
    for item in (items[1], items[2]):
        assert item["failure_store"] == "used"
        assert item["_index"] == f"{index}::failures"
        assert item["result"] == "created" and item["_version"] == 1
    assert "failure_store" not in items[0] and items[0]["_index"] == index
    assert client.get(f"/{index}/_count").json()["count"] == 2
    assert client.get(f"/{index}/_doc/2").status_code == 404

    kept = {f["document"]["source"]["title"]: f for f in failures(client, index)}
    assert set(kept) == {"broken", "no id"}
    broken = kept["broken"]
    # As it arrived: the ``seen`` that the first stage set is not there.
    assert broken["document"] == {"id": "2", "index": index, "op_type": "index", "source": docs[1][1]}
    assert "id" not in kept["no id"]["document"]  # the write named no id
    error = broken["error"]
    assert error["type"] == "pipeline_execution_exception"
    assert error["pipeline"] == pipeline and error["pipeline_trace"] == [pipeline]
    assert error["processor_type"] == "native" and error["processor_tag"] == "t-check"
    assert error["stage"] == "check" and error["cause"] == "bad document x"
    assert f"pipeline [{pipeline}] stage [check]" in error["message"]
    assert broken["failure_kind"] == "document" and broken["@timestamp"].endswith("+00:00")

    # The query DSL on the failures: the error's fields are indexed, the failed source is kept but not indexed.
    assert len(failures(client, index, {"term": {"document.id.keyword": "2"}})) == 1
    assert len(failures(client, index, {"match": {"error.processor_tag": "t-check"}})) == 2
    assert failures(client, index, {"match": {"document.source.title": "broken"}}) == []
    assert client.get(f"/{index}::failures/_count").json()["count"] == 2
    counted = client.post(f"/{index}::failures/_count", json={"query": {"term": {"document.id.keyword": "2"}}})
    assert counted.json()["count"] == 1


def test_single_document_writes_use_the_failure_store_too(client: httpx.Client) -> None:
    pipeline, index = unique("check"), unique("idx")
    checking_pipeline(client, pipeline)
    make_index(client, index, **{"index.document.default_pipeline": pipeline, "index.failure_store.enabled": "true"})
    put_answer = client.put(f"/{index}/_doc/7?refresh=true", json={"bad": 1})
    assert put_answer.status_code == 201, put_answer.text
    body = put_answer.json()
    assert body["failure_store"] == "used" and body["_index"] == f"{index}::failures" and body["_id"] != "7"
    post_answer = client.post(f"/{index}/_doc?refresh=true&op_type=create", json={"bad": 2})
    assert post_answer.status_code == 201 and post_answer.json()["failure_store"] == "used"
    created = client.put(f"/{index}/_create/8?refresh=true", json={"bad": 3})
    assert created.json()["failure_store"] == "used"
    documents = sorted((f["document"] for f in failures(client, index)), key=lambda d: d["source"]["bad"])
    assert documents == [
        {"id": "7", "index": index, "op_type": "index", "source": {"bad": 1}},
        {"index": index, "op_type": "create", "source": {"bad": 2}},
        {"id": "8", "index": index, "op_type": "create", "source": {"bad": 3}},
    ]
    assert client.get(f"/{index}/_count").json()["count"] == 0


def test_without_the_setting_a_failure_is_an_error_that_says_not_enabled(client: httpx.Client) -> None:
    pipeline, index = unique("check"), unique("idx")
    checking_pipeline(client, pipeline)
    make_index(client, index, **{"index.document.default_pipeline": pipeline})
    answer = bulk(client, index, [("1", {"bad": 1}), ("2", {"ok": 1})])
    assert answer["errors"] is True
    failed = answer["items"][0]["index"]
    assert failed["status"] == 400 and failed["_index"] == index
    assert failed["error"]["type"] == "pipeline_execution_exception"
    assert failed["error"]["failure_store"] == "not_enabled"
    assert failed["error"]["pipeline"] == pipeline
    single = client.put(f"/{index}/_doc/3", json={"bad": 2})
    assert single.status_code == 400
    assert single.json()["error"]["failure_store"] == "not_enabled" and single.json()["status"] == 400
    assert failures(client, index) == []
    # Turned on later through the settings API, the next failure is kept.
    assert client.put(f"/{index}/_settings", json={"index.failure_store.enabled": True}).status_code == 200
    assert client.put(f"/{index}/_doc/4?refresh=true", json={"bad": 3}).json()["failure_store"] == "used"
    assert len(failures(client, index)) == 1
    assert client.put(f"/{index}/_settings", json={"index": {"failure_store": {"enabled": False}}}).status_code == 200
    assert client.put(f"/{index}/_doc/5", json={"bad": 4}).status_code == 400


def test_a_final_pipeline_and_a_called_pipeline_fail_into_the_store_with_their_trace(client: httpx.Client) -> None:
    default, final, inner, index = unique("default"), unique("final"), unique("inner"), unique("idx")
    put(client, inner, "document", {**native("deep", "fail", message="inner refuses"), "if": "has(ctx.deep)"})
    put(client, default, "document", native("d", "set", field="d", value=1), {
        "name": "call", "type": "pipeline", "config": {"pipeline": inner}})  # fmt: skip
    put(client, final, "document", {**native("f", "fail", message="final refuses"), "if": "has(ctx.late)"})
    make_index(
        client,
        index,
        **{
            "index.document.default_pipeline": default,
            "index.document.final_pipeline": final,
            "index.failure_store.enabled": True,
        },
    )
    answer = bulk(client, index, [("late", {"late": 1}), ("deep", {"deep": 1}), ("fine", {"x": 1})])
    assert [item["index"].get("failure_store") for item in answer["items"]] == ["used", "used", None]
    kept = {f["document"]["id"]: f["error"] for f in failures(client, index)}
    assert kept["late"]["pipeline"] == final and kept["late"]["pipeline_trace"] == [default, final]
    assert kept["deep"]["pipeline"] == inner and kept["deep"]["pipeline_trace"] == [default, inner]
    # ?pipeline=_none skips the default pipeline, never the final one: its failure is still kept.
    skipped = client.put(f"/{index}/_doc/again?pipeline=_none&refresh=true", json={"late": 2})
    assert skipped.json()["failure_store"] == "used"
    again = failures(client, index, {"term": {"document.id.keyword": "again"}})
    assert again[0]["error"]["pipeline_trace"] == [final]


def test_an_unavailable_pipeline_stays_a_refusal_and_nothing_is_kept(client: httpx.Client) -> None:
    index = unique("idx")
    make_index(client, index, **{"index.failure_store.enabled": True})
    answer = client.put(f"/{index}/_doc/1?pipeline=no-such-pipeline", json={"a": 1})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "no-such-pipeline" in error["reason"] and index in error["reason"]
    assert "failure_store" not in error
    items = bulk(client, index, [("2", {"a": 2})], "&pipeline=no-such-pipeline")["items"]
    assert items[0]["index"]["status"] == 400 and "failure_store" not in items[0]["index"]["error"]
    assert failures(client, index) == []


def test_settings_are_validated_and_the_store_is_hidden_and_deleted_with_its_index(client: httpx.Client) -> None:
    pipeline, index = unique("check"), unique("idx")
    bad = client.put(f"/{unique('idx')}", json={"settings": {"index.failure_store.enabled": "yes"}})
    assert bad.status_code == 400 and "index.failure_store.enabled" in bad.json()["error"]["reason"]
    assert bad.json()["error"]["type"] == "illegal_argument_exception"
    too_many = client.put(f"/{unique('idx')}", json={"settings": {"index.failure_store.max_search_failures": 10001}})
    assert too_many.status_code == 400 and "max_search_failures" in too_many.json()["error"]["reason"]
    # The reserved name is the backend's, not a user's.
    reserved = client.put(f"/{index}::failures")
    assert reserved.status_code == 400 and reserved.json()["error"]["type"] == "invalid_index_name_exception"

    checking_pipeline(client, pipeline)
    make_index(client, index, **{"index.document.default_pipeline": pipeline, "index.failure_store.enabled": True})
    assert client.get(f"/{index}::failures/_search").json()["hits"]["hits"] == []  # no failure yet
    bulk(client, index, [("1", {"bad": 1})])
    assert len(failures(client, index)) == 1
    listed = [row["index"] for row in client.get("/_cat/indices?format=json").json()]
    assert index in listed and f"{index}::failures" not in listed
    # Only failures go in; one can be read by its id, and the store emptied by deleting it.
    refused = client.put(f"/{index}::failures/_doc/x", json={"forged": True})
    assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_index_name_exception"
    line = b'{"index": {"_index": "%s::failures"}}\n{"forged": true}\n' % index.encode()
    bulk_refused = client.post("/_bulk", content=line, headers=NDJSON).json()["items"][0]["index"]
    assert bulk_refused["status"] == 400 and bulk_refused["error"]["type"] == "invalid_index_name_exception"
    (hit,) = client.get(f"/{index}::failures/_search").json()["hits"]["hits"]
    assert client.get(f"/{index}::failures/_doc/{hit['_id']}").json()["_source"]["document"]["id"] == "1"
    assert client.delete(f"/{index}::failures").status_code == 200
    assert client.get(f"/{index}::failures/_count").json()["count"] == 0
    bulk(client, index, [("1", {"bad": 1})])
    assert client.delete(f"/{index}").status_code == 200
    missing = client.get(f"/{index}::failures/_search")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "index_not_found_exception"
    make_index(client, index, **{"index.failure_store.enabled": True})
    assert client.get(f"/{index}::failures/_count").json()["count"] == 0


def test_opensearch_py_searches_the_store_by_its_selector(server: str, client: httpx.Client) -> None:
    pipeline, index = unique("check"), unique("idx")
    checking_pipeline(client, pipeline)
    make_index(client, index, **{"index.document.default_pipeline": pipeline, "index.failure_store.enabled": True})
    bulk(client, index, [("1", {"bad": 1}), ("2", {"good": 1})])
    os_client = OpenSearch(server)
    try:
        found = os_client.search(index=f"{index}::failures", body={"query": {"match_all": {}}})
        assert [hit["_source"]["document"]["id"] for hit in found["hits"]["hits"]] == ["1"]
        assert os_client.count(index=f"{index}::failures")["count"] == 1
    finally:
        os_client.close()


# --------------------------------------------------------------------------------------------- re-drive


def test_reprocess_writes_what_now_passes_and_keeps_what_still_fails(client: httpx.Client) -> None:
    pipeline, index = unique("price"), unique("idx")
    put(client, pipeline, "document", native("price", "convert", field="price", type="int"))
    make_index(client, index, **{"index.document.default_pipeline": pipeline, "index.failure_store.enabled": True})
    docs: list[tuple[str | None, dict[str, Any]]] = [
        ("a", {"price": "12 EUR"}),
        ("b", {"price": "n/a"}),
        ("c", {"price": "7 EUR", "spam": True}),
        (None, {"price": "3 EUR"}),
    ]
    assert all(item["index"]["failure_store"] == "used" for item in bulk(client, index, docs)["items"])
    hits = client.post(f"/{index}::failures/_search", json={"size": 10}).json()["hits"]["hits"]
    (without_id,) = [hit["_id"] for hit in hits if "id" not in hit["_source"]["document"]]

    # Fixed: strip the currency first, and drop spam.
    put(
        client,
        pipeline,
        "document",
        {**native("spam", "drop", field="spam", value=True)},
        native("currency", "split", field="price", separator=" "),
        native("first", "set", field="price", value="{{price.0}}"),
        native("price", "convert", field="price", type="int"),
    )
    only_a = client.post(
        f"/{index}/_failure_store/_reprocess?refresh=true", json={"query": {"term": {"document.id.keyword": "a"}}}
    )
    assert only_a.status_code == 200, only_a.text
    assert only_a.json() == {"reprocessed": 1, "succeeded": 1, "failed": 0, "dropped": 0, "failures": []}
    assert client.get(f"/{index}/_doc/a").json()["_source"] == {"price": 12}

    rest = client.post(f"/{index}/_failure_store/_reprocess?refresh=true").json()
    assert {k: rest[k] for k in ("reprocessed", "succeeded", "failed", "dropped")} == {
        "reprocessed": 3, "succeeded": 1, "failed": 1, "dropped": 1}  # fmt: skip
    (still,) = rest["failures"]
    assert still["document_id"] == "b" and still["error"]["type"] == "pipeline_execution_exception"
    assert client.get(f"/{index}/_doc/c").status_code == 404  # dropped now: not written, and no longer a failure
    assert client.get(f"/{index}/_count").json()["count"] == 2  # a, and the one that had no id:
    assert client.get(f"/{index}/_doc/{without_id}").json()["_source"] == {"price": 3}  # under its failure's id
    (kept,) = failures(client, index)
    assert kept["document"]["id"] == "b" and kept["reprocess"]["attempts"] == 1
    assert kept["error"]["stage"] == "price" and "n/a" in kept["error"]["cause"]
    # Nothing to do is an answer too, and a bad body is refused with its path.
    none_match = {"query": {"term": {"document.id.keyword": "zz"}}}
    nothing = client.post(f"/{index}/_failure_store/_reprocess", json=none_match)
    assert nothing.json()["reprocessed"] == 0
    bad = client.post(f"/{index}/_failure_store/_reprocess", json={"qeury": {}})
    assert bad.status_code == 400 and "qeury" in bad.json()["error"]["reason"]


# --------------------------------------------------------------------------------------------- searches


def test_failed_searches_are_kept_bounded_newest_first(client: httpx.Client) -> None:
    query, result, index = unique("q"), unique("r"), unique("idx")
    put(
        client,
        query,
        "query",
        {**native("reject", "drop", field="ext.reject", value=True), "if": "has(ctx.ext)"},
        {**native("boom", "fail", message="query refused"), "if": "has(ctx.ext) && has(ctx.ext.n)"},
    )
    put(client, result, "result", {**native("rboom", "fail", message="results refused"), "if": "ctx.total.value > 0"})
    make_index(
        client,
        index,
        **{
            "index.query.default_pipeline": query,
            "index.result.default_pipeline": result,
            "index.failure_store.enabled": True,
            "index.failure_store.max_search_failures": 3,
        },
    )
    for n in range(5):
        failed = client.post(f"/{index}/_search", json={"ext": {"n": n}})
        assert failed.status_code == 400 and failed.json()["error"]["pipeline"] == query
    rejected = client.post(f"/{index}/_search", json={"ext": {"reject": True}})
    assert rejected.status_code == 400 and rejected.json()["error"]["type"] == "query_rejected_exception"
    client.put(f"/{index}/_doc/1?refresh=true", json={"a": 1})
    assert client.post(f"/{index}/_search", json={}).status_code == 400
    kept = client.get(f"/{index}/_failure_store/_searches").json()
    assert kept["total"] == 3
    kinds = [(f["failure_kind"], f["search"]["body"]) for f in kept["failures"]]
    assert kinds[0][0] == "result" and kinds[1] == ("query", {"ext": {"reject": True}})
    assert kinds[2] == ("query", {"ext": {"n": 4}})  # the newest three; n=0..3 are gone
    assert kept["failures"][0]["error"]["pipeline"] == result
    assert kept["failures"][2]["error"]["cause"] == "query refused"
    # Search failures are in the store too, apart from the documents: reprocessing never touches them.
    assert client.get(f"/{index}::failures/_count").json()["count"] == 3
    assert client.post(f"/{index}/_failure_store/_reprocess").json()["reprocessed"] == 0


def test_the_search_failure_ring_survives_a_new_process_and_a_smaller_size(tmp_path: Path) -> None:
    with PipelineService.in_memory() as service, TantivyBackend(tmp_path) as backend:
        settings = {"index.failure_store.enabled": True, "index.failure_store.max_search_failures": 4}
        info = backend.create_index("i", settings)
        error = QueryRejectedError("query pipeline [q] rejected the search request", pipeline="q")
        for n in range(3):
            FailureStore(service, backend).record_search(info, "query", {"n": n}, error, ["q"])
        store = FailureStore(service, backend)  # a new process: it reads the ring back
        for n in range(3, 6):
            store.record_search(info, "query", {"n": n}, error, ["q"])
        assert [f["search"]["body"]["n"] for f in store.search_failures("i", 10)["failures"]] == [5, 4, 3, 2]
        smaller = backend.update_settings("i", {"index.failure_store.max_search_failures": "2"})
        store.record_search(smaller, "query", {"n": 6}, error, ["q"])
        assert [f["search"]["body"]["n"] for f in store.search_failures("i", 10)["failures"]] == [6, 5]
        off = backend.update_settings("i", {"index.failure_store.max_search_failures": "0"})
        store.record_search(off, "query", {"n": 7}, error, ["q"])
        assert store.search_failures("i", 10)["total"] == 2


# --------------------------------------------------------------------------------------------- simulate


def test_simulate_runs_what_a_write_would_and_writes_nothing(client: httpx.Client) -> None:
    default, final, index = unique("check"), unique("final"), unique("idx")
    checking_pipeline(client, default)
    put(client, final, "document", native("f", "set", field="final", value=True))
    settings = {
        "index.document.default_pipeline": default,
        "index.document.final_pipeline": final,
        "index.failure_store.enabled": True,
    }
    make_index(client, index, **settings)
    docs = {"docs": [{"_id": "1", "_source": {"title": "t"}}, {"_id": "2", "_source": {"bad": "z"}}]}
    answer = client.post(f"/{index}/_simulate", json=docs)
    assert answer.status_code == 200, answer.text
    ok, failed = (doc["doc"] for doc in answer.json()["docs"])
    assert ok["_source"] == {"title": "t", "seen": True, "final": True} and ok["status"] == "success"
    assert ok["executed_pipelines"] == [default, final] and ok["_index"] == index and ok["_id"] == "1"
    assert [p["pipeline"] for p in ok["pipelines"]] == [default, final]
    stages = ok["pipelines"][0]["stages"]
    assert [(s["name"], s["status"]) for s in stages] == [("mark", "success"), ("check", "skipped")]
    assert stages[0]["output"] == {"title": "t", "seen": True}
    assert failed["status"] == "failed" and failed["_source"] == {"bad": "z"}  # as it arrived
    assert failed["failure_store"] == "would_be_used" and failed["executed_pipelines"] == [default]
    assert failed["error"]["type"] == "pipeline_execution_exception" and failed["error"]["pipeline"] == default
    assert failed["pipelines"][0]["stages"][1]["status"] == "error"
    # Elasticsearch's path answers the same; ?pipeline=_none skips the default, not the final pipeline.
    assert client.post(f"/_ingest/{index}/_simulate", json=docs).json()["docs"][0]["doc"]["_source"] == ok["_source"]
    skipped = client.post(f"/{index}/_simulate?pipeline=_none", json=docs).json()["docs"]
    assert skipped[1]["doc"]["_source"] == {"bad": "z", "final": True}
    # Nothing was written, neither to the index nor to its store.
    client.post(f"/{index}/_refresh")
    assert client.get(f"/{index}/_count").json()["count"] == 0
    assert client.get(f"/{index}::failures/_count").json()["count"] == 0
    # Without a failure store the answer says so; errors name what is wrong.
    plain = unique("idx")
    make_index(client, plain, **{"index.document.default_pipeline": default})
    assert client.post(f"/{plain}/_simulate", json=docs).json()["docs"][1]["doc"]["failure_store"] == "not_enabled"
    bad = client.post(f"/{index}/_simulate", json={"docs": [{"_source": {}}, {"_source": [1]}]})
    assert bad.status_code == 400 and "docs[1]._source" in bad.json()["error"]["reason"]
    unknown = client.post(f"/{unique('nope')}/_simulate", json=docs)
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "index_not_found_exception"
    unavailable = client.post(f"/{index}/_simulate?pipeline=missing-one", json=docs)
    assert unavailable.status_code == 400 and "missing-one" in unavailable.json()["error"]["reason"]


# --------------------------------------------------------------------------------------------- Python API


def test_the_python_api_shapes_and_decides_failures(tmp_path: Path) -> None:
    error = StageError("no", pipeline="p", stage="s", stage_type="native", input_id="1", tag="t")
    assert redirectable(error)
    assert not redirectable(PipelineUnavailableError("i", "document", "p", "gone"))
    assert not redirectable(None)
    record = document_failure("i", "1", {"a": 1}, error, ["p"], timestamp="2026-01-01T00:00:00.000+00:00")
    assert record == {
        "@timestamp": "2026-01-01T00:00:00.000+00:00",
        "failure_kind": "document",
        "document": {"index": "i", "op_type": "index", "source": {"a": 1}, "id": "1"},
        "error": {
            "type": "pipeline_execution_exception",
            "message": error.message,
            "pipeline": "p",
            "pipeline_trace": ["p"],
            "processor_type": "native",
            "stage": "s",
            "cause_type": "error",
            "cause": "no",
            "processor_tag": "t",
        },
    }
    calls = {"a": ["b"], "b": ["c"], "c": [], "f": []}
    assert pipeline_trace(["a", "f"], "c", calls.__getitem__) == ["a", "b", "c"]
    assert pipeline_trace(["a", "f"], "f", calls.__getitem__) == ["a", "f"]

    with PipelineService.in_memory() as service, TantivyBackend(tmp_path) as backend:
        service.put_pipeline({"name": "p", "version": "1.0.0", "type": "document", "stages": [
            {"name": "s", "type": "native", "config": {"processor": "fail", "message": "no"}}]})  # fmt: skip
        (answer,) = service.simulate_documents("i", [("1", {"a": 1})], pipeline="p", final_pipeline="_none")
        assert answer["status"] == "failed" and isinstance(answer["error"], StageError)
        assert answer["executed_pipelines"] == ["p"] and answer["pipelines"][0]["stages"][0]["status"] == "error"

        with pytest.raises(IndexNotFoundError):
            backend.create_index("i::failures")  # a failure store belongs to an index
        with pytest.raises(InvalidIndexNameError):
            backend.create_index("a:b")
        info = backend.create_index("i", {"index.failure_store.enabled": True})
        store = FailureStore(service, backend)
        (outcome,) = store.redirect(info, [FailedDocument("1", {"a": 1}, error, ["p"])], refresh=True)
        assert outcome.status == "used" and outcome.store == "i::failures" and outcome.result is not None
        assert backend.count("i::failures", {}) == 1
        assert [i.name for i in backend.list_indexes()] == ["i"]
        # Re-driving fails closed as a write does: the index's pipeline is gone, nothing moves.
        backend.update_settings("i", {"index.document.default_pipeline": "gone"})
        with pytest.raises(PipelineUnavailableError, match=r"index \[i\]: document pipeline \[gone\]"):
            store.reprocess("i", None)
        assert backend.count("i::failures", {}) == 1
        assert store.search_failures("i", 10) == {"total": 0, "failures": []}


# --------------------------------------------------------------------------------------------- SIGKILL


def _mixed_bulk(index: str, start: int, count: int) -> bytes:
    """Every fifth document fails the pipeline (``bad``)."""
    lines = []
    for i in range(start, start + count):
        lines.append(orjson.dumps({"index": {"_index": index, "_id": str(i)}}))
        lines.append(orjson.dumps(_mixed_source(i)))
    return b"\n".join(lines) + b"\n"


def _mixed_source(i: int) -> dict[str, Any]:
    source: dict[str, Any] = {"n": i, "text": "x" * (i % 37)}
    if i % 5 == 0:
        source["bad"] = i
    return source


def test_sigkill_loses_no_failure_of_an_acknowledged_bulk(tmp_path: Path) -> None:
    """Elasticsearch's disruption-test way: kill -9 ``serve`` in the middle of real ``_bulk`` traffic, restart,
    and check that every item an acknowledged ``_bulk`` answered ``failure_store: used`` is in the store, as it
    arrived, and every item it answered ``created`` is in the index."""
    data = tmp_path / "data"
    rng = random.Random(13)
    kept: set[int] = set()
    written: set[int] = set()
    cut: list[bool] = []
    # Worker processes are not what this is about (test_with_worker_processes_failures_are_kept_alike is): the
    # server process writes the store, in process.
    no_workers = ("--workers", "0")
    for rounds in (1, 2):  # a kill, a restart that replays, a kill again: the replayed store keeps as much
        with ServerProcess(data, extra=no_workers) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            if rounds == 1:
                checking_pipeline(http, "check")
                settings = {"index.document.default_pipeline": "check", "index.failure_store.enabled": True}
                make_index(http, "log", **settings)

            def answered(at: int, items: list[dict[str, Any]]) -> None:
                # An answer came back: the whole bulk is acknowledged (the ``_id`` of a kept item is its record's).
                answers = [item["index"] for item in items]
                for i, answer in zip(range(at, at + 50), answers, strict=True):
                    assert answer["status"] == 201, answer
                    (kept if answer.get("failure_store") == "used" else written).add(i)

            cut.append(kill_during_bulks(server, http, rounds * 100_000, lambda at, n: _mixed_bulk("log", at, n),
                                         answered, rng))  # fmt: skip
    assert kept and written, "no bulk was acknowledged before the kills"
    assert any(cut), "no kill landed in the middle of a bulk"
    assert all(i % 5 == 0 for i in kept) and not any(i % 5 == 0 for i in written)
    with ServerProcess(data, extra=no_workers) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        http.post("/log/_refresh")
        stored: dict[int, Any] = {}
        ordered = sorted(kept)
        for chunk in (ordered[k : k + 1000] for k in range(0, len(ordered), 1000)):
            query = {"terms": {"document.id.keyword": [str(i) for i in chunk]}}
            hits = http.post("/log::failures/_search", json={"query": query, "size": 1000}).json()["hits"]["hits"]
            stored.update((int(h["_source"]["document"]["id"]), h["_source"]["document"]["source"]) for h in hits)
        lost = sorted(kept - set(stored))
        assert not lost, f"failures of acknowledged bulks are lost: {lost[:10]}"
        assert all(stored[i] == _mixed_source(i) for i in kept)
        for i in sorted(written)[:: max(1, len(written) // 200)]:
            assert http.get(f"/log/_doc/{i}").status_code == 200, f"acknowledged document {i} is lost"
    print(f"\nSIGKILL cut a bulk: {cut}, failures acknowledged as kept: {len(kept)}, written: {len(written)}")


def test_a_store_that_refuses_the_record_answers_failed_with_the_original_error(tmp_path: Path) -> None:
    """Elasticsearch's ``failure_store: failed``: the document's own error, and why the store refused it."""

    class FullStore(TantivyBackend):
        def bulk(self, index: str, ops: Any, *, refresh: bool = False) -> Any:
            if index.endswith("::failures"):
                return [StorageError("disk full")] * len(ops)
            return super().bulk(index, ops, refresh=refresh)

    with (
        PipelineService.in_memory() as service,
        FullStore(tmp_path, refresh_tick=0.05) as backend,
        serve_app(create_app(service, backend)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        checking_pipeline(client, "check")
        make_index(client, "i", **{"index.document.default_pipeline": "check", "index.failure_store.enabled": True})
        single = client.put("/i/_doc/1", json={"bad": 1})
        assert single.status_code == 400
        error = single.json()["error"]
        assert error["type"] == "pipeline_execution_exception" and error["failure_store"] == "failed"
        assert error["suppressed"] == [{"type": "storage_exception", "reason": "disk full"}]
        item = bulk(client, "i", [("2", {"bad": 2}), ("3", {"ok": 1})])["items"]
        assert item[0]["index"]["status"] == 400 and item[0]["index"]["error"]["failure_store"] == "failed"
        assert item[1]["index"]["status"] == 201


def test_with_worker_processes_failures_are_kept_alike(tmp_path: Path) -> None:
    """DESIGN §10: the pipelines run in worker processes; what fails is kept exactly as in-process."""
    data = tmp_path / "data"
    with (
        served_data_dir(data, workers=1) as (service, _, url),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        checking_pipeline(client, "check")
        make_index(client, "i", **{"index.document.default_pipeline": "check", "index.failure_store.enabled": True})
        answer = bulk(client, "i", [("1", {"bad": 1}), ("2", {"ok": 1})])
        assert [item["index"].get("failure_store") for item in answer["items"]] == ["used", None]
        (kept,) = failures(client, "i")
        assert kept["document"] == {"id": "1", "index": "i", "op_type": "index", "source": {"bad": 1}}
        assert kept["error"]["processor_tag"] == "t-check" and kept["error"]["pipeline_trace"] == ["check"]
        assert sum(w["items"] for w in service.workers()) >= 2, "the pipeline ran in a worker process"


def test_the_elasticsearch_client_simulates_ingest_and_searches_the_store(server: str, client: httpx.Client) -> None:
    pipeline, index = unique("check"), unique("idx")
    checking_pipeline(client, pipeline)
    make_index(client, index, **{"index.document.default_pipeline": pipeline, "index.failure_store.enabled": True})
    es = Elasticsearch(server, request_timeout=60)
    try:
        written = es.index(index=index, id="1", document={"bad": 1}, refresh=True)
        assert written["failure_store"] == "used" and written["_index"] == f"{index}::failures"
        found = es.search(index=f"{index}::failures", query={"match_all": {}})
        assert [hit["_source"]["document"]["id"] for hit in found["hits"]["hits"]] == ["1"]
        with pytest.warns(GeneralAvailabilityWarning, match="technical preview"):  # the client says so of the API
            simulated = es.simulate.ingest(index=index, docs=[{"_id": "2", "_source": {"title": "t"}}])
        assert simulated["docs"][0]["doc"]["_source"] == {"title": "t", "seen": True}
        assert simulated["docs"][0]["doc"]["executed_pipelines"] == [pipeline]
    finally:
        es.close()
