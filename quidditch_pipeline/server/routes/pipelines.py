"""``/_pipeline``: store, read, delete, execute pipelines and read their statistics (DESIGN §6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ...compat import to_elasticsearch
from ...definitions import load_yaml
from ...errors import DefinitionError
from .._body import json_object, parse_object, read_body
from .._responses import Acknowledged, ExecuteResult, OpenBody, PipelineList, PipelinePut, json_body_doc, responses
from .._routing import AppContext, route

_EXECUTE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "input": {"description": "one input: a document, a search body, or a result object"},
        "inputs": {"type": "array", "description": "a batch of inputs"},
        "params": {"type": "object"},
        "verbose": {"type": "boolean", "default": True},
    },
}


def router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    svc = ctx.service

    @route(router, ["GET"], "/_pipeline", responses=responses(PipelineList, 400))
    def list_pipelines(
        type: Annotated[Literal["document", "query", "result"] | None, Query()] = None,
    ) -> dict[str, Any]:
        """Every stored pipeline (latest revision), sorted by name."""
        return svc.list_pipelines(type=type)

    @route(router, ["GET"], "/_pipeline/_stats", responses=responses(OpenBody, 400))
    def all_stats() -> dict[str, Any]:
        """Execution statistics of every pipeline."""
        return svc.stats()

    @route(router, ["POST"], "/_pipeline/_stats/_reset", admin=ctx.admin, responses=responses(Acknowledged, 400, 401))
    def reset_all_stats() -> dict[str, Any]:
        svc.reset_stats()
        return {"acknowledged": True}

    @route(
        router,
        ["POST"],
        "/_pipeline/_execute",
        admin=ctx.admin,
        responses=responses(ExecuteResult, 400, 401, 404, 413),
        openapi_extra=json_body_doc(
            {
                **_EXECUTE_SCHEMA,
                "properties": {
                    **_EXECUTE_SCHEMA["properties"],
                    "pipeline": {"$ref": "#/components/schemas/PipelineDefinition"},
                },
                "required": ["pipeline"],
            }
        ),
    )
    async def execute_inline(request: Request) -> dict[str, Any]:
        """Run an inline pipeline definition on one input or a batch."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        pipeline = body.pop("pipeline", None)
        if not isinstance(pipeline, dict):
            raise DefinitionError(
                [("pipeline", "an inline pipeline definition (object) is required")], subject="request body"
            )
        return await _execute(svc.execute, pipeline, body)

    @route(
        router,
        ["PUT", "POST"],
        "/_pipeline/{name}",
        admin=ctx.admin,
        responses=responses(PipelinePut, 400, 401, 404, 409, 413),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PipelineDefinition"}},
                    "application/yaml": {"schema": {"$ref": "#/components/schemas/PipelineDefinition"}},
                },
            }
        },
    )
    async def put_pipeline(
        name: str,
        request: Request,
        if_version: Annotated[int | None, Query(ge=0)] = None,
        if_revision: Annotated[int | None, Query(ge=0)] = None,
    ) -> dict[str, Any]:
        """Create or replace a pipeline: stores a new revision (JSON, or YAML with Content-Type application/yaml).
        ``?if_version=N`` (or ``?if_revision=N``): only if the stored pipeline's latest revision is N, else 409."""
        raw = await read_body(request, ctx.limits.max_body_bytes)
        # Parsing runs in the thread pool too: a hostile body must not hold the event loop.
        definition = await run_in_threadpool(_definition_body, raw, request.headers.get("content-type", ""))
        return await run_in_threadpool(
            lambda: svc.put_pipeline(definition, name, if_version=if_version, if_revision=if_revision)
        )

    @route(router, ["GET"], "/_pipeline/{name}", responses=responses(OpenBody, 400, 404))
    def get_pipeline(
        name: str,
        revision: Annotated[int | None, Query(ge=1)] = None,
        format: Annotated[Literal["elasticsearch"] | None, Query()] = None,
    ) -> dict[str, Any]:
        """The stored definition (latest, or one revision) with revision, created_at and updated_at; with
        ``format=elasticsearch``, the equivalent ingest pipeline (400 naming what it cannot express)."""
        stored = svc.get_pipeline(name, revision)
        return to_elasticsearch(stored) if format == "elasticsearch" else stored

    @route(
        router, ["DELETE"], "/_pipeline/{name}", admin=ctx.admin, responses=responses(Acknowledged, 400, 401, 404, 409)
    )
    def delete_pipeline(name: str) -> dict[str, Any]:
        """Delete a pipeline with its history; refused while an index or a pipeline uses it."""
        return svc.delete_pipeline(name)

    @route(router, ["GET"], "/_pipeline/{name}/_history", responses=responses(OpenBody, 400, 404))
    def pipeline_history(name: str) -> dict[str, Any]:
        return svc.pipeline_history(name)

    @route(
        router,
        ["POST"],
        "/_pipeline/{name}/_execute",
        admin=ctx.admin,
        responses=responses(ExecuteResult, 400, 401, 404, 413),
        openapi_extra=json_body_doc(_EXECUTE_SCHEMA),
    )
    async def execute_stored(name: str, request: Request) -> dict[str, Any]:
        """Run a stored pipeline on one input (``input``) or a batch (``inputs``)."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        return await _execute(svc.execute, name, body)

    @route(router, ["GET"], "/_pipeline/{name}/_stats", responses=responses(OpenBody, 400, 404))
    def pipeline_stats(name: str) -> dict[str, Any]:
        return svc.stats(name)

    @route(
        router,
        ["POST"],
        "/_pipeline/{name}/_stats/_reset",
        admin=ctx.admin,
        responses=responses(Acknowledged, 400, 401, 404),
    )
    def reset_pipeline_stats(name: str) -> dict[str, Any]:
        svc.reset_stats(name)
        return {"acknowledged": True}

    return router


def _definition_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if "yaml" in content_type.lower():
        value = load_yaml(raw)
        if not isinstance(value, dict):
            raise DefinitionError([("", f"a pipeline definition is an object, got {type(value).__name__}")])
        return value
    return parse_object(raw, required=True, what="pipeline definition")


async def _execute(
    run: Callable[..., dict[str, Any]], pipeline: str | dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    allowed = {"input", "inputs", "params", "verbose", "substitutions", "pipeline_substitutions"}
    unknown = sorted(set(body) - allowed)
    problems = [(key, "unknown field") for key in unknown]
    if ("input" in body) == ("inputs" in body):
        problems.append(("input", "give exactly one of input and inputs"))
    if "inputs" in body and not isinstance(body["inputs"], list):
        problems.append(("inputs", "must be a list"))
    if "params" in body and not isinstance(body["params"], dict):
        problems.append(("params", "must be an object"))
    if "verbose" in body and not isinstance(body["verbose"], bool):
        problems.append(("verbose", "must be true or false"))
    if "substitutions" in body and "pipeline_substitutions" in body:
        problems.append(("substitutions", "give substitutions or pipeline_substitutions, not both"))
    substitutions = body.get("substitutions", body.get("pipeline_substitutions"))
    if substitutions is not None and not isinstance(substitutions, dict):
        problems.append(("substitutions", "must be an object: pipeline name -> definition"))
    if problems:
        raise DefinitionError(problems, subject="_execute request")
    kwargs: dict[str, Any] = {
        "params": body.get("params"),
        "verbose": body.get("verbose", True),
        "substitutions": substitutions,
    }
    if "input" in body:
        kwargs["input"] = body["input"]
    else:
        kwargs["inputs"] = body["inputs"]
    result: dict[str, Any] = await run_in_threadpool(run, pipeline, **kwargs)
    return result
