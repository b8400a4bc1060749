"""``_search`` (query pipeline, tantivy, result pipeline) and ``_count``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ...compat.opensearch import pipeline_names
from ...errors import InputError
from .._body import json_object
from .._pipelines import NO_PIPELINE, final_pipeline_name, pipeline_name
from .._responses import OBJECT, CountBody, SearchBody, json_body_doc, responses
from .._routing import AppContext, route
from .._verbose import processor_results

if TYPE_CHECKING:
    from ...service import PipelineService

_SEARCH_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "object",
            "description": "match_all, match, match_phrase, multi_match, term, terms, "
            "ids, range, exists, query_string, bool, constant_score, match_none",
        },
        "size": {"type": "integer", "minimum": 0, "maximum": 10_000},
        "from": {"type": "integer", "minimum": 0, "maximum": 10_000},
        "_source": {"type": "boolean"},
        "track_total_hits": {"type": "boolean"},
        "ext": {"type": "object", "description": "free-form, for pipelines"},
    },
}


#: URL parameters not passed to the backend: those the route reads, ``pretty`` (the server applies it) and
#: ``filter_path`` (not applied: the result pipeline needs the hits it could remove).
_READ_HERE: Final = frozenset(
    {
        *("q", "size", "from", "pretty", "filter_path"),
        *("query_pipeline", "result_pipeline", "search_pipeline", "verbose_pipeline"),
    }
)


def router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    svc, backend = ctx.service, ctx.backend
    search_body = json_body_doc(_SEARCH_SCHEMA, required=False)

    def run_search(
        index: str,
        body: dict[str, Any],
        q: str | None,
        size: int | None,
        offset: int | None,
        query_pipeline: str | None,
        result_pipeline: str | None,
        search_pipeline: str | None,
        params: dict[str, str],
        started: float,
        verbose_pipeline: bool = False,
    ) -> dict[str, Any]:
        info = backend.get_index(index)
        body = _with_url_params(body, q, size, offset)
        if search_pipeline is not None:
            query_pipeline, result_pipeline = _search_pipeline(svc, search_pipeline, query_pipeline, result_pipeline)
        trace: list[dict[str, Any]] | None = [] if verbose_pipeline else None
        query_guards = (pipeline_name(info, "query", query_pipeline), final_pipeline_name(info, "query"))
        with ctx.failures.recording(info, "query", body, query_guards):
            query = svc.process_query(
                index, body, pipeline=query_guards[0], final_pipeline=query_guards[1], trace=trace
            )
        found = backend.search(index, query, params)
        result_guard = pipeline_name(info, "result", result_pipeline)
        with ctx.failures.recording(info, "result", query, [result_guard]):
            response = svc.process_results(index, query, found, pipeline=result_guard, trace=trace)
        hits = response["hits"]["hits"]
        # A sorted search has no scores (null), as Elasticsearch answers it.
        scores = [hit["_score"] for hit in hits if hit.get("_score") is not None]
        response["hits"]["max_score"] = max(scores, default=None)
        results = processor_results(trace) if trace else None
        if results:  # as OpenSearch, only when a stage ran
            response["processor_results"] = results
        # took covers the pipelines too: it is what the caller waited for.
        response["took"] = int((time.perf_counter() - started) * 1000)
        return response

    async def search(
        index: str,
        request: Request,
        q: Annotated[str | None, Query(description="a query_string query")] = None,
        size: Annotated[int | None, Query(ge=0, le=10_000)] = None,
        from_: Annotated[int | None, Query(alias="from", ge=0, le=10_000)] = None,
        query_pipeline: Annotated[str | None, Query(description="instead of the index's query pipeline")] = None,
        result_pipeline: Annotated[str | None, Query(description="instead of the index's result pipeline")] = None,
        search_pipeline: Annotated[
            str | None, Query(description="an OpenSearch search pipeline (PUT /_search/pipeline); _none skips both")
        ] = None,
        verbose_pipeline: Annotated[
            bool, Query(description="add each pipeline stage's trace as processor_results (OpenSearch 2.19)")
        ] = False,
    ) -> dict[str, Any]:
        """Search: the query pipeline rewrites the body, tantivy runs it, the result pipeline reworks the hits."""
        started = time.perf_counter()
        body = await json_object(request, ctx.limits.max_body_bytes, required=False)
        # The rest of the URL's parameters (sort, routing, track_total_hits...) are the search backend's.
        params = {key: value for key, value in request.query_params.items() if key not in _READ_HERE}
        return await run_in_threadpool(
            run_search,
            index, body, q, size, from_, query_pipeline, result_pipeline, search_pipeline, params, started,
            verbose_pipeline,
        )  # fmt: skip

    search_responses = responses(SearchBody, 400, 404, 413)
    route(router, ["GET"], "/{index}/_search", responses=search_responses)(search)
    route(router, ["POST"], "/{index}/_search", responses=search_responses, openapi_extra=search_body)(search)

    async def count(
        index: str, request: Request, q: Annotated[str | None, Query(description="a query_string query")] = None
    ) -> dict[str, Any]:
        """How many documents match (pipelines do not run)."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=False)
        body = _with_url_params(body, q, None, None)
        total = await run_in_threadpool(backend.count, index, body)
        return {"count": total, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}

    count_body = json_body_doc({"type": "object", "properties": {"query": OBJECT}}, required=False)
    count_responses = responses(CountBody, 400, 404, 413)
    route(router, ["GET"], "/{index}/_count", responses=count_responses)(count)
    route(router, ["POST"], "/{index}/_count", responses=count_responses, openapi_extra=count_body)(count)

    return router


def _search_pipeline(svc: PipelineService, name: str, query: str | None, result: str | None) -> tuple[str, str]:
    """The query and result pipelines that ``?search_pipeline=name`` stands for: OpenSearch's search pipeline
    ``name`` is stored as ``{name}-request`` and ``{name}-response`` (either may be absent); ``_none``: none."""
    if name == NO_PIPELINE:
        return NO_PIPELINE, NO_PIPELINE
    if query is not None or result is not None:
        raise InputError("give either search_pipeline or query_pipeline/result_pipeline, not both")
    exists = svc.registry.exists
    sides = {kind: side if exists(side) else NO_PIPELINE for kind, side in pipeline_names(name).items()}
    if sides["query"] == sides["result"] == NO_PIPELINE:  # OpenSearch: 400, "Pipeline X is not defined"
        raise InputError(f"search pipeline [{name}] is not defined (PUT /_search/pipeline/{name} stores one)")
    return sides["query"], sides["result"]


def _with_url_params(body: dict[str, Any], q: str | None, size: int | None, offset: int | None) -> dict[str, Any]:
    if q is not None:
        if "query" in body:
            raise InputError("give the query either as ?q= or in the body, not both")
        body = {**body, "query": {"query_string": {"query": q}}}
    if size is not None:
        body = {**body, "size": size}
    if offset is not None:
        body = {**body, "from": offset}
    return body
