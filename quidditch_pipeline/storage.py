"""Durable storage behind the registry: a small interface, SQLite by default, in-memory for tests.

SQLite runs in WAL mode with one transaction per change, so a process killed in the middle of writes leaves
the last committed state: whole pipeline revisions only.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from .errors import StorageError

__all__ = ["MemoryStorage", "Revision", "SqliteStorage", "Storage", "StoredState", "UdfRecord"]


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


@dataclass(slots=True)
class StoredState:
    revisions: dict[str, list[Revision]] = field(default_factory=dict)
    associations: dict[tuple[str, str], str] = field(default_factory=dict)
    udfs: dict[tuple[str, str], UdfRecord] = field(default_factory=dict)


class Storage(Protocol):
    """What the registry needs of a durable store. Each write is atomic on its own."""

    def load(self) -> StoredState: ...
    def add_revision(self, revision: Revision) -> None: ...
    def delete_pipeline(self, name: str) -> None: ...
    def set_association(self, index: str, pipeline_type: str, name: str | None) -> None: ...
    def put_udf(self, record: UdfRecord) -> None: ...
    def delete_udf(self, name: str, version: str) -> None: ...
    def close(self) -> None: ...


class MemoryStorage:
    """Keeps nothing past the process; for unit tests and throw-away services."""

    def __init__(self) -> None:
        self._state = StoredState()

    def load(self) -> StoredState:
        return StoredState(
            {k: list(v) for k, v in self._state.revisions.items()},
            dict(self._state.associations),
            dict(self._state.udfs),
        )

    def add_revision(self, revision: Revision) -> None:
        self._state.revisions.setdefault(revision.name, []).append(revision)

    def delete_pipeline(self, name: str) -> None:
        self._state.revisions.pop(name, None)

    def set_association(self, index: str, pipeline_type: str, name: str | None) -> None:
        if name is None:
            self._state.associations.pop((index, pipeline_type), None)
        else:
            self._state.associations[(index, pipeline_type)] = name

    def put_udf(self, record: UdfRecord) -> None:
        self._state.udfs[(record.name, record.version)] = record

    def delete_udf(self, name: str, version: str) -> None:
        self._state.udfs.pop((name, version), None)

    def close(self) -> None:
        """Nothing to release: the state lives and dies with this object."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_revisions (
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    definition BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (name, revision)
);
CREATE TABLE IF NOT EXISTS associations (
    index_name TEXT NOT NULL,
    pipeline_type TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    PRIMARY KEY (index_name, pipeline_type)
);
CREATE TABLE IF NOT EXISTS udfs (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    source_sha256 TEXT,
    PRIMARY KEY (name, version)
);
"""


class SqliteStorage:
    """The default store: ``registry.sqlite`` under the data directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the registry database at {self.path}: {exc}") from exc

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute(sql, args)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StorageError(f"registry database write failed: {exc}") from exc

    def load(self) -> StoredState:
        state = StoredState()
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT name, revision, definition, created_at FROM pipeline_revisions ORDER BY name, revision"
                ).fetchall()
                assoc = self._db.execute("SELECT index_name, pipeline_type, pipeline FROM associations").fetchall()
                udfs = self._db.execute(
                    "SELECT name, version, sha256, size, created_at, source_sha256 FROM udfs"
                ).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read the registry database: {exc}") from exc
        for name, revision, definition, created_at in rows:
            state.revisions.setdefault(name, []).append(Revision(name, revision, orjson.loads(definition), created_at))
        state.associations = {(index, kind): name for index, kind, name in assoc}
        state.udfs = {(row[0], row[1]): UdfRecord(*row) for row in udfs}
        return state

    def add_revision(self, revision: Revision) -> None:
        self._write(
            "INSERT INTO pipeline_revisions (name, revision, definition, created_at) VALUES (?, ?, ?, ?)",
            (revision.name, revision.revision, orjson.dumps(revision.definition), revision.created_at),
        )

    def delete_pipeline(self, name: str) -> None:
        self._write("DELETE FROM pipeline_revisions WHERE name = ?", (name,))

    def set_association(self, index: str, pipeline_type: str, name: str | None) -> None:
        if name is None:
            self._write("DELETE FROM associations WHERE index_name = ? AND pipeline_type = ?", (index, pipeline_type))
        else:
            self._write(
                "INSERT OR REPLACE INTO associations (index_name, pipeline_type, pipeline) VALUES (?, ?, ?)",
                (index, pipeline_type, name),
            )

    def put_udf(self, record: UdfRecord) -> None:
        self._write(
            "INSERT INTO udfs (name, version, sha256, size, created_at, source_sha256) VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.name,
                record.version,
                record.sha256,
                record.size,
                record.created_at,
                record.source_sha256,
            ),
        )

    def delete_udf(self, name: str, version: str) -> None:
        self._write("DELETE FROM udfs WHERE name = ? AND version = ?", (name, version))

    def close(self) -> None:
        with self._lock:
            self._db.close()
