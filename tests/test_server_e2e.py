"""The real server: ``serve`` in a subprocess on a loopback port, driven by httpx and by the unmodified
``opensearch-py`` client; a graceful SIGTERM lets in-flight requests finish; a restart after SIGTERM or
SIGKILL keeps indexes, settings, pipelines, UDFs and every acknowledged write."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opensearchpy import NotFoundError, OpenSearch, RequestError, helpers

from quidditch_pipeline.cli import main

from .server_harness import ServerProcess, put_probe

TOKEN = "e2e-admin-token"
#: Worker processes are not what these tests are about (tests/test_workers.py is); the demo's first start keeps
#: them, as the README runs it.
NO_WORKERS = ("--workers", "0")
ADMIN = {"authorization": f"Bearer {TOKEN}"}


def opensearch(server: ServerProcess, **options: Any) -> OpenSearch:
    return OpenSearch(hosts=[{"host": "127.0.0.1", "port": server.port}], timeout=60, **options)


def set_up_pipelines(client: httpx.Client) -> None:
    """The probe UDF and a document, query and result pipeline that use it."""
    response = put_probe(client)
    assert response.status_code in {200, 201}, response.text
    definitions = {
        "enrich": ("document", [
            {"name": "lower", "type": "native", "config": {"processor": "lowercase", "field": "title"}},
            {"name": "spam", "type": "python",
             "config": {"udf_name": "probe", "parameters": {"mode": "keep_unless", "path": "spam"}}},
        ]),
        "guard": ("query", [
            {"name": "block", "type": "python",
             "config": {"udf_name": "probe", "parameters": {"mode": "keep_unless", "path": "ext.block"}}},
        ]),
        "rerank": ("result", [
            {"name": "rank", "type": "python", "config": {"udf_name": "probe", "parameters": {"mode": "score"}}},
        ]),
    }  # fmt: skip
    for name, (kind, stages) in definitions.items():
        body = {"version": "1.0.0", "type": kind, "stages": stages}
        assert client.put(f"/_pipeline/{name}", json=body).status_code == 200


def listening(server: ServerProcess) -> bool:
    """Whether ``server`` still accepts connections."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", server.port)) == 0


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(data_dir, token=TOKEN, extra=NO_WORKERS) as server:
        yield server


def test_opensearch_client_end_to_end(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=120) as admin:
        set_up_pipelines(admin)
    # The unmodified opensearch-py client: the admin token travels as an ordinary header.
    client = opensearch(server, headers=ADMIN)
    assert client.info()["version"]["distribution"] == "quidditch-pipeline"
    assert client.ping()
    settings = {"index": {"document": {"default_pipeline": "enrich"}, "query": {"default_pipeline": "guard"},
                          "result": {"default_pipeline": "rerank"}}}  # fmt: skip
    assert client.indices.create(index="products", body={"settings": settings})["acknowledged"] is True
    assert client.indices.exists(index="products") is True
    assert client.indices.exists(index="nothing-here") is False
    with pytest.raises(RequestError):
        client.indices.create(index="products")
    indexed = client.index(index="products", id="1", body={"title": "Red NOTEBOOK", "rank": 2}, refresh=True)
    assert indexed["result"] == "created"
    dropped = client.index(index="products", id="spam", body={"title": "Buy now", "spam": True})
    assert dropped["result"] == "noop"
    actions = [{"_index": "products", "_id": str(i), "_source": {"title": f"Notebook {i}", "rank": i}}
               for i in range(2, 12)]  # fmt: skip
    success, errors = helpers.bulk(client, actions, refresh=True)
    assert (success, errors) == (10, [])
    doc = client.get(index="products", id="1")
    assert doc["found"] is True and doc["_source"] == {"title": "red notebook", "rank": 2}
    with pytest.raises(NotFoundError):
        client.get(index="products", id="spam")
    assert client.exists(index="products", id="1") is True
    result = client.search(index="products", body={"query": {"match": {"title": "notebook"}}, "size": 3})
    hits = result["hits"]["hits"]
    assert result["hits"]["total"]["value"] == 11
    # The result pipeline re-scored the hits by rank: tantivy's top 3 come back ordered by it.
    assert [h["_score"] for h in hits] == sorted((float(h["_source"]["rank"]) for h in hits), reverse=True)
    with pytest.raises(RequestError) as rejected:
        client.search(index="products", body={"query": {"match_all": {}}, "ext": {"block": True}})
    assert rejected.value.error == "query_rejected_exception"
    assert client.count(index="products")["count"] == 11
    assert client.delete(index="products", id="1", refresh=True)["result"] == "deleted"
    assert client.count(index="products", body={"query": {"match": {"title": "red"}}})["count"] == 0
    stats = httpx.get(f"{server.url}/_pipeline/enrich/_stats").json()
    assert stats["count"] == 12 and stats["dropped"] == 1
    assert client.indices.delete(index="products")["acknowledged"] is True
    assert client.indices.exists(index="products") is False


def test_admin_routes_refuse_a_client_without_the_token(server: ServerProcess) -> None:
    client = opensearch(server)
    with pytest.raises(Exception) as refused:
        client.indices.create(index="products")
    assert getattr(refused.value, "status_code", None) == 401


def test_restart_after_sigterm_keeps_everything_and_finishes_in_flight_requests(data_dir: Path) -> None:
    server = ServerProcess(data_dir, token=TOKEN, extra=NO_WORKERS)
    with server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=300) as client:
        set_up_pipelines(client)
        client.put("/products", json={"settings": {"index.document.default_pipeline": "enrich",
                                                   "index.refresh_interval": "-1"}})  # fmt: skip
        client.put("/products/_doc/1", json={"title": "KEPT", "rank": 1})
        # A request in flight when SIGTERM arrives: its head is in, its body still arriving. The server stops
        # listening (a new connection is refused: the shutdown has begun), and it still completes.
        outcome: dict[str, httpx.Response] = {}
        head_in, go_on = threading.Event(), threading.Event()

        def body() -> Iterator[bytes]:
            yield b'{"title": "LATE", '
            head_in.set()  # httpx asks for the next part once it has sent this one
            go_on.wait(60)
            yield b'"rank": 2}'

        def put_late() -> None:
            outcome["put"] = client.put("/products/_doc/late", content=body(),
                                        headers={"content-type": "application/json"})  # fmt: skip

        thread = threading.Thread(target=put_late)
        thread.start()
        assert head_in.wait(60)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while listening(server):
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.02)
        go_on.set()
        assert server.process.wait(timeout=120) == 0, server.output()
        thread.join(timeout=120)
        assert outcome["put"].status_code == 201, outcome["put"].text
    assert "bye" in server.output()

    again = ServerProcess(data_dir, token=TOKEN, extra=NO_WORKERS)
    with again, httpx.Client(base_url=again.url, timeout=60) as client:
        assert client.get("/products/_doc/1").json()["_source"] == {"title": "kept", "rank": 1}
        assert client.get("/products/_doc/late").json()["_source"] == {"title": "late", "rank": 2}
        assert client.get("/products/_count").json()["count"] == 2
        settings = client.get("/products/_settings").json()["products"]["settings"]["index"]
        assert settings["document"]["default_pipeline"] == "enrich" and settings["refresh_interval"] == "-1"
        assert {p["name"] for p in client.get("/_pipeline").json()["pipelines"]} == {"enrich", "guard", "rerank"}
        assert client.get("/_udf/probe").json()["versions"][0]["version"] == "1.0.0"
        # The pipeline (and its WASM stage) still runs on the documents written after the restart.
        started = time.monotonic()
        dropped = client.put("/products/_doc/2", json={"title": "x", "spam": True})
        assert dropped.json()["result"] == "noop"
        assert time.monotonic() - started < 5, "the compiled UDF should load from the on-disk cache"
        again.terminate()


def test_restart_after_sigkill_keeps_acknowledged_writes(data_dir: Path) -> None:
    server = ServerProcess(data_dir, extra=NO_WORKERS)
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.put("/logs", json={"settings": {"index": {"refresh_interval": "-1"}}}).status_code == 200
        lines = b"".join(b'{"index":{"_id":"%d"}}\n{"n":%d}\n' % (i, i) for i in range(500))
        assert client.post("/logs/_bulk", content=lines).json()["errors"] is False
        assert client.put("/logs/_doc/last", json={"n": "last"}).status_code == 201
        assert client.delete("/logs/_doc/7").json()["result"] == "deleted"
        # Nothing was refreshed: every write above lives only in the translog when the process dies.
        assert client.get("/logs/_count").json()["count"] == 0
        server.kill()
    with ServerProcess(data_dir, extra=NO_WORKERS) as again, httpx.Client(base_url=again.url, timeout=60) as client:
        assert client.get("/logs/_count").json()["count"] == 500
        assert client.get("/logs/_doc/last").json()["_source"] == {"n": "last"}
        assert client.get("/logs/_doc/7").status_code == 404
        hits = client.post("/logs/_search", json={"query": {"term": {"n": 499}}}).json()["hits"]["hits"]
        assert [h["_id"] for h in hits] == ["499"]
        again.terminate()


def test_serve_demo_sets_everything_up_and_a_restart_skips_it(data_dir: Path) -> None:
    # The README's main command, through the CLI entry point.
    entry = ("quidditch_pipeline.cli", "serve")
    with ServerProcess(data_dir, extra=("--demo",), entry=entry) as server:
        deadline = time.monotonic() + 600
        while "demo ready" not in server.output():
            assert "setup failed" not in server.output(), server.output()
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.5)
        output = server.output()
        assert "15 products indexed, 2 dropped as spam" in output and "1 refused" in output
        assert f"curl -s '{server.url}/products/_search?pretty'" in output
        with httpx.Client(base_url=server.url, timeout=60) as client:
            body = {"query": {"match": {"title": "laptop"}}}
            hits = client.post("/products/_search", json=body).json()["hits"]["hits"]
            plain = client.post("/products/_search", json=body, params={"search_pipeline": "_none"}).json()
            # Synonyms (laptop -> notebook) find more than the plain query; titles were normalised.
            assert len(hits) > len(plain["hits"]["hits"]) >= 1
            assert any(h["_source"]["title"] == "Dell Xps 15 Notebook" for h in hits)
            indexed = client.put("/products/_doc/42", json={"title": "  anker   USB-C charger ", "price": 35})
            assert indexed.status_code == 201
            source = client.get("/products/_doc/42").json()["_source"]
            # The condition (price < 50) marked it; the failure handler gave it the category it lacked.
            assert source == {
                "title": "Anker USB-C Charger", "price": 35, "price_band": "budget", "bargain": True,
                "category": "uncategorized",
            }  # fmt: skip
            assert client.put("/products/_doc/43", json={"title": "BUY NOW", "price": 1}).json()["result"] == "noop"
            refused = client.put("/products/_doc/44?refresh=true", json={"title": "mystery"}).json()
            assert refused["failure_store"] == "used" and refused["_index"] == "products::failures"
            assert "products::failures/_search?pretty" in output and "_failure_store/_reprocess" in output
            kept = client.get("/products::failures/_search").json()["hits"]["hits"]
            by_id = {hit["_source"]["document"]["id"]: hit["_source"] for hit in kept}
            assert set(by_id) == {"no-price", "44"}
            assert by_id["44"]["document"]["source"] == {"title": "mystery"}
            assert by_id["44"]["error"]["stage"] == "validate"
            assert by_id["44"]["error"]["pipeline_trace"] == ["products-ingest"]
            again_kept = client.post("/products/_failure_store/_reprocess").json()
            assert again_kept["reprocessed"] == 2 and again_kept["failed"] == 2  # no price still
            simulated = client.post("/products/_simulate", json={"docs": [{"_source": {"title": "hub", "price": 9}}]})
            assert simulated.json()["docs"][0]["doc"]["_source"]["bargain"] is True
        assert server.terminate() == 0
    with ServerProcess(data_dir, extra=("--demo", *NO_WORKERS), entry=entry) as again:
        deadline = time.monotonic() + 60
        while "demo ready" not in again.output():
            assert time.monotonic() < deadline, again.output()
            time.sleep(0.2)
        assert "registered already" in again.output()
        assert httpx.get(f"{again.url}/products/_count").json()["count"] == 16
        again.terminate()


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [("--max-concurrent-builds", "0", "must be 1 or more"), ("--build-queue-timeout", "-1", "queue_timeout_s")],
)
def test_serve_refuses_build_limits_that_cannot_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, says: str
) -> None:
    try:
        code = main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "0", option, value])
    except SystemExit as exc:  # argparse's refusal
        code = exc.code
    assert code not in (0, None)
    assert says in capsys.readouterr().err
