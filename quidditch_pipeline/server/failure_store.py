"""Each index's failure store (``index.failure_store.enabled``), kept in the backend index ``X::failures``.

Everything here goes through the ``SearchBackend`` protocol (create, bulk, search, refresh), so a backend that
forwards to a cluster keeps failure stores there unchanged. What a record holds is
:mod:`quidditch_pipeline.failures`; this module decides where records go and when:

* **Documents** (:meth:`FailureStore.store_documents`): a document whose pipeline failed is written to the store
  in the same request, durably (the backend's translog) before the request answers ``"failure_store": "used"``.
  The store is created on its first failure, as Elasticsearch creates failure indices lazily.
* **Searches** (:meth:`FailureStore.record_search`, beyond Elasticsearch): a search that its query pipeline
  rejected or failed, or whose result pipeline failed, is recorded with its body, newest kept: at most
  ``index.failure_store.max_search_failures`` (default 1,000) records, in a ring of ids ``search-0`` …
  ``search-(N-1)``, so the store never holds more and needs no sort to drop the oldest. Recording is best
  effort: a search answers its own error whatever happens to the record.
* **Re-drive** (:meth:`FailureStore.reprocess`): failed documents run again through the index's current
  pipelines, exactly as a write; those that now pass are written (index first, then removed from the store:
  a crash in between leaves a failure that reprocessing again resolves, never a lost document; a document that
  had no id is written under its failure's id, so that never writes it twice).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from ..errors import InputError, QueryRejectedError, QuidditchError, StageError
from ..failures import DOCUMENT, document_failure, now_iso, pipeline_trace, redirectable, search_failure
from ._errors import error_of
from ._pipelines import NO_PIPELINE, final_pipeline_name, pipeline_name
from .engine import IndexExistsError, IndexInfo, IndexNotFoundError, IndexOp, SearchBackend, WriteResult
from .engine.backend import DeleteOp, failure_store_index, new_doc_id
from .engine.settings import FAILURE_STORE_ENABLED, FAILURE_STORE_MAX_SEARCH_FAILURES, MAX_SEARCH_FAILURES_LIMIT

if TYPE_CHECKING:
    from ..service import PipelineService

__all__ = [
    "DEFAULT_MAX_SEARCH_FAILURES",
    "MAX_REPORTED_ERRORS",
    "MAX_REPROCESS",
    "FailedDocument",
    "FailureStore",
    "FailureStoreOutcome",
    "failure_store_enabled",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_SEARCH_FAILURES: Final = 1000
#: How many failures one ``_reprocess`` call takes (call again for more: those that passed are gone).
MAX_REPROCESS: Final = 1000
#: How many per-failure errors a ``_reprocess`` answer lists.
MAX_REPORTED_ERRORS: Final = 100
_SEARCH_KINDS: Final = ("query", "result")
_DOCUMENTS: Final = {"term": {"failure_kind.keyword": DOCUMENT}}


def failure_store_enabled(info: IndexInfo) -> bool:
    return info.settings.get(FAILURE_STORE_ENABLED) == "true"


def _max_search_failures(info: IndexInfo) -> int:
    value = info.settings.get(FAILURE_STORE_MAX_SEARCH_FAILURES)
    return DEFAULT_MAX_SEARCH_FAILURES if value is None else int(value)


@dataclass(frozen=True, slots=True)
class FailedDocument:
    """A document whose pipeline failed: its ``id`` (``None``: the write named none), its ``source`` as it
    arrived, the ``error``, the pipelines that guarded it (``guards``, in order) and the write's ``op_type``."""

    id: str | None
    source: Mapping[str, Any]
    error: QuidditchError
    guards: Sequence[str]
    op_type: str = "index"


@dataclass(frozen=True, slots=True)
class FailureStoreOutcome:
    """What became of a failed document: Elasticsearch's ``failure_store`` flag (``used``: kept in ``store``,
    written as ``result``; ``not_enabled``; ``failed``: the store refused it, for the reason ``cause``)."""

    status: Literal["used", "not_enabled", "failed"]
    store: str
    result: WriteResult | None = None
    cause: QuidditchError | None = None

    def annotate(self, body: dict[str, Any]) -> None:
        """Mark a write's answer (or, with ``error``, its error) as Elasticsearch 9 does."""
        if self.status == "used":
            body["_index"] = self.store
            body["failure_store"] = "used"
            return
        error = body["error"]
        if self.cause is not None:
            error["suppressed"] = [{"type": self.cause.error_type, "reason": self.cause.message}]
        error["failure_store"] = self.status


class FailureStore:
    """The failure stores of a backend's indexes. Thread-safe."""

    def __init__(self, service: PipelineService, backend: SearchBackend) -> None:
        self._service = service
        self._backend = backend
        self._lock = threading.Lock()
        self._reprocessing = threading.Lock()
        #: index uuid -> (ring size, next sequence number) of its search failures, read once per process.
        self._rings: dict[str, tuple[int, int]] = {}

    # ------------------------------------------------------------------------------------------- documents

    def trace(self, guards: Sequence[str], error: QuidditchError) -> list[str]:
        """The pipelines a document went through up to the failure (``guards``: the index's, in order)."""
        ran = [name for name in guards if name != NO_PIPELINE]
        failing = getattr(error, "pipeline", "") or (ran[-1] if ran else "")
        return pipeline_trace(ran, failing, self._calls)

    def _calls(self, name: str) -> Sequence[str]:
        try:
            return self._service.compiled(name).calls
        except QuidditchError:
            return ()

    def _ensure(self, index: str) -> str:
        """The name of ``index``'s failure store, created if it is not yet."""
        store = failure_store_index(index)
        try:
            self._backend.get_index(store)
        except IndexNotFoundError:
            with contextlib.suppress(IndexExistsError):  # another request created it meanwhile
                self._backend.create_index(store, {})
        return store

    def redirect(
        self, info: IndexInfo, failed: Sequence[FailedDocument], *, refresh: bool = False
    ) -> list[FailureStoreOutcome]:
        """Keep documents whose pipeline failed in ``info``'s failure store, durably, before the write answers;
        one outcome per document (``not_enabled`` for all when the index has no failure store)."""
        store = failure_store_index(info.name)
        if not failure_store_enabled(info):
            return [FailureStoreOutcome("not_enabled", store)] * len(failed)
        records = [
            document_failure(
                info.name,
                doc.id,
                doc.source,
                doc.error,
                self.trace(doc.guards, doc.error),
                op_type="create" if doc.op_type == "create" else "index",
            )
            for doc in failed
        ]
        results: list[WriteResult | QuidditchError]
        try:
            self._ensure(info.name)
            ops = [IndexOp(new_doc_id(), record, create=True, auto_id=True) for record in records]
            results = self._backend.bulk(store, ops, refresh=refresh)
        except QuidditchError as exc:
            results = [exc] * len(records)
        return [
            FailureStoreOutcome("failed", store, cause=result)
            if isinstance(result, QuidditchError)
            else FailureStoreOutcome("used", store, result)
            for result in results
        ]

    # ------------------------------------------------------------------------------------------- searches

    def record_search(
        self,
        info: IndexInfo,
        kind: Literal["query", "result"],
        body: Mapping[str, Any],
        error: QuidditchError,
        guards: Sequence[str],
    ) -> None:
        """Keep a search that its ``kind`` pipeline rejected or failed, if the index keeps search failures."""
        if not failure_store_enabled(info) or not (redirectable(error) or isinstance(error, QueryRejectedError)):
            return
        size = _max_search_failures(info)
        if size == 0:
            return
        record = search_failure(info.name, kind, body, error, self.trace(guards, error))
        try:
            with self._lock:
                store = self._ensure(info.name)
                sequence = self._next_sequence(info, store, size)
                record["sequence"] = sequence
                (result,) = self._backend.bulk(store, [IndexOp(f"search-{sequence % size}", record)])
            if isinstance(result, QuidditchError):
                raise result
        except QuidditchError as exc:
            log.warning("index [%s]: a failed search could not be recorded in its failure store: %s", info.name, exc)

    @contextlib.contextmanager
    def recording(
        self, info: IndexInfo, kind: Literal["query", "result"], body: Mapping[str, Any], guards: Sequence[str]
    ) -> Iterator[None]:
        """Around a ``kind`` pipeline's run for a search: its rejection or failure is recorded, then raised."""
        try:
            yield
        except QuidditchError as exc:
            self.record_search(info, kind, body, exc, guards)
            raise

    def _next_sequence(self, info: IndexInfo, store: str, size: int) -> int:
        """The next search failure's sequence number; the first time (or when the ring's size changed), the
        ring is read back, and rewritten to hold the newest ``size`` records when it does not fit."""
        ring = self._rings.get(info.uuid)
        if ring is not None and ring[0] == size:
            self._rings[info.uuid] = (size, ring[1] + 1)
            return ring[1]
        kept = self._search_records(store)
        fits = len(kept) <= size and all(hit["_id"] == f"search-{hit['sequence'] % size}" for hit in kept)
        if fits:
            following = max((hit["sequence"] for hit in kept), default=-1) + 1
        else:
            newest = kept[:size][::-1]  # oldest first, renumbered 0.. so that each sits in its own slot
            ops: list[IndexOp | DeleteOp] = [DeleteOp(hit["_id"]) for hit in kept]
            ops += [IndexOp(f"search-{n}", {**hit["_source"], "sequence": n}) for n, hit in enumerate(newest)]
            for result in self._backend.bulk(store, ops):
                if isinstance(result, QuidditchError):
                    raise result
            following = len(newest)
        self._rings[info.uuid] = (size, following + 1)
        return following

    def _search_records(self, store: str) -> list[dict[str, Any]]:
        """The store's search failures, newest first (``_id``, ``sequence``, ``_source``)."""
        query = {"bool": {"filter": [{"terms": {"failure_kind.keyword": list(_SEARCH_KINDS)}}]}}
        self._backend.refresh(store)
        hits = self._backend.search(store, {"query": query, "size": MAX_SEARCH_FAILURES_LIMIT})["hits"]["hits"]
        records = [
            {"_id": hit["_id"], "sequence": int(hit["_source"].get("sequence", -1)), "_source": hit["_source"]}
            for hit in hits
        ]
        return sorted(records, key=lambda hit: -hit["sequence"])

    def search_failures(self, index: str, size: int) -> dict[str, Any]:
        """The failed searches ``index``'s store keeps, newest first (at most ``size``)."""
        self._backend.get_index(index)
        try:
            records = self._search_records(failure_store_index(index))
        except IndexNotFoundError:
            records = []
        return {
            "total": len(records),
            "failures": [{"_id": r["_id"], **r["_source"]} for r in records[:size]],
        }

    # ------------------------------------------------------------------------------------------- re-drive

    def reprocess(self, index: str, query: Mapping[str, Any] | None, *, refresh: bool = False) -> dict[str, Any]:
        """Run the failed documents (those ``query`` matches, at most :data:`MAX_REPROCESS`) through the index's
        current pipelines, exactly as a write: write those that pass (under their own id, if they had one)
        and remove them from the store, also those that are now dropped; those that still fail stay, their
        error updated. A pipeline that is unavailable refuses the whole call (fail closed)."""
        with self._reprocessing:  # one at a time: two would both take the same failures
            return self._reprocess(index, query, refresh)

    def _reprocess(self, index: str, query: Mapping[str, Any] | None, refresh: bool) -> dict[str, Any]:
        info = self._backend.get_index(index)
        store = failure_store_index(index)
        counts = {"reprocessed": 0, "succeeded": 0, "failed": 0, "dropped": 0}
        try:
            self._backend.refresh(store)
        except IndexNotFoundError:
            return {**counts, "failures": []}
        filters: list[Any] = [_DOCUMENTS]
        if query is not None:
            if not isinstance(query, Mapping):
                raise InputError("query: expected an object (a query DSL query)")
            filters.append(query)
        body = {"query": {"bool": {"filter": filters}}, "size": MAX_REPROCESS}
        hits = self._backend.search(store, body)["hits"]["hits"]
        failed = [(hit["_id"], hit["_source"]) for hit in hits if isinstance(hit["_source"].get("document"), dict)]
        if not failed:
            return {**counts, "failures": []}
        guards = [pipeline_name(info, "document", None), final_pipeline_name(info, "document")]
        documents = [(record["document"].get("id"), record["document"].get("source") or {}) for _, record in failed]
        outcomes = self._service.process_documents(index, documents, pipeline=guards[0], final_pipeline=guards[1])
        passed: list[tuple[str, IndexOp]] = []
        settled: list[str] = []
        updates: list[IndexOp | DeleteOp] = []
        errors: list[dict[str, Any]] = []
        counts["reprocessed"] = len(failed)
        for (failure_id, record), outcome in zip(failed, outcomes, strict=True):
            document = record["document"]
            if outcome.status == "dropped":
                counts["dropped"] += 1
                settled.append(failure_id)
            elif outcome.status == "success" and outcome.source is not None:
                # A document that had no id gets its failure's: reprocessing it again (after a crash between
                # the write and the removal) replaces it instead of writing it twice.
                doc_id = document.get("id") or failure_id
                op = IndexOp(doc_id, outcome.source, create=document.get("op_type") == "create")
                passed.append((failure_id, op))
            else:
                error = outcome.error or StageError("failed")
                counts["failed"] += 1
                updates.append(IndexOp(failure_id, self._refailed(record, error, guards)))
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append({"_id": failure_id, "document_id": document.get("id"), "error": _error(error)})
        if passed:
            results = self._backend.bulk(index, [op for _, op in passed], refresh=refresh)
            for (failure_id, op), result in zip(passed, results, strict=True):
                if isinstance(result, QuidditchError):
                    counts["failed"] += 1
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append({"_id": failure_id, "document_id": op.id, "error": _error(result)})
                else:
                    counts["succeeded"] += 1
                    settled.append(failure_id)
        # The index holds what passed (durably) before the store lets go of it.
        self._backend.bulk(store, [*updates, *(DeleteOp(failure_id) for failure_id in settled)], refresh=refresh)
        return {**counts, "failures": errors}

    def _refailed(self, record: dict[str, Any], error: QuidditchError, guards: Sequence[str]) -> dict[str, Any]:
        """``record`` after another failed attempt: the new error, when it happened, how many attempts."""
        if not redirectable(error):
            return record  # not the document's failure (e.g. a worker died): the record stays as it was
        document = record["document"]
        fresh = document_failure(
            document.get("index", ""),
            document.get("id"),
            document.get("source") or {},
            error,
            self.trace(guards, error),
            op_type="create" if document.get("op_type") == "create" else "index",
            timestamp=record.get("@timestamp"),
        )
        attempts = int((record.get("reprocess") or {}).get("attempts", 0)) + 1
        fresh["reprocess"] = {"attempts": attempts, "last": now_iso()}
        return fresh


def _error(error: QuidditchError) -> dict[str, Any]:
    body: dict[str, Any] = error_of(error)["error"]
    return body
