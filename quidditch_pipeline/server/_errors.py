"""Elasticsearch's error shape for every answer that is not a success, and the handlers that produce it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    DefinitionError,
    NotFoundError,
    QueryRejectedError,
    QuidditchError,
    StageError,
    UdfBuildError,
    UpstreamError,
)
from ._responses import JsonResponse
from .engine.backend import IndexExistsError, IndexNotFoundError

log = logging.getLogger(__name__)


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


def error_details(exc: QuidditchError) -> dict[str, Any]:
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
    # Elasticsearch names the index of these two, and a gateway in front of this server maps them back by it.
    if isinstance(exc, IndexNotFoundError):
        return {"resource.type": exc.kind, "resource.id": exc.name, "index": exc.name}
    if isinstance(exc, IndexExistsError):
        return {"index": exc.name}
    if isinstance(exc, NotFoundError):
        return {"resource.type": exc.kind, "resource.id": exc.name}
    if isinstance(exc, UdfBuildError):
        return {"file": exc.file, "line": exc.line}
    if isinstance(exc, UpstreamError):
        return {**exc.details, "upstream": exc.upstream}
    return {}


def error_of(exc: QuidditchError) -> dict[str, Any]:
    return error_body(exc.error_type, exc.message, exc.status, **error_details(exc))


def install_error_handlers(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Answer every error in Elasticsearch's shape; ``routes`` (every route of the app) name a 405's methods."""

    async def quidditch_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QuidditchError)
        if exc.status >= 500:
            log.error("%s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
        headers = {"WWW-Authenticate": 'Bearer realm="quidditch"'} if exc.status == 401 else None
        return JsonResponse(error_of(exc), status_code=exc.status, headers=headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        uri, method = request.url.path, request.method
        if exc.status_code == 405:
            # Starlette names the methods of one route; every route is one method here, so collect them all.
            allowed = ", ".join(_allowed_methods(routes, request))
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
        body = error_body("illegal_argument_exception", error.message, 400, **error_details(error))
        return JsonResponse(body, status_code=400)

    app.add_exception_handler(QuidditchError, quidditch_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _allowed_methods(routes: Sequence[BaseRoute], request: Request) -> list[str]:
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE and isinstance(route, APIRoute):
            methods |= route.methods or set()
    return sorted(methods)


class UnexpectedErrors:
    """How many requests failed with an exception nobody meant to raise (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def record(self) -> None:
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


_INTERNAL: Final = "an internal error occurred; the server log has the details"


class UnexpectedErrorGuard:
    """The last line: any exception that escapes the routes and their handlers becomes an ES-shaped 500.

    The body says nothing about internals (no exception text, no traceback); the log has the traceback, and
    ``errors`` counts it (``GET /_nodes/stats``). Starlette's own last line answers plain text and re-raises.
    """

    def __init__(self, app: ASGIApp, errors: UnexpectedErrors) -> None:
        self.app = app
        self.errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when a graceful shutdown times out, then answers a
            # plain-text 500 itself unless a response has started: answer first, in the ES shape (as
            # Elasticsearch's node_closed_exception), and let the cancellation go on.
            if not started:
                closed = error_body("node_closed_exception", "the server shut down before this request finished", 503)
                await JsonResponse(closed, status_code=503)(scope, receive, send)
            raise
        except Exception:
            self.errors.record()
            log.exception("%s %s failed unexpectedly", scope.get("method"), scope.get("path"))
            if started:
                # Too late for an error answer: the status line is out. Closing the connection tells the client.
                return
            response = JsonResponse(error_body("internal_server_error", _INTERNAL, 500), status_code=500)
            await response(scope, receive, send)
