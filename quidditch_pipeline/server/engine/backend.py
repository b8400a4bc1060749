"""The interface the HTTP layer codes against: ``SearchBackend``, the values it takes and answers
(``IndexInfo``, ``IndexOp``, ``DeleteOp``, ``WriteResult``, ``StoredDoc``), its errors, and the naming rules
for indexes and document ids that every backend enforces alike.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from ...errors import ConflictError, InputError, NotFoundError, QuidditchError
from .settings import PIPELINE_SETTINGS

__all__ = [
    "FAILURE_STORE_SUFFIX",
    "MAX_ID_BYTES",
    "DeleteOp",
    "DocumentExistsError",
    "IndexExistsError",
    "IndexInfo",
    "IndexNotFoundError",
    "IndexOp",
    "InvalidIndexNameError",
    "SearchBackend",
    "StoredDoc",
    "WriteResult",
    "failure_store_index",
    "failure_store_owner",
    "new_doc_id",
    "validate_doc_id",
    "validate_index_name",
]

#: Elasticsearch's limit on ``_id``.
MAX_ID_BYTES: Final = 512

#: Index ``X``'s failure store is the backend index ``X::failures``: no user index can have that name (``:``
#: is refused), so a backend that sees the suffix knows it is a failure store and maps it to its own storage
#: name (a directory for tantivy, an ordinary index upstream).
FAILURE_STORE_SUFFIX: Final = "::failures"


def failure_store_index(index: str) -> str:
    return index + FAILURE_STORE_SUFFIX


def failure_store_owner(name: str) -> str | None:
    """The index whose failure store ``name`` is (``None``: ``name`` is not a failure store's)."""
    return name.removesuffix(FAILURE_STORE_SUFFIX) if name.endswith(FAILURE_STORE_SUFFIX) else None


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
    def search(
        self, index: str, body: Mapping[str, Any], params: Mapping[str, str] | None = None
    ) -> dict[str, Any]: ...
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


def new_doc_id() -> str:
    """A generated ``_id``: 20 URL-safe characters, like Elasticsearch's."""
    return secrets.token_urlsafe(15)


def validate_doc_id(doc_id: str) -> None:
    if not doc_id:
        raise InputError("if _id is specified it must not be empty")
    if len(doc_id.encode()) > MAX_ID_BYTES:
        raise InputError(f"id [{doc_id[:32]}...] is too long, must be no longer than {MAX_ID_BYTES} bytes")
