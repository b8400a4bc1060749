"""OpenSearch search pipelines to and from a query and a result pipeline: translation, report, the processors
it targets, and ``/_search/pipeline`` through the unmodified ``opensearch-py`` client against a live server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opensearchpy import ConflictError, NotFoundError, OpenSearch, RequestError

from quidditch_pipeline import PipelineService
from quidditch_pipeline.compat import from_opensearch, stored_definition, to_opensearch
from quidditch_pipeline.errors import DefinitionError

from .server_harness import served_data_dir

SEARCH_PIPELINE: dict[str, Any] = {
    "description": "public products, tidy hits",
    "request_processors": [
        {"filter_query": {"tag": "public-only", "query": {"term": {"visibility": "public"}}}},
    ],
    "response_processors": [
        {"rename_field": {"field": "desc", "target_field": "summary", "ignore_missing": True}},
        {"rename_field": {"field": "color", "target_field": "colour", "ignore_failure": True}},
    ],
}


def test_request_and_response_processors_become_a_query_and_a_result_pipeline() -> None:
    translation = from_opensearch(SEARCH_PIPELINE, "shop")
    assert translation.findings == []
    request, response = translation.definitions
    assert (request["name"], request["type"], response["name"], response["type"]) == (
        "shop-request", "query", "shop-response", "result",
    )  # fmt: skip
    assert request["stages"] == [{"name": "public-only", "type": "native", "config": {
        "processor": "filter_query", "query": {"term": {"visibility": "public"}}}}]  # fmt: skip
    # A result pipeline's native stage runs on each hit: rename_field is rename within _source.
    assert response["stages"][0] == {"name": "rename_field-0", "type": "native", "config": {
        "processor": "rename", "field": "_source.desc", "target_field": "_source.summary", "ignore_missing": True,
        "override": True}}  # fmt: skip
    assert response["stages"][1]["on_failure"] == "continue"
    exported = to_opensearch(*(stored_definition(d) for d in translation.definitions))
    assert exported == SEARCH_PIPELINE
    versioned = {**SEARCH_PIPELINE, "version": 3}
    assert to_opensearch(*(stored_definition(d) for d in from_opensearch(versioned, "v").definitions)) == versioned


def test_ml_phase_results_and_cross_hit_processors_are_reported_with_their_position() -> None:
    body = {
        "request_processors": [
            {"neural_query_enricher": {"default_model_id": "m"}},
            {"oversample": {"sample_factor": 2}},
            {"filter_query": {"query": {"term": {"a": 1}}}},
        ],
        "response_processors": [
            {"truncate_hits": {"target_size": 2}},
            {"rerank": {"ml_opensearch": {}}},
            {"collapse": {"field": "x"}},
        ],
        "phase_results_processors": [{"normalization-processor": {}}],
    }
    translation = from_opensearch(body, "p")
    across = "decides across hits, and a result pipeline's native stage sees one hit at a time"
    assert [(f.path, f.reason) for f in translation.lossy] == [
        ("phase_results_processors[0]", "phase results processors have no equivalent"),
        ("request_processors[0]", "[neural_query_enricher] is an ML or external-service processor"),
        ("request_processors[1]", "[oversample] has no equivalent"),
        ("response_processors[0]", f"[truncate_hits] {across}"),
        ("response_processors[1]", "[rerank] is an ML or external-service processor"),
        ("response_processors[2]", f"[collapse] {across}"),
    ]
    # Only the request side kept a stage: no empty result pipeline is made.
    assert [d["name"] for d in translation.definitions] == ["p-request"]
    with pytest.raises(DefinitionError):
        from_opensearch({"request_processors": {}}, "p")


def test_filter_query_merges_the_filter_into_the_query(service: PipelineService) -> None:
    stage = {"name": "f", "type": "native",
             "config": {"processor": "filter_query", "query": {"term": {"visibility": "public"}}}}  # fmt: skip

    def run(body: dict[str, Any]) -> Any:
        result = service.execute({"type": "query", "stages": [stage]}, body)
        assert result["status"] == "success", result
        return result["output"]

    assert run({"query": {"match": {"title": "lamp"}}, "size": 3}) == {
        "query": {"bool": {"must": [{"match": {"title": "lamp"}}], "filter": [{"term": {"visibility": "public"}}]}},
        "size": 3,
    }
    assert run({})["query"] == {"bool": {"filter": [{"term": {"visibility": "public"}}]}}


@pytest.fixture
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSearch]:
    with served_data_dir(tmp_path_factory.mktemp("opensearch")) as (_, _, url):
        yield OpenSearch(hosts=[url], timeout=60)


def test_search_pipeline_api_through_opensearch_py(client: OpenSearch) -> None:
    assert client.search_pipeline.put(id="shop", body=SEARCH_PIPELINE)["acknowledged"] is True
    assert client.search_pipeline.get(id="shop") == {"shop": SEARCH_PIPELINE}
    settings = {
        "index": {"query": {"default_pipeline": "shop-request"}, "result": {"default_pipeline": "shop-response"}}
    }
    client.indices.create(index="products", body={"settings": settings})
    docs = [("1", "public", "Red lamp"), ("2", "private", "Blue lamp"), ("3", "public", "Green lamp")]
    for doc_id, visibility, title in docs:
        source = {"title": title, "visibility": visibility, "color": "c", "desc": f"about {title}"}
        client.index(index="products", id=doc_id, body=source, refresh=True)
    hits = client.search(index="products", body={"query": {"match": {"title": "lamp"}}, "size": 10})["hits"]["hits"]
    # The private document is filtered out; desc and color are renamed in each hit's _source.
    assert sorted(h["_id"] for h in hits) == ["1", "3"]
    assert all(set(h["_source"]) == {"title", "visibility", "summary", "colour"} for h in hits)
    # A replacement without response processors removes the result side, once no index uses it.
    request_only = {"request_processors": SEARCH_PIPELINE["request_processors"]}
    with pytest.raises(ConflictError):
        client.search_pipeline.put(id="shop", body=request_only)
    client.indices.put_settings(index="products", body={"index": {"result": {"default_pipeline": None}}})
    client.search_pipeline.put(id="shop", body=request_only)
    assert client.search_pipeline.get(id="shop") == {
        "shop": {"request_processors": SEARCH_PIPELINE["request_processors"]}
    }
    client.indices.delete(index="products")
    with pytest.raises(RequestError) as refused:
        client.search_pipeline.put(id="ml", body={"request_processors": [{"neural_query_enricher": {}}]})
    assert refused.value.info["error"]["problems"][0]["path"] == "request_processors[0]"
    assert client.search_pipeline.delete(id="shop")["acknowledged"] is True
    with pytest.raises(NotFoundError):
        client.search_pipeline.get(id="shop")
