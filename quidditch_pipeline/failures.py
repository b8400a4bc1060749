"""Failure records: what an index's failure store keeps when a pipeline fails, shaped like Elasticsearch 9's.

A document whose document pipeline fails is kept as it arrived (``document.source``, before any stage
changed it), with the error that stopped it and the pipelines it went through::

    {"@timestamp": "2026-12-01T13:00:00.123+00:00",
     "failure_kind": "document",
     "document": {"id": "7", "index": "products", "op_type": "index", "source": {...}},
     "error": {"type": "pipeline_execution_exception", "message": "pipeline [p] stage [validate] ... failed ...",
               "pipeline": "p", "pipeline_trace": ["p"], "processor_type": "python", "processor_tag": "t",
               "stage": "stages[2]", "cause_type": "error", "cause": "price is missing"}}

Elasticsearch's fields (``@timestamp``, ``document.id|index|source``, ``error.type|message|pipeline|
pipeline_trace|processor_type|processor_tag``) keep their names; ``failure_kind``, ``document.op_type``,
``error.stage``, ``error.cause_type`` and ``error.cause`` are this project's. Search failures (beyond
Elasticsearch: a query pipeline that rejected or failed a search, a result pipeline that failed) are records
of ``failure_kind`` ``query`` or ``result`` with the search body under ``search.body``.

What failed (``document.source``, ``search.body``: :data:`OPAQUE_FIELDS`) is kept but not indexed: a value of
any shape is stored, nothing in it matches a query about the failures by accident, and on a cluster (a
gateway's failure store, :data:`FAILURE_STORE_MAPPINGS`) failed sources never conflict with one another's
mapping, as Elasticsearch's failure store keeps them unmapped.

:func:`redirectable` decides which failures a failure store takes: a pipeline that ran and failed for this
input. Not a pipeline that is unavailable (that stays a refusal: fail closed), a worker that died (try again),
a source that is not a JSON object, a version conflict or an overloaded server, as Elasticsearch keeps
back-pressure and version conflicts out of its failure store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

from .errors import QueryRejectedError, QuidditchError, StageError

__all__ = [
    "DOCUMENT",
    "FAILURE_STORE_MAPPINGS",
    "OPAQUE_FIELDS",
    "document_failure",
    "now_iso",
    "pipeline_trace",
    "redirectable",
    "search_failure",
]

#: ``failure_kind`` of a failed document (the others are ``query`` and ``result``).
DOCUMENT: Final = "document"
#: The (object, field) pairs of a record that hold what failed: kept, never indexed.
OPAQUE_FIELDS: Final = (("document", "source"), ("search", "body"))
#: The mappings a failure store is created with on an Elasticsearch or OpenSearch cluster: each opaque field
#: an object that is not mapped (``"enabled": false``, kept in ``_source`` only).
FAILURE_STORE_MAPPINGS: Final = {
    "properties": {
        parent: {"properties": {child: {"type": "object", "enabled": False}}} for parent, child in OPAQUE_FIELDS
    }
}


def now_iso() -> str:
    """A failure's ``@timestamp``: now, ISO 8601 in UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def redirectable(error: QuidditchError | None) -> bool:
    """Whether a document that failed with ``error`` goes to its index's failure store (when it has one)."""
    return isinstance(error, StageError) and error.kind != "unavailable"


def pipeline_trace(guards: Sequence[str], failing: str, calls: Callable[[str], Iterable[str]]) -> list[str]:
    """The pipelines a document went through up to the one that failed (Elasticsearch's ``pipeline_trace``).

    ``guards`` ran in order (the default or request pipeline, then the final one); ``failing`` is the pipeline
    whose stage failed, which a guard may have called (``calls(name)``: the pipelines ``name`` calls). The call
    path from the guard to it is the shortest; a guard that does not reach ``failing`` was passed.
    """
    visited: list[str] = []
    for guard in guards:
        path = _call_path(guard, failing, calls)
        if path is not None:
            return visited + path
        visited.append(guard)
    return [*visited, failing] if failing not in visited else visited


def _call_path(start: str, goal: str, calls: Callable[[str], Iterable[str]]) -> list[str] | None:
    paths = {start: [start]}
    todo = [start]
    while todo:
        name = todo.pop(0)
        if name == goal:
            return paths[name]
        for target in calls(name):
            if target not in paths:
                paths[target] = [*paths[name], target]
                todo.append(target)
    return None


def _error_fields(error: QuidditchError, trace: Sequence[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": error.error_type, "message": error.message}
    if isinstance(error, StageError):
        fields.update(
            pipeline=error.pipeline,
            pipeline_trace=list(trace),
            processor_type=error.stage_type,
            stage=error.stage,
            cause_type=error.cause_type,
            cause=error.cause,
        )
        if error.tag:
            fields["processor_tag"] = error.tag
    elif isinstance(error, QueryRejectedError):
        fields.update(pipeline=error.pipeline, pipeline_trace=list(trace))
        if error.stage:
            fields["stage"] = error.stage
    return fields


def document_failure(
    index: str,
    doc_id: str | None,
    source: Mapping[str, Any],
    error: QuidditchError,
    trace: Sequence[str],
    *,
    op_type: Literal["index", "create"] = "index",
    timestamp: str | None = None,
) -> dict[str, Any]:
    """The failure record of a document that failed in ``index``'s pipelines (``source``: as it arrived;
    ``doc_id``: ``None`` when the write named none)."""
    document: dict[str, Any] = {"index": index, "op_type": op_type, "source": dict(source)}
    if doc_id is not None:
        document["id"] = doc_id
    return {
        "@timestamp": timestamp or now_iso(),
        "failure_kind": DOCUMENT,
        "document": document,
        "error": _error_fields(error, trace),
    }


def search_failure(
    index: str,
    kind: Literal["query", "result"],
    body: Mapping[str, Any],
    error: QuidditchError,
    trace: Sequence[str],
    *,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """The record of a search that a query pipeline rejected or failed, or whose result pipeline failed."""
    return {
        "@timestamp": timestamp or now_iso(),
        "failure_kind": kind,
        "search": {"index": index, "body": dict(body)},
        "error": _error_fields(error, trace),
    }
