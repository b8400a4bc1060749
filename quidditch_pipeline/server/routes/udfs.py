"""``/_udf``: register UDF versions (Python source built on the server, or components), list, delete, execute."""

from __future__ import annotations

from functools import partial
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ...errors import (
    DefinitionError,
    InputError,
)
from .._body import json_object, read_body
from .._responses import Acknowledged, JsonResponse, OpenBody, UdfPut, UdfVersions, json_body_doc, responses
from .._routing import AppContext, route

_PYTHON_TYPES: Final = ("text/x-python", "text/x-script.python", "text/plain", "application/x-python")


def _udf_payload(raw: bytes, content_type: str) -> str | bytes:
    """The upload as Python source (str) or a component (bytes).

    ``application/wasm`` is a component and a Python type is source; anything else (curl's default
    form type) is told apart by WebAssembly's magic number.
    """
    kind = content_type.split(";")[0].strip().lower()
    is_wasm = kind == "application/wasm" or (kind not in _PYTHON_TYPES and raw.startswith(b"\0asm"))
    if is_wasm:
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            "a UDF upload is Python source (Content-Type: text/x-python, UTF-8) "
            "or a component (Content-Type: application/wasm)"
        ) from exc


_EXECUTE_SCHEMA: Final[dict[str, Any]] = {
    "input": {},
    "params": {"type": "object"},
    "type": {"type": "string", "enum": ["document", "query", "result"]},
    "scope": {"type": "string", "enum": ["hit", "response"]},
    "target_field": {"type": "string"},
}


def _execute_problems(body: dict[str, Any], known: set[str]) -> list[tuple[str, str]]:
    """What is wrong with an ``_execute`` body, field by field (the fields both routes share)."""
    problems = [(key, "unknown field") for key in sorted(set(body) - known)]
    if "params" in body and not isinstance(body["params"], dict):
        problems.append(("params", "must be an object"))
    if body.get("type", "document") not in {"document", "query", "result"}:
        problems.append(("type", "must be document, query or result"))
    if body.get("scope", "hit") not in {"hit", "response"}:
        problems.append(("scope", "must be hit or response"))
    if not isinstance(body.get("target_field", ""), str):
        problems.append(("target_field", "must be a field name"))
    return problems


def router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    svc = ctx.service

    @route(router, ["GET"], "/_udf", responses=responses(OpenBody, 400))
    def list_udfs() -> dict[str, Any]:
        """Every registered UDF with its versions."""
        return svc.list_udfs()

    @route(router, ["GET"], "/_udf/{name}", responses=responses(UdfVersions, 400, 404))
    def udf_versions(name: str) -> dict[str, Any]:
        """The versions registered under a name (lowest first) with their sha256, size and time."""
        return svc.udf_info(name)

    @route(
        router,
        ["PUT"],
        "/_udf/{name}/{version}",
        admin=ctx.admin,
        responses={
            **responses(UdfPut, 400, 401, 409, 413, ok_status=201),
            200: {"model": UdfPut, "description": "The same content was registered already"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "text/x-python": {"schema": {"type": "string"}},
                    "application/wasm": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def put_udf(name: str, version: str, request: Request, mode: str | None = None) -> Response:
        """Register a UDF version: Python source (built on the server, ~10 s; with ``?mode=source`` kept as
        source for the shared interpreter, in milliseconds) or a built component."""
        raw = await read_body(request, ctx.limits.max_udf_bytes, "UDF upload")
        payload = _udf_payload(raw, request.headers.get("content-type", ""))
        # The build runs for seconds: in the thread pool, so other requests go on meanwhile.
        result = await run_in_threadpool(partial(svc.put_udf, mode=mode), name, version, payload)
        return JsonResponse(result, status_code=201 if result.get("created", True) else 200)

    @route(
        router,
        ["POST"],
        "/_udf/_execute",
        admin=ctx.admin,
        responses=responses(OpenBody, 400, 401, 413),
        openapi_extra=json_body_doc(
            {"type": "object", "required": ["source"], "properties": {"source": {"type": "string"}, **_EXECUTE_SCHEMA}}
        ),
    )
    async def execute_source(request: Request) -> dict[str, Any]:
        """Run inline UDF source (not stored) on one input, or on each of ``inputs``: the author's loop."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        problems = _execute_problems(body, {"source", "input", "inputs", *_EXECUTE_SCHEMA})
        if not isinstance(body.get("source"), str):
            problems.append(("source", "field required: the UDF's Python source"))
        if ("input" in body) == ("inputs" in body):
            problems.append(("input", "give exactly one of input and inputs"))
        elif "inputs" in body and not isinstance(body["inputs"], list):
            problems.append(("inputs", "must be an array"))
        if problems:
            raise DefinitionError(problems, subject="_execute request")
        run = partial(
            svc.execute_udf,
            None,
            source=body["source"],
            params=body.get("params"),
            type=body.get("type", "document"),
            scope=body.get("scope", "hit"),
            target_field=body.get("target_field"),
        )
        if "input" in body:
            return await run_in_threadpool(run, body["input"])
        return {"results": [await run_in_threadpool(run, value) for value in body["inputs"]]}

    @route(
        router,
        ["DELETE"],
        "/_udf/{name}/{version}",
        admin=ctx.admin,
        responses=responses(Acknowledged, 400, 401, 404, 409),
    )
    def delete_udf(name: str, version: str) -> dict[str, Any]:
        """Delete a UDF version; refused while a pipeline pins it."""
        return svc.delete_udf(name, version)

    @route(
        router,
        ["POST"],
        "/_udf/{name}/_execute",
        admin=ctx.admin,
        responses=responses(OpenBody, 400, 401, 404, 413),
        openapi_extra=json_body_doc(
            {
                "type": "object",
                "required": ["input"],
                "properties": {
                    "version": {"type": "string"},
                    "input": {},
                    "params": {"type": "object"},
                    "type": {"type": "string", "enum": ["document", "query", "result"]},
                    "scope": {"type": "string", "enum": ["hit", "response"]},
                    "target_field": {"type": "string"},
                },
            }
        ),
    )
    async def execute_udf(name: str, request: Request) -> dict[str, Any]:
        """Run one UDF on one input: the raw value it returned and what the mapping made of it."""
        body = await json_object(request, ctx.limits.max_body_bytes, required=True)
        problems = _execute_problems(body, {"version", *_EXECUTE_SCHEMA})
        if "input" not in body:
            problems.append(("input", "field required"))
        if "version" in body and not isinstance(body["version"], str):
            problems.append(("version", "must be a string"))
        if problems:
            raise DefinitionError(problems, subject="_execute request")
        return await run_in_threadpool(
            svc.execute_udf,
            name,
            body["input"],
            version=body.get("version"),
            params=body.get("params"),
            type=body.get("type", "document"),
            scope=body.get("scope", "hit"),
            target_field=body.get("target_field"),
        )

    return router
