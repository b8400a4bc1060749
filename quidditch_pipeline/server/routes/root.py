"""``GET /`` and ``HEAD /`` (server information) and ``GET /_nodes/stats`` (the server's own counters)."""

from __future__ import annotations

import socket
from typing import Any

from fastapi import APIRouter, Response

from ... import __version__
from .._responses import EXISTS, OpenBody, responses
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

    return router
