"""What the registry needs of a durable store: the records it keeps and the :class:`Storage` interface.

Two back-ends implement it beside the in-memory one for tests: :class:`~.sqlite.SqliteStorage` (the embedded
default, one node) and :class:`~.postgres.PostgresStorage` (many nodes sharing one registry). The registry
makes each change inside :meth:`Storage.transaction`: a store that other nodes write too hands it the
store's current change id there, under a registry-wide lock, so the registry checks the change against the
database's state (re-reading it when another node changed it) and writes it in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import ConflictError

__all__ = ["Change", "ComponentStore", "Revision", "SharedStorage", "Storage", "StoredState", "UdfRecord"]


@dataclass(frozen=True, slots=True)
class Revision:
    name: str
    revision: int
    definition: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class UdfRecord:
    name: str
    version: str
    sha256: str
    size: int
    created_at: float
    #: sha256 of the Python source the component was built from (None for an uploaded component).
    source_sha256: str | None = None

    def same_content(self, other: UdfRecord) -> bool:
        """True when ``other`` registers what this record does: the same bytes, or built from the same source."""
        return self.sha256 == other.sha256 or (
            other.source_sha256 is not None and self.source_sha256 == other.source_sha256
        )

    def immutable_error(self) -> ConflictError:
        """The error for registering other content under this record's name and version."""
        return ConflictError(
            f"UDF [{self.name}] version [{self.version}] already exists with other content "
            f"(sha256 {self.sha256[:12]}…); versions are immutable, register a new version"
        )


@dataclass(slots=True)
class StoredState:
    revisions: dict[str, list[Revision]] = field(default_factory=dict)
    associations: dict[tuple[str, str], str] = field(default_factory=dict)
    udfs: dict[tuple[str, str], UdfRecord] = field(default_factory=dict)
    #: The highest revision each pipeline name has ever had, deleted pipelines included.
    revision_marks: dict[str, int] = field(default_factory=dict)
    #: (index, flat key) -> value: the index settings this project owns besides its pipelines, for a
    #: gateway, whose upstream cluster must not see them (``index.failure_store.*``).
    index_settings: dict[tuple[str, str], str] = field(default_factory=dict)
    #: The id of the last change this state includes (None: a store only this process writes).
    change: int | None = None


class Change:
    """One change in progress inside :meth:`Storage.transaction`.

    ``seen`` is the store's change id when the transaction began (``None`` for a store only this process
    writes: the caller's view is then current by construction); ``committed`` is the id the change was
    committed as (``seen`` when it wrote nothing).
    """

    __slots__ = ("committed", "seen")

    def __init__(self, seen: int | None) -> None:
        self.seen = seen
        self.committed = seen


class Storage(Protocol):
    """What the registry needs of a durable store.

    ``add_revision`` also raises the name's revision mark; ``delete_pipeline`` keeps it. ``set_association``
    and ``set_index_setting`` remove with ``None``. Writes made inside
    :meth:`transaction` commit together when it exits without an error; outside one, each write is atomic
    on its own. ``locator`` is what another process hands :func:`~quidditch_pipeline.storage.open_storage` to
    open the same registry (a worker process does), ``None`` for a store no other process can read.
    """

    locator: str | None

    def load(self) -> StoredState: ...
    def transaction(self) -> AbstractContextManager[Change]: ...
    def add_revision(self, revision: Revision) -> None: ...
    def delete_pipeline(self, name: str) -> None: ...
    def set_association(self, index: str, pipeline_type: str, name: str | None) -> None: ...
    def set_index_setting(self, index: str, key: str, value: str | None) -> None: ...
    def put_udf(self, record: UdfRecord) -> None: ...
    def delete_udf(self, name: str, version: str) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class SharedStorage(Protocol):
    """A store other nodes write too: it tells the registry of their changes and of its connection."""

    def watch(self, on_change: Callable[[int | None], None]) -> None:
        """Call ``on_change(change_id)`` for every change committed by anyone, and ``on_change(None)`` when
        changes may have been missed (the connection came back): then re-read everything."""
        ...

    def status(self) -> dict[str, Any]:
        """The back-end, whether it is reachable, and what it last heard (health output)."""
        ...


@runtime_checkable
class ComponentStore(Protocol):
    """A store that keeps UDF components' bytes too (content-addressed), for nodes that lack them."""

    def put_component(self, sha256: str, data: bytes) -> None: ...
    def component(self, sha256: str) -> bytes | None: ...
