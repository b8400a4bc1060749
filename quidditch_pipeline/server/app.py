"""The HTTP API (DESIGN §6): pipelines, UDFs, and an Elasticsearch-compatible subset of index routes.

``create_app(service, backend)`` wires a :class:`~quidditch_pipeline.PipelineService` to a
:class:`~quidditch_pipeline.server.search.SearchBackend`: documents pass the index's document pipeline before
they are written, search bodies its query pipeline before the search, responses its result pipeline after.

Every error answers Elasticsearch's shape ``{"error": {"type", "reason", ...}, "status": N}``. Blocking work
(tantivy, WASM, UDF builds) runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import orjson
import yaml
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..definitions import PipelineDefinition
from ..errors import (
    AuthenticationError,
    DefinitionError,
    InputError,
    NotFoundError,
    PayloadTooLargeError,
    QueryRejectedError,
    QuidditchError,
    StageError,
    UdfBuildError,
)
from .search import (
    PIPELINE_SETTINGS,
    DeleteOp,
    IndexInfo,
    IndexOp,
    SearchBackend,
    WriteResult,
    nest_settings,
    normalize_settings,
    validate_doc_id,
    validate_index_name,
)

if TYPE_CHECKING:
    from ..service import PipelineService

__all__ = [
    "AuthenticationError",
    "ErrorBody",
    "JsonResponse",
    "PayloadTooLargeError",
    "PrettyJsonMiddleware",
    "ServerLimits",
    "create_app",
    "error_body",
]

log = logging.getLogger(__name__)

_MiB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Request limits; a request past one is answered 413."""

    #: Any request body (Elasticsearch's ``http.max_content_length`` default).
    max_body_bytes: int = 100 * _MiB
    #: Actions in one ``_bulk`` request.
    max_bulk_items: int = 10_000
    #: A UDF upload (a built component is ~18 MB).
    max_udf_bytes: int = 64 * _MiB


# --------------------------------------------------------------------------------------------- responses


class JsonResponse(JSONResponse):
    """JSON rendered by orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_body(error_type: str, reason: str, status: int, **extra: Any) -> dict[str, Any]:
    """Elasticsearch's error shape (with ``root_cause``, which its clients read)."""
    return {
        "error": {
            "root_cause": [{"type": error_type, "reason": reason}],
            "type": error_type,
            "reason": reason,
            **extra,
        },
        "status": status,
    }


def _error_details(exc: QuidditchError) -> dict[str, Any]:
    if isinstance(exc, DefinitionError):
        return {"problems": [{"path": path, "message": message} for path, message in exc.problems]}
    if isinstance(exc, StageError):
        return {
            "pipeline": exc.pipeline,
            "stage": exc.stage,
            "stage_type": exc.stage_type,
            "input_id": exc.input_id,
            "caused_by": {"type": exc.cause_type, "reason": exc.cause},
        }
    if isinstance(exc, QueryRejectedError):
        return {"pipeline": exc.pipeline, "stage": exc.stage}
    if isinstance(exc, NotFoundError):
        return {"resource.type": exc.kind, "resource.id": exc.name}
    if isinstance(exc, UdfBuildError):
        return {"file": exc.file, "line": exc.line}
    return {}


def _error_of(exc: QuidditchError) -> dict[str, Any]:
    return error_body(exc.error_type, exc.message, exc.status, **_error_details(exc))


class _Error(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    reason: str


class ErrorBody(BaseModel):
    """Every error answer."""

    error: _Error
    status: int


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Acknowledged(_Open):
    acknowledged: bool


class PipelinePut(Acknowledged):
    name: str
    version: str
    revision: int
    created: bool


class PipelineList(_Open):
    total: int
    pipelines: list[dict[str, Any]]


class ExecuteResult(_Open):
    status: str


class UdfPut(Acknowledged):
    name: str
    version: str
    sha256: str
    size: int


class UdfVersions(_Open):
    name: str
    versions: list[dict[str, Any]]


class WriteBody(_Open):
    index: str = Field(alias="_index")
    id: str = Field(alias="_id")
    result: str


class BulkBody(_Open):
    took: int
    errors: bool
    items: list[dict[str, dict[str, Any]]]


class SearchBody(_Open):
    took: int
    timed_out: bool
    hits: dict[str, Any]


class CountBody(_Open):
    count: int


class DocBody(_Open):
    """A document get: ``found`` says whether it exists (404 when it does not)."""

    index: str = Field(alias="_index")
    id: str = Field(alias="_id")
    found: bool


_EXISTS: Final[dict[int | str, Any]] = {
    200: {"description": "It exists (no body)"},
    404: {"description": "It does not exist (no body)"},
    400: {"description": "The index name or id is invalid (no body)"},
}


_REASONS: Final = {
    400: "Invalid request (Elasticsearch-style error body)",
    401: "Admin token missing or wrong",
    404: "Not found",
    409: "Conflict with what is stored",
    413: "Request too large",
}


def _responses(ok: type[BaseModel] | None, *errors: int, ok_status: int = 200) -> dict[int | str, Any]:
    docs: dict[int | str, Any] = {code: {"model": ErrorBody, "description": _REASONS[code]} for code in errors}
    if ok is not None:
        docs[ok_status] = {"model": ok, "description": "Success"}
    return docs


def _json_body_doc(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


_OBJECT: Final[dict[str, Any]] = {"type": "object"}
_SEARCH_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "object",
            "description": "match_all, match, match_phrase, multi_match, term, terms, "
            "ids, range, exists, query_string, bool, constant_score, match_none",
        },
        "size": {"type": "integer", "minimum": 0, "maximum": 10_000},
        "from": {"type": "integer", "minimum": 0, "maximum": 10_000},
        "_source": {"type": "boolean"},
        "track_total_hits": {"type": "boolean"},
        "ext": {"type": "object", "description": "free-form, for pipelines"},
    },
}
_EXECUTE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "input": {"description": "one input: a document, a search body, or a result object"},
        "inputs": {"type": "array", "description": "a batch of inputs"},
        "params": {"type": "object"},
        "verbose": {"type": "boolean", "default": True},
    },
}


# --------------------------------------------------------------------------------------------- middleware


class PrettyJsonMiddleware:
    """``?pretty`` indents a JSON answer, as Elasticsearch does (handy with curl)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if b"pretty" not in query or not any(p.split(b"=")[0] == b"pretty" for p in query.split(b"&")):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffered(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            if body and dict(headers).get(b"content-type", b"").startswith(b"application/json"):
                body = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) + b"\n"
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)


# --------------------------------------------------------------------------------------------- request bodies


async def _read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{what} of {declared} bytes is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"{what} is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_object(raw: bytes, *, required: bool, what: str = "request body") -> dict[str, Any]:
    if not raw.strip():
        if required:
            raise DefinitionError([("", "a JSON object is required")], subject=what)
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DefinitionError([("", f"not valid JSON: {exc}")], subject=what) from exc
    if not isinstance(value, dict):
        raise DefinitionError([("", f"must be a JSON object, got {type(value).__name__}")], subject=what)
    return value


async def _json_object(request: Request, limit: int, *, required: bool) -> dict[str, Any]:
    return _parse_object(await _read_body(request, limit), required=required)


# --------------------------------------------------------------------------------------------- app


RefreshParam = Annotated[
    Literal["", "true", "false", "wait_for"] | None,
    Query(description="true or wait_for: make the writes searchable before answering"),
]
PipelineParam = Annotated[
    str | None, Query(description="the document pipeline to run instead of the index's; _none skips it")
]


def _refresh(value: str | None) -> bool:
    # ``?refresh`` alone means true; wait_for is served by refreshing at once, which satisfies its promise.
    return value in {"", "true", "wait_for"}


@dataclass(eq=False)
class _Context:
    service: PipelineService
    backend: SearchBackend
    limits: ServerLimits
    admin: list[Any]
    #: Serialises index create/delete/settings, which change the backend and the service together.
    index_admin: threading.Lock = field(default_factory=threading.Lock)


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
    ctx = _Context(service, backend, limits or ServerLimits(), _admin_dependency(admin_token))
    _install_error_handlers(app)
    app.add_middleware(PrettyJsonMiddleware)
    _sync_associations(service, backend)
    _add_root_routes(app, ctx)
    _add_pipeline_routes(app, ctx)
    _add_udf_routes(app, ctx)
    _add_index_routes(app, ctx)
    _add_document_routes(app, ctx)
    _add_search_routes(app, ctx)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


_BEARER: Final = HTTPBearer(auto_error=False, description="the server's admin token")


class _AdminGuard:
    """The dependency of admin routes: ``Authorization: Bearer <token>`` or 401."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        # compare_digest: the time taken says nothing about how much of the token was right.
        if not hmac.compare_digest(given, self._expected):
            raise AuthenticationError("this route needs the admin token: Authorization: Bearer <token>")


def _admin_dependency(token: str | None) -> list[Any]:
    """The dependency list an admin route carries (empty without a token)."""
    return [Depends(_AdminGuard(token))] if token else []


def _route(
    app: FastAPI,
    methods: Iterable[str],
    path: str,
    *,
    admin: list[Any] | None = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register one route per method (one OpenAPI operation each, so operation ids stay unique)."""

    # No response model: endpoints return plain data that JsonResponse renders with orjson.
    options.setdefault("response_model", None)

    def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        for method in methods:
            app.add_api_route(
                path,
                endpoint,
                methods=[method],
                name=f"{endpoint.__name__}_{method.lower()}",
                dependencies=admin or [],
                **options,
            )
        return endpoint

    return register


def _install_error_handlers(app: FastAPI) -> None:
    async def quidditch_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QuidditchError)
        if exc.status >= 500:
            log.error("%s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
        headers = {"WWW-Authenticate": 'Bearer realm="quidditch"'} if exc.status == 401 else None
        return JsonResponse(_error_of(exc), status_code=exc.status, headers=headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        uri, method = request.url.path, request.method
        if exc.status_code == 405:
            # Starlette names the methods of one route; every route is one method here, so collect them all.
            allowed = ", ".join(_allowed_methods(request))
            body = error_body(
                "method_not_allowed_exception",
                f"Incorrect HTTP method for uri [{uri}] and method [{method}], allowed: [{allowed}]",
                405,
            )
            return JsonResponse(body, status_code=405, headers={"Allow": allowed})
        if exc.status_code == 404:
            # Elasticsearch answers an unknown route 400.
            body = error_body(
                "illegal_argument_exception", f"no handler found for uri [{uri}] and method [{method}]", 400
            )
            return JsonResponse(body, status_code=400)
        body = error_body("http_exception", str(exc.detail), exc.status_code)
        return JsonResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = [(".".join(str(p) for p in err["loc"]), str(err["msg"])) for err in exc.errors()]
        error = DefinitionError(problems, subject="request")
        body = error_body("illegal_argument_exception", error.message, 400, **_error_details(error))
        return JsonResponse(body, status_code=400)

    app.add_exception_handler(QuidditchError, quidditch_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE and isinstance(route, APIRoute):
            methods |= route.methods or set()
    return sorted(methods)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the pipeline definition's JSON schema (from the one pydantic model)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    definition = PipelineDefinition.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(definition.pop("$defs", {}))
    # The name may be left out of the body: the URL names the pipeline.
    definition["required"] = [f for f in definition.get("required", []) if f != "name"]
    components["PipelineDefinition"] = definition
    for operations in schema["paths"].values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            # Parameter validation answers 400 in Elasticsearch's error shape, never FastAPI's 422.
            responses.pop("422", None)
            if method != "head":
                responses.setdefault(
                    "400",
                    {
                        "description": _REASONS[400],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                    },
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def _sync_associations(service: PipelineService, backend: SearchBackend) -> None:
    """Make the service's index associations match the stored index settings (the settings win)."""
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
                log.warning("index [%s]: cannot restore its %s pipeline [%s]: %s", info.name, kind, wanted, exc)


# --------------------------------------------------------------------------------------------- root


def _add_root_routes(app: FastAPI, ctx: _Context) -> None:
    @_route(app, ["GET"], "/", responses=_responses(_Open))
    def server_info() -> dict[str, Any]:
        """Server information (what Elasticsearch clients ask for first)."""
        return {
            "name": socket.gethostname(),
            "cluster_name": "quidditch",
            "version": {"distribution": "quidditch-pipeline", "number": app.version},
            "tagline": "Programmable document, query and result pipelines",
        }

    @_route(app, ["HEAD"], "/", response_class=Response, responses={200: _EXISTS[200]})
    def ping() -> Response:
        return Response(status_code=200)


# --------------------------------------------------------------------------------------------- pipelines


def _add_pipeline_routes(app: FastAPI, ctx: _Context) -> None:
    svc = ctx.service

    @_route(app, ["GET"], "/_pipeline", responses=_responses(PipelineList, 400))
    def list_pipelines(
        type: Annotated[Literal["document", "query", "result"] | None, Query()] = None,
    ) -> dict[str, Any]:
        """Every stored pipeline (latest revision), sorted by name."""
        return svc.list_pipelines(type=type)

    @_route(app, ["GET"], "/_pipeline/_stats", responses=_responses(_Open, 400))
    def all_stats() -> dict[str, Any]:
        """Execution statistics of every pipeline."""
        return svc.stats()

    @_route(app, ["POST"], "/_pipeline/_stats/_reset", admin=ctx.admin, responses=_responses(Acknowledged, 400, 401))
    def reset_all_stats() -> dict[str, Any]:
        svc.reset_stats()
        return {"acknowledged": True}

    @_route(
        app,
        ["POST"],
        "/_pipeline/_execute",
        admin=ctx.admin,
        responses=_responses(ExecuteResult, 400, 401, 404, 413),
        openapi_extra=_json_body_doc(
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
        body = await _json_object(request, ctx.limits.max_body_bytes, required=True)
        pipeline = body.pop("pipeline", None)
        if not isinstance(pipeline, dict):
            raise DefinitionError(
                [("pipeline", "an inline pipeline definition (object) is required")], subject="request body"
            )
        return await _execute(svc.execute, pipeline, body)

    @_route(
        app,
        ["PUT", "POST"],
        "/_pipeline/{name}",
        admin=ctx.admin,
        responses=_responses(PipelinePut, 400, 401, 404, 409, 413),
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
    async def put_pipeline(name: str, request: Request) -> dict[str, Any]:
        """Create or replace a pipeline: stores a new revision (JSON, or YAML with Content-Type application/yaml)."""
        raw = await _read_body(request, ctx.limits.max_body_bytes)
        definition = _definition_body(raw, request.headers.get("content-type", ""))
        return await run_in_threadpool(svc.put_pipeline, definition, name)

    @_route(app, ["GET"], "/_pipeline/{name}", responses=_responses(_Open, 400, 404))
    def get_pipeline(name: str, revision: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
        """The stored definition (latest, or one revision) with revision, created_at and updated_at."""
        return svc.get_pipeline(name, revision)

    @_route(
        app, ["DELETE"], "/_pipeline/{name}", admin=ctx.admin, responses=_responses(Acknowledged, 400, 401, 404, 409)
    )
    def delete_pipeline(name: str) -> dict[str, Any]:
        """Delete a pipeline with its history; refused while an index or a pipeline uses it."""
        return svc.delete_pipeline(name)

    @_route(app, ["GET"], "/_pipeline/{name}/_history", responses=_responses(_Open, 400, 404))
    def pipeline_history(name: str) -> dict[str, Any]:
        return svc.pipeline_history(name)

    @_route(
        app,
        ["POST"],
        "/_pipeline/{name}/_execute",
        admin=ctx.admin,
        responses=_responses(ExecuteResult, 400, 401, 404, 413),
        openapi_extra=_json_body_doc(_EXECUTE_SCHEMA),
    )
    async def execute_stored(name: str, request: Request) -> dict[str, Any]:
        """Run a stored pipeline on one input (``input``) or a batch (``inputs``)."""
        body = await _json_object(request, ctx.limits.max_body_bytes, required=True)
        return await _execute(svc.execute, name, body)

    @_route(app, ["GET"], "/_pipeline/{name}/_stats", responses=_responses(_Open, 400, 404))
    def pipeline_stats(name: str) -> dict[str, Any]:
        return svc.stats(name)

    @_route(
        app,
        ["POST"],
        "/_pipeline/{name}/_stats/_reset",
        admin=ctx.admin,
        responses=_responses(Acknowledged, 400, 401, 404),
    )
    def reset_pipeline_stats(name: str) -> dict[str, Any]:
        svc.reset_stats(name)
        return {"acknowledged": True}


def _definition_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if "yaml" in content_type.lower():
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise DefinitionError([("", f"not valid YAML: {exc}")]) from exc
        if not isinstance(value, dict):
            raise DefinitionError([("", f"a pipeline definition is an object, got {type(value).__name__}")])
        return value
    return _parse_object(raw, required=True, what="pipeline definition")


async def _execute(
    run: Callable[..., dict[str, Any]], pipeline: str | dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    allowed = {"input", "inputs", "params", "verbose"}
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
    if problems:
        raise DefinitionError(problems, subject="_execute request")
    kwargs: dict[str, Any] = {"params": body.get("params"), "verbose": body.get("verbose", True)}
    if "input" in body:
        kwargs["input"] = body["input"]
    else:
        kwargs["inputs"] = body["inputs"]
    result: dict[str, Any] = await run_in_threadpool(run, pipeline, **kwargs)
    return result


# --------------------------------------------------------------------------------------------- UDFs

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


def _add_udf_routes(app: FastAPI, ctx: _Context) -> None:
    svc = ctx.service

    @_route(app, ["GET"], "/_udf", responses=_responses(_Open, 400))
    def list_udfs() -> dict[str, Any]:
        """Every registered UDF with its versions."""
        return svc.list_udfs()

    @_route(app, ["GET"], "/_udf/{name}", responses=_responses(UdfVersions, 400, 404))
    def udf_versions(name: str) -> dict[str, Any]:
        """The versions registered under a name (lowest first) with their sha256, size and time."""
        return svc.udf_info(name)

    @_route(
        app,
        ["PUT"],
        "/_udf/{name}/{version}",
        admin=ctx.admin,
        responses={
            **_responses(UdfPut, 400, 401, 409, 413, ok_status=201),
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
    async def put_udf(name: str, version: str, request: Request) -> Response:
        """Register a UDF version: Python source (built on the server, ~10 s) or a built component."""
        raw = await _read_body(request, ctx.limits.max_udf_bytes, "UDF upload")
        payload = _udf_payload(raw, request.headers.get("content-type", ""))
        # The build runs for seconds: in the thread pool, so other requests go on meanwhile.
        result = await run_in_threadpool(svc.put_udf, name, version, payload)
        return JsonResponse(result, status_code=201 if result.get("created", True) else 200)

    @_route(
        app,
        ["DELETE"],
        "/_udf/{name}/{version}",
        admin=ctx.admin,
        responses=_responses(Acknowledged, 400, 401, 404, 409),
    )
    def delete_udf(name: str, version: str) -> dict[str, Any]:
        """Delete a UDF version; refused while a pipeline pins it."""
        return svc.delete_udf(name, version)

    @_route(
        app,
        ["POST"],
        "/_udf/{name}/_execute",
        admin=ctx.admin,
        responses=_responses(_Open, 400, 401, 404, 413),
        openapi_extra=_json_body_doc(
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
        body = await _json_object(request, ctx.limits.max_body_bytes, required=True)
        known = {"version", "input", "params", "type", "scope", "target_field"}
        problems = [(key, "unknown field") for key in sorted(set(body) - known)]
        if "input" not in body:
            problems.append(("input", "field required"))
        if "version" in body and not isinstance(body["version"], str):
            problems.append(("version", "must be a string"))
        if "params" in body and not isinstance(body["params"], dict):
            problems.append(("params", "must be an object"))
        if body.get("type", "document") not in {"document", "query", "result"}:
            problems.append(("type", "must be document, query or result"))
        if body.get("scope", "hit") not in {"hit", "response"}:
            problems.append(("scope", "must be hit or response"))
        if not isinstance(body.get("target_field", ""), str):
            problems.append(("target_field", "must be a field name"))
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


# --------------------------------------------------------------------------------------------- indexes


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


def _add_index_routes(app: FastAPI, ctx: _Context) -> None:
    svc, backend = ctx.service, ctx.backend

    def associate(index: str, kind: str, name: str | None) -> None:
        if name is None:
            svc.disassociate(index, kind)
        else:
            svc.associate(index, kind, name)

    def push_pipelines(index: str, changes: Mapping[str, Any], before: Mapping[str, Any]) -> None:
        """Make the service's associations follow the pipeline settings in ``changes`` (``None`` removes);
        on a failure, put back what ``before`` held."""
        done: list[str] = []
        try:
            for kind, key in PIPELINE_SETTINGS.items():
                if key in changes and changes[key] != before.get(key):
                    associate(index, kind, changes[key])
                    done.append(kind)
        except QuidditchError:
            for kind in done:
                associate(index, kind, before.get(PIPELINE_SETTINGS[kind]))
            raise

    @_route(app, ["GET"], "/_cat/indices", responses=_responses(None, 400), response_class=Response)
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

    @_route(app, ["POST", "GET"], "/_refresh", responses=_responses(_Open, 400))
    def refresh_all() -> dict[str, Any]:
        """Make every acknowledged write searchable."""
        backend.refresh()
        return {"_shards": {"total": 1, "successful": 1, "failed": 0}}

    @_route(
        app,
        ["PUT"],
        "/{index}",
        admin=ctx.admin,
        responses=_responses(Acknowledged, 400, 401, 404, 409, 413),
        openapi_extra=_json_body_doc(
            {"type": "object", "properties": {"settings": _OBJECT, "mappings": _OBJECT, "aliases": _OBJECT}},
            required=False,
        ),
    )
    async def create_index(index: str, request: Request) -> dict[str, Any]:
        """Create an index; ``settings`` may name its default document, query and result pipelines."""
        body = await _json_object(request, ctx.limits.max_body_bytes, required=False)
        return await run_in_threadpool(create, index, body)

    def create(index: str, body: dict[str, Any]) -> dict[str, Any]:
        validate_index_name(index)
        unknown = sorted(set(body) - {"settings", "mappings", "aliases"})
        if unknown:
            raise InputError(f"unknown key [{unknown[0]}] in the index creation body; supported: settings")
        for key in ("mappings", "aliases"):
            if body.get(key):
                raise InputError(f"[{key}] is not supported: documents are schemaless JSON (every field is searchable)")
        settings = body.get("settings") or {}
        if not isinstance(settings, dict):
            raise InputError("[settings] must be an object")
        changes = normalize_settings(settings)
        with ctx.index_admin:
            backend.create_index(index, changes)
            try:
                push_pipelines(index, changes, {})
            except QuidditchError:
                backend.delete_index(index)
                raise
        return {"acknowledged": True, "shards_acknowledged": True, "index": index}

    @_route(app, ["GET"], "/{index}", responses=_responses(_Open, 400, 404))
    def get_index(index: str) -> dict[str, Any]:
        info = backend.get_index(index)
        return {index: {"aliases": {}, "mappings": {"dynamic": "true"}, "settings": _index_view(info)}}

    @_route(app, ["HEAD"], "/{index}", response_class=Response, responses=_EXISTS)
    def index_exists(index: str) -> Response:
        """200 when the index exists, 404 when it does not."""
        try:
            backend.get_index(index)
        except NotFoundError:
            return Response(status_code=404)
        return Response(status_code=200)

    @_route(app, ["DELETE"], "/{index}", admin=ctx.admin, responses=_responses(Acknowledged, 400, 401, 404))
    def delete_index(index: str) -> dict[str, Any]:
        """Delete an index, its documents and its pipeline associations."""
        with ctx.index_admin:
            info = backend.get_index(index)
            for kind in PIPELINE_SETTINGS:
                if info.pipeline(kind) is not None:
                    svc.disassociate(index, kind)
            backend.delete_index(index)
        return {"acknowledged": True}

    @_route(app, ["GET"], "/{index}/_settings", responses=_responses(_Open, 400, 404))
    def get_settings(index: str, flat_settings: Annotated[bool, Query()] = False) -> dict[str, Any]:
        """The index's settings (nested, or flat keys with ``?flat_settings=true``)."""
        return {index: {"settings": _index_view(backend.get_index(index), flat=flat_settings)}}

    @_route(
        app,
        ["PUT"],
        "/{index}/_settings",
        admin=ctx.admin,
        responses=_responses(Acknowledged, 400, 401, 404, 409, 413),
        openapi_extra=_json_body_doc(
            {
                "type": "object",
                "description": "nested ({'index': {'document': {'default_pipeline': 'p'}}}) or flat "
                "('index.document.default_pipeline') settings; null removes a setting",
            }
        ),
    )
    async def put_settings(index: str, request: Request) -> dict[str, Any]:
        body = await _json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(update_settings, index, body)

    def update_settings(index: str, body: dict[str, Any]) -> dict[str, Any]:
        changes = normalize_settings(body)
        with ctx.index_admin:
            before = backend.get_index(index).settings
            push_pipelines(index, changes, before)
            try:
                backend.update_settings(index, changes)
            except QuidditchError:
                push_pipelines(index, {key: before.get(key) for key in changes}, {**before, **changes})
                raise
        return {"acknowledged": True}

    @_route(app, ["POST", "GET"], "/{index}/_refresh", responses=_responses(_Open, 400, 404))
    def refresh_index(index: str) -> dict[str, Any]:
        backend.refresh(index)
        return {"_shards": {"total": 1, "successful": 1, "failed": 0}}


# --------------------------------------------------------------------------------------------- documents


def _write_body(index: str, result: WriteResult, *, refreshed: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "_index": index,
        "_id": result.id,
        "_version": result.version,
        "result": result.result,
        "_shards": {"total": 1, "successful": 1, "failed": 0},
    }
    if refreshed:
        body["forced_refresh"] = True
    return body


def _noop_body(index: str, doc_id: str) -> dict[str, Any]:
    return {"_index": index, "_id": doc_id, "result": "noop", "_shards": {"total": 0, "successful": 0, "failed": 0}}


def _new_id() -> str:
    # 20 URL-safe characters, like Elasticsearch's generated ids.
    return secrets.token_urlsafe(15)


@dataclass(slots=True)
class _BulkItem:
    action: str
    index: str | None
    id: str | None
    pipeline: str | None
    source: dict[str, Any] | None = None
    auto_id: bool = False
    error: QuidditchError | None = None
    result: WriteResult | None = None
    dropped: bool = False

    def response(self) -> dict[str, Any]:
        body: dict[str, Any] = {"_index": self.index, "_id": self.id}
        if self.error is not None:
            body.update(status=self.error.status, error=_error_of(self.error)["error"])
        elif self.dropped:
            body.update(_noop_body(self.index or "", self.id or ""), status=200)
        else:
            assert self.result is not None and self.index is not None
            body.update(_write_body(self.index, self.result), status=self.result.status)
        return {self.action: body}


_BULK_META: Final = frozenset({"_index", "_id", "pipeline", "routing", "require_alias", "op_type"})


def _parse_bulk(raw: bytes, default_index: str | None, max_items: int) -> list[_BulkItem]:
    """NDJSON action lines, each followed by a source line except for ``delete``."""
    lines = raw.split(b"\n")
    items: list[_BulkItem] = []
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        number += 1
        if not line:
            continue
        try:
            action_line = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DefinitionError([(f"line {number}", f"not valid JSON: {exc}")], subject="bulk request") from exc
        if not isinstance(action_line, dict) or len(action_line) != 1:
            raise DefinitionError(
                [(f"line {number}", "an action line is an object with one key: index, create, delete or update")],
                subject="bulk request",
            )
        ((action, meta),) = action_line.items()
        if action not in {"index", "create", "delete", "update"}:
            raise DefinitionError(
                [(f"line {number}", f"unknown action [{action}]; expected one of create, delete, index, update")],
                subject="bulk request",
            )
        if not isinstance(meta, dict) or set(meta) - _BULK_META:
            unknown = sorted(set(meta) - _BULK_META) if isinstance(meta, dict) else ["(not an object)"]
            raise DefinitionError(
                [(f"line {number}", f"unknown action parameter {unknown[0]}")], subject="bulk request"
            )
        if len(items) >= max_items:
            raise PayloadTooLargeError(f"a bulk request may hold at most {max_items} actions")
        index = meta.get("_index", default_index)
        if not isinstance(index, str):
            raise DefinitionError([(f"line {number}", "index is missing")], subject="bulk request")
        doc_id = meta.get("_id")
        if doc_id is not None and not isinstance(doc_id, str):
            doc_id = str(doc_id)
        pipeline = meta.get("pipeline")
        item = _BulkItem(action, index, doc_id, pipeline if isinstance(pipeline, str) else None)
        items.append(item)
        if action == "delete":
            if doc_id is None:
                raise DefinitionError([(f"line {number}", "id is missing for delete")], subject="bulk request")
            continue
        if number >= len(lines) or not lines[number].strip():
            raise DefinitionError(
                [(f"line {number + 1}", f"the {action} action needs a source line")], subject="bulk request"
            )
        source_line = lines[number]
        number += 1
        if action == "update":
            item.error = InputError("the update action is not supported; use index to replace the document")
            continue
        try:
            item.source = _parse_object(source_line, required=True, what=f"document source (line {number})")
        except DefinitionError as exc:
            item.error = exc
            continue
        if doc_id is None:
            item.id, item.auto_id = _new_id(), True
    return items


def _add_document_routes(app: FastAPI, ctx: _Context) -> None:
    svc, backend = ctx.service, ctx.backend

    def write_one(
        index: str,
        doc_id: str,
        source: dict[str, Any],
        pipeline: str | None,
        refresh: bool,
        *,
        create: bool,
        auto_id: bool = False,
    ) -> Response:
        backend.get_index(index)
        validate_doc_id(doc_id)
        processed = svc.process_document(index, doc_id, source, pipeline=pipeline)
        if processed is None:
            return JsonResponse(_noop_body(index, doc_id))
        (result,) = backend.bulk(index, [IndexOp(doc_id, processed, create=create, auto_id=auto_id)], refresh=refresh)
        if isinstance(result, QuidditchError):
            raise result
        return JsonResponse(_write_body(index, result, refreshed=refresh), status_code=result.status)

    doc_body = _json_body_doc({"type": "object", "description": "the document's source"})
    write_responses = {
        **_responses(WriteBody, 400, 404, 409, 413, ok_status=201),
        200: {"model": WriteBody, "description": "Replaced, or dropped by the pipeline (noop)"},
    }

    @_route(app, ["PUT", "POST"], "/{index}/_doc/{doc_id:path}", responses=write_responses, openapi_extra=doc_body)
    async def index_document(
        index: str,
        doc_id: str,
        request: Request,
        pipeline: PipelineParam = None,
        refresh: RefreshParam = None,
        op_type: Annotated[Literal["index", "create"], Query()] = "index",
    ) -> Response:
        """Index a document under an id, through the index's document pipeline (or ``?pipeline=``)."""
        source = await _json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(
            write_one, index, doc_id, source, pipeline, _refresh(refresh), create=op_type == "create"
        )

    @_route(app, ["PUT", "POST"], "/{index}/_create/{doc_id:path}", responses=write_responses, openapi_extra=doc_body)
    async def create_document(
        index: str, doc_id: str, request: Request, pipeline: PipelineParam = None, refresh: RefreshParam = None
    ) -> Response:
        """Index a document only if its id is new (409 otherwise)."""
        source = await _json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(write_one, index, doc_id, source, pipeline, _refresh(refresh), create=True)

    @_route(app, ["POST"], "/{index}/_doc", responses=write_responses, openapi_extra=doc_body)
    async def index_document_auto_id(
        index: str, request: Request, pipeline: PipelineParam = None, refresh: RefreshParam = None
    ) -> Response:
        """Index a document under a generated id."""
        source = await _json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(
            write_one, index, _new_id(), source, pipeline, _refresh(refresh), create=True, auto_id=True
        )

    @_route(
        app,
        ["GET"],
        "/{index}/_doc/{doc_id:path}",
        responses={
            **_responses(DocBody, 400),
            404: {"model": ErrorBody | DocBody, "description": "No such index (error), or no such document"},
        },
    )
    def get_document(index: str, doc_id: str) -> Response:
        """Real-time get: a document is here as soon as it is acknowledged."""
        doc = backend.get_doc(index, doc_id)
        if doc is None:
            return JsonResponse({"_index": index, "_id": doc_id, "found": False}, status_code=404)
        return JsonResponse(
            {"_index": index, "_id": doc_id, "_version": doc.version, "found": True, "_source": doc.source}
        )

    @_route(app, ["HEAD"], "/{index}/_doc/{doc_id:path}", response_class=Response, responses=_EXISTS)
    def document_exists(index: str, doc_id: str) -> Response:
        try:
            found = backend.get_doc(index, doc_id) is not None
        except NotFoundError:
            found = False
        return Response(status_code=200 if found else 404)

    @_route(
        app,
        ["DELETE"],
        "/{index}/_doc/{doc_id:path}",
        responses={
            **_responses(WriteBody, 400),
            404: {"model": ErrorBody | WriteBody, "description": "No such index (error), or no such document"},
        },
    )
    def delete_document(index: str, doc_id: str, refresh: RefreshParam = None) -> Response:
        (result,) = backend.bulk(index, [DeleteOp(doc_id)], refresh=_refresh(refresh))
        if isinstance(result, QuidditchError):
            raise result
        return JsonResponse(_write_body(index, result), status_code=result.status)

    bulk_doc = {
        "requestBody": {
            "required": True,
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    }
    bulk_responses = _responses(BulkBody, 400, 404, 413)

    @_route(app, ["POST", "PUT"], "/_bulk", responses=bulk_responses, openapi_extra=bulk_doc)
    async def bulk(request: Request, pipeline: PipelineParam = None, refresh: RefreshParam = None) -> dict[str, Any]:
        """NDJSON index, create and delete actions; one result per action, in order."""
        raw = await _read_body(request, ctx.limits.max_body_bytes)
        return await run_in_threadpool(run_bulk, raw, None, pipeline, _refresh(refresh))

    @_route(app, ["POST", "PUT"], "/{index}/_bulk", responses=bulk_responses, openapi_extra=bulk_doc)
    async def bulk_index(
        index: str, request: Request, pipeline: PipelineParam = None, refresh: RefreshParam = None
    ) -> dict[str, Any]:
        """Bulk with a default index for actions that name none."""
        raw = await _read_body(request, ctx.limits.max_body_bytes)
        return await run_in_threadpool(run_bulk, raw, index, pipeline, _refresh(refresh))

    def run_bulk(raw: bytes, default_index: str | None, pipeline: str | None, refresh: bool) -> dict[str, Any]:
        started = time.perf_counter()
        items = _parse_bulk(raw, default_index, ctx.limits.max_bulk_items)
        existing: set[str] = set()
        for item in items:
            if item.error is not None or item.index is None:
                continue
            try:
                if item.index not in existing:
                    validate_index_name(item.index)
                    backend.get_index(item.index)
                    existing.add(item.index)
                if item.id is not None:
                    validate_doc_id(item.id)
            except QuidditchError as exc:
                item.error = exc
        run_document_pipelines(items, pipeline)
        write(items, refresh)
        return {
            "took": int((time.perf_counter() - started) * 1000),
            "errors": any(item.error is not None for item in items),
            "items": [item.response() for item in items],
        }

    def run_document_pipelines(items: list[_BulkItem], pipeline: str | None) -> None:
        """One batch per (index, pipeline): each stage runs once over the batch."""
        groups: dict[tuple[str, str | None], list[_BulkItem]] = {}
        for item in items:
            if item.action in {"index", "create"} and item.error is None and item.index is not None:
                groups.setdefault((item.index, item.pipeline or pipeline), []).append(item)
        for (index, name), group in groups.items():
            try:
                outcomes = svc.process_documents(index, [(item.id, item.source or {}) for item in group], pipeline=name)
            except QuidditchError as exc:
                for item in group:
                    item.error = exc
                continue
            for item, outcome in zip(group, outcomes, strict=True):
                if outcome.status == "dropped":
                    item.dropped = True
                elif outcome.status == "failed":
                    item.error = _outcome_error(outcome.error, name, item.id)
                else:
                    item.source = outcome.source

    def write(items: list[_BulkItem], refresh: bool) -> None:
        by_index: dict[str, list[_BulkItem]] = {}
        for item in items:
            if item.error is None and not item.dropped and item.index is not None:
                by_index.setdefault(item.index, []).append(item)
        for index, group in by_index.items():
            ops = [
                DeleteOp(item.id or "")
                if item.action == "delete"
                else IndexOp(item.id or "", item.source or {}, create=item.action == "create", auto_id=item.auto_id)
                for item in group
            ]
            try:
                results = backend.bulk(index, ops, refresh=refresh)
            except QuidditchError as exc:
                for item in group:
                    item.error = exc
                continue
            for item, result in zip(group, results, strict=True):
                if isinstance(result, QuidditchError):
                    item.error = result
                else:
                    item.result = result


def _outcome_error(error: object, pipeline: str | None, doc_id: str | None) -> QuidditchError:
    if isinstance(error, QuidditchError):
        return error
    return StageError(str(error), pipeline=pipeline or "", input_id=doc_id)


# --------------------------------------------------------------------------------------------- search


def _add_search_routes(app: FastAPI, ctx: _Context) -> None:
    svc, backend = ctx.service, ctx.backend
    search_body = _json_body_doc(_SEARCH_SCHEMA, required=False)

    def run_search(
        index: str,
        body: dict[str, Any],
        q: str | None,
        size: int | None,
        offset: int | None,
        query_pipeline: str | None,
        result_pipeline: str | None,
        search_pipeline: str | None,
        started: float,
    ) -> dict[str, Any]:
        backend.get_index(index)
        if search_pipeline not in {None, "_none"}:
            raise InputError(
                "search_pipeline accepts only _none (skip both pipelines); name pipelines with "
                "query_pipeline and result_pipeline"
            )
        body = _with_url_params(body, q, size, offset)
        skip = search_pipeline == "_none"
        body = svc.process_query(index, body, pipeline="_none" if skip else query_pipeline)
        response = backend.search(index, body)
        response = svc.process_results(index, body, response, pipeline="_none" if skip else result_pipeline)
        hits = response["hits"]["hits"]
        response["hits"]["max_score"] = max((hit["_score"] for hit in hits), default=None)
        # took covers the pipelines too: it is what the caller waited for.
        response["took"] = int((time.perf_counter() - started) * 1000)
        return response

    async def search(
        index: str,
        request: Request,
        q: Annotated[str | None, Query(description="a query_string query")] = None,
        size: Annotated[int | None, Query(ge=0, le=10_000)] = None,
        from_: Annotated[int | None, Query(alias="from", ge=0, le=10_000)] = None,
        query_pipeline: Annotated[str | None, Query(description="instead of the index's query pipeline")] = None,
        result_pipeline: Annotated[str | None, Query(description="instead of the index's result pipeline")] = None,
        search_pipeline: Annotated[str | None, Query(description="_none skips both pipelines")] = None,
    ) -> dict[str, Any]:
        """Search: the query pipeline rewrites the body, tantivy runs it, the result pipeline reworks the hits."""
        started = time.perf_counter()
        body = await _json_object(request, ctx.limits.max_body_bytes, required=False)
        return await run_in_threadpool(
            run_search, index, body, q, size, from_, query_pipeline, result_pipeline, search_pipeline, started
        )

    search_responses = _responses(SearchBody, 400, 404, 413)
    _route(app, ["GET"], "/{index}/_search", responses=search_responses)(search)
    _route(app, ["POST"], "/{index}/_search", responses=search_responses, openapi_extra=search_body)(search)

    async def count(
        index: str, request: Request, q: Annotated[str | None, Query(description="a query_string query")] = None
    ) -> dict[str, Any]:
        """How many documents match (pipelines do not run)."""
        body = await _json_object(request, ctx.limits.max_body_bytes, required=False)
        body = _with_url_params(body, q, None, None)
        total = await run_in_threadpool(backend.count, index, body)
        return {"count": total, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}

    count_body = _json_body_doc({"type": "object", "properties": {"query": _OBJECT}}, required=False)
    count_responses = _responses(CountBody, 400, 404, 413)
    _route(app, ["GET"], "/{index}/_count", responses=count_responses)(count)
    _route(app, ["POST"], "/{index}/_count", responses=count_responses, openapi_extra=count_body)(count)


def _with_url_params(body: dict[str, Any], q: str | None, size: int | None, offset: int | None) -> dict[str, Any]:
    if q is not None:
        if "query" in body:
            raise InputError("give the query either as ?q= or in the body, not both")
        body = {**body, "query": {"query_string": {"query": q}}}
    if size is not None:
        body = {**body, "size": size}
    if offset is not None:
        body = {**body, "from": offset}
    return body
