"""``GET /_prometheus/metrics``: the service's metrics in Prometheus' text format (see
:mod:`quidditch_pipeline.prometheus` for the names), or OpenMetrics when the scraper asks for it."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool

from ...prometheus import service_registry
from .._routing import AppContext, route


def router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    registry = service_registry(ctx.service)

    @route(
        router,
        ["GET"],
        "/_prometheus/metrics",
        response_class=Response,
        responses={200: {"description": "metrics", "content": {"text/plain": {}}}},
    )
    async def prometheus_metrics(request: Request) -> Response:
        """Per pipeline and stage counters and latency histograms (those of ``_stats``, workers merged in),
        UDF instance pools and compile, load and instantiation times, worker processes."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await run_in_threadpool(encoder, registry)
        return Response(body, media_type=content_type)

    return router
