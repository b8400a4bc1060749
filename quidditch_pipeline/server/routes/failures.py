"""Failure stores and write simulation: ``X::failures`` search and count, ``_failure_store/_reprocess``,
``_failure_store/_searches``, and ``POST /{index}/_simulate`` (also ``/_ingest/{index}/_simulate``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ...errors import DefinitionError, QuidditchError
from ...failures import redirectable
from .._body import json_object
from .._errors import error_of
from .._pipelines import final_pipeline_name, pipeline_name
from .._responses import OBJECT, CountBody, OpenBody, SearchBody, json_body_doc, responses
from .._routing import AppContext, PipelineParam, RefreshParam, refresh_flag, route
from ..engine import IndexNotFoundError
from ..engine.backend import failure_store_index
from ..engine.settings import MAX_SEARCH_FAILURES_LIMIT
from ..failure_store import failure_store_enabled

_T = TypeVar("_T")

_SIMULATE: Final = {
    "type": "object",
    "properties": {"docs": {"type": "array", "items": OBJECT}},
    "required": ["docs"],
}
_REPROCESS: Final = {"type": "object", "properties": {"query": OBJECT}}


def _empty_search() -> dict[str, Any]:
    return {
        "took": 0,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": 0, "relation": "eq"}, "max_score": None, "hits": []},
    }


def router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    svc, backend = ctx.service, ctx.backend

    # --- X::failures (Elasticsearch 9's selector): no pipeline runs on a failure store's searches -----------

    def read_store(index: str, read: Callable[[str], _T], empty: _T) -> _T:
        """``read`` of the failure store of ``index`` (which must exist), or ``empty`` while there is no store:
        it is made on the first failure."""
        backend.get_index(index)
        store = failure_store_index(index)
        try:
            return read(store)
        except IndexNotFoundError as exc:
            if exc.name != store:
                raise
            return empty

    def search_store(index: str, body: dict[str, Any]) -> dict[str, Any]:
        return read_store(index, lambda store: backend.search(store, body), _empty_search())

    async def search_failures(index: str, request: Request) -> dict[str, Any]:
        """Search the failure store of ``index`` with the query DSL."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=False)
        return await run_in_threadpool(search_store, index, body)

    search_responses = responses(SearchBody, 400, 404, 413)
    route(router, ["GET"], "/{index}::failures/_search", responses=search_responses)(search_failures)
    route(router, ["POST"], "/{index}::failures/_search", responses=search_responses)(search_failures)

    def count_store(index: str, body: dict[str, Any]) -> dict[str, Any]:
        total = read_store(index, lambda store: backend.count(store, body), 0)
        return {"count": total, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}

    async def count_failures(index: str, request: Request) -> dict[str, Any]:
        """How many failures the failure store of ``index`` holds (that match ``query``)."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=False)
        return await run_in_threadpool(count_store, index, body)

    count_responses = responses(CountBody, 400, 404, 413)
    route(router, ["GET"], "/{index}::failures/_count", responses=count_responses)(count_failures)
    route(router, ["POST"], "/{index}::failures/_count", responses=count_responses)(count_failures)

    # --- re-drive, and the failed searches -----------------------------------------------------------------

    @route(
        router,
        ["POST"],
        "/{index}/_failure_store/_reprocess",
        responses=responses(OpenBody, 400, 404, 413),
        openapi_extra=json_body_doc(_REPROCESS, required=False),
    )
    async def reprocess(index: str, request: Request, refresh: RefreshParam = None) -> dict[str, Any]:
        """Run failed documents (those ``query`` matches) through the index's current pipelines again."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=False)
        unknown = sorted(set(body) - {"query"})
        if unknown:
            raise DefinitionError([(unknown[0], "unknown key; expected query")], subject="reprocess request")
        return await run_in_threadpool(ctx.failures.reprocess, index, body.get("query"), refresh=refresh_flag(refresh))

    @route(router, ["GET"], "/{index}/_failure_store/_searches", responses=responses(OpenBody, 400, 404))
    def failed_searches(
        index: str, size: Annotated[int, Query(ge=0, le=MAX_SEARCH_FAILURES_LIMIT)] = 100
    ) -> dict[str, Any]:
        """The searches that the index's query pipeline rejected or failed, or whose result pipeline failed,
        newest first."""
        return ctx.failures.search_failures(index, size)

    # --- simulate a write ----------------------------------------------------------------------------------

    def simulate(default_index: str | None, body: dict[str, Any], override: str | None) -> dict[str, Any]:
        unknown = sorted(set(body) - {"docs"})
        if unknown:
            raise DefinitionError([(unknown[0], "unknown key; expected docs")], subject="simulate request")
        docs = body.get("docs")
        if not isinstance(docs, list) or not docs or not all(isinstance(d, dict) for d in docs):
            raise DefinitionError([("docs", "a non-empty list of documents is required")], subject="simulate request")
        groups: dict[str, list[int]] = {}
        for i, doc in enumerate(docs):
            if not isinstance(doc.get("_source"), dict):
                raise DefinitionError([(f"docs[{i}]._source", "an object is required")], subject="simulate request")
            index = doc.get("_index", default_index)
            if not isinstance(index, str):
                raise DefinitionError([(f"docs[{i}]._index", "name the index")], subject="simulate request")
            groups.setdefault(index, []).append(i)
        answers: list[dict[str, Any] | None] = [None] * len(docs)
        for index, positions in groups.items():
            info = backend.get_index(index)
            guards = (pipeline_name(info, "document", override), final_pipeline_name(info, "document"))
            items = [(_doc_id(docs[i], i), docs[i].get("_source")) for i in positions]
            results = svc.simulate_documents(index, items, pipeline=guards[0], final_pipeline=guards[1])
            for i, result in zip(positions, results, strict=True):
                answers[i] = {"doc": _simulated(index, docs[i], result, failure_store_enabled(info))}
        return {"docs": answers}

    simulate_doc = json_body_doc(_SIMULATE)
    simulate_responses = responses(OpenBody, 400, 404, 413)

    @route(router, ["POST", "GET"], "/{index}/_simulate", responses=simulate_responses, openapi_extra=simulate_doc)
    async def simulate_index(index: str, request: Request, pipeline: PipelineParam = None) -> dict[str, Any]:
        """What indexing ``docs`` into ``index`` would do, stage by stage, without writing anything."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(simulate, index, body, pipeline)

    @route(
        router,
        ["POST", "GET"],
        "/_ingest/{index}/_simulate",
        responses=simulate_responses,
        openapi_extra=simulate_doc,
    )
    async def simulate_ingest(index: str, request: Request, pipeline: PipelineParam = None) -> dict[str, Any]:
        """Elasticsearch's simulate ingest API: ``POST /{index}/_simulate``."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(simulate, index, body, pipeline)

    return router


def _doc_id(doc: dict[str, Any], position: int) -> str | None:
    doc_id = doc.get("_id")
    if doc_id is not None and not isinstance(doc_id, str):
        raise DefinitionError([(f"docs[{position}]._id", "must be a string")], subject="simulate request")
    return doc_id


def _simulated(index: str, doc: dict[str, Any], result: dict[str, Any], store: bool) -> dict[str, Any]:
    """One document's simulated write, in the shape of Elasticsearch's simulate ingest API plus the
    per-pipeline, per-stage trace and the failure store's decision."""
    error = result["error"]
    answer: dict[str, Any] = {
        "_id": result["_id"],
        "_index": index,
        "_version": -3,
        "_source": doc["_source"] if error is not None else result["source"],
        "executed_pipelines": result["executed_pipelines"],
        "status": result["status"],
        "pipelines": result["pipelines"],
    }
    if isinstance(error, QuidditchError):
        answer["error"] = error_of(error)["error"]
        if redirectable(error):
            answer["failure_store"] = "would_be_used" if store else "not_enabled"
    return answer
