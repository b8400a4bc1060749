"""Elasticsearch's ingest and OpenSearch's search pipeline paths as aliases of ``/_pipeline`` (DESIGN §13).

* ``PUT /_ingest/pipeline/{id}`` translates an ingest pipeline (:mod:`quidditch_pipeline.compat`) and stores it
  as the document pipeline ``id``; a translation that would change behaviour is refused (400, naming each
  position), as Elasticsearch refuses a processor it does not know. Answers ``{"acknowledged": true}``.
* ``GET /_ingest/pipeline[/{id}]`` answers ``{id: {description, processors, version, _meta}}`` for document
  pipelines Elasticsearch can express (one that cannot is a 400 naming why; the list leaves it out).
* ``DELETE /_ingest/pipeline/{id}`` and ``POST /_ingest/pipeline[/{id}]/_simulate`` (``?verbose``).
* ``PUT/GET/DELETE /_search/pipeline/{id}``: an OpenSearch search pipeline, stored as the query pipeline
  ``{id}-request`` and the result pipeline ``{id}-response`` (:func:`~quidditch_pipeline.compat.pipeline_names`).

These paths belong to the upstream cluster in a gateway; keeping them in this one router lets such a mode pass
them through instead. Admin rules are those of ``/_pipeline``.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ...compat import (
    from_elasticsearch,
    from_opensearch,
    pipeline_names,
    stored_definition,
    to_elasticsearch,
    to_opensearch,
)
from ...errors import ConflictError, DefinitionError, NotFoundError
from .._body import json_object
from .._errors import error_body
from .._responses import OBJECT, Acknowledged, OpenBody, json_body_doc, responses
from .._routing import AppContext, route

if TYPE_CHECKING:
    from ...service import PipelineService

#: The name an inline ``_simulate`` pipeline runs under.
_INLINE = "simulate"
_SIMULATE = {
    "type": "object",
    "properties": {"docs": {"type": "array", "items": OBJECT}, "pipeline": OBJECT},
    "required": ["docs"],
}
_ACCEPT = "POST /_pipeline/{id}/_import?from=elasticsearch&accept_losses=true"


def router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    svc = ctx.service

    def document_pipeline(name: str) -> dict[str, Any]:
        stored = svc.get_pipeline(name)
        if stored["type"] != "document":
            raise NotFoundError("ingest pipeline", name, f"[{name}] is a {stored['type']} pipeline")
        return stored

    @route(
        router, ["PUT"], "/_ingest/pipeline/{id}", admin=ctx.admin,
        responses=responses(Acknowledged, 400, 401, 404, 409, 413), openapi_extra=json_body_doc(OBJECT),
    )  # fmt: skip
    async def put_ingest_pipeline(
        id: str, request: Request, if_version: Annotated[int | None, Query()] = None
    ) -> dict[str, Any]:
        """Store an Elasticsearch ingest pipeline, translated, as the document pipeline ``id``."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)

        def put() -> dict[str, Any]:
            if if_version is not None:
                _check_version(svc, id, if_version)
            translation = from_elasticsearch(body, id)
            translation.require_lossless(False, _ACCEPT.format(id=id))
            (definition,) = translation.definitions
            svc.put_pipeline(definition, id)
            return {"acknowledged": True}

        return await run_in_threadpool(put)

    @route(router, ["GET"], "/_ingest/pipeline/{id}", responses=responses(OpenBody, 400, 404))
    def get_ingest_pipeline(id: str) -> dict[str, Any]:
        """One pipeline, or (``a,b``, ``logs-*``) those of the listed names and patterns that match."""
        if "," not in id and "*" not in id:
            return {id: to_elasticsearch(document_pipeline(id))}
        patterns = [p for p in id.split(",") if p]
        found = {name: body for name, body in expressible().items() if any(fnmatchcase(name, p) for p in patterns)}
        if not found:
            raise NotFoundError("ingest pipeline", id)
        return found

    @route(router, ["GET"], "/_ingest/pipeline", responses=responses(OpenBody, 400))
    def list_ingest_pipelines() -> dict[str, Any]:
        """Every document pipeline that Elasticsearch can express, by name."""
        return expressible()

    def expressible() -> dict[str, Any]:
        found: dict[str, Any] = {}
        for listed in svc.list_pipelines(type="document")["pipelines"]:
            try:
                found[listed["name"]] = to_elasticsearch(svc.get_pipeline(listed["name"]))
            except DefinitionError:
                continue  # python and composite stages are not ingest processors: not an ingest pipeline
        return found

    @route(
        router,
        ["DELETE"],
        "/_ingest/pipeline/{id}",
        admin=ctx.admin,
        responses=responses(Acknowledged, 400, 401, 404, 409),
    )
    def delete_ingest_pipeline(id: str) -> dict[str, Any]:
        document_pipeline(id)
        svc.delete_pipeline(id)
        return {"acknowledged": True}

    @route(
        router, ["POST", "GET"], "/_ingest/pipeline/_simulate", admin=ctx.admin,
        responses=responses(OpenBody, 400, 401, 404, 413), openapi_extra=json_body_doc(_SIMULATE),
    )  # fmt: skip
    async def simulate_inline(request: Request, verbose: bool = False) -> dict[str, Any]:
        """Run an inline ingest pipeline (``pipeline``) on ``docs``."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        pipeline = body.get("pipeline")
        if not isinstance(pipeline, dict):
            raise DefinitionError([("pipeline", "an inline ingest pipeline (object) is required")], subject="simulate")
        return await run_in_threadpool(simulate, None, pipeline, body, verbose)

    @route(
        router, ["POST", "GET"], "/_ingest/pipeline/{id}/_simulate", admin=ctx.admin,
        responses=responses(OpenBody, 400, 401, 404, 413), openapi_extra=json_body_doc(_SIMULATE),
    )  # fmt: skip
    async def simulate_stored(id: str, request: Request, verbose: bool = False) -> dict[str, Any]:
        """Run the stored pipeline ``id`` on ``docs``."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(simulate, id, None, body, verbose)

    def simulate(
        name: str | None, inline: dict[str, Any] | None, body: dict[str, Any], verbose: bool
    ) -> dict[str, Any]:
        docs = body.get("docs")
        if not isinstance(docs, list) or not docs or not all(isinstance(d, dict) for d in docs):
            raise DefinitionError([("docs", "a non-empty list of documents is required")], subject="simulate")
        sources = [doc.get("_source") for doc in docs]
        for i, source in enumerate(sources):
            if not isinstance(source, dict):
                raise DefinitionError([(f"docs[{i}]._source", "an object is required")], subject="simulate")
        if inline is not None:
            translation = from_elasticsearch(inline, _INLINE)
            translation.require_lossless(False, "import with accept_losses, then simulate the stored pipeline")
            (definition,) = translation.definitions
        else:
            definition = document_pipeline(name or "")
        processors = {stage["name"]: stage["config"].get("processor", stage["type"]) for stage in definition["stages"]}
        run = svc.execute(definition if inline is not None else definition["name"], inputs=sources, verbose=verbose)
        timestamp = datetime.now(UTC).isoformat()
        return {
            "docs": [
                _simulated(doc, result, timestamp, processors, verbose)
                for doc, result in zip(docs, run["results"], strict=True)
            ]
        }

    def search_sides(id: str) -> dict[str, dict[str, Any]]:
        """Pipeline type -> the stored side of search pipeline ``id`` (404 when it has none)."""
        sides = {}
        for kind, name in pipeline_names(id).items():
            try:
                sides[kind] = svc.get_pipeline(name)
            except NotFoundError:
                continue
        if not sides:
            raise NotFoundError("search pipeline", id)
        return sides

    @route(
        router, ["PUT"], "/_search/pipeline/{id}", admin=ctx.admin,
        responses=responses(Acknowledged, 400, 401, 404, 409, 413), openapi_extra=json_body_doc(OBJECT),
    )  # fmt: skip
    async def put_search_pipeline(id: str, request: Request) -> dict[str, Any]:
        """Store an OpenSearch search pipeline as ``{id}-request`` and ``{id}-response``."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)

        def put() -> dict[str, Any]:
            translation = from_opensearch(body, id)
            translation.require_lossless(False, f"POST /_pipeline/{id}/_import?from=opensearch&accept_losses=true")
            definitions = [stored_definition(d) for d in translation.definitions]
            # A replacement without one side removes that side, as a put replaces the whole search pipeline;
            # first, so that a side still in use (409) refuses the put before anything changed.
            kept = {d.name for d in definitions}
            for name in sorted(set(pipeline_names(id).values()) - kept):
                with contextlib.suppress(NotFoundError):
                    svc.delete_pipeline(name)
            for definition in definitions:
                svc.put_pipeline(definition)
            return {"acknowledged": True}

        return await run_in_threadpool(put)

    @route(router, ["GET"], "/_search/pipeline/{id}", responses=responses(OpenBody, 400, 404))
    def get_search_pipeline(id: str) -> dict[str, Any]:
        sides = {kind: stored_definition(stored) for kind, stored in search_sides(id).items()}
        return {id: to_opensearch(sides.get("query"), sides.get("result"))}

    @route(
        router,
        ["DELETE"],
        "/_search/pipeline/{id}",
        admin=ctx.admin,
        responses=responses(Acknowledged, 400, 401, 404, 409),
    )
    def delete_search_pipeline(id: str) -> dict[str, Any]:
        for stored in search_sides(id).values():
            svc.delete_pipeline(stored["name"])
        return {"acknowledged": True}

    return router


def _check_version(svc: PipelineService, name: str, expected: int) -> None:
    """``if_version``: the put applies only over the stored pipeline of that (major) version."""
    try:
        current = int(str(svc.get_pipeline(name)["version"]).split(".", 1)[0])
    except NotFoundError:
        current = None
    if current != expected:
        raise ConflictError(
            f"version conflict, required version [{expected}] for pipeline [{name}] but current version is [{current}]"
        )


def _doc(doc: dict[str, Any], source: Any, timestamp: str) -> dict[str, Any] | None:
    if source is None:
        return None
    return {
        "_index": doc.get("_index", "_index"),
        "_id": doc.get("_id", "_id"),
        "_version": str(doc.get("_version", "-3")),
        "_source": source,
        "_ingest": {"timestamp": timestamp},
    }


def _error(error: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = error_body("pipeline_execution_exception", error["reason"], 400)["error"]
    return body


def _simulated(
    doc: dict[str, Any], result: dict[str, Any], timestamp: str, processors: dict[str, str], verbose: bool
) -> dict[str, Any] | None:
    """One document's answer in Elasticsearch's simulate shape (a dropped document is ``null``)."""
    if verbose:
        steps = []
        for stage in result.get("stages", []):
            step: dict[str, Any] = {"processor_type": processors.get(stage["name"], stage["type"]),
                                    "status": stage["status"], "tag": stage["name"]}  # fmt: skip
            if stage["status"] in {"success", "error_ignored"}:
                step["doc"] = _doc(doc, stage["output"], timestamp)
            if stage["error"]:
                step["error"] = {"type": "pipeline_execution_exception", "reason": stage["error"]}
            steps.append(step)
        return {"processor_results": steps}
    if result["status"] == "failed":
        return {"error": _error(result["error"])}
    if result["status"] == "dropped":
        return None
    return {"doc": _doc(doc, result["output"], timestamp)}
