"""Server behaviours of issue 10 over real HTTP: fail closed on a missing pipeline (also after a restart),
every answer in Elasticsearch's error shape (an unexpected exception is a counted, logged 500 without
internals), bulk create/index semantics on every path, the in-flight requests breaker, and any
``QuidditchError`` answered with its own status and type."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from quidditch_pipeline import PipelineService
from quidditch_pipeline.errors import RejectedExecutionError
from quidditch_pipeline.server import ServerLimits, TantivyBackend, create_app

from .server_harness import ServerProcess, served_data_dir

NDJSON = {"content-type": "application/x-ndjson"}
NO_WORKERS = ("--workers", "0")
UPPER = {
    "version": "1.0.0",
    "type": "document",
    "stages": [{"name": "up", "type": "native", "config": {"processor": "uppercase", "field": "title"}}],
}
QUERY = {
    "version": "1.0.0",
    "type": "query",
    "stages": [{"name": "mark", "type": "native", "config": {"processor": "set", "field": "ext.seen", "value": 1}}],
}
RESULT = {
    "version": "1.0.0",
    "type": "result",
    "stages": [{"name": "mark", "type": "native", "config": {"processor": "set", "field": "seen", "value": 1}}],
}


class Stack:
    def __init__(self, service: PipelineService, backend: TantivyBackend, client: httpx.Client) -> None:
        self.service, self.backend, self.client = service, backend, client


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    limits = ServerLimits(max_in_flight_bytes=64_000)
    with (
        served_data_dir(tmp_path, limits=limits) as (service, backend, url),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield Stack(service, backend, client)


_names = itertools.count()


def es_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["error"]["type"] == error_type, body
    assert body["error"]["root_cause"][0]["type"] == error_type
    return dict(body["error"])


def bulk(client: httpx.Client, lines: list[dict[str, Any]], **params: str) -> dict[str, Any]:
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    response = client.post("/_bulk", content=body, headers=NDJSON, params=params)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# --------------------------------------------------------------------------------------------- fail closed


def guarded_index(stack: Stack) -> tuple[str, str]:
    """An index whose document, query and result pipelines are configured, then deleted out of band."""
    n = next(_names)
    index, doc, query, result = f"guarded-{n}", f"up-{n}", f"q-{n}", f"r-{n}"
    client = stack.client
    for name, definition in ((doc, UPPER), (query, QUERY), (result, RESULT)):
        assert client.put(f"/_pipeline/{name}", json=definition).status_code == 200
    settings = {"index.document.default_pipeline": doc, "index.query.default_pipeline": query,
                "index.result.default_pipeline": result}  # fmt: skip
    assert client.put(f"/{index}", json={"settings": settings}).status_code == 200
    assert client.put(f"/{index}/_doc/before", json={"title": "a"}, params={"refresh": "true"}).status_code == 201
    assert client.get(f"/{index}/_doc/before").json()["_source"] == {"title": "A"}
    # Out of band: the registry loses the pipelines behind the HTTP layer's in-use check.
    for kind, name in (("document", doc), ("query", query), ("result", result)):
        stack.service.disassociate(index, kind)
        stack.service.delete_pipeline(name)
    return index, doc


def test_a_write_to_an_index_whose_pipeline_is_gone_is_refused_and_nothing_is_written(stack: Stack) -> None:
    index, pipeline = guarded_index(stack)
    client = stack.client
    for response in (
        client.put(f"/{index}/_doc/1", json={"title": "x"}),
        client.post(f"/{index}/_doc", json={"title": "x"}),
        client.put(f"/{index}/_create/2", json={"title": "x"}),
    ):
        assert 400 <= response.status_code < 500, response.text
        reason = response.json()["error"]["reason"]
        assert f"[{index}]" in reason and f"[{pipeline}]" in reason, reason
    result = bulk(client, [{"index": {"_index": index, "_id": "3"}}, {"title": "x"},
                           {"create": {"_index": index, "_id": "4"}}, {"title": "y"}])  # fmt: skip
    assert result["errors"] is True
    for item in result["items"]:
        (body,) = item.values()
        assert 400 <= body["status"] < 500 and f"[{pipeline}]" in body["error"]["reason"], body
    for doc_id in ("1", "2", "3", "4"):
        assert client.get(f"/{index}/_doc/{doc_id}").status_code == 404
    client.post(f"/{index}/_refresh")
    assert client.get(f"/{index}/_count").json()["count"] == 1
    # ``_none`` is the one way past the index's pipeline, as in Elasticsearch.
    assert client.put(f"/{index}/_doc/5", json={"title": "x"}, params={"pipeline": "_none"}).status_code == 201


def test_a_search_on_an_index_whose_query_or_result_pipeline_is_gone_is_refused(stack: Stack) -> None:
    index, _ = guarded_index(stack)
    response = stack.client.post(f"/{index}/_search", json={"query": {"match_all": {}}})
    assert 400 <= response.status_code < 500, response.text
    assert f"[{index}]" in response.json()["error"]["reason"]
    # The query pipeline skipped explicitly: the result pipeline still guards.
    response = stack.client.post(f"/{index}/_search", params={"query_pipeline": "_none"}, json={})
    assert 400 <= response.status_code < 500 and f"[{index}]" in response.json()["error"]["reason"]
    assert stack.client.post(f"/{index}/_search", params={"search_pipeline": "_none"}, json={}).status_code == 200


def test_after_a_restart_an_index_whose_pipeline_was_removed_out_of_band_refuses_writes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # The server process checks the pipeline; worker processes are not what this is about.
    with ServerProcess(data, extra=NO_WORKERS) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.put("/_pipeline/upper", json=UPPER).status_code == 200
        settings = {"index.document.default_pipeline": "upper"}
        assert client.put("/products", json={"settings": settings}).status_code == 200
        assert client.put("/products/_doc/1", json={"title": "a"}).status_code == 201
        assert server.terminate() == 0
    with sqlite3.connect(data / "registry.sqlite") as db:
        db.execute("DELETE FROM pipeline_revisions WHERE name = 'upper'")
        db.execute("DELETE FROM associations WHERE pipeline = 'upper'")
    with ServerProcess(data, extra=NO_WORKERS) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.put("/products/_doc/2", json={"title": "b"})
        assert 400 <= response.status_code < 500, response.text
        reason = response.json()["error"]["reason"]
        assert "[products]" in reason and "[upper]" in reason
        lines = [{"index": {"_index": "products", "_id": "3"}}, {"title": "c"}]
        (item,) = bulk(client, lines)["items"]
        assert 400 <= item["index"]["status"] < 500 and "[upper]" in item["index"]["error"]["reason"]
        assert client.get("/products/_doc/2").status_code == 404
        assert client.get("/products/_doc/3").status_code == 404
        assert client.get("/products/_doc/1").json()["_source"] == {"title": "A"}
        # Storing the pipeline again lifts the refusal.
        assert client.put("/_pipeline/upper", json=UPPER).status_code == 200
        assert client.put("/products/_doc/2", json={"title": "b"}).status_code == 201
        assert client.get("/products/_doc/2").json()["_source"] == {"title": "B"}


# --------------------------------------------------------------------------------------------- error shape


def test_an_unexpected_exception_is_an_es_shaped_500_logged_and_counted(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = stack.client
    assert client.put("/boom", json={}).status_code == 200

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(stack.backend, "search", explode)
    before = client.get("/_nodes/stats").json()
    (node,) = before["nodes"].values()
    assert node["http"]["unexpected_errors"] == 0
    with caplog.at_level(logging.ERROR):
        response = client.post("/boom/_search", json={})
    error = es_error(response, 500, "internal_server_error")
    assert response.headers["content-type"].startswith("application/json")
    assert "secret" not in response.text and "Traceback" not in response.text and "RuntimeError" not in response.text
    assert error["reason"]
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)
    (node,) = client.get("/_nodes/stats").json()["nodes"].values()
    assert node["http"]["unexpected_errors"] == 1
    # The server goes on.
    assert client.get("/").status_code == 200


def test_an_unexpected_exception_through_asgi_is_es_shaped_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, without uvicorn: nothing (not even Starlette's last line) answers plain text."""
    with PipelineService.open(tmp_path) as service, TantivyBackend(tmp_path) as backend:
        app = create_app(service, backend)
        monkeypatch.setattr(service, "list_pipelines", lambda **_: 1 / 0)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.get("/_pipeline")

        response = asyncio.run(call())
        es_error(response, 500, "internal_server_error")
        assert "ZeroDivision" not in response.text


def test_any_quidditch_error_answers_its_own_status_and_type(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(*args: object, **kwargs: object) -> None:
        raise RejectedExecutionError("too many UDF builds at once")

    monkeypatch.setattr(stack.service, "put_udf", busy)
    response = stack.client.put("/_udf/x/1.0.0", content="def process(v, p):\n    return None\n",
                                headers={"content-type": "text/x-python"})  # fmt: skip
    assert es_error(response, 429, "es_rejected_execution_exception")["reason"] == "too many UDF builds at once"


# --------------------------------------------------------------------------------------------- bulk semantics


def test_create_of_an_existing_id_is_a_409_on_every_path_and_index_overwrites(stack: Stack) -> None:
    client = stack.client
    index = f"sem-{next(_names)}"
    assert client.put(f"/{index}", json={}).status_code == 200
    first = client.put(f"/{index}/_doc/1", json={"v": 1})
    assert first.status_code == 201 and first.json()["result"] == "created"
    again = client.put(f"/{index}/_doc/1", json={"v": 2})
    assert again.status_code == 200 and again.json()["result"] == "updated" and again.json()["_version"] == 2
    es_error(client.put(f"/{index}/_doc/1", json={"v": 3}, params={"op_type": "create"}), 409,
             "version_conflict_engine_exception")  # fmt: skip
    es_error(client.put(f"/{index}/_create/1", json={"v": 3}), 409, "version_conflict_engine_exception")
    assert client.get(f"/{index}/_doc/1").json()["_source"] == {"v": 2}
    result = bulk(client, [
        {"create": {"_index": index, "_id": "1"}}, {"v": 4},          # exists: 409
        {"create": {"_index": index, "_id": "2"}}, {"v": 1},          # new: created
        {"create": {"_index": index, "_id": "2"}}, {"v": 2},          # created one line above: 409
        {"index": {"_index": index, "_id": "2"}}, {"v": 3},           # overwrites: updated
        {"index": {"_index": index, "_id": "1", "op_type": "create"}}, {"v": 5},  # op_type create: 409
        {"index": {"_index": index, "_id": "3", "op_type": "create"}}, {"v": 1},  # created
    ])  # fmt: skip
    statuses = [(next(iter(item)), body["status"], body.get("result")) for item in result["items"]
                for body in item.values()]  # fmt: skip
    assert statuses == [
        ("create", 409, None), ("create", 201, "created"), ("create", 409, None),
        ("index", 200, "updated"), ("create", 409, None), ("create", 201, "created"),
    ]  # fmt: skip
    for item in (result["items"][0]["create"], result["items"][2]["create"], result["items"][4]["create"]):
        assert item["error"]["type"] == "version_conflict_engine_exception"
    assert client.get(f"/{index}/_doc/1").json()["_source"] == {"v": 2}
    assert client.get(f"/{index}/_doc/2").json()["_source"] == {"v": 3}
    assert client.get(f"/{index}/_doc/3").json()["_version"] == 1


def test_a_bulk_op_type_that_does_not_fit_its_action_is_refused(stack: Stack) -> None:
    lines = [{"create": {"_index": "x", "_id": "1", "op_type": "index"}}, {"v": 1}]
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    es_error(stack.client.post("/_bulk", content=body, headers=NDJSON), 400, "parse_exception")


# --------------------------------------------------------------------------------------------- breaker


def test_bodies_past_the_in_flight_limit_are_429_and_their_bytes_are_released(stack: Stack) -> None:
    client = stack.client
    index = f"breaker-{next(_names)}"
    assert client.put(f"/{index}", json={}).status_code == 200
    big = {"text": "x" * 70_000}
    error = es_error(client.put(f"/{index}/_doc/1", json=big), 429, "circuit_breaking_exception")
    assert "in_flight_requests" in error["reason"]
    (node,) = client.get("/_nodes/stats").json()["nodes"].values()
    breaker = node["breakers"]["in_flight_requests"]
    assert breaker["estimated_size_in_bytes"] == 0 and breaker["tripped"] >= 1
    assert breaker["limit_size_in_bytes"] == 64_000
    assert client.put(f"/{index}/_doc/1", json={"text": "small"}).status_code == 201
    assert client.get(f"/{index}/_doc/1").json()["_source"] == {"text": "small"}


def test_a_request_cut_off_by_a_graceful_shutdown_gets_an_es_shaped_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn cancels what still runs when its graceful shutdown times out and would answer plain text."""
    with PipelineService.open(tmp_path) as service, TantivyBackend(tmp_path) as backend:
        release = threading.Event()

        def slow_list(**_: object) -> dict[str, Any]:
            release.wait(30)  # a request still running when the shutdown's grace runs out
            return {"total": 0, "pipelines": []}

        monkeypatch.setattr(service, "list_pipelines", slow_list)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            create_app(service, backend), log_level="critical", lifespan="off", timeout_graceful_shutdown=0.5
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        answer: dict[str, httpx.Response] = {}

        def call() -> None:
            answer["r"] = httpx.get(f"http://127.0.0.1:{sock.getsockname()[1]}/_pipeline", timeout=30)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.3)  # the request is in the route
        server.should_exit = True
        caller.join(timeout=30)
        release.set()
        thread.join(timeout=30)
        sock.close()
    response = answer["r"]
    error = es_error(response, 503, "node_closed_exception")
    assert response.headers["content-type"].startswith("application/json") and "shut down" in error["reason"]
