"""The reference host: an HTTP server (FastAPI) with an embedded tantivy search engine whose indexes run the
pipelines of a :class:`~quidditch_pipeline.PipelineService` on every document, search and result set.

* :mod:`.app` — ``create_app``: joins the routers of :mod:`.routes` (one per resource) into the API of DESIGN §6;
* :mod:`.engine` — the storage engine beside it: ``SearchBackend`` and its tantivy implementation, the translog,
  the query DSL, index settings;
* :mod:`.failure_store` — ``FailureStore``: each index's failure store (``X::failures``), on any backend;
* :mod:`.serve` — the ``serve`` command (uvicorn, graceful shutdown, ``--demo``).
"""

from __future__ import annotations

from ..errors import AuthenticationError, CircuitBreakingError, PayloadTooLargeError, RequestTimeoutError
from ._limits import ServerLimits
from .app import create_app
from .engine import (
    DocumentExistsError,
    IndexExistsError,
    IndexNotFoundError,
    InvalidIndexNameError,
    SearchBackend,
    TantivyBackend,
)
from .failure_store import FailedDocument, FailureStore, FailureStoreOutcome

__all__ = [
    "AuthenticationError",
    "CircuitBreakingError",
    "DocumentExistsError",
    "FailedDocument",
    "FailureStore",
    "FailureStoreOutcome",
    "IndexExistsError",
    "IndexNotFoundError",
    "InvalidIndexNameError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "SearchBackend",
    "ServerLimits",
    "TantivyBackend",
    "create_app",
]
