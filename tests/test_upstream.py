"""Gateway mode against a loopback stub that answers what Elasticsearch documents for the forwarded routes.

The stub (``ScriptedUpstream``) is a real HTTP server answering, per request, the bodies of Elasticsearch's
reference examples (``_bulk`` items with errors, ``_search`` with aggregations, index errors): the gateway
(the real app, on a loopback port, driven by the unmodified ``opensearch-py`` client or httpx) must map each
of them right. Faults — an upstream that is down, slow, answers 429 then succeeds, or answers 500 — are the
same stub misbehaving. The real upstream (this project's own server) is in ``test_gateway.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError

from quidditch_pipeline import PipelineService
from quidditch_pipeline.errors import InputError, UpstreamError
from quidditch_pipeline.server.app import create_app
from quidditch_pipeline.server.engine import IndexOp
from quidditch_pipeline.server.engine.backend import DeleteOp, IndexNotFoundError, failure_store_index
from quidditch_pipeline.server.engine.upstream import UpstreamBackend, UpstreamConfig, upstream_index_name
from quidditch_pipeline.server.serve import UPSTREAM_API_KEY_ENV, UPSTREAM_ENV, add_arguments, upstream_config

from .server_harness import free_port, loopback_http, serve_app

INDEX_SETTINGS = {
    "test": {
        "settings": {
            "index.creation_date": "1700000000000",
            "index.number_of_replicas": "1",
            "index.number_of_shards": "1",
            "index.provided_name": "test",
            "index.uuid": "aAsFqTI0Tc2W0LCWgPNrOA",
            "index.version.created": "8500003",
        }
    }
}


@dataclass
class Received:
    method: str
    path: str
    params: dict[str, list[str]]
    body: bytes
    headers: dict[str, str]


@dataclass
class ScriptedUpstream:
    """Answers ``(status, body, delay)`` per ``(method, path)``; several answers for one key are used in turn
    (the last one repeats). Every request is recorded."""

    answers: dict[tuple[str, str], list[tuple[int, Any, float]]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def answer(self, method: str, path: str, *answers: tuple[int, Any] | tuple[int, Any, float]) -> None:
        self.answers[(method, path)] = [(a[0], a[1], a[2] if len(a) == 3 else 0.0) for a in answers]

    def requests(self, method: str, path: str) -> list[Received]:
        return [r for r in self.received if (r.method, r.path) == (method, path)]


@contextlib.contextmanager
def scripted_upstream() -> Iterator[ScriptedUpstream]:
    stub = ScriptedUpstream()
    stub.answer("GET", "/test/_settings", (200, INDEX_SETTINGS))

    class Handler(BaseHTTPRequestHandler):
        def handle_one(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {key.lower(): value for key, value in self.headers.items()}
            stub.received.append(Received(self.command, parts.path, parse_qs(parts.query), body, headers))
            queue = stub.answers.get((self.command, parts.path))
            if not queue:
                status, payload, delay = 404, {"error": {"type": "stub", "reason": "not scripted"}, "status": 404}, 0.0
            else:
                status, payload, delay = queue.pop(0) if len(queue) > 1 else queue[0]
            time.sleep(delay)
            data = orjson.dumps(payload)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = handle_one

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test asserts on ``received``."""

    with loopback_http(Handler) as url:
        stub.url = url
        yield stub


@pytest.fixture
def stub() -> Iterator[ScriptedUpstream]:
    with scripted_upstream() as stub:
        yield stub


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[PipelineService]:
    with PipelineService.open(tmp_path / "gateway", workers=0) as svc:
        yield svc


def backend_for(url: str, svc: PipelineService, **options: Any) -> UpstreamBackend:
    return UpstreamBackend(UpstreamConfig((url,), **options), svc)


@contextlib.contextmanager
def gateway(stub_url: str, svc: PipelineService, **options: Any) -> Iterator[str]:
    with backend_for(stub_url, svc, **options) as backend, serve_app(create_app(svc, backend)) as url:
        yield url


def opensearch(url: str) -> OpenSearch:
    # max_retries=0: the gateway's own retries are under test, not the client's.
    return OpenSearch(hosts=[url], timeout=30, max_retries=0)


# ------------------------------------------------------------------------------------------ contract shapes

#: Elasticsearch's documented ``_bulk`` answer for an index, a create that conflicts and a delete of a
#: missing document (reference: "Bulk API", response examples).
BULK_ANSWER = {
    "took": 30,
    "errors": True,
    "items": [
        {"index": {"_index": "test", "_id": "1", "_version": 1, "result": "created",
                   "_shards": {"total": 2, "successful": 1, "failed": 0}, "status": 201, "_seq_no": 0,
                   "_primary_term": 1}},
        {"create": {"_index": "test", "_id": "2", "status": 409,
                    "error": {"type": "version_conflict_engine_exception",
                              "reason": "[2]: version conflict, document already exists (current version [1])",
                              "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "shard": "0", "index": "test"}}},
        {"delete": {"_index": "test", "_id": "3", "_version": 1, "result": "not_found",
                    "_shards": {"total": 2, "successful": 1, "failed": 0}, "status": 404, "_seq_no": 1,
                    "_primary_term": 2}},
        {"index": {"_index": "test", "_id": "4", "status": 429,
                   "error": {"type": "es_rejected_execution_exception",
                             "reason": "rejected execution of coordinating operation"}}},
    ],
}  # fmt: skip


def test_bulk_items_of_an_elasticsearch_answer_map_back_with_their_errors(
    stub: ScriptedUpstream, svc: PipelineService
) -> None:
    stub.answer("POST", "/_bulk", (200, BULK_ANSWER))
    with gateway(stub.url, svc) as url:
        ndjson = b"".join(orjson.dumps(line) + b"\n" for line in [
            {"index": {"_index": "test", "_id": "1"}}, {"a": 1},
            {"create": {"_index": "test", "_id": "2"}}, {"a": 2},
            {"delete": {"_index": "test", "_id": "3"}},
            {"index": {"_index": "test", "_id": "4"}}, {"a": 4},
        ])  # fmt: skip
        answer = opensearch(url).bulk(body=ndjson)
    assert answer["errors"] is True
    created, conflict, missing, rejected = (next(iter(item.values())) for item in answer["items"])
    assert (created["result"], created["status"], created["_version"]) == ("created", 201, 1)
    assert conflict["status"] == 409 and conflict["error"]["type"] == "version_conflict_engine_exception"
    assert conflict["error"]["reason"].startswith("[2]: version conflict")
    assert conflict["error"]["index_uuid"] == "aAsFqTI0Tc2W0LCWgPNrOA"  # the upstream's other fields kept
    assert (missing["result"], missing["status"]) == ("not_found", 404)
    assert rejected["status"] == 429 and rejected["error"]["type"] == "es_rejected_execution_exception"
    # What went upstream: one _bulk, the actions as the client sent them.
    (sent,) = stub.requests("POST", "/_bulk")
    lines = [orjson.loads(line) for line in sent.body.splitlines()]
    assert lines == [
        {"index": {"_index": "test", "_id": "1"}}, {"a": 1},
        {"create": {"_index": "test", "_id": "2"}}, {"a": 2},
        {"delete": {"_index": "test", "_id": "3"}},
        {"index": {"_index": "test", "_id": "4"}}, {"a": 4},
    ]  # fmt: skip


#: Elasticsearch's documented ``_search`` answer with a terms aggregation (reference: "Terms aggregation").
SEARCH_ANSWER = {
    "took": 5,
    "timed_out": False,
    "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
    "hits": {"total": {"value": 2, "relation": "eq"}, "max_score": None, "hits": [
        {"_index": "test", "_id": "1", "_score": None, "_source": {"genre": "rock"}, "sort": [1],
         "highlight": {"genre": ["<em>rock</em>"]}},
        {"_index": "test", "_id": "2", "_score": None, "_source": {"genre": "jazz"}, "sort": [2]},
    ]},
    "aggregations": {"genres": {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
                                "buckets": [{"key": "rock", "doc_count": 1}, {"key": "jazz", "doc_count": 1}]}},
}  # fmt: skip


def test_search_body_and_unread_params_pass_through_and_aggregations_come_back(
    stub: ScriptedUpstream, svc: PipelineService
) -> None:
    stub.answer("POST", "/test/_search", (200, SEARCH_ANSWER))
    body = {
        "query": {"match": {"genre": "rock"}},
        "aggs": {"genres": {"terms": {"field": "genre"}}},
        "sort": [{"year": "asc"}],
        "highlight": {"fields": {"genre": {}}},
        "a_key_no_one_knows": {"x": 1},
    }
    with gateway(stub.url, svc) as url:
        answer = opensearch(url).search(
            index="test", body=body, params={"routing": "r1", "track_total_hits": "true", "size": "2"}
        )
    assert answer["aggregations"] == SEARCH_ANSWER["aggregations"]
    assert [hit["sort"] for hit in answer["hits"]["hits"]] == [[1], [2]]
    assert answer["hits"]["hits"][0]["highlight"] == {"genre": ["<em>rock</em>"]}
    assert answer["hits"]["max_score"] is None  # a sorted search has no scores
    (sent,) = stub.requests("POST", "/test/_search")
    assert orjson.loads(sent.body) == {**body, "size": 2}  # ?size= is the route's: it moves into the body
    assert sent.params == {"routing": ["r1"], "track_total_hits": ["true"]}


def test_index_errors_of_the_upstream_keep_their_type_and_status(stub: ScriptedUpstream, svc: PipelineService) -> None:
    exists = {"error": {"root_cause": [{"type": "resource_already_exists_exception",
                                        "reason": "index [test/aAsFqTI0Tc2W0LCWgPNrOA] already exists",
                                        "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "index": "test"}],
                        "type": "resource_already_exists_exception",
                        "reason": "index [test/aAsFqTI0Tc2W0LCWgPNrOA] already exists",
                        "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "index": "test"}, "status": 400}  # fmt: skip
    missing = {"error": {"root_cause": [{"type": "index_not_found_exception", "reason": "no such index [nope]",
                                         "index": "nope", "resource.type": "index_or_alias", "resource.id": "nope"}],
                         "type": "index_not_found_exception", "reason": "no such index [nope]", "index": "nope",
                         "resource.type": "index_or_alias", "resource.id": "nope"}, "status": 404}  # fmt: skip
    stub.answer("PUT", "/test", (400, exists))
    stub.answer("GET", "/nope/_settings", (404, missing))
    with gateway(stub.url, svc) as url:
        created = httpx.put(url + "/test", json={"mappings": {"properties": {"genre": {"type": "keyword"}}}})
        searched = httpx.post(url + "/nope/_search", json={})
        head = httpx.head(url + "/nope")
    assert created.status_code == 400 and created.json()["error"]["type"] == "resource_already_exists_exception"
    assert searched.status_code == 404
    assert searched.json()["error"]["type"] == "index_not_found_exception"
    assert searched.json()["error"]["reason"] == "no such index [nope]"
    assert head.status_code == 404
    # The creation body went upstream as it came: mappings included.
    (sent,) = stub.requests("PUT", "/test")
    assert orjson.loads(sent.body) == {"mappings": {"properties": {"genre": {"type": "keyword"}}}}


def test_pipeline_settings_stay_in_the_gateway_and_follow_the_upstream_outcome(
    stub: ScriptedUpstream, svc: PipelineService
) -> None:
    reason = "final test setting [index.number_of_shards], not updateable"
    not_updateable = {"error": {"root_cause": [{"type": "illegal_argument_exception", "reason": reason}],
                                "type": "illegal_argument_exception", "reason": reason}, "status": 400}  # fmt: skip
    stub.answer("PUT", "/test", (200, {"acknowledged": True, "shards_acknowledged": True, "index": "test"}))
    stub.answer("DELETE", "/test", (200, {"acknowledged": True}))
    stub.answer("PUT", "/test/_settings", (400, not_updateable))
    stages = [{"name": "s", "type": "native", "config": {"processor": "set", "field": "a", "value": 1}}]
    with gateway(stub.url, svc) as url:
        assert httpx.put(url + "/_pipeline/p", json={"version": "1.0.0", "type": "document", "stages": stages})
        # A pipeline that does not exist: the index just created upstream is deleted again.
        missing = httpx.put(url + "/test", json={"settings": {"index.document.default_pipeline": "nope"}})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]["reason"]
        assert len(stub.requests("DELETE", "/test")) == 1
        created = httpx.put(url + "/test", json={"settings": {"index": {"document": {"default_pipeline": "p"},
                                                                        "number_of_shards": 3}}})  # fmt: skip
        assert created.status_code == 200, created.text
        assert svc.associations("test") == {"document": "p"}
        # The upstream refuses the settings change: the pipeline setting changed with it is put back.
        refused = httpx.put(url + "/test/_settings", json={"index.document.default_pipeline": None,
                                                           "index.number_of_shards": 2})  # fmt: skip
        assert refused.status_code == 400 and refused.json()["error"]["reason"].startswith("final test setting")
        assert svc.associations("test") == {"document": "p"}
        # Only the pipeline setting: nothing goes upstream.
        assert httpx.put(url + "/test/_settings", json={"index.document.default_pipeline": None}).status_code == 200
        assert svc.associations("test") == {}
    created_bodies = [orjson.loads(r.body) for r in stub.requests("PUT", "/test")]
    assert created_bodies == [{}, {"settings": {"index.number_of_shards": 3}}]
    assert [orjson.loads(r.body) for r in stub.requests("PUT", "/test/_settings")] == [{"index.number_of_shards": 2}]


def test_cat_indices_of_an_elasticsearch_answer_lists_the_indexes_with_their_settings(
    stub: ScriptedUpstream, svc: PipelineService
) -> None:
    # Elasticsearch's documented ``_cat/indices?format=json`` rows (reference: "cat indices API").
    stub.answer("GET", "/_cat/indices", (200, [
        {"health": "yellow", "status": "open", "index": "test", "uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "pri": "1",
         "rep": "1", "docs.count": "1200", "docs.deleted": "0", "store.size": "88.1kb", "pri.store.size": "88.1kb"},
    ]))  # fmt: skip
    with backend_for(stub.url, svc) as backend:
        (info,) = backend.list_indexes()
    assert (info.name, info.uuid, info.docs_count) == ("test", "aAsFqTI0Tc2W0LCWgPNrOA", 1200)
    assert info.settings["index.number_of_replicas"] == "1"
    (listed,) = stub.requests("GET", "/_cat/indices")
    assert listed.params == {"format": ["json"], "expand_wildcards": ["open"]}


def test_a_failure_store_is_an_ordinary_upstream_index(stub: ScriptedUpstream, svc: PipelineService) -> None:
    store = failure_store_index("logs")
    assert upstream_index_name(store) == "quidditch-failures-logs"
    assert upstream_index_name("logs") == "logs"
    stub.answer("POST", "/_bulk", (200, {"took": 1, "errors": False, "items": [
        {"index": {"_index": "quidditch-failures-logs", "_id": "f1", "_version": 1, "result": "created",
                   "status": 201}}]}))  # fmt: skip
    with backend_for(stub.url, svc) as backend:
        (result,) = backend.bulk(store, [IndexOp("f1", {"error": "x"})])
        with pytest.raises(Exception, match="must not start with"):
            backend.create_index("quidditch-failures-logs")
    assert not isinstance(result, Exception) and result.result == "created"
    (sent,) = stub.requests("POST", "/_bulk")
    assert orjson.loads(sent.body.splitlines()[0]) == {"index": {"_index": "quidditch-failures-logs", "_id": "f1"}}


def test_a_bulk_answer_that_does_not_match_the_actions_is_an_error(
    stub: ScriptedUpstream, svc: PipelineService
) -> None:
    stub.answer("POST", "/_bulk", (200, {"took": 1, "errors": False, "items": []}))
    with backend_for(stub.url, svc) as backend, pytest.raises(UpstreamError, match="0 bulk items for 1 actions"):
        backend.bulk("test", [DeleteOp("1")])


# ------------------------------------------------------------------------------------------ faults


def test_an_upstream_that_is_down_is_a_502_naming_it(svc: PipelineService) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with gateway(down, svc, max_retries=1) as url:
        answer = httpx.post(url + "/test/_search", json={})
        with pytest.raises(OpenSearchConnectionError):
            opensearch(down).info()  # (the port is really closed)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["type"] == "connect_transport_exception"
    assert down.removeprefix("http://") in error["reason"] and error["upstream"] == down


def test_a_slow_upstream_is_bounded_by_the_timeout(stub: ScriptedUpstream, svc: PipelineService) -> None:
    stub.answer("POST", "/test/_search", (200, SEARCH_ANSWER, 3.0))
    with gateway(stub.url, svc, request_timeout=0.5) as url:
        started = time.monotonic()
        answer = httpx.post(url + "/test/_search", json={}, timeout=30)
        waited = time.monotonic() - started
    assert answer.status_code == 504
    assert answer.json()["error"]["type"] == "receive_timeout_transport_exception"
    assert "0.5 s" in answer.json()["error"]["reason"]
    assert waited < 2.5  # the timeout, not the upstream's 3 s (a timeout is not retried: it may have been applied)
    assert len(stub.requests("POST", "/test/_search")) == 1


def test_429_then_success_is_retried_by_the_transport(stub: ScriptedUpstream, svc: PipelineService) -> None:
    busy = {"error": {"type": "es_rejected_execution_exception", "reason": "rejected execution"}, "status": 429}
    stub.answer("POST", "/test/_search", (429, busy), (503, busy), (200, SEARCH_ANSWER))
    with gateway(stub.url, svc) as url:
        answer = opensearch(url).search(index="test", body={"query": {"match_all": {}}})
    assert answer["aggregations"] == SEARCH_ANSWER["aggregations"]
    assert len(stub.requests("POST", "/test/_search")) == 3


def test_429_past_the_retries_and_500_are_surfaced_as_the_upstream_said(
    stub: ScriptedUpstream, svc: PipelineService
) -> None:
    busy = {"error": {"type": "es_rejected_execution_exception", "reason": "rejected execution"}, "status": 429}
    broken = {"error": {"root_cause": [{"type": "null_pointer_exception", "reason": "boom"}],
                        "type": "search_phase_execution_exception", "reason": "all shards failed",
                        "phase": "query", "caused_by": {"type": "null_pointer_exception", "reason": "boom"}},
              "status": 500}  # fmt: skip
    stub.answer("POST", "/test/_search", (429, busy))
    stub.answer("POST", "/test/_count", (500, broken))
    with gateway(stub.url, svc, max_retries=2) as url:
        rejected = httpx.post(url + "/test/_search", json={})
        failed = httpx.post(url + "/test/_count", json={})
    assert rejected.status_code == 429 and rejected.json()["error"]["type"] == "es_rejected_execution_exception"
    assert len(stub.requests("POST", "/test/_search")) == 3  # the first try and two retries
    assert failed.status_code == 500
    error = failed.json()["error"]
    assert (error["type"], error["reason"], error["phase"]) == ("search_phase_execution_exception", "all shards failed",
                                                                "query")  # fmt: skip
    assert error["caused_by"] == {"type": "null_pointer_exception", "reason": "boom"}
    assert len(stub.requests("POST", "/test/_count")) == 1  # 500 is not retried


def test_get_of_a_missing_document_and_index(stub: ScriptedUpstream, svc: PipelineService) -> None:
    stub.answer("GET", "/test/_doc/1", (404, {"_index": "test", "_id": "1", "found": False}))
    stub.answer("GET", "/gone/_doc/1", (404, {"error": {"type": "index_not_found_exception",
                                                        "reason": "no such index [gone]", "index": "gone"},
                                              "status": 404}))  # fmt: skip
    with backend_for(stub.url, svc) as backend:
        assert backend.get_doc("test", "1") is None
        with pytest.raises(IndexNotFoundError):
            backend.get_doc("gone", "1")


# ------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"username": "elastic", "password": "s3cret"}, "Basic ZWxhc3RpYzpzM2NyZXQ="),
        ({"api_key": "a2V5OnNlY3JldA=="}, "ApiKey a2V5OnNlY3JldA=="),
        ({"bearer": "tok"}, "Bearer tok"),
        ({}, None),
    ],
)
def test_the_upstream_credentials_go_with_every_request(
    stub: ScriptedUpstream, svc: PipelineService, options: dict[str, str], expected: str | None
) -> None:
    with backend_for(stub.url, svc, **options) as backend:
        backend.get_index("test")
    (sent,) = stub.requests("GET", "/test/_settings")
    assert sent.headers.get("authorization") == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"username": "u", "password": "p", "bearer": "t"}, "give one of"),
        ({"username": "u"}, "needs a password"),
        ({"urls": ("ftp://example.org",)}, "must be an http:// or https:// URL"),
        ({"urls": ()}, "an upstream URL is required"),
    ],
)
def test_upstream_settings_that_cannot_work_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        UpstreamConfig(**{"urls": ("http://127.0.0.1:9200",), **options}).nodes()


def test_serve_reads_the_upstream_from_its_flags_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert upstream_config(parser.parse_args([])) is None  # embedded mode
    monkeypatch.setenv(UPSTREAM_ENV, "https://a.example:9243, https://b.example:9243")
    monkeypatch.setenv(UPSTREAM_API_KEY_ENV, "key")
    config = upstream_config(parser.parse_args(["--no-upstream-verify-certs", "--upstream-timeout", "5"]))
    assert config is not None
    assert config.urls == ("https://a.example:9243", "https://b.example:9243")
    assert (config.api_key, config.verify_certs, config.request_timeout) == ("key", False, 5.0)
    flags = ["--upstream", "http://c:9200", "--upstream-user", "u", "--upstream-password", "p"]
    with pytest.raises(InputError, match="give one of"):  # the API key of the environment, and a user
        upstream_config(parser.parse_args(flags))
    monkeypatch.delenv(UPSTREAM_API_KEY_ENV)
    config = upstream_config(parser.parse_args([*flags, "--upstream-ca-certs", "/ca.pem"]))
    assert config is not None and config.urls == ("http://c:9200",)
    assert config.headers() == {"authorization": "Basic dTpw"}
    assert config.ca_certs == "/ca.pem" and config.verify_certs is True


def test_an_index_that_cannot_be_looked_up_is_looked_up_once_per_bulk(
    stub: ScriptedUpstream, svc: PipelineService
) -> None:
    unavailable = {"error": {"type": "cluster_block_exception", "reason": "blocked by: [SERVICE_UNAVAILABLE]"},
                   "status": 503}  # fmt: skip
    stub.answer("GET", "/busy/_settings", (503, unavailable))
    lines = b"".join(orjson.dumps({"index": {"_index": "busy", "_id": str(i)}}) + b'\n{"n": 1}\n' for i in range(50))
    with gateway(stub.url, svc, max_retries=1) as url:
        answer = httpx.post(url + "/_bulk", content=lines, headers={"content-type": "application/x-ndjson"})
    items = [item["index"] for item in answer.json()["items"]]
    assert len(items) == 50 and {item["status"] for item in items} == {503}
    assert {item["error"]["type"] for item in items} == {"cluster_block_exception"}
    assert len(stub.requests("GET", "/busy/_settings")) == 2  # one lookup and its one retry, not 50 of them
    assert not stub.requests("POST", "/_bulk")
