"""The embedded default store: the registry in one SQLite file under the data directory.

SQLite runs in WAL mode with ``synchronous=FULL`` and one transaction per change: a change is acknowledged
only once its WAL frames are fsynced, so it survives a power loss, and a process killed in the middle of
writes leaves the last committed state (whole pipeline revisions only). A write that fails (disk full, an
I/O error) is rolled back and raises :class:`StorageError`; what was stored before stays intact.

Each pipeline name keeps a high-water mark of the revisions it has had, which survives deleting the
pipeline: a re-created pipeline continues the numbering, so ``(name, revision)`` never names two definitions.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import orjson

from ..errors import StorageError
from .base import Change, Revision, StoredState, UdfRecord

__all__ = ["SqliteStorage"]


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
CREATE TABLE IF NOT EXISTS index_settings (
    index_name TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (index_name, key)
);
CREATE TABLE IF NOT EXISTS revision_marks (
    name TEXT PRIMARY KEY,
    revision INTEGER NOT NULL
);
INSERT OR IGNORE INTO revision_marks (name, revision)
    SELECT name, MAX(revision) FROM pipeline_revisions GROUP BY name;
"""
# Durability: WAL with synchronous=FULL fsyncs the WAL at every commit (NORMAL would only at checkpoints,
# so a power loss could take acknowledged commits with it). Temporary tables and indices stay in memory:
# a full temp directory cannot fail a write the database itself has room for.
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA busy_timeout=5000",
)


class SqliteStorage:
    """The default store: ``registry.sqlite`` under the data directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.locator: str | None = str(self.path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            for pragma in _PRAGMAS:
                self._db.execute(pragma)
            mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":  # e.g. a file system without shared memory: refuse rather than run unsafely
                raise StorageError(f"the registry database at {self.path} cannot use WAL (journal mode {mode})")
            self._write(*((statement, ()) for statement in _SCHEMA.split(";") if statement.strip()))
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the registry database at {self.path}: {exc}") from exc

    def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run ``statements`` in one transaction: all of them are committed, or none (StorageError)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException as exc:
                # After a failed statement or COMMIT (disk full, I/O error) SQLite may or may not have rolled
                # back already; a transaction left open would commit this change with the next one.
                # (If SQLite rolled back by itself meanwhile, ROLLBACK fails harmlessly: nothing is kept. A closed
                # connection cannot even say whether it is in a transaction: there is nothing to undo then.)
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"registry database write failed: {exc}") from exc
                raise

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
                marks = self._db.execute("SELECT name, revision FROM revision_marks").fetchall()
                settings = self._db.execute("SELECT index_name, key, value FROM index_settings").fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read the registry database: {exc}") from exc
        for name, revision, definition, created_at in rows:
            state.revisions.setdefault(name, []).append(Revision(name, revision, orjson.loads(definition), created_at))
        state.associations = {(index, kind): name for index, kind, name in assoc}
        state.udfs = {(row[0], row[1]): UdfRecord(*row) for row in udfs}
        state.revision_marks = dict(marks)
        state.index_settings = {(index, key): value for index, key, value in settings}
        return state

    def transaction(self) -> AbstractContextManager[Change]:
        """One node writes this file (worker processes only read it): the registry's lock orders changes."""
        return contextlib.nullcontext(Change(None))

    def add_revision(self, revision: Revision) -> None:
        self._write(
            (
                "INSERT INTO pipeline_revisions (name, revision, definition, created_at) VALUES (?, ?, ?, ?)",
                (revision.name, revision.revision, orjson.dumps(revision.definition), revision.created_at),
            ),
            (
                "INSERT INTO revision_marks (name, revision) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET revision = MAX(revision, excluded.revision)",
                (revision.name, revision.revision),
            ),
        )

    def delete_pipeline(self, name: str) -> None:
        self._write(("DELETE FROM pipeline_revisions WHERE name = ?", (name,)))

    def set_association(self, index: str, pipeline_type: str, name: str | None) -> None:
        if name is None:
            self._write(
                ("DELETE FROM associations WHERE index_name = ? AND pipeline_type = ?", (index, pipeline_type))
            )
        else:
            self._write(
                (
                    "INSERT OR REPLACE INTO associations (index_name, pipeline_type, pipeline) VALUES (?, ?, ?)",
                    (index, pipeline_type, name),
                )
            )

    def set_index_setting(self, index: str, key: str, value: str | None) -> None:
        if value is None:
            self._write(("DELETE FROM index_settings WHERE index_name = ? AND key = ?", (index, key)))
        else:
            self._write(
                (
                    "INSERT OR REPLACE INTO index_settings (index_name, key, value) VALUES (?, ?, ?)",
                    (index, key, value),
                )
            )

    def put_udf(self, record: UdfRecord) -> None:
        self._write(
            (
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
        )

    def delete_udf(self, name: str, version: str) -> None:
        self._write(("DELETE FROM udfs WHERE name = ? AND version = ?", (name, version)))

    def close(self) -> None:
        with self._lock:
            self._db.close()
