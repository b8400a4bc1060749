"""Issue 13's features over real HTTP: final pipelines from index settings (never skipped by ``_none``),
``?if_version`` on pipeline puts, pipeline substitutions in ``_execute``, and conditions end to end."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .server_harness import served_data_dir

NDJSON = {"content-type": "application/x-ndjson"}
_names = itertools.count()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    data = tmp_path_factory.mktemp("features")
    with served_data_dir(data) as (_, _, url), httpx.Client(base_url=url, timeout=60) as http:
        yield http


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def native(name: str, processor: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


def put(client: httpx.Client, name: str, kind: str, *stages: dict[str, Any], **extra: Any) -> httpx.Response:
    return client.put(f"/_pipeline/{name}", json={"version": "1.0.0", "type": kind, "stages": list(stages), **extra})


def test_the_final_document_pipeline_runs_after_the_default_and_none_cannot_skip_it(client: httpx.Client) -> None:
    default, final, index = unique("default"), unique("final"), unique("idx")
    assert put(client, default, "document", native("d", "set", field="by_default", value=True)).status_code == 200
    strip = native("pii", "remove", field="ssn", ignore_missing=True)
    assert put(client, final, "document", strip, native("f", "set", field="by_final", value=True)).status_code == 200
    settings = {"index": {"document": {"default_pipeline": default, "final_pipeline": final}}}
    assert client.put(f"/{index}", json={"settings": settings}).status_code == 200

    assert client.put(f"/{index}/_doc/1", json={"ssn": "123", "a": 1}).status_code == 201
    assert client.put(f"/{index}/_doc/2?pipeline=_none", json={"ssn": "456", "a": 2}).status_code == 201
    bulk = b'{"index": {"_id": "3"}}\n{"ssn": "789", "a": 3}\n'
    answer = client.post(f"/{index}/_bulk?pipeline=_none", content=bulk, headers=NDJSON).json()
    assert not answer["errors"], answer

    assert client.get(f"/{index}/_doc/1").json()["_source"] == {"a": 1, "by_default": True, "by_final": True}
    # _none skipped the default pipeline only: the final one still stripped the field.
    assert client.get(f"/{index}/_doc/2").json()["_source"] == {"a": 2, "by_final": True}
    assert client.get(f"/{index}/_doc/3").json()["_source"] == {"a": 3, "by_final": True}
    flat = client.get(f"/{index}/_settings?flat_settings=true").json()[index]["settings"]
    assert flat["index.document.final_pipeline"] == final


def test_a_final_pipeline_in_use_cannot_be_deleted_and_applies_alone(client: httpx.Client) -> None:
    final, index = unique("final"), unique("idx")
    assert put(client, final, "document", native("f", "set", field="x", value=1)).status_code == 200
    assert client.put(f"/{index}", json={"settings": {"index.document.final_pipeline": final}}).status_code == 200
    deleted = client.delete(f"/_pipeline/{final}")
    assert deleted.status_code == 409 and index in deleted.text
    written = client.put(f"/{index}/_doc/1?pipeline=_none", json={"a": 1})
    assert written.status_code == 201
    assert client.get(f"/{index}/_doc/1").json()["_source"] == {"a": 1, "x": 1}


def test_the_final_query_pipeline_runs_even_when_search_pipelines_are_skipped(client: httpx.Client) -> None:
    final, index = unique("qfinal"), unique("idx")
    only_red = {"bool": {"filter": [{"term": {"color": "red"}}]}}
    assert put(client, final, "query", native("f", "set", field="query", value=only_red)).status_code == 200
    assert client.put(f"/{index}", json={"settings": {"index.query.final_pipeline": final}}).status_code == 200
    for i, color in enumerate(["red", "blue", "red"]):
        assert client.put(f"/{index}/_doc/{i}?refresh=true", json={"color": color}).status_code == 201
    found = client.post(f"/{index}/_search?search_pipeline=_none", json={"query": {"match_all": {}}}).json()
    assert sorted(hit["_id"] for hit in found["hits"]["hits"]) == ["0", "2"]


def test_if_version_is_optimistic_concurrency_on_the_stored_revision(client: httpx.Client) -> None:
    name = unique("occ")
    first = put(client, name, "document", native("a", "set", field="x", value=1))
    assert first.status_code == 200 and first.json()["revision"] == 1
    stale = client.put(
        f"/_pipeline/{name}?if_version=5",
        json={"version": "1.0.1", "type": "document", "stages": [native("a", "set", field="x", value=2)]},
    )
    assert stale.status_code == 409 and stale.json()["error"]["type"]
    fresh = client.put(
        f"/_pipeline/{name}?if_version=1",
        json={"version": "1.0.1", "type": "document", "stages": [native("a", "set", field="x", value=3)]},
    )
    assert fresh.status_code == 200 and fresh.json()["revision"] == 2
    assert client.get(f"/_pipeline/{name}").json()["stages"][0]["config"]["value"] == 3


def test_execute_runs_with_a_substituted_pipeline_and_stores_nothing(client: httpx.Client) -> None:
    outer, inner = unique("outer"), unique("inner")
    assert put(client, inner, "document", native("a", "set", field="who", value="stored")).status_code == 200
    call = {"name": "call", "type": "pipeline", "config": {"pipeline": inner}}
    assert put(client, outer, "document", call).status_code == 200
    substitute = {"version": "2.0.0", "type": "document", "stages": [native("a", "set", field="who", value="draft")]}
    ran = client.post(
        f"/_pipeline/{outer}/_execute", json={"input": {}, "substitutions": {inner: substitute}, "verbose": False}
    ).json()
    assert ran["output"] == {"who": "draft"}
    plain = client.post(f"/_pipeline/{outer}/_execute", json={"input": {}, "verbose": False}).json()
    assert plain["output"] == {"who": "stored"}
    assert client.get(f"/_pipeline/{inner}").json()["version"] == "1.0.0"
    bad = client.post(f"/_pipeline/{outer}/_execute", json={"input": {}, "substitutions": []})
    assert bad.status_code == 400 and "substitutions" in bad.text


def test_a_condition_skips_a_stage_per_document_over_http(client: httpx.Client) -> None:
    name, index = unique("cond"), unique("idx")
    stage = {**native("flag", "set", field="spam", value=True), "if": "ctx.category == 'spam' && ctx.price > 10"}
    assert put(client, name, "document", stage).status_code == 200
    assert client.put(f"/{index}", json={"settings": {"index.document.default_pipeline": name}}).status_code == 200
    bulk = (
        b'{"index": {"_id": "1"}}\n{"category": "spam", "price": 50}\n'
        b'{"index": {"_id": "2"}}\n{"category": "spam", "price": 5}\n'
        b'{"index": {"_id": "3"}}\n{"category": "toys", "price": 50}\n'
    )
    assert not client.post(f"/{index}/_bulk", content=bulk, headers=NDJSON).json()["errors"]
    assert client.get(f"/{index}/_doc/1").json()["_source"].get("spam") is True
    assert "spam" not in client.get(f"/{index}/_doc/2").json()["_source"]
    assert "spam" not in client.get(f"/{index}/_doc/3").json()["_source"]
    stats = client.get(f"/_pipeline/{name}/_stats").json()
    assert stats["stages"][0]["skipped"] == 2 and stats["stages"][0]["count"] == 3
    bad = put(client, unique("cond"), "document", {**native("x", "set", field="a", value=1), "if": "ctx.a =="})
    assert bad.status_code == 400 and "stages[0].if" in bad.text
