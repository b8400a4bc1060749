"""Gateway mode with real parts: ``serve --upstream`` in front of this project's own server in embedded mode
(an upstream that speaks the Elasticsearch API), both real ``serve`` processes on loopback, driven by the
unmodified ``opensearch-py`` client.

Between the gateway and the upstream sits a recording proxy (``Recorder``): it forwards every request as it
came and keeps what it forwarded, so a test can say what the upstream received (the pipeline settings never,
the search parameters unchanged). Checks of what the upstream stored go to the upstream directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from opensearchpy import OpenSearch, RequestError

from quidditch_pipeline.failures import FAILURE_STORE_MAPPINGS

from .server_harness import ServerProcess, loopback_http, started
from .test_postgres_nodes import eventually
from .test_server_e2e import set_up_pipelines

UPSTREAM_TOKEN = "upstream-admin-token"
GATEWAY_TOKEN = "gateway-admin-token"
UPSTREAM_ADMIN = {"authorization": f"Bearer {UPSTREAM_TOKEN}"}
GATEWAY_ADMIN = {"authorization": f"Bearer {GATEWAY_TOKEN}"}
PIPELINE_KEYS = ("default_pipeline", "final_pipeline")


@dataclass
class Forwarded:
    method: str
    path: str
    params: dict[str, list[str]]
    body: bytes


@dataclass
class Recorder:
    """A loopback HTTP proxy in front of ``target`` that keeps every request it forwards. While ``target`` is
    down, the proxy drops the connection without an answer, as a dead node's address would."""

    target: str
    url: str = ""
    forwarded: list[Forwarded] = field(default_factory=list)

    def requests(self, method: str, path: str) -> list[Forwarded]:
        return [r for r in self.forwarded if (r.method, r.path) == (method, path)]


@contextlib.contextmanager
def recording_proxy(target: str) -> Iterator[Recorder]:
    recorder = Recorder(target)
    client = httpx.Client(timeout=120)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            recorder.forwarded.append(Forwarded(self.command, parts.path, parse_qs(parts.query), body))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
            try:
                answer = client.request(self.command, recorder.target + self.path, content=body or None,
                                        headers=headers)  # fmt: skip
            except httpx.TransportError:
                self.close_connection = True
                return
            self.send_response(answer.status_code)
            for key, value in answer.headers.items():
                if key.lower() not in {"content-length", "transfer-encoding", "connection", "content-encoding"}:
                    self.send_header(key, value)
            self.send_header("content-length", str(len(answer.content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.content)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read ``forwarded``."""

    try:
        with loopback_http(Handler) as url:
            recorder.url = url
            yield recorder
    finally:
        client.close()


def gateway_process(data_dir: Path, upstream_url: str, *extra: str) -> ServerProcess:
    return ServerProcess(
        data_dir,
        token=GATEWAY_TOKEN,
        extra=("--workers", "0", "--upstream", upstream_url, "--upstream-bearer", UPSTREAM_TOKEN, *extra),
    )


@contextlib.contextmanager
def two_gateway_nodes(
    deployment: Deployment, tmp_path: Path, postgres_dsn: str
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two gateway nodes in front of the deployment's upstream, sharing one PostgreSQL registry."""
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    with (  # started together: b starts while a does
        started(gateway_process(tmp_path / "a" / "data", deployment.upstream.url, "--registry", postgres_dsn)) as a,
        gateway_process(tmp_path / "b" / "data", deployment.upstream.url, "--registry", postgres_dsn) as b,
    ):
        a.wait_ready()
        yield a, b


@dataclass
class Deployment:
    upstream: ServerProcess
    recorder: Recorder
    gateway: ServerProcess

    def client(self) -> OpenSearch:
        return OpenSearch(hosts=[self.gateway.url], headers=GATEWAY_ADMIN, timeout=120)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("gateway")
    (root / "upstream").mkdir()
    (root / "gateway").mkdir()
    with (  # the gateway starts while the upstream does (it asks nothing of the upstream until a request)
        started(ServerProcess(root / "upstream" / "data", token=UPSTREAM_TOKEN, extra=("--workers", "0"))) as upstream,
        recording_proxy(upstream.url) as recorder,
        gateway_process(root / "gateway" / "data", recorder.url) as gateway,
    ):
        upstream.wait_ready()
        with httpx.Client(base_url=gateway.url, headers=GATEWAY_ADMIN, timeout=120) as admin:
            set_up_pipelines(admin)  # enrich (document), guard (query), rerank (result), in the gateway
            stages = [
                {"name": "lower", "type": "native", "config": {"processor": "lowercase", "field": "title"}},
                {"name": "spam", "type": "native", "config": {"processor": "drop", "field": "spam", "value": True}},
                {"name": "refuse", "type": "native", "config": {"processor": "fail", "message": "refused {{title}}"},
                 "if": "ctx.refuse == true"},
            ]  # fmt: skip
            put = admin.put("/_pipeline/events", json={"version": "1.0.0", "type": "document", "stages": stages})
            assert put.status_code == 200, put.text
        yield Deployment(upstream, recorder, gateway)


def upstream_get(deployment: Deployment, path: str, **params: Any) -> httpx.Response:
    return httpx.get(deployment.upstream.url + path, params=params, headers=UPSTREAM_ADMIN, timeout=60)


def test_the_three_pipeline_types_run_in_the_gateway_and_their_settings_stay_there(deployment: Deployment) -> None:
    client = deployment.client()
    settings = {"index": {"document": {"default_pipeline": "enrich"}, "query": {"default_pipeline": "guard"},
                          "result": {"default_pipeline": "rerank"}, "number_of_replicas": 0}}  # fmt: skip
    assert client.indices.create(index="products", body={"settings": settings})["acknowledged"] is True
    # The upstream got the creation without the pipeline settings, and does not have them.
    (created,) = deployment.recorder.requests("PUT", "/products")
    assert orjson.loads(created.body) == {"settings": {"index.number_of_replicas": 0}}
    upstream_settings = upstream_get(deployment, "/products/_settings", flat_settings="true").json()
    flat = upstream_settings["products"]["settings"]
    assert flat["index.number_of_replicas"] == "0"
    assert not [key for key in flat if key.endswith(PIPELINE_KEYS)]
    # The gateway shows them, and what the upstream holds besides.
    shown = client.indices.get_settings(index="products")["products"]["settings"]["index"]
    assert shown["document"]["default_pipeline"] == "enrich" and shown["result"]["default_pipeline"] == "rerank"
    index_view = client.indices.get(index="products")["products"]["settings"]["index"]
    assert index_view["query"]["default_pipeline"] == "guard" and index_view["number_of_replicas"] == "0"

    # Document pipeline before the write; a dropped document is a noop and never reaches the upstream.
    indexed = client.index(index="products", id="1", body={"title": "Red NOTEBOOK", "rank": 2}, refresh=True)
    assert indexed["result"] == "created" and indexed["_version"] == 1
    assert upstream_get(deployment, "/products/_doc/1").json()["_source"] == {"title": "red notebook", "rank": 2}
    assert client.index(index="products", id="spam", body={"title": "Buy now", "spam": True})["result"] == "noop"
    assert upstream_get(deployment, "/products/_doc/spam").status_code == 404
    lines = [line for i in range(2, 8) for line in ({"index": {"_id": str(i)}}, {"title": f"Notebook {i}", "rank": i})]
    assert client.bulk(index="products", body=lines, refresh=True)["errors"] is False
    assert client.get(index="products", id="5")["_source"] == {"title": "notebook 5", "rank": 5}

    # Query pipeline before the search: a rejected search never reaches the upstream.
    searches = len(deployment.recorder.requests("POST", "/products/_search"))
    with pytest.raises(RequestError) as refused:
        client.search(index="products", body={"query": {"match_all": {}}, "ext": {"block": True}})
    assert refused.value.status_code == 400
    assert len(deployment.recorder.requests("POST", "/products/_search")) == searches
    # Result pipeline after: rerank scores each hit by its rank.
    hits = client.search(index="products", body={"query": {"match": {"title": "notebook"}}})["hits"]["hits"]
    assert {hit["_id"] for hit in hits} == {"1", "2", "3", "4", "5", "6", "7"}
    assert all(hit["_score"] == float(hit["_source"]["rank"]) for hit in hits)
    assert [hit["_score"] for hit in hits] == [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 2.0]
    # search_pipeline=_none skips both: the upstream's own scores come back.
    raw = client.search(index="products", body={"query": {"match_all": {}}}, params={"search_pipeline": "_none"})
    assert {hit["_score"] for hit in raw["hits"]["hits"]} == {1.0}


def test_a_bulk_of_thousands_loses_nothing_and_duplicates_nothing(deployment: Deployment) -> None:
    client = deployment.client()
    settings = {"index": {"document": {"default_pipeline": "events"}}}
    client.indices.create(index="events", body={"settings": settings})
    acknowledged: set[str] = set()
    refused: list[dict[str, Any]] = []
    noops = 0
    for start in range(0, 3000, 500):
        lines: list[dict[str, Any]] = []
        for i in range(start, start + 500):
            lines += [{"index": {"_id": f"e{i}"}},
                      {"title": f"Event {i}", "refuse": i % 10 == 3, "spam": i % 10 == 7}]  # fmt: skip
        answer = client.bulk(index="events", body=lines)
        for item in answer["items"]:
            body = item["index"]
            if "error" in body:
                refused.append(body)
            elif body["result"] == "noop":
                noops += 1
            else:
                assert body["result"] == "created" and body["status"] == 201
                acknowledged.add(body["_id"])
    assert (len(acknowledged), len(refused), noops) == (2400, 300, 300)
    # An abort is that item's error, in the embedded host's shape.
    assert {body["status"] for body in refused} == {400}
    assert {body["error"]["type"] for body in refused} == {"pipeline_execution_exception"}
    assert refused[0]["error"]["reason"].endswith("refused event 3") and refused[0]["_id"] == "e3"
    # Upstream: exactly what was acknowledged, each once.
    httpx.post(deployment.upstream.url + "/events/_refresh", timeout=60).raise_for_status()
    assert upstream_get(deployment, "/events/_count").json()["count"] == 2400
    stored = httpx.post(
        deployment.upstream.url + "/events/_search", json={"size": 3000, "_source": False}, timeout=60
    ).json()["hits"]["hits"]
    assert len(stored) == 2400 and {hit["_id"] for hit in stored} == acknowledged


def test_search_parameters_and_body_keys_pass_through_unchanged(deployment: Deployment) -> None:
    client = deployment.client()
    client.indices.create(index="notes")
    client.index(index="notes", id="1", body={"text": "hello there"}, refresh=True)
    body = {"query": {"match": {"text": "hello"}}, "_source": False, "track_total_hits": True}
    answer = client.search(index="notes", body=body, params={"routing": "r1", "preference": "_local"})
    # The upstream ran the body it was given (no _source in the hits) ...
    assert [hit["_id"] for hit in answer["hits"]["hits"]] == ["1"] and "_source" not in answer["hits"]["hits"][0]
    # ... and received the parameters the gateway does not read, unchanged.
    (sent,) = deployment.recorder.requests("POST", "/notes/_search")
    assert orjson.loads(sent.body) == body
    assert sent.params == {"routing": ["r1"], "preference": ["_local"]}
    # What the upstream refuses is its answer, not the gateway's: the embedded host has no aggregations.
    with pytest.raises(RequestError) as refused:
        client.search(index="notes", body={"aggs": {"by_text": {"terms": {"field": "text"}}}})
    direct = httpx.post(deployment.upstream.url + "/notes/_search", json={"aggs": {"by_text": {"terms": {}}}})
    assert refused.value.status_code == direct.status_code == 400
    assert refused.value.error == direct.json()["error"]["type"]
    assert "aggs" in orjson.loads(deployment.recorder.requests("POST", "/notes/_search")[-1].body)
    # Listing and deleting indexes go upstream too.
    assert "notes" in {row["index"] for row in client.cat.indices(format="json")}
    assert client.indices.delete(index="notes")["acknowledged"] is True
    assert upstream_get(deployment, "/notes").status_code == 404
    assert client.indices.exists(index="notes") is False


def test_ingest_and_search_pipeline_paths_belong_to_the_upstream(deployment: Deployment) -> None:
    client = deployment.client()
    ingest = {"description": "lowercase", "processors": [{"lowercase": {"field": "title"}}]}
    assert client.ingest.put_pipeline(id="up-lower", body=ingest)["acknowledged"] is True
    (sent,) = deployment.recorder.requests("PUT", "/_ingest/pipeline/up-lower")
    assert orjson.loads(sent.body) == ingest
    # Stored upstream (the upstream's registry), not in the gateway's.
    assert upstream_get(deployment, "/_pipeline/up-lower").status_code == 200
    assert httpx.get(deployment.gateway.url + "/_pipeline/up-lower").status_code == 404
    assert client.ingest.get_pipeline(id="up-lower")["up-lower"]["processors"] == ingest["processors"]
    # A write through the pipeline path needs the gateway's admin token.
    anonymous = httpx.delete(deployment.gateway.url + "/_ingest/pipeline/up-lower")
    assert anonymous.status_code == 401
    assert client.ingest.delete_pipeline(id="up-lower")["acknowledged"] is True
    assert upstream_get(deployment, "/_pipeline/up-lower").status_code == 404


def test_pipeline_settings_survive_a_gateway_restart(deployment: Deployment, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with gateway_process(data, deployment.recorder.url) as first:
        admin = httpx.Client(base_url=first.url, headers=GATEWAY_ADMIN, timeout=60)
        pipeline = {"version": "1.0.0", "type": "document",
                    "stages": [{"name": "mark", "type": "native", "config": {"processor": "set", "field": "by",
                                                                            "value": "gateway"}}]}  # fmt: skip
        assert admin.put("/_pipeline/mark", json=pipeline).status_code == 200
        settings = {"settings": {"index.document.default_pipeline": "mark"}}
        assert admin.put("/restarts", json=settings).status_code == 200
        admin.close()
        assert first.terminate() == 0
    with gateway_process(data, deployment.recorder.url) as second:
        put = httpx.put(second.url + "/restarts/_doc/1?refresh=true", json={"a": 1}, timeout=60)
        assert put.status_code == 201, put.text
        assert upstream_get(deployment, "/restarts/_doc/1").json()["_source"] == {"a": 1, "by": "gateway"}


def test_gateway_nodes_on_one_postgresql_registry_form_one_pipeline_tier(
    deployment: Deployment, tmp_path: Path, postgres_dsn: str
) -> None:
    with two_gateway_nodes(deployment, tmp_path, postgres_dsn) as (a, b):
        admin_a = httpx.Client(base_url=a.url, headers=GATEWAY_ADMIN, timeout=60)
        pipeline = {"version": "1.0.0", "type": "document",
                    "stages": [{"name": "mark", "type": "native", "config": {"processor": "set", "field": "via",
                                                                            "value": "tier"}}]}  # fmt: skip
        assert admin_a.put("/_pipeline/tier", json=pipeline).status_code == 200
        created = admin_a.put("/shared", json={"settings": {"index": {"document": {"default_pipeline": "tier"}}}})
        assert created.status_code == 200, created.text
        admin_a.close()

        def in_force_on_b() -> bool:
            shown = httpx.get(b.url + "/shared/_settings", params={"flat_settings": "true"}, timeout=10).json()
            return bool(shown["shared"]["settings"].get("index.document.default_pipeline") == "tier")

        eventually(in_force_on_b)
        for url, doc in ((b.url, "from-b"), (a.url, "from-a")):
            put = httpx.put(f"{url}/shared/_doc/{doc}?refresh=true", json={"n": doc}, timeout=60)
            assert put.status_code == 201, put.text
        for doc in ("from-a", "from-b"):
            assert upstream_get(deployment, f"/shared/_doc/{doc}").json()["_source"] == {"n": doc, "via": "tier"}


def checkout_pipeline(*, price_required: bool) -> dict[str, Any]:
    """A document pipeline that aborts on a document without a price (while ``price_required``)."""
    convert = {"processor": "convert", "field": "price", "type": "float", "ignore_missing": not price_required}
    return {"version": "1.0.0", "type": "document", "stages": [{"name": "price", "type": "native", "config": convert}]}


def own_settings_upstream(upstream_url: str, index: str) -> list[str]:
    """The ``index.failure_store.*`` and pipeline settings the upstream holds for ``index`` (none, ever)."""
    answer = httpx.get(f"{upstream_url}/{index}/_settings", params={"flat_settings": "true"}, timeout=60)
    assert answer.status_code == 200, answer.text
    flat = answer.json()[index]["settings"]
    return [key for key in flat if key.startswith("index.failure_store.") or key.endswith(PIPELINE_KEYS)]


def failure_store_settings_sent(recorder: Recorder) -> list[Forwarded]:
    """Index creations and settings changes the upstream received that carried a failure store setting."""
    return [r for r in recorder.forwarded if r.method == "PUT" and b"failure_store" in r.body]


def bulk_items(url: str, index: str, docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``docs`` (by id) indexed with one ``_bulk``; each one's answer by the id it was sent with (a failure
    kept in the store answers with the record's own)."""
    lines = b"".join(orjson.dumps({"index": {"_id": i}}) + b"\n" + orjson.dumps(doc) + b"\n" for i, doc in docs.items())
    answer = httpx.post(f"{url}/{index}/_bulk?refresh=true", content=lines, timeout=120,
                        headers={"content-type": "application/x-ndjson"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return {doc_id: item["index"] for doc_id, item in zip(docs, answer.json()["items"], strict=True)}


def test_failure_store_settings_stay_in_the_gateway_and_the_store_is_an_upstream_index(
    deployment: Deployment,
) -> None:
    client = deployment.client()
    admin = httpx.Client(base_url=deployment.gateway.url, headers=GATEWAY_ADMIN, timeout=120)
    assert admin.put("/_pipeline/checkout", json=checkout_pipeline(price_required=True)).status_code == 200
    settings = {"index": {"document": {"default_pipeline": "checkout"}, "failure_store": {"enabled": True},
                          "number_of_replicas": 0}}  # fmt: skip
    assert client.indices.create(index="orders", body={"settings": settings})["acknowledged"] is True
    client.indices.put_settings(index="orders", body={"index.failure_store.max_search_failures": 50})
    # Never sent upstream (a cluster refuses them as unknown settings), nor held there ...
    (created,) = deployment.recorder.requests("PUT", "/orders")
    assert orjson.loads(created.body) == {"settings": {"index.number_of_replicas": 0}}
    assert deployment.recorder.requests("PUT", "/orders/_settings") == []
    assert failure_store_settings_sent(deployment.recorder) == []
    assert own_settings_upstream(deployment.upstream.url, "orders") == []
    # ... but shown by the gateway, merged with the upstream's.
    shown = client.indices.get_settings(index="orders")["orders"]["settings"]["index"]
    assert shown["failure_store"] == {"enabled": "true", "max_search_failures": "50"}
    assert shown["number_of_replicas"] == "0"
    viewed = client.indices.get(index="orders")["orders"]["settings"]["index"]
    assert viewed["failure_store"]["enabled"] == "true" and viewed["document"]["default_pipeline"] == "checkout"

    # A document whose pipeline aborts is kept in the failure store, an ordinary upstream index.
    items = bulk_items(deployment.gateway.url, "orders", {"1": {"title": "priced", "price": "3"},
                                                          "2": {"title": "no price"}})  # fmt: skip
    assert items["1"]["result"] == "created"
    assert items["2"]["failure_store"] == "used" and items["2"]["_index"] == "orders::failures", items["2"]
    (made,) = deployment.recorder.requests("PUT", "/quidditch-failures-orders")
    assert orjson.loads(made.body) == {"mappings": FAILURE_STORE_MAPPINGS}  # what failed stays unmapped
    stored = httpx.post(deployment.upstream.url + "/quidditch-failures-orders/_search", json={},
                        timeout=60).json()["hits"]["hits"]  # fmt: skip
    assert [hit["_source"]["document"] for hit in stored] == [
        {"id": "2", "index": "orders", "op_type": "index", "source": {"title": "no price"}}
    ]
    assert stored[0]["_source"]["error"]["pipeline"] == "checkout"
    # Searchable through the gateway with the ::failures selector.
    found = client.search(index="orders::failures", body={"query": {"match_all": {}}})["hits"]["hits"]
    assert [hit["_source"]["document"]["id"] for hit in found] == ["2"]

    # A settings change the upstream refuses leaves the kept settings as they were.
    refused = admin.put("/orders/_settings", json={"index.failure_store.enabled": False,
                                                   "index.number_of_shards": 2})  # fmt: skip
    assert refused.status_code == 400, refused.text
    assert client.indices.get_settings(index="orders")["orders"]["settings"]["index"]["failure_store"]["enabled"] == (
        "true"
    )

    # Fixed pipeline: the failure is re-driven through the gateway, written upstream, gone from the store.
    assert admin.put("/_pipeline/checkout", json=checkout_pipeline(price_required=False)).status_code == 200
    redriven = admin.post("/orders/_failure_store/_reprocess?refresh=true")
    assert redriven.status_code == 200, redriven.text
    assert redriven.json() == {"reprocessed": 1, "succeeded": 1, "failed": 0, "dropped": 0, "failures": []}
    assert upstream_get(deployment, "/orders/_doc/2").json()["_source"] == {"title": "no price"}
    httpx.post(deployment.upstream.url + "/quidditch-failures-orders/_refresh", timeout=60).raise_for_status()
    assert upstream_get(deployment, "/quidditch-failures-orders/_count").json()["count"] == 0

    # Disabled through the gateway: an abort is the item's error again, and nothing went upstream.
    assert admin.put("/_pipeline/checkout", json=checkout_pipeline(price_required=True)).status_code == 200
    client.indices.put_settings(index="orders", body={"index": {"failure_store": {"enabled": False}}})
    assert failure_store_settings_sent(deployment.recorder) == []
    items = bulk_items(deployment.gateway.url, "orders", {"3": {"title": "no price either"}})
    assert items["3"]["status"] == 400 and items["3"]["error"]["failure_store"] == "not_enabled"
    # Deleting the index deletes its store and forgets what the gateway kept: a new index of that name starts clean.
    client.indices.delete(index="orders")
    assert upstream_get(deployment, "/quidditch-failures-orders").status_code == 404  # its store went with it
    client.indices.create(index="orders")
    assert "failure_store" not in client.indices.get_settings(index="orders")["orders"]["settings"]["index"]
    admin.close()


def test_failure_store_settings_survive_a_gateway_restart(deployment: Deployment, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with gateway_process(data, deployment.recorder.url) as first:
        admin = httpx.Client(base_url=first.url, headers=GATEWAY_ADMIN, timeout=60)
        assert admin.put("/_pipeline/strict", json=checkout_pipeline(price_required=True)).status_code == 200
        settings = {"settings": {"index.document.default_pipeline": "strict", "index.failure_store.enabled": True}}
        assert admin.put("/kept", json=settings).status_code == 200
        admin.close()
        assert first.terminate() == 0
    with gateway_process(data, deployment.recorder.url) as second:
        shown = httpx.get(second.url + "/kept/_settings", params={"flat_settings": "true"}, timeout=60).json()
        assert shown["kept"]["settings"]["index.failure_store.enabled"] == "true"
        assert bulk_items(second.url, "kept", {"a": {"title": "no price"}})["a"]["failure_store"] == "used"
    assert own_settings_upstream(deployment.upstream.url, "kept") == []
    assert failure_store_settings_sent(deployment.recorder) == []
    stored = httpx.post(deployment.upstream.url + "/quidditch-failures-kept/_search", json={},
                        timeout=60).json()["hits"]["hits"]  # fmt: skip
    assert [hit["_source"]["document"]["id"] for hit in stored] == ["a"]


def test_gateway_nodes_on_one_postgresql_registry_share_the_failure_store_settings(
    deployment: Deployment, tmp_path: Path, postgres_dsn: str
) -> None:
    with two_gateway_nodes(deployment, tmp_path, postgres_dsn) as (a, b):
        admin_a = httpx.Client(base_url=a.url, headers=GATEWAY_ADMIN, timeout=60)
        assert admin_a.put("/_pipeline/priced", json=checkout_pipeline(price_required=True)).status_code == 200
        created = admin_a.put("/tiered", json={"settings": {"index.document.default_pipeline": "priced"}})
        assert created.status_code == 200, created.text
        changed = admin_a.put("/tiered/_settings", json={"index": {"failure_store": {"enabled": True}}})
        assert changed.status_code == 200, changed.text
        admin_a.close()

        with httpx.Client(base_url=b.url, timeout=10) as on_b:  # one client for every poll (no SSL setup each)

            def enabled_on_b() -> bool:
                shown = on_b.get("/tiered/_settings", params={"flat_settings": "true"}).json()
                return bool(shown["tiered"]["settings"].get("index.failure_store.enabled") == "true")

            eventually(enabled_on_b)
        assert bulk_items(b.url, "tiered", {"x": {"title": "no price"}})["x"]["failure_store"] == "used"
        found = httpx.post(a.url + "/tiered::failures/_search", json={}, timeout=60).json()["hits"]["hits"]
        assert [hit["_source"]["document"]["id"] for hit in found] == ["x"]
    assert own_settings_upstream(deployment.upstream.url, "tiered") == []


def test_the_upstream_killed_in_the_middle_of_bulk_work_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Disruption: bulks flow through the gateway while the upstream is killed (SIGKILL) and started again on
    its data; every document the gateway acknowledged is stored upstream, each once, and while the upstream is
    down each item is a 502 error naming it (the bulk itself answers 200, as in embedded mode)."""
    for part in ("upstream", "gateway"):
        (tmp_path / part).mkdir()
    upstream_dir = tmp_path / "upstream" / "data"
    upstream = ServerProcess(upstream_dir, token=UPSTREAM_TOKEN, extra=("--workers", "0"))
    try:
        with recording_proxy(upstream.url) as proxy, gateway_process(tmp_path / "gateway" / "data", proxy.url) as gw:
            upstream.wait_ready()  # started together: the gateway started while the upstream did
            assert httpx.put(gw.url + "/flow", headers=GATEWAY_ADMIN, timeout=60).status_code == 200
            acknowledged: set[str] = set()
            outcomes: list[str] = []

            def send(batch: int) -> None:
                lines = b"".join(
                    orjson.dumps({"index": {"_id": f"b{batch}-{i}"}}) + b"\n" + orjson.dumps({"n": i}) + b"\n"
                    for i in range(200)
                )
                answer = httpx.post(gw.url + "/flow/_bulk", content=lines, timeout=120,
                                    headers={"content-type": "application/x-ndjson"})  # fmt: skip
                assert answer.status_code == 200, answer.text
                items = [item["index"] for item in answer.json()["items"]]
                acknowledged.update(item["_id"] for item in items if item["status"] in {200, 201})
                errors = [item["error"] for item in items if "error" in item]
                outcomes.append("written" if not errors else "refused" if len(errors) == len(items) else "partly")
                for error in errors:
                    assert error["type"] == "connect_transport_exception", error
                    assert proxy.url.removeprefix("http://") in error["reason"] and error["upstream"] == proxy.url

            for batch in range(2):
                send(batch)
            upstream.kill()
            for batch in range(2, 4):
                send(batch)  # the upstream is down: 502 each, nothing acknowledged
            upstream = ServerProcess(upstream_dir, token=UPSTREAM_TOKEN, extra=("--workers", "0"))
            upstream.wait_ready()
            proxy.target = upstream.url
            for batch in range(4, 6):
                send(batch)
        assert outcomes == ["written"] * 2 + ["refused"] * 2 + ["written"] * 2
        httpx.post(upstream.url + "/flow/_refresh", timeout=60).raise_for_status()
        stored = httpx.post(upstream.url + "/flow/_search", json={"size": 10_000, "_source": False},
                            timeout=60).json()["hits"]["hits"]  # fmt: skip
        ids = [hit["_id"] for hit in stored]
        assert len(ids) == len(set(ids)) == len(acknowledged) == 4 * 200
        assert set(ids) == acknowledged
    finally:
        if upstream.process.poll() is None:
            upstream.kill()
