"""The reference host's search engine: one on-disk tantivy index per index name (``TantivyBackend``)::

    data_dir/indexes/<name>/settings.json     uuid, creation date, flat ``index.*`` settings (atomic writes)
    data_dir/indexes/<name>/translog.ndjson   writes acknowledged but not yet committed to tantivy
    data_dir/indexes/<name>/tantivy/          the tantivy index
    data_dir/indexes/<name>/failures/         the index's failure store ``<name>::failures`` (the same layout),
                                              made on its first failure, deleted with its index
    data_dir/indexes.tmp/                     staging (new indexes) and trash (deleted ones)

Writes follow Elasticsearch's model: a write is acknowledged once it is in the translog (fsynced,
:mod:`.translog`), it becomes visible to search at the next refresh (tantivy ``commit`` + ``reload``: every
``refresh_interval``, or at once with ``refresh``), and ``get`` is real-time. A restart replays the translog,
so an acknowledged write survives a crash. How documents map to fields is :mod:`.schema`; the query DSL is
:mod:`.query_dsl`; settings are :mod:`.settings`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import tantivy

from ..._files import fsync_dir, write_atomically
from ...errors import InputError, QuidditchError, StorageError
from ...failures import OPAQUE_FIELDS
from .backend import (
    DeleteOp,
    DocumentExistsError,
    IndexExistsError,
    IndexInfo,
    IndexNotFoundError,
    IndexOp,
    StoredDoc,
    WriteResult,
    failure_store_index,
    failure_store_owner,
    validate_doc_id,
    validate_index_name,
)
from .query_dsl import QueryBuilder, non_negative_int, refuse_unknown_keys, search_error, total
from .schema import make_document, schema, stored
from .settings import normalize_settings, parse_interval
from .translog import Translog, delete_entry, index_entry

__all__ = ["MAX_PENDING_WRITES", "MAX_RESULT_WINDOW", "TantivyBackend"]

log = logging.getLogger(__name__)

#: Elasticsearch's ``index.max_result_window``.
MAX_RESULT_WINDOW: Final = 10_000
#: Commit early when this many writes wait for a refresh (bounds the real-time map and the translog).
MAX_PENDING_WRITES: Final = 50_000

_SEARCH_KEYS: Final = frozenset({"query", "size", "from", "_source", "track_total_hits", "timeout", "ext"})
_COUNT_KEYS: Final = frozenset({"query"})
#: Where an index keeps its failure store, inside its own directory.
_FAILURES_DIR: Final = "failures"


def _write_json_atomic(path: Path, data: Any) -> None:
    write_atomically(path, orjson.dumps(data, option=orjson.OPT_INDENT_2))


# --------------------------------------------------------------------------------------------- one index


@dataclass(slots=True)
class _Pending:
    """A write not yet visible to search; ``source`` ``None`` is a delete."""

    version: int
    source: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class _Planned:
    """One op of a bulk, checked and ready: its result, translog entry, and document (``None``: a delete)."""

    result: WriteResult
    entry: bytes
    document: tantivy.Document | None
    source: dict[str, Any] | None


@dataclass(eq=False)
class _Index:
    """One open index. ``lock`` guards the writer, the translog and ``pending``."""

    name: str
    path: Path
    info: IndexInfo
    index: tantivy.Index
    schema: tantivy.Schema
    translog: Translog
    lock: threading.Lock = field(default_factory=threading.Lock)
    writer: tantivy.IndexWriter | None = None
    pending: dict[str, _Pending] = field(default_factory=dict)
    last_refresh: float = field(default_factory=time.monotonic)
    closed: bool = False
    #: A failure store: what failed (``document.source``, ``search.body``) is kept but not indexed, so a value
    #: of any shape is stored and nothing in it matches a query about the failures by accident.
    opaque: bool = False

    def make(self, doc_id: str, version: int, source: dict[str, Any], raw: bytes) -> tantivy.Document:
        if not self.opaque:
            return make_document(doc_id, version, source, raw)
        indexed = dict(source)
        for parent, child in OPAQUE_FIELDS:
            value = indexed.get(parent)
            if isinstance(value, dict) and child in value:
                indexed[parent] = {k: v for k, v in value.items() if k != child}
        return make_document(doc_id, version, indexed, orjson.dumps(indexed), kept=raw)

    @property
    def refresh_interval(self) -> float | None:
        return parse_interval(self.info.settings.get("index.refresh_interval", "1s"))


class TantivyBackend:
    """On-disk tantivy indexes under ``data_dir/indexes``, refreshed every ``refresh_interval``.

    Thread-safe: one writer per index behind a lock; searches run on the last committed searcher.
    Use as a context manager, or call ``close()`` to commit every index and stop the refresher.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        writer_heap_bytes: int = 64_000_000,
        fsync: bool = True,
        refresh_tick: float = 0.1,
    ) -> None:
        self._root = Path(data_dir) / "indexes"
        self._work = Path(data_dir) / "indexes.tmp"
        self._heap = writer_heap_bytes
        self._fsync = fsync
        self._lock = threading.RLock()
        self._indexes: dict[str, _Index] = {}
        self._stop = threading.Event()
        try:
            if not self._root.is_dir():
                self._root.mkdir(parents=True)
                if fsync:
                    # The new directory's entry: indexes created in it must not vanish with it after a crash.
                    fsync_dir(self._root.parent)
            shutil.rmtree(self._work, ignore_errors=True)
            self._work.mkdir(parents=True)
            for path in sorted(self._root.iterdir()):
                if path.is_dir() and (path / "settings.json").is_file():
                    self._indexes[path.name] = self._open(path)
                    if (path / _FAILURES_DIR / "settings.json").is_file():
                        store = failure_store_index(path.name)
                        self._indexes[store] = self._open(path / _FAILURES_DIR, store)
        except OSError as exc:
            raise StorageError(f"cannot open the index directory {self._root}: {exc}") from exc
        self._refresher = threading.Thread(
            target=self._refresh_loop, args=(refresh_tick,), name="index-refresher", daemon=True
        )
        self._refresher.start()

    def __enter__(self) -> TantivyBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TantivyBackend({str(self._root.parent)!r}, indexes={sorted(self._indexes)!r})"

    # ----------------------------------------------------------------------------------------- lifecycle

    def _open(self, path: Path, name: str | None = None) -> _Index:
        name = name or path.name
        meta = orjson.loads((path / "settings.json").read_bytes())
        info = IndexInfo(name, meta["uuid"], meta["creation_date"], dict(meta["settings"]))
        fields = schema()
        try:
            index = tantivy.Index(fields, path=str(path / "tantivy"), reuse=True)
        except ValueError as exc:
            raise StorageError(f"cannot open index [{name}]: {exc}") from exc
        translog = Translog(path / "translog.ndjson", name, fsync=self._fsync)
        handle = _Index(name, path, info, index, fields, translog, opaque=failure_store_owner(name) is not None)
        self._replay(handle)
        translog.open()
        return handle

    def _replay(self, handle: _Index) -> None:
        """Re-apply the writes acknowledged before a crash, then commit them."""
        replayed = 0
        for entry in handle.translog.replay():
            writer = self._writer(handle)
            writer.delete_documents_by_term("_id", entry["id"])
            if entry["op"] == "index":
                source = entry["source"]
                writer.add_document(handle.make(entry["id"], entry["version"], source, orjson.dumps(source)))
            replayed += 1
        if replayed:
            self._commit(handle)
            log.info("index [%s]: replayed %d writes from the translog", handle.name, replayed)
        handle.translog.discard_replayed()

    def close(self) -> None:
        """Commit every index, stop the refresher, release the writers."""
        self._stop.set()
        if self._refresher.is_alive() and self._refresher is not threading.current_thread():
            self._refresher.join()
        with self._lock:
            for handle in self._indexes.values():
                self._close_index(handle)
            self._indexes.clear()

    def _close_index(self, handle: _Index, *, commit: bool = True) -> None:
        with handle.lock:
            if handle.closed:
                return
            if commit and handle.pending:
                self._commit_and_truncate(handle)
            if handle.writer is not None:
                handle.writer.wait_merging_threads()
                handle.writer = None
            handle.translog.close()
            handle.closed = True

    # ----------------------------------------------------------------------------------------- indexes

    def create_index(self, name: str, settings: Mapping[str, Any] | None = None) -> IndexInfo:
        """Create index ``name``, or with ``X::failures`` the failure store of index ``X`` (which must exist)."""
        owner = failure_store_owner(name)
        validate_index_name(name if owner is None else owner)
        flat = {k: v for k, v in normalize_settings(settings or {}).items() if v is not None}
        with self._lock:
            target = self._root / name if owner is None else self._handle(owner).path / _FAILURES_DIR
            if name in self._indexes or target.exists():
                raise IndexExistsError(name)
            info = IndexInfo(name, uuid.uuid4().hex, int(time.time() * 1000), flat)
            staging = self._work / f"new-{info.uuid}"
            try:
                (staging / "tantivy").mkdir(parents=True)
                tantivy.Index(schema(), path=str(staging / "tantivy"), reuse=False)
                _write_json_atomic(staging / "settings.json", self._meta(info))
                # The new directories' entries are durable before the index is renamed into place.
                fsync_dir(staging / "tantivy")
                fsync_dir(staging)
                os.rename(staging, target)
                fsync_dir(target.parent)
                self._indexes[name] = self._open(target, name)
            except (OSError, ValueError) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise StorageError(f"cannot create index [{name}]: {exc}") from exc
            return info

    def delete_index(self, name: str) -> None:
        """Delete an index with its failure store (or, named ``X::failures``, just that failure store)."""
        with self._lock:
            handle = self._handle(name)
            store = self._indexes.pop(failure_store_index(name), None)
            if store is not None:
                self._close_index(store, commit=False)
            self._close_index(handle, commit=False)
            del self._indexes[name]
            trash = self._work / f"deleted-{handle.info.uuid}"
            try:
                os.rename(handle.path, trash)
                fsync_dir(handle.path.parent)
            except OSError as exc:
                raise StorageError(f"cannot delete index [{name}]: {exc}") from exc
            shutil.rmtree(trash, ignore_errors=True)

    def get_index(self, name: str) -> IndexInfo:
        handle = self._handle(name)
        info = handle.info
        return IndexInfo(info.name, info.uuid, info.creation_date, dict(info.settings), self._num_docs(handle))

    def list_indexes(self) -> list[IndexInfo]:
        """The indexes, without their failure stores (hidden, as Elasticsearch's ``.fs-*`` indexes are)."""
        with self._lock:
            names = sorted(name for name in self._indexes if failure_store_owner(name) is None)
        infos = []
        for name in names:
            with contextlib.suppress(IndexNotFoundError):
                infos.append(self.get_index(name))
        return infos

    def update_settings(self, name: str, changes: Mapping[str, Any]) -> IndexInfo:
        """Apply flat ``changes`` (from ``normalize_settings``; ``None`` removes) and store them durably."""
        with self._lock:
            handle = self._handle(name)
            settings = dict(handle.info.settings)
            for key, value in changes.items():
                if key == "index.number_of_shards" and value is not None:
                    raise InputError(f"final index setting [{key}], not updateable")
                if value is None:
                    settings.pop(key, None)
                else:
                    settings[key] = value
            info = IndexInfo(name, handle.info.uuid, handle.info.creation_date, settings)
            try:
                _write_json_atomic(handle.path / "settings.json", self._meta(info))
            except OSError as exc:
                raise StorageError(f"cannot store the settings of index [{name}]: {exc}") from exc
            handle.info = info
            return self.get_index(name)

    @staticmethod
    def _meta(info: IndexInfo) -> dict[str, Any]:
        return {"uuid": info.uuid, "creation_date": info.creation_date, "settings": info.settings}

    def _handle(self, name: str) -> _Index:
        handle = self._indexes.get(name)
        if handle is None or handle.closed:
            raise IndexNotFoundError(name)
        return handle

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[_Index]:
        handle = self._handle(name)
        with handle.lock:
            if handle.closed:
                raise IndexNotFoundError(name)
            yield handle

    # ----------------------------------------------------------------------------------------- writes

    def index_doc(
        self, index: str, doc_id: str, source: dict[str, Any], *, create: bool = False, refresh: bool = False
    ) -> WriteResult:
        """Write one document (``create`` refuses an existing id)."""
        (result,) = self.bulk(index, [IndexOp(doc_id, source, create=create)], refresh=refresh)
        if isinstance(result, QuidditchError):
            raise result
        return result

    def delete_doc(self, index: str, doc_id: str, *, refresh: bool = False) -> WriteResult:
        (result,) = self.bulk(index, [DeleteOp(doc_id)], refresh=refresh)
        if isinstance(result, QuidditchError):
            raise result
        return result

    def bulk(
        self, index: str, ops: Sequence[IndexOp | DeleteOp], *, refresh: bool = False
    ) -> list[WriteResult | QuidditchError]:
        """Apply ``ops`` in order in one writer transaction; one result (or error) per op.

        Acknowledged exactly when durable, visible only then: every op is checked and turned into its tantivy
        document first (an op that cannot be stored fails alone), then the batch's entries go to the translog
        (written and fsynced), and only then to the writer and the real-time map. When the translog or the
        writer fails, every op of the batch answers that error and nothing of it is visible, now or after a
        restart. ``refresh`` also makes the writes searchable.
        """
        results: list[WriteResult | QuidditchError] = []
        with self._locked(index) as handle:
            current = self._current_versions(
                handle, [op.id for op in ops if not (isinstance(op, IndexOp) and op.auto_id)]
            )
            planned: list[_Planned] = []
            for op in ops:
                outcome = self._plan(handle, op, current)
                if isinstance(outcome, _Planned):
                    planned.append(outcome)
                    results.append(outcome.result)
                else:
                    results.append(outcome)
            if planned:
                failure = self._apply(handle, planned)
                if failure is not None:
                    return [failure if isinstance(r, WriteResult) and r.result != "not_found" else r for r in results]
            if refresh or len(handle.pending) >= MAX_PENDING_WRITES:
                try:
                    self._commit_and_truncate(handle)
                except StorageError:
                    # The writes are durable in the translog and acknowledged; the periodic refresh tries again.
                    log.exception("refresh of index [%s] after a write failed", handle.name)
        return results

    @staticmethod
    def _plan(
        handle: _Index, op: IndexOp | DeleteOp, current: dict[str, int | None]
    ) -> _Planned | WriteResult | QuidditchError:
        """What ``op`` will write (``current`` follows it, so later ops of the batch see it), or why it cannot."""
        try:
            validate_doc_id(op.id)
        except InputError as exc:
            return exc
        existing = current.get(op.id)
        if isinstance(op, DeleteOp):
            if existing is None:
                return WriteResult(op.id, 1, "not_found")
            current[op.id] = None
            return _Planned(WriteResult(op.id, existing + 1, "deleted"), delete_entry(op.id), None, None)
        if op.create and existing is not None:
            return DocumentExistsError(op.id, existing)
        version = 1 if existing is None else existing + 1
        try:
            raw = orjson.dumps(op.source)
            document = handle.make(op.id, version, op.source, raw)
        except (TypeError, ValueError) as exc:
            # orjson.JSONEncodeError is a TypeError: a value JSON cannot hold (an integer past 64 bits, ...).
            return InputError(f"failed to parse document [{op.id}]: {exc}")
        current[op.id] = version
        result = WriteResult(op.id, version, "created" if existing is None else "updated")
        return _Planned(result, index_entry(op.id, version, raw), document, op.source)

    def _apply(self, handle: _Index, planned: list[_Planned]) -> QuidditchError | None:
        """Log ``planned`` durably, then apply it; the error that refused the whole batch, if one did."""
        mark = handle.translog.size
        try:
            handle.translog.append([p.entry for p in planned])
        except StorageError as exc:
            return exc
        writer = self._writer(handle)
        try:
            for p in planned:
                if p.result.result != "created":
                    writer.delete_documents_by_term("_id", p.result.id)
                if p.document is not None:
                    writer.add_document(p.document)
        except ValueError as exc:
            # Take the batch back out of the translog and the writer; earlier pending writes stay.
            error = StorageError(f"cannot write to index [{handle.name}]: {exc}")
            handle.translog.rollback(mark)
            self._restore_writer(handle)
            return error
        for p in planned:
            handle.pending[p.result.id] = _Pending(p.result.version, p.source)
        return None

    def _restore_writer(self, handle: _Index) -> None:
        """Roll the writer back to the last commit and re-apply the pending writes (the translog holds them)."""
        writer = self._writer(handle)
        try:
            writer.rollback()
            for doc_id, pending in handle.pending.items():
                writer.delete_documents_by_term("_id", doc_id)
                if pending.source is not None:
                    raw = orjson.dumps(pending.source)
                    writer.add_document(handle.make(doc_id, pending.version, pending.source, raw))
        except ValueError as exc:
            handle.translog.fail(StorageError(f"cannot restore the writer of index [{handle.name}]: {exc}"))

    def _current_versions(self, handle: _Index, ids: Sequence[str]) -> dict[str, int | None]:
        """The version each id has now (``None``: absent), real-time: pending writes first, then the index."""
        current: dict[str, int | None] = {}
        lookup = []
        for doc_id in ids:
            pending = handle.pending.get(doc_id)
            if pending is not None:
                current[doc_id] = None if pending.source is None else pending.version
            else:
                lookup.append(doc_id)
        if lookup:
            searcher = handle.index.searcher()
            query = tantivy.Query.term_set_query(handle.schema, "_id", lookup)
            for _score, address in searcher.search(query, limit=len(lookup), count=False).hits:
                doc_id, version, _raw = stored(searcher.doc(address))
                current[doc_id] = version
        return current

    def _writer(self, handle: _Index) -> tantivy.IndexWriter:
        if handle.writer is None:
            try:
                handle.writer = handle.index.writer(heap_size=self._heap, num_threads=1)
            except ValueError as exc:
                raise StorageError(f"cannot open a writer on index [{handle.name}]: {exc}") from exc
        return handle.writer

    def _commit(self, handle: _Index) -> None:
        try:
            self._writer(handle).commit()
            handle.index.reload()
        except ValueError as exc:
            raise StorageError(f"cannot commit index [{handle.name}]: {exc}") from exc
        handle.last_refresh = time.monotonic()

    def _commit_and_truncate(self, handle: _Index) -> None:
        """Make every pending write searchable and durable in tantivy, then empty the translog."""
        self._commit(handle)
        handle.pending.clear()
        handle.translog.truncate()

    # ----------------------------------------------------------------------------------------- refresh

    def refresh(self, index: str | None = None) -> None:
        """Make every acknowledged write searchable (one index, or all)."""
        with self._lock:
            handles = [self._handle(index)] if index is not None else list(self._indexes.values())
        for handle in handles:
            with handle.lock:
                if not handle.closed and handle.pending:
                    self._commit_and_truncate(handle)

    def _refresh_loop(self, tick: float) -> None:
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                handles = list(self._indexes.values())
            for handle in handles:
                interval = handle.refresh_interval
                if not handle.pending or interval is None or now - handle.last_refresh < interval:
                    continue
                try:
                    with handle.lock:
                        if not handle.closed and handle.pending:
                            self._commit_and_truncate(handle)
                except QuidditchError:
                    # The next tick tries again; the translog still holds every write.
                    log.exception("periodic refresh of index [%s] failed", handle.name)

    # ----------------------------------------------------------------------------------------- reads

    def get_doc(self, index: str, doc_id: str) -> StoredDoc | None:
        """Real-time get: a write is seen here before it is searchable."""
        handle = self._handle(index)
        with handle.lock:
            pending = handle.pending.get(doc_id)
        if pending is not None:
            return None if pending.source is None else StoredDoc(doc_id, pending.version, pending.source)
        searcher = handle.index.searcher()
        hits = searcher.search(tantivy.Query.term_query(handle.schema, "_id", doc_id), limit=1, count=False).hits
        if not hits:
            return None
        _id, version, raw = stored(searcher.doc(hits[0][1]))
        return StoredDoc(doc_id, version, orjson.loads(raw))

    def _num_docs(self, handle: _Index) -> int:
        return int(handle.index.searcher().num_docs)

    def search(self, index: str, body: Mapping[str, Any], params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Run an Elasticsearch search body; answers an Elasticsearch-shaped response. ``params`` (URL
        parameters the route does not read) mean nothing to this host and are ignored, as they always were."""
        started = time.perf_counter()
        refuse_unknown_keys(body, _SEARCH_KEYS)
        size = non_negative_int(body.get("size", 10), "size")
        offset = non_negative_int(body.get("from", 0), "from")
        if size + offset > MAX_RESULT_WINDOW:
            raise search_error(
                "size", f"Result window is too large, from + size must be less than or equal to: [{MAX_RESULT_WINDOW}]"
            )
        with_source = body.get("_source", True)
        if not isinstance(with_source, bool):
            raise search_error("_source", "only true or false is supported")
        handle = self._handle(index)
        query = QueryBuilder(handle.index, handle.schema).build(body.get("query", {"match_all": {}}), "query")
        searcher = handle.index.searcher()
        try:
            # tantivy refuses a limit of 0 (it panics), so a size-0 search asks for one hit and drops it.
            result = searcher.search(query, limit=max(size, 1), offset=offset, count=True)
        except ValueError as exc:
            raise search_error("query", str(exc)) from exc
        hits = []
        for score, address in result.hits[:size]:
            doc_id, _version, raw = stored(searcher.doc(address))
            hit: dict[str, Any] = {"_index": index, "_id": doc_id, "_score": score}
            if with_source:
                hit["_source"] = orjson.loads(raw)
            hits.append(hit)
        return {
            "took": int((time.perf_counter() - started) * 1000),
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": total(result), "relation": "eq"},
                "max_score": max((h["_score"] for h in hits), default=None),
                "hits": hits,
            },
        }

    def count(self, index: str, body: Mapping[str, Any]) -> int:
        refuse_unknown_keys(body, _COUNT_KEYS)
        handle = self._handle(index)
        if "query" not in body:
            return self._num_docs(handle)
        query = QueryBuilder(handle.index, handle.schema).build(body["query"], "query")
        try:
            return total(handle.index.searcher().search(query, limit=1, count=True))
        except ValueError as exc:
            raise search_error("query", str(exc)) from exc
