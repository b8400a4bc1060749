"""``_search?verbose_pipeline=true`` (OpenSearch 2.19's search pipeline debugging) over real HTTP with
opensearch-py: a real search answered with ``processor_results``, one entry per stage of the query pipeline,
the final query pipeline and the result pipeline, in and without worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch, RequestError

from quidditch_pipeline.server._verbose import processor_results

from .server_harness import served_data_dir

VERBOSE = {"verbose_pipeline": "true"}
#: The keys OpenSearch's ProcessorExecutionDetail writes (``tag`` when set, ``error`` when failed).
OPENSEARCH_KEYS = {"processor_name", "duration_millis", "status", "input_data", "output_data"}


def native(name: str, processor: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


def put(client: OpenSearch, name: str, kind: str, *stages: dict[str, Any]) -> None:
    body = {"version": "1.0.0", "type": kind, "stages": list(stages)}
    client.transport.perform_request("PUT", f"/_pipeline/{name}", body=body)


@pytest.fixture(params=[0, 2], ids=["in-process", "workers"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenSearch]:
    options: dict[str, Any] = {"workers": request.param, "search_in_workers": bool(request.param)}
    with served_data_dir(tmp_path / "data", **options) as (_, _, url):
        yield OpenSearch(hosts=[url], timeout=60)


@pytest.fixture
def products(client: OpenSearch) -> str:
    """An index with a query pipeline, a final query pipeline and a result pipeline, and three documents."""
    put(
        client,
        "q",
        "query",
        {**native("cap", "set", field="size", value=2), "tag": "cap-size"},
        {**native("never", "set", field="size", value=99), "if": "ctx.size > 100"},
    )
    put(client, "qf", "query", native("public", "set", field="query", value={"term": {"visibility": "public"}}))
    put(client, "r", "result", native("seen", "set", field="_source.seen", value=True))
    settings = {
        "index.query.default_pipeline": "q",
        "index.query.final_pipeline": "qf",
        "index.result.default_pipeline": "r",
    }
    client.indices.create(index="products", body={"settings": settings})
    for i, visibility in enumerate(["public", "private", "public", "public"]):
        client.index(index="products", id=str(i), body={"visibility": visibility, "n": i}, refresh=True)
    return "products"


def test_verbose_pipeline_answers_a_real_search_with_every_stage_traced(client: OpenSearch, products: str) -> None:
    found = client.search(index=products, body={"query": {"match_all": {}}}, params=VERBOSE)
    hits = found["hits"]["hits"]
    assert len(hits) == 2 and all(h["_source"]["visibility"] == "public" and h["_source"]["seen"] for h in hits)
    results = found["processor_results"]
    assert [(r["pipeline"], r["processor_name"]) for r in results] == [
        ("q", "cap"),
        ("q", "never"),
        ("qf", "public"),
        ("r", "seen"),
    ]
    for result in results:
        assert result.keys() >= OPENSEARCH_KEYS and result["status"] == "success" and "error" not in result
        assert isinstance(result["duration_millis"], int) and result["took_us"] >= 0
    cap, never, public, seen = results
    assert cap["tag"] == "cap-size" and cap["pipeline_type"] == "query" and cap["stage_type"] == "native"
    assert cap["input_data"] == {"query": {"match_all": {}}} and cap["output_data"]["size"] == 2
    # A false condition skips the stage: its input passes on unchanged, and its outcome says why.
    assert never["outcome"] == "skipped" and never["input_data"] == never["output_data"] == cap["output_data"]
    assert public["input_data"] == cap["output_data"]
    assert public["output_data"] == {"query": {"term": {"visibility": "public"}}, "size": 2}
    # A result pipeline's data is the hit list, as OpenSearch shows a response processor's.
    assert [h["_id"] for h in seen["input_data"]] == [h["_id"] for h in hits]
    assert all("seen" not in h["_source"] for h in seen["input_data"])
    assert seen["output_data"] == hits and seen["pipeline_type"] == "result"


def test_without_the_flag_nothing_is_added_and_stats_count_verbose_runs_alike(
    client: OpenSearch, products: str
) -> None:
    plain = client.search(index=products, body={"query": {"match_all": {}}})
    assert "processor_results" not in plain
    verbose = client.search(index=products, body={"query": {"match_all": {}}}, params=VERBOSE)
    assert verbose["hits"]["hits"] == plain["hits"]["hits"]
    stats = client.transport.perform_request("GET", "/_pipeline/q/_stats")
    assert stats["count"] == 2 and stats["stages"][1]["skipped"] == 2


def test_search_pipeline_names_an_opensearch_search_pipeline_and_none_keeps_the_final_one(
    client: OpenSearch, products: str
) -> None:
    shop = {
        "request_processors": [{"filter_query": {"tag": "only-3", "query": {"term": {"n": 3}}}}],
        "response_processors": [{"rename_field": {"field": "n", "target_field": "number"}}],
    }
    client.search_pipeline.put(id="shop", body=shop)
    params = {**VERBOSE, "search_pipeline": "shop"}
    found = client.search(index=products, body={"query": {"match_all": {}}}, params=params)
    results = found["processor_results"]
    assert [(r["pipeline"], r["pipeline_type"]) for r in results] == [
        ("shop-request", "query"),
        ("qf", "query"),
        ("shop-response", "result"),
    ]
    assert results[0]["output_data"]["query"]["bool"]["filter"] == [{"term": {"n": 3}}]
    # The final query pipeline replaces the query (public documents only); the response side renames n.
    hits = found["hits"]["hits"]
    assert sorted(h["_id"] for h in hits) == ["0", "2", "3"] and all("number" in h["_source"] for h in hits)
    skipped = client.search(index=products, params={**VERBOSE, "search_pipeline": "_none"})
    assert [r["pipeline"] for r in skipped["processor_results"]] == ["qf"]
    with pytest.raises(RequestError) as unknown:  # as OpenSearch answers a search pipeline it does not have
        client.search(index=products, params={**VERBOSE, "search_pipeline": "nope"})
    assert "search pipeline [nope] is not defined" in str(unknown.value.info)
    with pytest.raises(RequestError):
        client.search(index=products, params={"search_pipeline": "shop", "query_pipeline": "q"})


def test_a_failed_stage_is_a_fail_with_its_error_and_an_aborting_one_fails_the_search(client: OpenSearch) -> None:
    put(
        client,
        "lenient",
        "query",
        {**native("boom", "fail", message="no way"), "ignore_failure": True},
        native("after", "set", field="size", value=1),
    )
    put(client, "strict", "query", native("boom", "fail", message="no way"))
    client.indices.create(index="things")
    client.index(index="things", id="1", body={"a": 1}, refresh=True)
    # No pipeline ran: no processor_results, as OpenSearch leaves it out when it has nothing to show.
    assert "processor_results" not in client.search(index="things", params=VERBOSE)
    found = client.search(index="things", params={**VERBOSE, "query_pipeline": "lenient"})
    boom, after = found["processor_results"]
    assert boom["status"] == "fail" and "no way" in boom["error"] and boom["outcome"] == "error_ignored"
    assert boom["output_data"] == boom["input_data"] == {}
    assert after["status"] == "success" and after["output_data"] == {"size": 1}
    with pytest.raises(RequestError) as refused:
        client.search(index="things", params={**VERBOSE, "query_pipeline": "strict"})
    assert "no way" in str(refused.value.info)


def test_compound_stages_and_handlers_nest_their_entries() -> None:
    trace = [
        {
            "pipeline": "p",
            "type": "query",
            "status": "success",
            "input": {"a": 1},
            "stages": [
                {
                    "name": "group",
                    "type": "composite",
                    "status": "success",
                    "attempts": 1,
                    "took_us": 2500.0,
                    "error": None,
                    "output": {"a": 2},
                    "stages": [
                        {
                            "name": "inner",
                            "type": "native",
                            "status": "success",
                            "attempts": 1,
                            "took_us": 1.0,
                            "error": None,
                            "output": {"a": 2},
                        },
                    ],
                },
            ],
        }
    ]
    (group,) = processor_results(trace)
    assert group["duration_millis"] == 2 and group["input_data"] == {"a": 1} and group["output_data"] == {"a": 2}
    assert [(e["processor_name"], e["input_data"], e["output_data"]) for e in group["stages"]] == [
        ("inner", {"a": 1}, {"a": 2})
    ]
