"""The reference host: an HTTP server (FastAPI) with an embedded tantivy search engine whose indexes run the
pipelines of a :class:`~quidditch_pipeline.PipelineService` on every document, search and result set.

* :mod:`.search` — ``SearchBackend`` and its tantivy implementation (indexes, documents, the query DSL);
* :mod:`.app` — ``create_app``: the HTTP API of DESIGN §6;
* :mod:`.serve` — the ``serve`` command (uvicorn, graceful shutdown, ``--demo``).
"""

from __future__ import annotations

from .app import AuthenticationError, PayloadTooLargeError, ServerLimits, create_app
from .search import (
    DocumentExistsError,
    IndexExistsError,
    IndexNotFoundError,
    InvalidIndexNameError,
    SearchBackend,
    TantivyBackend,
)

__all__ = [
    "AuthenticationError",
    "DocumentExistsError",
    "IndexExistsError",
    "IndexNotFoundError",
    "InvalidIndexNameError",
    "PayloadTooLargeError",
    "SearchBackend",
    "ServerLimits",
    "TantivyBackend",
    "create_app",
]
