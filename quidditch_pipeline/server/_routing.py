"""What every router shares: the application context, the ``route`` decorator and common query parameters."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query

from ._errors import UnexpectedErrors
from ._limits import InFlightBreaker, ServerLimits
from .engine import SearchBackend
from .failure_store import FailureStore

if TYPE_CHECKING:
    from ..service import PipelineService


RefreshParam = Annotated[
    Literal["", "true", "false", "wait_for"] | None,
    Query(description="true or wait_for: make the writes searchable before answering"),
]
PipelineParam = Annotated[
    str | None, Query(description="the document pipeline to run instead of the index's; _none skips it")
]


def refresh_flag(value: str | None) -> bool:
    # ``?refresh`` alone means true; wait_for is served by refreshing at once, which satisfies its promise.
    return value in {"", "true", "wait_for"}


@dataclass(eq=False)
class AppContext:
    """What the routers share: the service, the backend, the limits and the server's own counters."""

    service: PipelineService
    backend: SearchBackend
    limits: ServerLimits
    admin: list[Any]
    breaker: InFlightBreaker
    unexpected: UnexpectedErrors
    #: Serialises index create/delete/settings, which change the backend and the service together.
    index_admin: threading.Lock = field(default_factory=threading.Lock)
    #: The indexes' failure stores (``index.failure_store.enabled``), on ``backend``.
    failures: FailureStore = field(init=False)

    def __post_init__(self) -> None:
        self.failures = FailureStore(self.service, self.backend)


def route(
    router: APIRouter,
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
            router.add_api_route(
                path,
                endpoint,
                methods=[method],
                name=f"{endpoint.__name__}_{method.lower()}",
                dependencies=admin or [],
                **options,
            )
        return endpoint

    return register
