"""The HTTP API (DESIGN §6): ``create_app`` joins one router per resource over a service and a search backend.

``create_app(service, backend)`` wires a :class:`~quidditch_pipeline.PipelineService` to a
:class:`~quidditch_pipeline.server.engine.SearchBackend`: documents pass the index's document pipeline before
they are written, search bodies its query pipeline before the search, responses its result pipeline after.

Routes live in :mod:`.routes` (one module per resource); what they share lives in private modules: the error
shape (``_errors``), JSON responses and OpenAPI docs (``_responses``, ``_openapi``), body reading (``_body``),
limits (``_limits``), the admin guard (``_auth``) and ``?pretty`` (``_pretty``). Every error answers
Elasticsearch's shape ``{"error": {"type", "reason", ...}, "status": N}``. Blocking work (tantivy, WASM, UDF
builds) runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI

from .. import __version__
from ..errors import QuidditchError
from ._auth import admin_dependency
from ._errors import UnexpectedErrorGuard, UnexpectedErrors, install_error_handlers
from ._limits import InFlightBreaker, RequestGuard, ServerLimits
from ._openapi import openapi
from ._pretty import PrettyJsonMiddleware
from ._product import ElasticProductMiddleware
from ._responses import JsonResponse
from ._routing import AppContext
from .engine import PIPELINE_SETTINGS, SearchBackend, UpstreamBackend
from .routes import documents, failures, gateway, imports, indexes, ingest, metrics, pipelines, root, search, udfs

if TYPE_CHECKING:
    from ..service import PipelineService

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    service: PipelineService,
    backend: SearchBackend,
    *,
    admin_token: str | None = None,
    limits: ServerLimits | None = None,
) -> FastAPI:
    """The FastAPI application serving DESIGN §6 on ``service`` and ``backend``.

    With ``admin_token``, admin routes (pipeline and UDF writes and ``_execute``, index create, delete and
    settings) need ``Authorization: Bearer <admin_token>``.
    """
    app = FastAPI(
        title="quidditch-pipeline",
        version=__version__,
        description=__doc__,
        default_response_class=JsonResponse,
        openapi_url="/openapi.json",
        # The index routes own every top-level name, so no /docs or /redoc pages.
        docs_url=None,
        redoc_url=None,
    )
    limits = limits or ServerLimits()
    ctx = AppContext(
        service, backend, limits, admin_dependency(admin_token), InFlightBreaker(limits.max_in_flight_bytes),
        UnexpectedErrors(),
    )  # fmt: skip
    # The last added is the outermost: the error guard sees everything, the request guard every body read.
    app.add_middleware(PrettyJsonMiddleware)
    app.add_middleware(RequestGuard, breaker=ctx.breaker, body_timeout_s=limits.body_timeout_s)
    app.add_middleware(UnexpectedErrorGuard, errors=ctx.unexpected)
    # Outermost, so that every answer (a 500 and a refused body too) identifies the API to Elasticsearch clients.
    app.add_middleware(ElasticProductMiddleware)
    # Order matters: the index routes (``/{index}``) come after every ``_``-prefixed resource (``PUT /_bulk``),
    # and ``/{index}::failures/_search`` before ``/{index}/_search``.
    if isinstance(backend, UpstreamBackend):
        # Gateway mode: the registry's associations are the pipeline settings, nothing to sync; the cluster's
        # paths pass through, and the gateway's index routes come before (so instead of) the embedded ones.
        routers = [
            *(module.router(ctx) for module in (root, metrics, pipelines, imports)),
            gateway.passthrough_router(ctx, backend),
            *(module.router(ctx) for module in (udfs, documents)),
            gateway.index_router(ctx, backend),
            *(module.router(ctx) for module in (indexes, failures, search)),
        ]
    else:
        _sync_associations(service, backend)
        modules = (root, metrics, pipelines, imports, ingest, udfs, documents, indexes, failures, search)
        routers = [module.router(ctx) for module in modules]
    for router in routers:
        app.include_router(router)
    install_error_handlers(app, [route for router in routers for route in router.routes])
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    return app


def _sync_associations(service: PipelineService, backend: SearchBackend) -> None:
    """Make the registry's index associations match the stored index settings (the settings win).

    Associations only give the registry's in-use protection (a pipeline an index uses cannot be deleted).
    Requests never rely on them: each names the pipeline its index's settings configure (``_pipelines``), so
    an association that cannot be restored here (its pipeline is gone) leaves the index failing closed.
    """
    for info in backend.list_indexes():
        current = service.associations(info.name)
        for kind in PIPELINE_SETTINGS:
            wanted = info.pipeline(kind)
            if current.get(kind) == wanted:
                continue
            try:
                if wanted is None:
                    service.disassociate(info.name, kind)
                else:
                    service.associate(info.name, kind, wanted)
            except QuidditchError as exc:
                log.warning(
                    "index [%s]: its %s pipeline [%s] is unavailable (%s); what it guards is refused until it is "
                    "stored again",
                    info.name, kind, wanted, exc,
                )  # fmt: skip
