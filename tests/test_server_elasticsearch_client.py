"""The unmodified official ``elasticsearch`` client against the real server (``serve`` in a subprocess).

Without the product header the client refuses the server at its first call (``UnsupportedProductError``), so
every test here fails on a server that does not send it; the ingest tests also need the ``/_ingest`` aliases.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from elasticsearch import (
    AuthenticationException,
    BadRequestError,
    ConflictError,
    Elasticsearch,
    NotFoundError,
    helpers,
)
from elasticsearch import __versionstr__ as client_version

from .server_harness import ServerProcess
from .test_server_e2e import ADMIN, TOKEN, set_up_pipelines

MAJOR = client_version.split(".")[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # One server for the module: each test uses its own index and pipeline names and deletes what it made.
    with ServerProcess(tmp_path_factory.mktemp("es-client") / "data", token=TOKEN) as server:
        yield server


def elasticsearch(server: ServerProcess, **options: Any) -> Elasticsearch:
    return Elasticsearch(server.url, request_timeout=60, **options)


def test_every_answer_identifies_the_api_and_speaks_the_vendor_media_type(server: ServerProcess) -> None:
    vendor = f"application/vnd.elasticsearch+json; compatible-with={MAJOR}"
    answer = httpx.get(server.url + "/", headers={"accept": vendor})
    assert answer.headers["x-elastic-product"] == "Elasticsearch"
    assert answer.headers["content-type"] == f"application/vnd.elasticsearch+json;compatible-with={MAJOR}"
    # GET / still names the real distribution; an error answer carries the product header too.
    assert answer.json()["version"]["distribution"] == "quidditch-pipeline"
    missing = httpx.get(server.url + "/nothing-here/_doc/1")
    assert missing.status_code == 404 and missing.headers["x-elastic-product"] == "Elasticsearch"
    assert httpx.get(server.url + "/").headers["content-type"] == "application/json"
    refused = httpx.get(server.url + "/", headers={"accept": "application/vnd.elasticsearch+json; compatible-with=6"})
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "media_type_header_exception"


def test_elasticsearch_client_end_to_end(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=120) as admin:
        set_up_pipelines(admin)
    client = elasticsearch(server, headers=ADMIN)
    assert client.info()["version"]["distribution"] == "quidditch-pipeline"
    assert client.ping()
    settings = {"index": {"document": {"default_pipeline": "enrich"}, "query": {"default_pipeline": "guard"},
                          "result": {"default_pipeline": "rerank"}}}  # fmt: skip
    assert client.indices.create(index="products", settings=settings)["acknowledged"] is True
    assert client.indices.exists(index="products")
    assert not client.indices.exists(index="nothing-here")
    assert "products" in client.indices.get(index="products")
    stored = client.indices.get_settings(index="products")["products"]["settings"]["index"]
    assert stored["document"]["default_pipeline"] == "enrich"
    with pytest.raises(BadRequestError):
        client.indices.create(index="products")
    indexed = client.index(index="products", id="1", document={"title": "Red NOTEBOOK", "rank": 2}, refresh=True)
    assert indexed["result"] == "created"
    assert client.create(index="products", id="0", document={"title": "Blue pen", "rank": 0})["result"] == "created"
    with pytest.raises(ConflictError):
        client.create(index="products", id="0", document={"title": "again"})
    assert client.index(index="products", id="spam", document={"title": "Buy", "spam": True})["result"] == "noop"
    bulk = client.bulk(operations=[{"index": {"_index": "products", "_id": "2"}}, {"title": "Notebook 2", "rank": 2}])
    assert bulk["errors"] is False and bulk["items"][0]["index"]["result"] == "created"
    actions = ({"_index": "products", "_id": str(i), "_source": {"title": f"Notebook {i}", "rank": i}}
               for i in range(3, 12))  # fmt: skip
    assert helpers.bulk(client, actions) == (9, [])
    assert client.indices.refresh(index="products")["_shards"]["failed"] == 0
    doc = client.get(index="products", id="1")
    assert doc["found"] is True and doc["_source"] == {"title": "red notebook", "rank": 2}
    with pytest.raises(NotFoundError):
        client.get(index="products", id="spam")
    assert client.exists(index="products", id="1")
    result = client.search(index="products", query={"match": {"title": "notebook"}}, size=3)
    hits = result["hits"]["hits"]
    assert result["hits"]["total"]["value"] == 11
    assert [h["_score"] for h in hits] == sorted((float(h["_source"]["rank"]) for h in hits), reverse=True)
    with pytest.raises(BadRequestError) as rejected:
        client.search(index="products", query={"match_all": {}}, ext={"block": True})
    assert rejected.value.error == "query_rejected_exception"
    assert client.count(index="products")["count"] == 12
    assert client.count(index="products", query={"match": {"title": "pen"}})["count"] == 1
    cat = client.cat.indices(format="json")
    assert [(row["index"], row["docs.count"]) for row in cat] == [("products", "12")]
    client.indices.put_settings(index="products", settings={"index": {"result": {"default_pipeline": None}}})
    assert "result" not in client.indices.get_settings(index="products")["products"]["settings"]["index"]
    assert client.delete(index="products", id="1", refresh=True)["result"] == "deleted"
    assert client.indices.delete(index="products")["acknowledged"] is True
    assert not client.indices.exists(index="products")


def test_admin_routes_refuse_a_client_without_the_token(server: ServerProcess) -> None:
    with pytest.raises(AuthenticationException):
        elasticsearch(server).indices.create(index="products")
    with pytest.raises(AuthenticationException):
        elasticsearch(server).ingest.put_pipeline(id="p", processors=[{"lowercase": {"field": "title"}}])


INGEST_PIPELINE: dict[str, Any] = {
    "description": "tidy incoming products",
    "processors": [
        {"trim": {"field": "title"}},
        {"lowercase": {"field": "title", "tag": "lower-title"}},
        {"split": {"field": "tags", "separator": ",", "ignore_missing": True}},
        {"convert": {"field": "price", "type": "double", "ignore_failure": True}},
        {"set": {"field": "status", "value": "new", "override": False}},
        {"rename": {"field": "desc", "target_field": "description", "ignore_missing": True}},
    ],
    "version": 2,
    "_meta": {"owner": "catalogue"},
}


def test_ingest_api_through_the_client(server: ServerProcess) -> None:
    client = elasticsearch(server, headers=ADMIN)
    assert client.ingest.put_pipeline(id="tidy", **INGEST_PIPELINE)["acknowledged"] is True
    assert client.ingest.get_pipeline(id="tidy")["tidy"] == INGEST_PIPELINE
    assert list(client.ingest.get_pipeline()) == ["tidy"]
    client.ingest.put_pipeline(id="tidy-2", processors=[{"trim": {"field": "t"}}])
    assert sorted(client.ingest.get_pipeline(id="tidy*")) == ["tidy", "tidy-2"]
    assert list(client.ingest.get_pipeline(id="tidy-2,nothing")) == ["tidy-2"]
    with pytest.raises(NotFoundError):
        client.ingest.get_pipeline(id="nothing*")
    client.ingest.delete_pipeline(id="tidy-2")
    # The stored pipeline is an ordinary document pipeline, usable by indexes and visible under /_pipeline.
    native = httpx.get(f"{server.url}/_pipeline/tidy").json()
    assert native["version"] == "2.0.0" and native["metadata"] == {"owner": "catalogue"}
    docs = [{"_id": "a", "_source": {"title": "  Lamp ", "tags": "home,light", "price": "9.5", "desc": "bright"}},
            {"_source": {"title": "Mug", "price": "cheap", "status": "sold"}}]  # fmt: skip
    simulated = client.ingest.simulate(id="tidy", docs=docs)["docs"]
    assert simulated[0]["doc"]["_id"] == "a" and "timestamp" in simulated[0]["doc"]["_ingest"]
    assert simulated[0]["doc"]["_source"] == {"title": "lamp", "tags": ["home", "light"], "price": 9.5,
                                              "status": "new", "description": "bright"}  # fmt: skip
    # convert fails on "cheap" but ignore_failure carries on; override: false keeps the existing status.
    assert simulated[1]["doc"]["_source"] == {"title": "mug", "price": "cheap", "status": "sold"}
    verbose = client.ingest.simulate(id="tidy", docs=docs[1:], verbose=True)["docs"][0]["processor_results"]
    assert [(r["processor_type"], r["status"]) for r in verbose] == [
        ("trim", "success"), ("lowercase", "success"), ("split", "success"), ("convert", "error_ignored"),
        ("set", "success"), ("rename", "success"),
    ]  # fmt: skip
    assert verbose[1]["tag"] == "lower-title" and verbose[1]["doc"]["_source"]["title"] == "mug"
    inline = client.ingest.simulate(
        pipeline={"processors": [{"uppercase": {"field": "t"}}]}, docs=[{"_source": {"t": "a"}}]
    )
    assert inline["docs"][0]["doc"]["_source"] == {"t": "A"}
    failing = client.ingest.simulate(pipeline={"processors": [{"fail": {"message": "no"}}]}, docs=[{"_source": {}}])
    assert failing["docs"][0]["error"]["type"] == "pipeline_execution_exception"
    client.indices.create(index="shop", settings={"index": {"document": {"default_pipeline": "tidy"}}})
    client.index(index="shop", id="1", document={"title": " Desk LAMP ", "price": "20"}, refresh=True)
    assert client.get(index="shop", id="1")["_source"] == {"title": "desk lamp", "price": 20.0, "status": "new"}
    with pytest.raises(ConflictError):
        client.ingest.put_pipeline(id="tidy", processors=[{"trim": {"field": "t"}}], if_version=1)
    client.indices.delete(index="shop")
    assert client.ingest.delete_pipeline(id="tidy")["acknowledged"] is True
    with pytest.raises(NotFoundError):
        client.ingest.get_pipeline(id="tidy")


def test_ingest_put_refuses_what_has_no_equivalent_naming_each_position(server: ServerProcess) -> None:
    client = elasticsearch(server, headers=ADMIN)
    processors = [
        {"lowercase": {"field": "title"}},
        {"grok": {"field": "message", "patterns": ["%{IP:client}"]}},
        {"set": {"field": "flag", "value": True, "if": "ctx.title?.length() > 1"}},
    ]
    with pytest.raises(BadRequestError) as refused:
        client.ingest.put_pipeline(id="parse", processors=processors)
    problems = {p["path"]: p["message"] for p in refused.value.body["error"]["problems"]}
    assert problems["processors[1]"] == "[grok] has no equivalent"
    assert "Painless-only condition" in problems["processors[2].set.if"]
    with pytest.raises(NotFoundError):
        client.ingest.get_pipeline(id="parse")
    # A python pipeline is no ingest pipeline: GET names what Elasticsearch cannot express.
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=120) as admin:
        set_up_pipelines(admin)
    with pytest.raises(BadRequestError) as inexpressible:
        client.ingest.get_pipeline(id="enrich")
    assert "stages[1].type: a python stage has no Elasticsearch processor" in str(inexpressible.value.body)
