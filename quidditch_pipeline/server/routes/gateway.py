"""Gateway mode's own routes (``serve --upstream``): what the upstream cluster owns passes through to it.

* ``/_ingest/pipeline*`` and ``/_search/pipeline*`` are the cluster's: forwarded verbatim (method, path, query
  string, body) and answered as the cluster answered (:mod:`.ingest` serves them in embedded mode instead).
* Index creation, ``PUT /{index}/_settings`` and ``GET /{index}``: this project's own settings (those that
  name pipelines, kept as the registry's index associations, and ``index.failure_store.*``, kept as its index
  settings) are kept by the gateway and never sent upstream, where a cluster would refuse them as unknown;
  everything else of the body — mappings, aliases, analysis, shards — goes to the cluster unchanged, and
  ``GET`` shows the cluster's answer with the kept settings merged in. A change of kept settings follows the
  upstream's outcome: made before the request goes upstream, put back when the cluster refuses it.

The other routes (documents, ``_bulk``, ``_search``, ``_count``) are the embedded ones, over
:class:`~quidditch_pipeline.server.engine.upstream.UpstreamBackend`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ...errors import InputError, QuidditchError
from .._body import json_object, read_body
from .._responses import OBJECT, Acknowledged, OpenBody, json_body_doc, responses
from .._routing import AppContext, route
from ..engine import PIPELINE_SETTINGS, nest_settings
from ..engine.settings import split_own_settings
from ..engine.upstream import UpstreamBackend, upstream_index_name
from .indexes import push_pipelines, pushed

if TYPE_CHECKING:
    from ...service import PipelineService

_PASSED_THROUGH = ("/_ingest/pipeline", "/_search/pipeline")
_PIPELINE_KEYS = frozenset(PIPELINE_SETTINGS.values())


def push_kept(svc: PipelineService, index: str, changes: Mapping[str, Any], before: Mapping[str, Any]) -> None:
    """Make the registry follow the own settings in ``changes`` (``None`` removes): those that name pipelines
    as associations, the others as index settings (one change). On a failure, put back what ``before`` held."""
    pipelines = {key: value for key, value in changes.items() if key in _PIPELINE_KEYS}
    others = {key: value for key, value in changes.items() if key not in _PIPELINE_KEYS}
    with pushed(push_pipelines, svc, index, pipelines, before):
        svc.set_index_settings(index, others)


def passthrough_router(ctx: AppContext, upstream: UpstreamBackend) -> APIRouter:
    """``/_ingest/pipeline*`` and ``/_search/pipeline*``, forwarded to the cluster."""
    router = APIRouter()

    async def forward(request: Request) -> Response:
        """Forwarded to the upstream cluster as it came; answered as the cluster answered."""
        body = await read_body(request, ctx.limits.max_body_bytes)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        content_type = request.headers.get("content-type", "application/json")
        answer = await run_in_threadpool(
            upstream.forward, request.method, target, body if body else None, content_type
        )
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type or None)

    for prefix in _PASSED_THROUGH:
        for path in (prefix, prefix + "/{rest:path}"):
            route(router, ["GET"], path, responses=responses(OpenBody, 400, 404))(forward)
            route(
                router, ["PUT", "POST", "DELETE"], path, admin=ctx.admin,
                responses=responses(OpenBody, 400, 401, 404),
            )(forward)  # fmt: skip
    return router


def index_router(ctx: AppContext, upstream: UpstreamBackend) -> APIRouter:
    """Index creation, settings and ``GET /{index}`` with the pipeline settings kept in the gateway."""
    router = APIRouter()
    svc = ctx.service

    @route(
        router, ["PUT"], "/{index}", admin=ctx.admin, responses=responses(Acknowledged, 400, 401, 404, 409, 413),
        openapi_extra=json_body_doc(OBJECT, required=False),
    )  # fmt: skip
    async def create_upstream_index(index: str, request: Request) -> dict[str, Any]:
        """Create the index upstream with the body less its pipeline settings, which the gateway keeps."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=False)
        return await run_in_threadpool(create, index, body)

    def create(index: str, body: dict[str, Any]) -> dict[str, Any]:
        settings = body.get("settings") or {}
        if not isinstance(settings, dict):
            raise InputError("[settings] must be an object")
        kept, rest = split_own_settings(settings)
        upstream_body = {**body, "settings": rest} if rest else {k: v for k, v in body.items() if k != "settings"}
        with ctx.index_admin:
            upstream.create_index_from_body(index, upstream_body)
            try:
                # What an index of this name had kept before (deleted upstream behind the gateway's back) goes.
                stale = svc.index_settings(index)
                push_kept(svc, index, {**dict.fromkeys(stale), **kept}, stale)
            except QuidditchError:
                upstream.delete_index(index)
                raise
        return {"acknowledged": True, "shards_acknowledged": True, "index": index}

    @route(
        router, ["PUT"], "/{index}/_settings", admin=ctx.admin,
        responses=responses(Acknowledged, 400, 401, 404, 409, 413), openapi_extra=json_body_doc(OBJECT),
    )  # fmt: skip
    async def put_upstream_settings(index: str, request: Request) -> dict[str, Any]:
        """This project's own settings are kept by the gateway; the others go to the index upstream unchanged."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(update_settings, index, body)

    def update_settings(index: str, body: dict[str, Any]) -> dict[str, Any]:
        kept, rest = split_own_settings(body)
        with ctx.index_admin:
            before = upstream.get_index(index).settings
            with pushed(push_kept, svc, index, kept, before):
                if rest:
                    upstream.update_settings(index, rest)
        return {"acknowledged": True}

    @route(router, ["GET"], "/{index}", responses=responses(OpenBody, 400, 404))
    def get_upstream_index(index: str) -> Response:
        """The cluster's answer (mappings, aliases, settings) with the settings the gateway keeps."""
        answer = upstream.forward("GET", f"/{upstream_index_name(index)}")
        if answer.status != 200:
            return Response(answer.body, status_code=answer.status, media_type=answer.content_type or None)
        found = orjson.loads(answer.body)
        for name, view in found.items():
            kept = nest_settings(upstream.kept_settings(name)).get("index", {})
            view.setdefault("settings", {}).setdefault("index", {}).update(kept)
        return Response(orjson.dumps(found), media_type="application/json")

    return router
