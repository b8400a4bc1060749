"""``GET /`` and ``HEAD /``: server information."""

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

    return router
