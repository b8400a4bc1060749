"""The reference host's storage engine, beside the HTTP layer: one module per concern.

* :mod:`.backend` — ``SearchBackend`` (what the HTTP layer codes against), its values and errors, name rules;
* :mod:`.settings` — index settings: normalize, validate, nest;
* :mod:`.schema` — how a JSON document is stored in tantivy's fields;
* :mod:`.query_dsl` — the Elasticsearch query DSL translated into tantivy queries;
* :mod:`.translog` — the write-ahead log that makes an acknowledged write durable;
* :mod:`.tantivy_host` — ``TantivyBackend``, the on-disk tantivy indexes;
* :mod:`.upstream` — ``UpstreamBackend``, an Elasticsearch or OpenSearch cluster (gateway mode).
"""

from __future__ import annotations

from .backend import (
    DeleteOp,
    DocumentExistsError,
    IndexExistsError,
    IndexInfo,
    IndexNotFoundError,
    IndexOp,
    InvalidIndexNameError,
    SearchBackend,
    StoredDoc,
    WriteResult,
    validate_doc_id,
    validate_index_name,
)
from .settings import PIPELINE_SETTINGS, nest_settings, normalize_settings, parse_interval
from .tantivy_host import TantivyBackend
from .upstream import UpstreamBackend, UpstreamConfig

__all__ = [
    "PIPELINE_SETTINGS",
    "DeleteOp",
    "DocumentExistsError",
    "IndexExistsError",
    "IndexInfo",
    "IndexNotFoundError",
    "IndexOp",
    "InvalidIndexNameError",
    "SearchBackend",
    "StoredDoc",
    "TantivyBackend",
    "UpstreamBackend",
    "UpstreamConfig",
    "WriteResult",
    "nest_settings",
    "normalize_settings",
    "parse_interval",
    "validate_doc_id",
    "validate_index_name",
]
