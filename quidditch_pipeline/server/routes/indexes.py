"""Index routes: create, get, delete, settings, refresh, ``_cat/indices``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from ...errors import (
    InputError,
    NotFoundError,
    QuidditchError,
)
from .._body import json_object
from .._responses import EXISTS, OBJECT, Acknowledged, JsonResponse, OpenBody, json_body_doc, responses
from .._routing import AppContext, route
from ..engine import (
    PIPELINE_SETTINGS,
    IndexInfo,
    nest_settings,
    normalize_settings,
    validate_index_name,
)

if TYPE_CHECKING:
    from ...service import PipelineService


def _index_view(info: IndexInfo, *, flat: bool = False) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "index.number_of_shards": "1",
        "index.number_of_replicas": "0",
        **info.settings,
        "index.uuid": info.uuid,
        "index.creation_date": str(info.creation_date),
        "index.provided_name": info.name,
    }
    return settings if flat else nest_settings(settings)


def _unmapped_objects_only(mappings: Any) -> bool:
    """Whether ``mappings`` declares nothing but objects that are not mapped (``"enabled": false``), at any
    depth of ``properties``, as a gateway creates its failure stores upstream. A schemaless index accepts these
    and ignores them: the mapping conflicts they prevent on a cluster cannot arise in a JSON field (the fields
    stay searchable here)."""
    properties = mappings.get("properties") if isinstance(mappings, dict) and set(mappings) == {"properties"} else None
    if not isinstance(properties, dict):
        return False
    for field in properties.values():
        if not isinstance(field, dict) or field.get("type", "object") != "object":
            return False
        rest = set(field) - {"type"}
        if rest == {"enabled"} and field["enabled"] is False:
            continue
        if rest != {"properties"} or not _unmapped_objects_only({"properties": field["properties"]}):
            return False
    return True


def _associate(svc: PipelineService, index: str, kind: str, name: str | None) -> None:
    if name is None:
        svc.disassociate(index, kind)
    else:
        svc.associate(index, kind, name)


def push_pipelines(svc: PipelineService, index: str, changes: Mapping[str, Any], before: Mapping[str, Any]) -> None:
    """Make the service's associations follow the pipeline settings in ``changes`` (``None`` removes);
    on a failure, put back what ``before`` held."""
    done: list[str] = []
    try:
        for kind, key in PIPELINE_SETTINGS.items():
            if key in changes and changes[key] != before.get(key):
                _associate(svc, index, kind, changes[key])
                done.append(kind)
    except QuidditchError:
        for kind in done:
            _associate(svc, index, kind, before.get(PIPELINE_SETTINGS[kind]))
        raise


#: How a route makes the registry follow setting changes: ``push(svc, index, changes, before)``.
Push = Callable[["PipelineService", str, Mapping[str, Any], Mapping[str, Any]], None]


@contextlib.contextmanager
def pushed(
    push: Push, svc: PipelineService, index: str, changes: Mapping[str, Any], before: Mapping[str, Any]
) -> Iterator[None]:
    """``push`` the ``changes`` to the registry, and push back what ``before`` held for them when the step
    that follows (the backend's own write) raises a ``QuidditchError``; the error goes on."""
    push(svc, index, changes, before)
    try:
        yield
    except QuidditchError:
        push(svc, index, {key: before.get(key) for key in changes}, {**before, **changes})
        raise


def router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    svc, backend = ctx.service, ctx.backend

    @route(router, ["GET"], "/_cat/indices", responses=responses(None, 400), response_class=Response)
    def cat_indices(format: Annotated[Literal["json", "text"], Query()] = "text") -> Response:
        """One row per index (``?format=json`` for JSON)."""
        rows = [
            {
                "health": "green",
                "status": "open",
                "index": info.name,
                "uuid": info.uuid,
                "pri": "1",
                "rep": "0",
                "docs.count": str(info.docs_count),
            }
            for info in backend.list_indexes()
        ]
        if format == "json":
            return JsonResponse(rows)
        text = "".join(" ".join(row.values()) + "\n" for row in rows)
        return Response(text, media_type="text/plain; charset=UTF-8")

    @route(router, ["POST", "GET"], "/_refresh", responses=responses(OpenBody, 400))
    def refresh_all() -> dict[str, Any]:
        """Make every acknowledged write searchable."""
        backend.refresh()
        return {"_shards": {"total": 1, "successful": 1, "failed": 0}}

    @route(
        router,
        ["PUT"],
        "/{index}",
        admin=ctx.admin,
        responses=responses(Acknowledged, 400, 401, 404, 409, 413),
        openapi_extra=json_body_doc(
            {"type": "object", "properties": {"settings": OBJECT, "mappings": OBJECT, "aliases": OBJECT}},
            required=False,
        ),
    )
    async def create_index(index: str, request: Request) -> dict[str, Any]:
        """Create an index; ``settings`` may name its default document, query and result pipelines."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=False)
        return await run_in_threadpool(create, index, body)

    def create(index: str, body: dict[str, Any]) -> dict[str, Any]:
        validate_index_name(index)
        unknown = sorted(set(body) - {"settings", "mappings", "aliases"})
        if unknown:
            raise InputError(f"unknown key [{unknown[0]}] in the index creation body; supported: settings")
        if body.get("aliases"):
            raise InputError("[aliases] is not supported: documents are schemaless JSON (every field is searchable)")
        if body.get("mappings") and not _unmapped_objects_only(body["mappings"]):
            raise InputError(
                "[mappings] is not supported: documents are schemaless JSON (every field is searchable); only "
                'objects that are not mapped ({"type": "object", "enabled": false}) are accepted, and ignored'
            )
        settings = body.get("settings") or {}
        if not isinstance(settings, dict):
            raise InputError("[settings] must be an object")
        changes = normalize_settings(settings)
        with ctx.index_admin:
            backend.create_index(index, changes)
            try:
                push_pipelines(svc, index, changes, {})
            except QuidditchError:
                backend.delete_index(index)
                raise
        return {"acknowledged": True, "shards_acknowledged": True, "index": index}

    @route(router, ["GET"], "/{index}", responses=responses(OpenBody, 400, 404))
    def get_index(index: str) -> dict[str, Any]:
        info = backend.get_index(index)
        return {index: {"aliases": {}, "mappings": {"dynamic": "true"}, "settings": _index_view(info)}}

    @route(router, ["HEAD"], "/{index}", response_class=Response, responses=EXISTS)
    def index_exists(index: str) -> Response:
        """200 when the index exists, 404 when it does not."""
        try:
            backend.get_index(index)
        except NotFoundError:
            return Response(status_code=404)
        return Response(status_code=200)

    @route(router, ["DELETE"], "/{index}", admin=ctx.admin, responses=responses(Acknowledged, 400, 401, 404))
    def delete_index(index: str) -> dict[str, Any]:
        """Delete an index, its documents and its pipeline associations."""
        with ctx.index_admin:
            info = backend.get_index(index)
            for kind in PIPELINE_SETTINGS:
                if info.pipeline(kind) is not None:
                    svc.disassociate(index, kind)
            backend.delete_index(index)
            # The settings a gateway keeps for the index besides its pipelines (none in embedded mode, where
            # the index keeps all of its settings itself) go with it.
            svc.set_index_settings(index, dict.fromkeys(svc.index_settings(index)))
        return {"acknowledged": True}

    @route(router, ["GET"], "/{index}/_settings", responses=responses(OpenBody, 400, 404))
    def get_settings(index: str, flat_settings: Annotated[bool, Query()] = False) -> dict[str, Any]:
        """The index's settings (nested, or flat keys with ``?flat_settings=true``)."""
        return {index: {"settings": _index_view(backend.get_index(index), flat=flat_settings)}}

    @route(
        router,
        ["PUT"],
        "/{index}/_settings",
        admin=ctx.admin,
        responses=responses(Acknowledged, 400, 401, 404, 409, 413),
        openapi_extra=json_body_doc(
            {
                "type": "object",
                "description": "nested ({'index': {'document': {'default_pipeline': 'p'}}}) or flat "
                "('index.document.default_pipeline') settings; null removes a setting",
            }
        ),
    )
    async def put_settings(index: str, request: Request) -> dict[str, Any]:
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(update_settings, index, body)

    def update_settings(index: str, body: dict[str, Any]) -> dict[str, Any]:
        changes = normalize_settings(body)
        with ctx.index_admin:
            before = backend.get_index(index).settings
            with pushed(push_pipelines, svc, index, changes, before):
                backend.update_settings(index, changes)
        return {"acknowledged": True}

    @route(router, ["POST", "GET"], "/{index}/_refresh", responses=responses(OpenBody, 400, 404))
    def refresh_index(index: str) -> dict[str, Any]:
        backend.refresh(index)
        return {"_shards": {"total": 1, "successful": 1, "failed": 0}}

    return router
