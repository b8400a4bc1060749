"""``POST /_pipeline/{name}/_import?from=elasticsearch``: store a pipeline written for another engine (DESIGN §13).

The body is the other engine's pipeline as that engine takes it. The answer is the stored pipeline's put answer
with the translation report (``"report": [{"path", "reason", "lossy"}]``) and the definition as translated.
A translation that would change behaviour is refused (400, every position named) unless ``accept_losses=true``;
``dry_run=true`` answers the translation and report without storing anything.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ...compat import import_pipeline
from .._body import json_object
from .._responses import OBJECT, OpenBody, json_body_doc, responses
from .._routing import AppContext, route


def router(ctx: AppContext) -> APIRouter:
    router = APIRouter()

    @route(
        router, ["POST"], "/_pipeline/{name}/_import", admin=ctx.admin,
        responses=responses(OpenBody, 400, 401, 404, 409, 413), openapi_extra=json_body_doc(OBJECT),
    )  # fmt: skip
    async def import_foreign_pipeline(
        name: str,
        request: Request,
        from_: Annotated[Literal["elasticsearch", "opensearch"], Query(alias="from")],
        accept_losses: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Translate and store an Elasticsearch ingest pipeline (or an OpenSearch search pipeline)."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(
            import_pipeline, ctx.service, body, name, from_, accept_losses=accept_losses, dry_run=dry_run,
            how_to_accept="add accept_losses=true to the query string",
        )  # fmt: skip

    return router
