"""``GET /`` and ``HEAD /`` (server information), ``GET /_nodes/stats`` (the server's own counters) and
``GET /_cluster/health`` (the registry's health; ``?wait_for_change=N`` waits until a change is in force here)."""

from __future__ import annotations

import socket
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from ... import __version__
from ...errors import InputError
from .._responses import EXISTS, JsonResponse, OpenBody, responses
from .._routing import AppContext, route


def router(ctx: AppContext) -> APIRouter:
    router = APIRouter()

    @route(router, ["GET"], "/", responses=responses(OpenBody))
    def server_info() -> dict[str, Any]:
        """Server information (what Elasticsearch clients ask for first)."""
        return {
            "name": socket.gethostname(),
            "cluster_name": "quidditch",
            "version": {"distribution": "quidditch-pipeline", "number": __version__},
            "tagline": "Programmable document, query and result pipelines",
        }

    @route(router, ["HEAD"], "/", response_class=Response, responses={200: EXISTS[200]})
    def ping() -> Response:
        return Response(status_code=200)

    @route(router, ["GET"], "/_nodes/stats", responses=responses(OpenBody))
    def node_stats() -> dict[str, Any]:
        """The in-flight requests breaker, the count of unexpected errors (answered 500) and the registry's
        health (back-end, connected, the change id in force), in the shape of Elasticsearch's node stats."""
        name = socket.gethostname()
        return {
            "_nodes": {"total": 1, "successful": 1, "failed": 0},
            "cluster_name": "quidditch",
            "nodes": {
                name: {
                    "name": name,
                    "breakers": {"in_flight_requests": ctx.breaker.stats()},
                    "http": {"unexpected_errors": ctx.unexpected.count},
                    "registry": ctx.service.registry.status(),
                }
            },
        }

    @route(router, ["GET"], "/_cluster/health", responses=responses(OpenBody))
    async def cluster_health(
        wait_for_change: Annotated[int | None, Query()] = None, timeout: Annotated[str, Query()] = "30s"
    ) -> Response:
        """This node's registry: ``green`` while it reaches its database, ``yellow`` while it serves what it
        holds without it. ``wait_for_change=N`` (the ``change`` a pipeline or UDF change answered on any
        node) waits until that change is in force on this node; 408 with ``timed_out`` when ``timeout``
        passed first, as Elasticsearch's ``wait_for_*`` parameters do."""
        registry = ctx.service.registry
        timed_out = False
        if wait_for_change is not None:
            seconds = _seconds(timeout)
            timed_out = not await run_in_threadpool(registry.wait_for_change, wait_for_change, seconds)
        status = registry.status()
        body = {
            "cluster_name": "quidditch",
            "status": "green" if status["connected"] else "yellow",
            "timed_out": timed_out,
            "registry": status,
        }
        return JsonResponse(body, status_code=408 if timed_out else 200)

    return router


def _seconds(value: str) -> float:
    """An Elasticsearch time value (``500ms``, ``30s``, ``1m``) in seconds."""
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        number = value.removesuffix(unit)
        if number != value:
            try:
                seconds = float(number) * scale
            except ValueError:
                break
            if 0 <= seconds <= 300:
                return seconds
            break
    raise InputError(f"timeout: [{value}] is not a time value between 0 and 5m (e.g. 500ms, 30s)")
