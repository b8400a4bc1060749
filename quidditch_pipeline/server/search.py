"""The reference host's search engine: one on-disk tantivy index per index name.

``SearchBackend`` is the interface the HTTP layer codes against; ``TantivyBackend`` implements it::

    data_dir/indexes/<name>/settings.json     uuid, creation date, flat ``index.*`` settings (atomic writes)
    data_dir/indexes/<name>/translog.ndjson   writes acknowledged but not yet committed to tantivy
    data_dir/indexes/<name>/tantivy/          the tantivy index
    data_dir/indexes.tmp/                     staging (new indexes) and trash (deleted ones)

Documents are schemaless JSON. Each is stored four ways: the original bytes (``_raw``, returned as
``_source``), a JSON field ``_source`` analysed with tantivy's default tokenizer and searched by path
(``_source.title``), a JSON field ``_keyword`` holding the untokenized strings (what ``title.keyword`` means
in Elasticsearch's dynamic mapping) and a text field ``_all`` with every string leaf, which a query that
names no field searches.

Writes follow Elasticsearch's model: a write is acknowledged once it is in the translog (fsynced), it
becomes visible to search at the next refresh (tantivy ``commit`` + ``reload``: every ``refresh_interval``,
or at once with ``refresh``), and ``get`` is real-time. A restart replays the translog, so an acknowledged
write survives a crash.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import orjson
import tantivy

from .._files import fsync_dir, write_atomically
from ..errors import (
    ConflictError,
    DefinitionError,
    InputError,
    NotFoundError,
    QuidditchError,
    StorageError,
)

__all__ = [
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
    "WriteResult",
    "normalize_settings",
    "validate_index_name",
]

log = logging.getLogger(__name__)

#: The settings an index accepts, flat, with their defaults (``None``: unset).
PIPELINE_SETTINGS: Final = {
    "document": "index.document.default_pipeline",
    "query": "index.query.default_pipeline",
    "result": "index.result.default_pipeline",
}
_KNOWN_SETTINGS: Final = frozenset(
    {*PIPELINE_SETTINGS.values(), "index.refresh_interval", "index.number_of_shards", "index.number_of_replicas"}
)
DEFAULT_REFRESH_INTERVAL: Final = 1.0
#: Elasticsearch's ``index.max_result_window``.
MAX_RESULT_WINDOW: Final = 10_000
#: Elasticsearch's limit on ``_id``.
MAX_ID_BYTES: Final = 512
#: Commit early when this many writes wait for a refresh (bounds the real-time map and the translog).
MAX_PENDING_WRITES: Final = 50_000

_SEARCH_KEYS: Final = frozenset({"query", "size", "from", "_source", "track_total_hits", "timeout", "ext"})
_COUNT_KEYS: Final = frozenset({"query"})


# --------------------------------------------------------------------------------------------- errors


class IndexNotFoundError(NotFoundError):
    """The index does not exist."""

    error_type = "index_not_found_exception"

    def __init__(self, name: str) -> None:
        super().__init__("index", name)
        self.message = f"no such index [{name}]"
        self.args = (self.message,)


class IndexExistsError(ConflictError):
    """The index exists already (Elasticsearch answers this with 400, and so do we)."""

    error_type = "resource_already_exists_exception"
    status = 400

    def __init__(self, name: str) -> None:
        super().__init__(f"index [{name}] already exists")
        self.name = name


class InvalidIndexNameError(InputError):
    """The index name breaks Elasticsearch's naming rules."""

    error_type = "invalid_index_name_exception"

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"Invalid index name [{name}], {why}")
        self.name = name


class DocumentExistsError(ConflictError):
    """``op_type=create`` for an id that exists."""

    error_type = "version_conflict_engine_exception"

    def __init__(self, doc_id: str, version: int) -> None:
        super().__init__(f"[{doc_id}]: version conflict, document already exists (current version [{version}])")
        self.doc_id = doc_id
        self.version = version


def _search_error(path: str, message: str) -> DefinitionError:
    return DefinitionError([(path, message)], subject="search request")


# --------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class IndexInfo:
    """What an index is: its name, identity and flat ``index.*`` settings."""

    name: str
    uuid: str
    creation_date: int
    settings: dict[str, Any]
    docs_count: int = 0

    def pipeline(self, kind: str) -> str | None:
        value = self.settings.get(PIPELINE_SETTINGS[kind])
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class StoredDoc:
    id: str
    version: int
    source: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IndexOp:
    """Write ``source`` under ``id``; ``create`` refuses an existing id; ``auto_id`` skips the lookup."""

    id: str
    source: dict[str, Any]
    create: bool = False
    auto_id: bool = False


@dataclass(frozen=True, slots=True)
class DeleteOp:
    id: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    """One write's outcome: ``result`` is ``created``, ``updated``, ``deleted`` or ``not_found``."""

    id: str
    version: int
    result: Literal["created", "updated", "deleted", "not_found"]

    @property
    def status(self) -> int:
        return {"created": 201, "not_found": 404}.get(self.result, 200)


class SearchBackend(Protocol):
    """What the HTTP layer needs from a search engine."""

    def create_index(self, name: str, settings: Mapping[str, Any] | None = None) -> IndexInfo: ...
    def delete_index(self, name: str) -> None: ...
    def get_index(self, name: str) -> IndexInfo: ...
    def list_indexes(self) -> list[IndexInfo]: ...
    def update_settings(self, name: str, changes: Mapping[str, Any]) -> IndexInfo: ...
    def bulk(
        self, index: str, ops: Sequence[IndexOp | DeleteOp], *, refresh: bool = False
    ) -> list[WriteResult | QuidditchError]: ...
    def get_doc(self, index: str, doc_id: str) -> StoredDoc | None: ...
    def search(self, index: str, body: Mapping[str, Any]) -> dict[str, Any]: ...
    def count(self, index: str, body: Mapping[str, Any]) -> int: ...
    def refresh(self, index: str | None = None) -> None: ...
    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------- names and settings

_FORBIDDEN_NAME_CHARS: Final = frozenset('\\/*?"<>| ,#:')


def validate_index_name(name: str) -> None:
    """Refuse what Elasticsearch refuses (and control characters, since the name is a directory)."""
    if not name:
        raise InvalidIndexNameError(name, "must not be empty")
    if name != name.lower():
        raise InvalidIndexNameError(name, "must be lowercase")
    if name in {".", ".."}:
        raise InvalidIndexNameError(name, "must not be '.' or '..'")
    if name[0] in "_-+":
        raise InvalidIndexNameError(name, "must not start with '_', '-', or '+'")
    bad = sorted({c for c in name if c in _FORBIDDEN_NAME_CHARS or not c.isprintable()})
    if bad:
        raise InvalidIndexNameError(name, f"must not contain the following characters {bad}")
    if len(name.encode()) > 255:
        raise InvalidIndexNameError(name, "index name is too long, (> 255 bytes)")


def validate_doc_id(doc_id: str) -> None:
    if not doc_id:
        raise InputError("if _id is specified it must not be empty")
    if len(doc_id.encode()) > MAX_ID_BYTES:
        raise InputError(f"id [{doc_id[:32]}...] is too long, must be no longer than {MAX_ID_BYTES} bytes")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def normalize_settings(body: Mapping[str, Any]) -> dict[str, Any]:
    """Nested or flat settings (optionally under ``"settings"``) as flat ``index.*`` keys; ``None`` removes.

    Values are validated: pipeline names are strings, ``refresh_interval`` a time value, shards exactly 1.
    """
    if set(body) == {"settings"} and isinstance(body["settings"], Mapping):
        body = body["settings"]
    flat: dict[str, Any] = {}
    _flatten("", body, flat)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        full = key if key.startswith("index.") else f"index.{key}"
        if full not in _KNOWN_SETTINGS:
            raise InputError(f"unknown setting [{full}]; supported: {', '.join(sorted(_KNOWN_SETTINGS))}")
        out[full] = None if value is None else _check_setting(full, value)
    return out


def _check_setting(key: str, value: Any) -> Any:
    if key in PIPELINE_SETTINGS.values():
        if not isinstance(value, str) or not value:
            raise InputError(f"setting [{key}] must be a pipeline name, got [{value!r}]")
        return value
    if key == "index.refresh_interval":
        parse_interval(value, key)
        return str(value)
    number = _setting_int(key, value)
    if key == "index.number_of_shards" and number != 1:
        raise InputError(f"setting [{key}] must be 1: an index of the reference host has one shard")
    return str(number)


def _setting_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InputError(f"setting [{key}] must be a non-negative integer, got [{value!r}]")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"setting [{key}] must be a non-negative integer, got [{value!r}]") from None
    if number < 0:
        raise InputError(f"setting [{key}] must be a non-negative integer, got [{value!r}]")
    return number


_INTERVAL: Final = re.compile(r"^(\d+)(ms|s|m|h)$")


def parse_interval(value: Any, key: str = "index.refresh_interval") -> float | None:
    """An Elasticsearch time value in seconds; ``-1`` (never) is ``None``."""
    text = str(value).strip()
    if text == "-1":
        return None
    match = _INTERVAL.match(text)
    if not match or isinstance(value, bool):
        raise InputError(f"setting [{key}] must be a time value such as 1s, 500ms or -1, got [{value!r}]")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    return int(match.group(1)) * scale


def nest_settings(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat dotted keys as nested objects (how Elasticsearch shows settings by default)."""
    out: dict[str, Any] = {}
    for key, value in sorted(flat.items()):
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


# --------------------------------------------------------------------------------------------- files


def _write_json_atomic(path: Path, data: Any) -> None:
    write_atomically(path, orjson.dumps(data, option=orjson.OPT_INDENT_2))


# --------------------------------------------------------------------------------------------- schema


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("_id", stored=True, tokenizer_name="raw")
    builder.add_json_field("_source", stored=False, expand_dots_enabled=True)
    # Exact values and existence need no frequencies or positions ("basic").
    builder.add_json_field(
        "_keyword", stored=False, tokenizer_name="raw", index_option="basic", expand_dots_enabled=True
    )
    # Range queries on JSON paths need a fast (columnar) field; numbers only, so long texts cost nothing here.
    builder.add_json_field("_numbers", stored=False, fast=True, index_option="basic", expand_dots_enabled=True)
    builder.add_text_field("_all", stored=False)
    builder.add_text_field("_field_names", stored=False, tokenizer_name="raw", index_option="basic")
    builder.add_bytes_field("_raw", stored=True, indexed=False)
    builder.add_integer_field("_version", stored=True, indexed=False)
    return builder.build()


def _stored(doc: tantivy.Document) -> tuple[str, int, bytes]:
    """A stored document's id, version and original source bytes."""
    doc_id, version, raw = doc.get_first("_id"), doc.get_first("_version"), doc.get_first("_raw")
    if doc_id is None or version is None or raw is None:
        raise StorageError("a stored document lacks _id, _version or _raw")
    return str(doc_id), int(version), bytes(raw)


#: Like Elasticsearch's ``ignore_above`` on the ``.keyword`` of a dynamic mapping: longer strings are not
#: indexed for exact match (they cost a unique term each and nobody matches them exactly).
KEYWORD_IGNORE_ABOVE: Final = 256


@dataclass(slots=True)
class _Leaves:
    """What one walk of a source collects for the derived fields, keyed by dotted path."""

    strings: list[str] = field(default_factory=list)
    keywords: dict[str, list[str]] = field(default_factory=dict)
    numbers: dict[str, list[int | float]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)

    def walk(self, value: Any, path: str) -> None:
        if isinstance(value, str):
            self.strings.append(value)
            if len(value) <= KEYWORD_IGNORE_ABOVE:
                self.keywords.setdefault(path, []).append(value)
            self.names.add(path)
        elif isinstance(value, bool):
            self.names.add(path)
        elif isinstance(value, int | float):
            self.numbers.setdefault(path, []).append(value)
            self.names.add(path)
        elif isinstance(value, dict):
            before = len(self.names)
            for key, inner in value.items():
                self.walk(inner, f"{path}.{key}" if path else key)
            # An object exists when something under it does (Elasticsearch's ``exists`` on an object).
            if path and len(self.names) > before:
                self.names.add(path)
        elif isinstance(value, list):
            for inner in value:
                self.walk(inner, path)


def _make_document(doc_id: str, version: int, source: dict[str, Any], raw: bytes) -> tantivy.Document:
    leaves = _Leaves()
    leaves.walk(source, "")
    doc = tantivy.Document()
    doc.add_text("_id", doc_id)
    # A JSON string crosses into tantivy faster than a dict it would have to walk.
    doc.add_json("_source", raw.decode())
    # Flat dotted keys: with expand_dots_enabled they are the same paths as the nested source.
    doc.add_json("_keyword", leaves.keywords)
    doc.add_json("_numbers", leaves.numbers)
    for leaf in leaves.strings:
        doc.add_text("_all", leaf)
    for name in leaves.names:
        doc.add_text("_field_names", name)
    doc.add_bytes("_raw", raw)
    doc.add_integer("_version", version)
    return doc


# --------------------------------------------------------------------------------------------- one index


@dataclass(slots=True)
class _Pending:
    """A write not yet visible to search; ``source`` ``None`` is a delete."""

    version: int
    source: dict[str, Any] | None


@dataclass(eq=False)
class _Index:
    """One open index. ``lock`` guards the writer, the translog and ``pending``."""

    name: str
    path: Path
    info: IndexInfo
    index: tantivy.Index
    schema: tantivy.Schema
    lock: threading.Lock = field(default_factory=threading.Lock)
    writer: tantivy.IndexWriter | None = None
    translog: int = -1
    pending: dict[str, _Pending] = field(default_factory=dict)
    last_refresh: float = field(default_factory=time.monotonic)
    closed: bool = False

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
            self._root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self._work, ignore_errors=True)
            self._work.mkdir(parents=True)
            for path in sorted(self._root.iterdir()):
                if path.is_dir() and (path / "settings.json").is_file():
                    self._indexes[path.name] = self._open(path)
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

    def _open(self, path: Path) -> _Index:
        meta = orjson.loads((path / "settings.json").read_bytes())
        info = IndexInfo(path.name, meta["uuid"], meta["creation_date"], dict(meta["settings"]))
        schema = _schema()
        try:
            index = tantivy.Index(schema, path=str(path / "tantivy"), reuse=True)
        except ValueError as exc:
            raise StorageError(f"cannot open index [{path.name}]: {exc}") from exc
        handle = _Index(path.name, path, info, index, schema)
        self._replay(handle)
        handle.translog = os.open(path / "translog.ndjson", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return handle

    def _replay(self, handle: _Index) -> None:
        """Re-apply the writes acknowledged before a crash, then commit them."""
        log_path = handle.path / "translog.ndjson"
        if not log_path.exists() or log_path.stat().st_size == 0:
            return
        lines = log_path.read_bytes().split(b"\n")
        writer = self._writer(handle)
        replayed = 0
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if number == len(lines):
                    # A torn last line: the write was never acknowledged.
                    break
                raise StorageError(f"translog of index [{handle.name}] is corrupt at line {number}") from exc
            writer.delete_documents_by_term("_id", entry["id"])
            if entry["op"] == "index":
                source = entry["source"]
                writer.add_document(_make_document(entry["id"], entry["version"], source, orjson.dumps(source)))
            replayed += 1
        self._commit(handle)
        os.truncate(log_path, 0)
        log.info("index [%s]: replayed %d writes from the translog", handle.name, replayed)

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
            os.close(handle.translog)
            handle.closed = True

    # ----------------------------------------------------------------------------------------- indexes

    def create_index(self, name: str, settings: Mapping[str, Any] | None = None) -> IndexInfo:
        validate_index_name(name)
        flat = {k: v for k, v in normalize_settings(settings or {}).items() if v is not None}
        with self._lock:
            target = self._root / name
            if name in self._indexes or target.exists():
                raise IndexExistsError(name)
            info = IndexInfo(name, uuid.uuid4().hex, int(time.time() * 1000), flat)
            staging = self._work / f"new-{info.uuid}"
            try:
                (staging / "tantivy").mkdir(parents=True)
                tantivy.Index(_schema(), path=str(staging / "tantivy"), reuse=False)
                _write_json_atomic(staging / "settings.json", self._meta(info))
                os.rename(staging, target)
                fsync_dir(self._root)
                self._indexes[name] = self._open(target)
            except (OSError, ValueError) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise StorageError(f"cannot create index [{name}]: {exc}") from exc
            return info

    def delete_index(self, name: str) -> None:
        with self._lock:
            handle = self._handle(name)
            self._close_index(handle, commit=False)
            del self._indexes[name]
            trash = self._work / f"deleted-{handle.info.uuid}"
            try:
                os.rename(handle.path, trash)
                fsync_dir(self._root)
            except OSError as exc:
                raise StorageError(f"cannot delete index [{name}]: {exc}") from exc
            shutil.rmtree(trash, ignore_errors=True)

    def get_index(self, name: str) -> IndexInfo:
        handle = self._handle(name)
        info = handle.info
        return IndexInfo(info.name, info.uuid, info.creation_date, dict(info.settings), self._num_docs(handle))

    def list_indexes(self) -> list[IndexInfo]:
        with self._lock:
            names = sorted(self._indexes)
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

        The writes are in the translog (fsynced) when this returns; ``refresh`` also makes them searchable.
        """
        results: list[WriteResult | QuidditchError] = []
        with self._locked(index) as handle:
            current = self._current_versions(
                handle, [op.id for op in ops if not (isinstance(op, IndexOp) and op.auto_id)]
            )
            writer = self._writer(handle)
            entries: list[bytes] = []
            for op in ops:
                try:
                    validate_doc_id(op.id)
                except InputError as exc:
                    results.append(exc)
                    continue
                existing = current.get(op.id)
                if isinstance(op, DeleteOp):
                    if existing is None:
                        results.append(WriteResult(op.id, 1, "not_found"))
                        continue
                    writer.delete_documents_by_term("_id", op.id)
                    current[op.id] = None
                    handle.pending[op.id] = _Pending(existing + 1, None)
                    entries.append(orjson.dumps({"op": "delete", "id": op.id}))
                    results.append(WriteResult(op.id, existing + 1, "deleted"))
                    continue
                if op.create and existing is not None:
                    results.append(DocumentExistsError(op.id, existing))
                    continue
                version = 1 if existing is None else existing + 1
                raw = orjson.dumps(op.source)
                try:
                    document = _make_document(op.id, version, op.source, raw)
                except ValueError as exc:
                    results.append(InputError(f"failed to parse document [{op.id}]: {exc}"))
                    continue
                if existing is not None:
                    writer.delete_documents_by_term("_id", op.id)
                writer.add_document(document)
                current[op.id] = version
                handle.pending[op.id] = _Pending(version, op.source)
                entries.append(b'{"op":"index","id":%b,"version":%d,"source":%b}' % (orjson.dumps(op.id), version, raw))
                results.append(WriteResult(op.id, version, "created" if existing is None else "updated"))
            if entries:
                self._log(handle, entries)
            if refresh or len(handle.pending) >= MAX_PENDING_WRITES:
                self._commit_and_truncate(handle)
        return results

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
                doc_id, version, _raw = _stored(searcher.doc(address))
                current[doc_id] = version
        return current

    def _writer(self, handle: _Index) -> tantivy.IndexWriter:
        if handle.writer is None:
            try:
                handle.writer = handle.index.writer(heap_size=self._heap, num_threads=1)
            except ValueError as exc:
                raise StorageError(f"cannot open a writer on index [{handle.name}]: {exc}") from exc
        return handle.writer

    def _log(self, handle: _Index, entries: list[bytes]) -> None:
        try:
            os.write(handle.translog, b"\n".join(entries) + b"\n")
            if self._fsync:
                os.fsync(handle.translog)
        except OSError as exc:
            raise StorageError(f"cannot write the translog of index [{handle.name}]: {exc}") from exc

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
        try:
            os.ftruncate(handle.translog, 0)
            if self._fsync:
                os.fsync(handle.translog)
        except OSError as exc:
            raise StorageError(f"cannot truncate the translog of index [{handle.name}]: {exc}") from exc

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
        _id, version, raw = _stored(searcher.doc(hits[0][1]))
        return StoredDoc(doc_id, version, orjson.loads(raw))

    def _num_docs(self, handle: _Index) -> int:
        return int(handle.index.searcher().num_docs)

    def search(self, index: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Run an Elasticsearch search body; answers an Elasticsearch-shaped response."""
        started = time.perf_counter()
        _refuse_unknown_keys(body, _SEARCH_KEYS)
        size = _non_negative_int(body.get("size", 10), "size")
        offset = _non_negative_int(body.get("from", 0), "from")
        if size + offset > MAX_RESULT_WINDOW:
            raise _search_error(
                "size", f"Result window is too large, from + size must be less than or equal to: [{MAX_RESULT_WINDOW}]"
            )
        with_source = body.get("_source", True)
        if not isinstance(with_source, bool):
            raise _search_error("_source", "only true or false is supported")
        handle = self._handle(index)
        query = _QueryBuilder(handle).build(body.get("query", {"match_all": {}}), "query")
        searcher = handle.index.searcher()
        try:
            # tantivy refuses a limit of 0 (it panics), so a size-0 search asks for one hit and drops it.
            result = searcher.search(query, limit=max(size, 1), offset=offset, count=True)
        except ValueError as exc:
            raise _search_error("query", str(exc)) from exc
        hits = []
        for score, address in result.hits[:size]:
            doc_id, _version, raw = _stored(searcher.doc(address))
            hit: dict[str, Any] = {"_index": index, "_id": doc_id, "_score": score}
            if with_source:
                hit["_source"] = orjson.loads(raw)
            hits.append(hit)
        return {
            "took": int((time.perf_counter() - started) * 1000),
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": _total(result), "relation": "eq"},
                "max_score": max((h["_score"] for h in hits), default=None),
                "hits": hits,
            },
        }

    def count(self, index: str, body: Mapping[str, Any]) -> int:
        _refuse_unknown_keys(body, _COUNT_KEYS)
        handle = self._handle(index)
        if "query" not in body:
            return self._num_docs(handle)
        query = _QueryBuilder(handle).build(body["query"], "query")
        try:
            return _total(handle.index.searcher().search(query, limit=1, count=True))
        except ValueError as exc:
            raise _search_error("query", str(exc)) from exc


def _total(result: tantivy.SearchResult) -> int:
    # tantivy's type stubs lack ``count``, which ``search(count=True)`` fills in.
    return int(result.count)  # type: ignore[attr-defined]


def _refuse_unknown_keys(body: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise _search_error(unknown[0], f"unknown key; supported: {', '.join(sorted(known))}")


def _non_negative_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _search_error(path, f"must be a non-negative integer, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------- queries

# tantivy's default tokenizer, which the ``_source`` and ``_all`` fields use: match text is analysed alike.
_ANALYZER: Final = (
    tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
    .filter(tantivy.Filter.remove_long(40))
    .filter(tantivy.Filter.lowercase())
    .build()
)
_NUMBER: Final = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
# A field name written before ':' in a query string (not inside quotes: those are split off first).
_QS_FIELD: Final = re.compile(r'(^|[\s(+\-!])([^\s:"()\[\]{}+\-!\\^~*?][^\s:"()\[\]{}\\^~*?]*):([\[{<>]?)')
_QS_QUOTED: Final = re.compile(r'"(?:[^"\\]|\\.)*"')


class _QueryBuilder:
    """Translates the Elasticsearch query DSL into tantivy queries. ``path`` names the clause in errors."""

    def __init__(self, handle: _Index) -> None:
        self._index = handle.index
        self._schema = handle.schema

    def build(self, clause: Any, path: str) -> tantivy.Query:
        if not isinstance(clause, Mapping) or len(clause) != 1:
            raise _search_error(path, "a query is an object with exactly one key, its type")
        ((kind, spec),) = clause.items()
        method = getattr(self, f"_q_{kind}", None)
        if method is None:
            raise _search_error(path, f"unknown query [{kind}]; supported: {', '.join(sorted(_QUERY_TYPES))}")
        query: tantivy.Query = method(spec, f"{path}.{kind}")
        return query

    # -- fields

    @staticmethod
    def _field(name: Any, path: str) -> str:
        """The tantivy field (or JSON path) behind a document field name."""
        if not isinstance(name, str) or not name:
            raise _search_error(path, "a field name must be a non-empty string")
        if name in {"_id", "_all"}:
            return name
        if name == "*":
            return "_all"
        if name.endswith(".keyword"):
            return f"_keyword.{name[: -len('.keyword')]}"
        return f"_source.{name}"

    @staticmethod
    def _single_field(spec: Any, path: str) -> tuple[str, Any, dict[str, Any]]:
        """``{field: value}`` or ``{field: {...options}}`` -> (field, value-or-options, extra top-level keys)."""
        if not isinstance(spec, Mapping):
            raise _search_error(path, "must be an object naming one field")
        fields = {k: v for k, v in spec.items() if k not in {"boost", "_name"}}
        if len(fields) != 1:
            raise _search_error(path, "must name exactly one field")
        ((name, value),) = fields.items()
        return name, value, {k: v for k, v in spec.items() if k not in fields}

    def _term(self, field: str, value: Any, path: str) -> tantivy.Query:
        if field == "_id" or field == "_all" or field.startswith("_keyword."):
            if not isinstance(value, str):
                raise _search_error(path, f"[{field}] takes a string value")
        elif isinstance(value, (Mapping, list)) or value is None:
            raise _search_error(path, "a term value is a string, number or boolean")
        if isinstance(value, float) and not math.isfinite(value):
            raise _search_error(path, "a number must be finite")
        try:
            return tantivy.Query.term_query(self._schema, field, value)
        except ValueError as exc:
            raise _search_error(path, str(exc)) from exc

    @staticmethod
    def _boosted(query: tantivy.Query, boost: Any, path: str) -> tantivy.Query:
        if boost is None:
            return query
        if isinstance(boost, bool) or not isinstance(boost, int | float) or not math.isfinite(boost) or boost < 0:
            raise _search_error(f"{path}.boost", "must be a non-negative number")
        return tantivy.Query.boost_query(query, float(boost))

    # -- leaf queries

    def _q_match_all(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"boost"})
        return self._boosted(tantivy.Query.all_query(), options.get("boost"), path)

    def _q_match_none(self, spec: Any, path: str) -> tantivy.Query:
        _options(spec, path, set())
        return tantivy.Query.empty_query()

    def _analysed(self, field: str, text: Any, path: str) -> list[tantivy.Query]:
        """One term query per token of ``text`` (a number also matches numeric values)."""
        if isinstance(text, (bool, int | float)):
            return [self._term(field, text, path)]
        if not isinstance(text, str):
            raise _search_error(path, "the query is a string, number or boolean")
        if field == "_id" or field.startswith("_keyword."):
            return [self._term(field, text, path)]
        queries = [self._term(field, token, path) for token in _ANALYZER.analyze(text)]
        if field != "_all" and _NUMBER.match(text.strip()):
            number = float(text)
            queries.append(self._term(field, int(number) if number.is_integer() else number, path))
        return queries

    def _q_match(self, spec: Any, path: str) -> tantivy.Query:
        name, value, extra = self._single_field(spec, path)
        options = (
            _options(value, f"{path}.{name}", {"query", "operator", "minimum_should_match", "boost"})
            if isinstance(value, Mapping)
            else {"query": value}
        )
        if "query" not in options:
            raise _search_error(f"{path}.{name}.query", "is required")
        operator = str(options.get("operator", "or")).lower()
        if operator not in {"or", "and"}:
            raise _search_error(f"{path}.{name}.operator", "must be 'or' or 'and'")
        terms = self._analysed(self._field(name, path), options["query"], f"{path}.{name}.query")
        query = self._combine(terms, operator, options.get("minimum_should_match"), f"{path}.{name}")
        return self._boosted(query, options.get("boost", extra.get("boost")), path)

    def _combine(self, terms: list[tantivy.Query], operator: str, minimum: Any, path: str) -> tantivy.Query:
        if not terms:
            return tantivy.Query.empty_query()
        if len(terms) == 1:
            return terms[0]
        occur = tantivy.Occur.Must if operator == "and" else tantivy.Occur.Should
        required = None if minimum is None else _minimum_should_match(minimum, len(terms), path)
        return tantivy.Query.boolean_query([(occur, t) for t in terms], required)

    def _q_match_phrase(self, spec: Any, path: str) -> tantivy.Query:
        name, value, extra = self._single_field(spec, path)
        options = (
            _options(value, f"{path}.{name}", {"query", "slop", "boost"})
            if isinstance(value, Mapping)
            else {"query": value}
        )
        text = options.get("query")
        if not isinstance(text, str):
            raise _search_error(f"{path}.{name}.query", "must be a string")
        slop = options.get("slop", 0)
        if isinstance(slop, bool) or not isinstance(slop, int) or slop < 0:
            raise _search_error(f"{path}.{name}.slop", "must be a non-negative integer")
        field = self._field(name, path)
        tokens: list[str | tuple[int, str]] = list(_ANALYZER.analyze(text))
        if not tokens:
            query = tantivy.Query.empty_query()
        elif len(tokens) == 1:
            query = self._term(field, tokens[0], path)
        else:
            try:
                query = tantivy.Query.phrase_query(self._schema, field, tokens, slop)
            except ValueError as exc:
                raise _search_error(path, str(exc)) from exc
        return self._boosted(query, options.get("boost", extra.get("boost")), path)

    def _q_multi_match(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"query", "fields", "operator", "boost", "type"})
        fields = options.get("fields", ["*"])
        if not isinstance(fields, list) or not fields:
            raise _search_error(f"{path}.fields", "must be a non-empty list of field names")
        if options.get("type", "best_fields") != "best_fields":
            raise _search_error(f"{path}.type", "only best_fields is supported")
        per_field = [
            self._q_match({name: {k: v for k, v in options.items() if k in {"query", "operator"}}}, path)
            for name in fields
        ]
        query = per_field[0] if len(per_field) == 1 else tantivy.Query.disjunction_max_query(per_field)
        return self._boosted(query, options.get("boost"), path)

    def _q_term(self, spec: Any, path: str) -> tantivy.Query:
        name, value, extra = self._single_field(spec, path)
        if isinstance(value, Mapping):
            options = _options(value, f"{path}.{name}", {"value", "boost"})
            if "value" not in options:
                raise _search_error(f"{path}.{name}.value", "is required")
            value, boost = options["value"], options.get("boost")
        else:
            boost = extra.get("boost")
        return self._boosted(self._term(self._field(name, path), value, f"{path}.{name}"), boost, path)

    def _q_terms(self, spec: Any, path: str) -> tantivy.Query:
        name, values, extra = self._single_field(spec, path)
        if not isinstance(values, list):
            raise _search_error(f"{path}.{name}", "must be a list of values")
        field = self._field(name, path)
        terms = [self._term(field, value, f"{path}.{name}[{i}]") for i, value in enumerate(values)]
        # Elasticsearch scores a terms query as a filter: every match scores the boost.
        query = tantivy.Query.const_score_query(self._combine(terms, "or", None, path), 1.0)
        return self._boosted(query, extra.get("boost"), path)

    def _q_ids(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"values", "boost"})
        values = options.get("values")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _search_error(f"{path}.values", "must be a list of ids")
        query = tantivy.Query.term_set_query(self._schema, "_id", values)
        return self._boosted(tantivy.Query.const_score_query(query, 1.0), options.get("boost"), path)

    def _q_range(self, spec: Any, path: str) -> tantivy.Query:
        name, bounds, _extra = self._single_field(spec, path)
        options = _options(bounds, f"{path}.{name}", {"gt", "gte", "lt", "lte", "boost"})
        field = self._field(name, path)
        if not field.startswith("_source."):
            raise _search_error(f"{path}.{name}", "range works on numeric document fields")
        field = _numbers_field(field)
        low, high = "*", "*"
        low_open, high_open = "[", "]"
        for key in ("gt", "gte", "lt", "lte"):
            if key not in options:
                continue
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise _search_error(f"{path}.{name}.{key}", "must be a finite number")
            if key.startswith("g"):
                low, low_open = repr(value), "{" if key == "gt" else "["
            else:
                high, high_open = repr(value), "}" if key == "lt" else "]"
        if low == "*" and high == "*":
            raise _search_error(f"{path}.{name}", "needs at least one of gt, gte, lt, lte")
        text = f"{_escape_field(field)}:{low_open}{low} TO {high}{high_open}"
        try:
            query = self._index.parse_query(text)
        except ValueError as exc:
            raise _search_error(f"{path}.{name}", str(exc)) from exc
        return self._boosted(tantivy.Query.const_score_query(query, 1.0), options.get("boost"), path)

    def _q_exists(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"field", "boost"})
        name = options.get("field")
        if not isinstance(name, str) or not self._field(name, f"{path}.field").startswith("_source."):
            raise _search_error(f"{path}.field", "exists works on document fields")
        query = tantivy.Query.term_query(self._schema, "_field_names", name)
        return self._boosted(tantivy.Query.const_score_query(query, 1.0), options.get("boost"), path)

    def _q_query_string(self, spec: Any, path: str) -> tantivy.Query:
        if isinstance(spec, str):
            spec = {"query": spec}
        options = _options(spec, path, {"query", "default_field", "fields", "default_operator", "boost"})
        text = options.get("query")
        if not isinstance(text, str):
            raise _search_error(f"{path}.query", "must be a string")
        operator = str(options.get("default_operator", "or")).lower()
        if operator not in {"or", "and"}:
            raise _search_error(f"{path}.default_operator", "must be 'OR' or 'AND'")
        fields = options.get("fields", [options.get("default_field", "*")])
        if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
            raise _search_error(f"{path}.fields", "must be a non-empty list of field names")
        rewritten = _rewrite_query_string(text, lambda name: self._field(name, f"{path}.query"))
        if text.strip() and fields != ["*"] and fields != ["_all"]:
            # A bare term searches the named fields: ``title:(...)`` applies a field to a group.
            groups = [f"{_escape_field(self._field(f, f'{path}.fields'))}:({rewritten})" for f in fields]
            rewritten = " OR ".join(f"({group})" for group in groups)
        if not rewritten.strip():
            query = tantivy.Query.all_query()
        else:
            try:
                query = self._index.parse_query(
                    rewritten, ["_all", "_source"], conjunction_by_default=operator == "and"
                )
            except ValueError as exc:
                raise _search_error(f"{path}.query", f"failed to parse query [{text}]: {exc}") from exc
        return self._boosted(query, options.get("boost"), path)

    # -- compound queries

    def _q_bool(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"must", "should", "filter", "must_not", "minimum_should_match", "boost"})
        clauses: list[tuple[tantivy.Occur, tantivy.Query]] = []
        positive = False
        counts = {}
        for key, occur in (
            ("must", tantivy.Occur.Must),
            ("filter", tantivy.Occur.Must),
            ("should", tantivy.Occur.Should),
            ("must_not", tantivy.Occur.MustNot),
        ):
            value = options.get(key, [])
            items = value if isinstance(value, list) else [value]
            counts[key] = len(items)
            for i, item in enumerate(items):
                query = self.build(item, f"{path}.{key}[{i}]" if isinstance(value, list) else f"{path}.{key}")
                if key == "filter":
                    # A filter decides whether a document matches, not how well.
                    query = tantivy.Query.const_score_query(query, 0.0)
                clauses.append((occur, query))
                positive = positive or key != "must_not"
        if not positive:
            # Like Elasticsearch: a bool with only must_not clauses (or none) matches everything else.
            clauses.append((tantivy.Occur.Must, tantivy.Query.all_query()))
        minimum = options.get("minimum_should_match")
        required = None
        if minimum is not None:
            required = _minimum_should_match(minimum, counts["should"], f"{path}.minimum_should_match")
        elif counts["should"] and not (counts["must"] or counts["filter"]):
            required = 1
        if required == 0 and counts["should"]:
            required = None
        try:
            query = tantivy.Query.boolean_query(clauses, required)
        except ValueError as exc:
            raise _search_error(path, str(exc)) from exc
        return self._boosted(query, options.get("boost"), path)

    def _q_constant_score(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"filter", "boost"})
        if "filter" not in options:
            raise _search_error(f"{path}.filter", "is required")
        boost = options.get("boost", 1.0)
        if isinstance(boost, bool) or not isinstance(boost, int | float) or not math.isfinite(boost):
            raise _search_error(f"{path}.boost", "must be a number")
        return tantivy.Query.const_score_query(self.build(options["filter"], f"{path}.filter"), float(boost))


_QUERY_TYPES: Final = frozenset(name[len("_q_") :] for name in vars(_QueryBuilder) if name.startswith("_q_"))


def _options(spec: Any, path: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise _search_error(path, "must be an object")
    unknown = sorted(set(spec) - allowed - {"_name"})
    if unknown:
        raise _search_error(f"{path}.{unknown[0]}", f"unknown option; supported: {', '.join(sorted(allowed))}")
    return dict(spec)


def _minimum_should_match(value: Any, clauses: int, path: str) -> int:
    """Elasticsearch's ``minimum_should_match``: an integer (negative: all but) or a percentage."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            raise _search_error(path, f"cannot parse [{value}]") from None
        count = int(clauses * abs(percent) / 100)
        required = count if percent >= 0 else clauses - count
    else:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise _search_error(path, f"cannot parse [{value}]") from None
        required = number if number >= 0 else clauses + number
    return max(0, min(required, clauses))


def _numbers_field(field: str) -> str:
    """The fast copy of a document field's numbers, which range queries run on."""
    return "_numbers." + field[len("_source.") :]


def _escape_field(field: str) -> str:
    """A field name as tantivy's query language writes it (its special characters escaped)."""
    return re.sub(r'([\s:"()\[\]{}^~*?\\+\-!])', r"\\\1", field)


def _rewrite_query_string(text: str, resolve: Callable[[str], str]) -> str:
    """Prefix each ``field:`` of a query string with its tantivy field, leaving quoted phrases alone."""

    def rewrite(match: re.Match[str]) -> str:
        field = resolve(match.group(2))
        if field.startswith("_source.") and match.group(3):
            # A range (``price:[1 TO 5]``, ``price:>3``) runs on the fast numeric copy.
            field = _numbers_field(field)
        return f"{match.group(1)}{_escape_field(field)}:{match.group(3)}"

    def fields(segment: str) -> str:
        return _QS_FIELD.sub(rewrite, segment)

    out, last = [], 0
    for quoted in _QS_QUOTED.finditer(text):
        out.append(fields(text[last : quoted.start()]))
        out.append(quoted.group(0))
        last = quoted.end()
    out.append(fields(text[last:]))
    return "".join(out)
