"""The shared store: the registry in PostgreSQL, for many nodes (psycopg 3 with a psycopg_pool connection pool).

Consistency across nodes: every change runs in one transaction that first takes a transaction-level advisory
lock on one registry-wide key (``pg_advisory_xact_lock``), then reads the registry's change id. The registry
re-reads the whole state in that same transaction when another node changed it since, checks the change
against it (references, cycles, users, immutable UDF versions, the next revision number) and writes it; the
commit bumps the change id and sends ``NOTIFY`` (delivered at commit, never for a rolled-back change).

Why one lock rather than SERIALIZABLE with retries: the rules are checked over the registry's in-memory view
of the whole graph (a cycle, the users of a pipeline or of a UDF), which PostgreSQL never sees as reads, so
SERIALIZABLE could not detect the conflicts; and reading the graph through SQL instead would make nearly
every pair of concurrent changes conflict. Registry changes are rare and take milliseconds: ordering them
costs little and makes every check exact. Database constraints (primary keys on ``(name, revision)`` and
``(name, version)``) are a second line behind the lock.

Change propagation: a listener thread per node holds its own connection with ``LISTEN``; every
notification carries the change id, and the registry re-reads the state when it is behind. When that
connection is lost the thread reconnects with backoff and, once listening again, asks for a full re-read,
so changes made meanwhile are not lost in effect. While the database is away, writes raise
:class:`StorageUnavailableError` (HTTP 503) and the node keeps serving what it holds.

UDF components are kept here too (content-addressed by sha256) so that a node that lacks one fetches it
once into its local artifact folder (:mod:`.artifacts`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import StorageError, StorageUnavailableError
from .base import Change, Revision, StoredState, UdfRecord

__all__ = ["CHANNEL", "PostgresStorage"]

logger = logging.getLogger(__name__)

#: The NOTIFY channel; its payload is the committed change id.
CHANNEL = "quidditch_registry"
# How long the listener waits for a notification before it looks at the closing flag again.
_LISTEN_WAIT_S = 0.5
#: The advisory lock key every change takes (an arbitrary constant: "quidditch" in hex, shortened).
_LOCK_KEY = 0x71756964
#: Seconds a change waits for a pooled connection before it is refused as unavailable (503).
POOL_TIMEOUT_S = 2.0
#: Seconds a new connection may take to open.
CONNECT_TIMEOUT_S = 2
#: An uploaded component nobody registered is kept this long (a put uploads it before it records the version).
_ORPHAN_GRACE = "1 hour"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS pipeline_revisions (
        name TEXT NOT NULL,
        revision INTEGER NOT NULL,
        definition BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, revision))""",
    """CREATE TABLE IF NOT EXISTS associations (
        index_name TEXT NOT NULL,
        pipeline_type TEXT NOT NULL,
        pipeline TEXT NOT NULL,
        PRIMARY KEY (index_name, pipeline_type))""",
    """CREATE TABLE IF NOT EXISTS udfs (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        source_sha256 TEXT,
        PRIMARY KEY (name, version))""",
    """CREATE TABLE IF NOT EXISTS index_settings (
        index_name TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (index_name, key))""",
    """CREATE TABLE IF NOT EXISTS revision_marks (
        name TEXT PRIMARY KEY,
        revision INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS udf_components (
        sha256 TEXT PRIMARY KEY,
        data BYTEA NOT NULL,
        stored_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS registry_meta (
        id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
        change BIGINT NOT NULL)""",
    "INSERT INTO registry_meta (id, change) VALUES (TRUE, 0) ON CONFLICT (id) DO NOTHING",
)


def describe(dsn: str) -> str:
    """``host:port/dbname`` of a connection string, without its user or password (for messages)."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable connection string>"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PostgresStorage:
    """The registry in the PostgreSQL database that ``dsn`` (``postgresql://…``) names."""

    def __init__(self, dsn: str, *, pool_size: int = 4) -> None:
        self.dsn = dsn
        self.locator: str | None = dsn
        self.where = describe(dsn)
        self._local = threading.local()
        self._closing = threading.Event()
        # This storage's own channel: close() notifies it so that the listener stops at once, not at the end
        # of its current wait.
        self._wake = f"{CHANNEL}_wake_{uuid.uuid4().hex[:16]}"
        self._listener: threading.Thread | None = None
        self._connected = False
        self._last_notified: int | None = None
        self._reconnects = 0
        self._last_error: str | None = None
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            timeout=POOL_TIMEOUT_S,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
            check=ConnectionPool.check_connection,  # a connection broken by a restart is replaced, not handed out
            name="quidditch-registry",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=POOL_TIMEOUT_S + CONNECT_TIMEOUT_S)
        except PoolTimeout as exc:
            self._pool.close()
            raise StorageUnavailableError(f"cannot reach the registry database at {self.where}") from exc
        try:
            with self._translated(), self._pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))  # nodes starting together
                for statement in _SCHEMA:
                    conn.execute(statement)
        except BaseException:
            self._pool.close()
            raise

    # --- connections and transactions -----------------------------------------------------------------

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """psycopg's and the pool's errors as the project's: unreachable -> 503, anything else -> 500."""
        try:
            yield
        except (PoolTimeout, psycopg.OperationalError) as exc:
            self._last_error = str(exc).strip() or type(exc).__name__
            raise StorageUnavailableError(
                f"the registry database at {self.where} is unavailable: {self._last_error}"
            ) from exc
        except psycopg.Error as exc:
            raise StorageError(f"registry database error at {self.where}: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Change]:
        """Hold the registry-wide lock; writes made meanwhile on this thread commit together at the end,
        with the change id bumped and every node notified."""
        with self._translated(), self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            row = conn.execute("SELECT change FROM registry_meta").fetchone()
            change = Change(int(row[0]) if row else 0)
            self._local.conn = conn
            self._local.dirty = False
            try:
                yield change
                if self._local.dirty:
                    committed = (change.seen or 0) + 1
                    conn.execute("UPDATE registry_meta SET change = %s", (committed,))
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(committed)))
                    change.committed = committed
            finally:
                self._local.conn = None
            # Leaving conn.transaction() commits; a failed COMMIT raises here, before the caller sees a change.

    def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run ``statements`` in the current transaction, or in one of their own."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None:
            with self.transaction():
                self._write(*statements)
            return
        with self._translated():
            for sql, args in statements:
                conn.execute(sql, args)
        self._local.dirty = True

    # --- the Storage interface ------------------------------------------------------------------------

    def load(self) -> StoredState:
        """The whole registry as of one snapshot (with the change id that snapshot includes)."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None:  # inside a change: read what the lock holder sees
            with self._translated():
                return _read_state(conn)
        with self._translated(), self._pool.connection() as own, own.transaction():
            own.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return _read_state(own)

    def add_revision(self, revision: Revision) -> None:
        self._write(
            (
                "INSERT INTO pipeline_revisions (name, revision, definition, created_at) VALUES (%s, %s, %s, %s)",
                (revision.name, revision.revision, orjson.dumps(revision.definition), revision.created_at),
            ),
            (
                "INSERT INTO revision_marks (name, revision) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET revision = GREATEST(revision_marks.revision, excluded.revision)",
                (revision.name, revision.revision),
            ),
        )

    def delete_pipeline(self, name: str) -> None:
        self._write(("DELETE FROM pipeline_revisions WHERE name = %s", (name,)))

    def set_association(self, index: str, pipeline_type: str, name: str | None) -> None:
        if name is None:
            self._write(
                ("DELETE FROM associations WHERE index_name = %s AND pipeline_type = %s", (index, pipeline_type))
            )
        else:
            self._write(
                (
                    "INSERT INTO associations (index_name, pipeline_type, pipeline) VALUES (%s, %s, %s) "
                    "ON CONFLICT (index_name, pipeline_type) DO UPDATE SET pipeline = excluded.pipeline",
                    (index, pipeline_type, name),
                )
            )

    def set_index_setting(self, index: str, key: str, value: str | None) -> None:
        if value is None:
            self._write(("DELETE FROM index_settings WHERE index_name = %s AND key = %s", (index, key)))
        else:
            self._write(
                (
                    "INSERT INTO index_settings (index_name, key, value) VALUES (%s, %s, %s) "
                    "ON CONFLICT (index_name, key) DO UPDATE SET value = excluded.value",
                    (index, key, value),
                )
            )

    def put_udf(self, record: UdfRecord) -> None:
        self._write(
            (
                "INSERT INTO udfs (name, version, sha256, size, created_at, source_sha256) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (record.name, record.version, record.sha256, record.size, record.created_at, record.source_sha256),
            )
        )

    def delete_udf(self, name: str, version: str) -> None:
        self._write(
            ("DELETE FROM udfs WHERE name = %s AND version = %s", (name, version)),
            (
                "DELETE FROM udf_components c WHERE NOT EXISTS (SELECT 1 FROM udfs u WHERE u.sha256 = c.sha256) "
                f"AND c.stored_at < now() - interval '{_ORPHAN_GRACE}'",
                (),
            ),
        )

    # --- UDF components (the ComponentStore interface) ------------------------------------------------

    def put_component(self, sha256: str, data: bytes) -> None:
        """Keep a component's bytes (idempotent; a second upload renews its grace before collection)."""
        with self._translated(), self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO udf_components (sha256, data) VALUES (%s, %s) "
                "ON CONFLICT (sha256) DO UPDATE SET stored_at = now()",
                (sha256, data),
            )

    def component(self, sha256: str) -> bytes | None:
        with self._translated(), self._pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT data FROM udf_components WHERE sha256 = %s", (sha256,)).fetchone()
        return None if row is None else bytes(row[0])

    # --- change propagation (the SharedStorage interface) ---------------------------------------------

    def watch(self, on_change: Callable[[int | None], None]) -> None:
        """Start this node's listener thread (once): ``on_change(id)`` per notification, ``on_change(None)``
        once listening, after the first connection and after every reconnection."""
        if self._listener is not None:
            raise RuntimeError("this storage is already watched")
        self._listener = threading.Thread(
            target=self._listen, args=(on_change,), name="quidditch-registry-listener", daemon=True
        )
        self._listener.start()

    def _listen(self, on_change: Callable[[int | None], None]) -> None:
        backoff = 0.05
        first = True
        while not self._closing.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {self._wake}")
                    self._connected = True
                    backoff = 0.05
                    if not first:
                        self._reconnects += 1
                    first = False
                    # Whatever changed before this connection listened (since the registry's first read, or
                    # while this node was cut off): the registry re-reads when it is behind.
                    on_change(None)
                    while not self._closing.is_set():
                        for notify in conn.notifies(timeout=_LISTEN_WAIT_S):
                            if notify.channel != CHANNEL:
                                break  # close() woke this listener
                            self._last_notified = int(notify.payload)
                            on_change(self._last_notified)
            except Exception as exc:  # whatever failed (the connection, a re-read), listening must go on
                self._last_error = str(exc).strip() or type(exc).__name__
                if self._connected:
                    logger.warning("registry database at %s lost: %s", self.where, self._last_error)
                self._connected = False
                first = False
                self._closing.wait(backoff)
                backoff = min(backoff * 2, 1.0)
        self._connected = False

    @property
    def connected(self) -> bool:
        """Whether the listener holds a live connection (False before :meth:`watch`)."""
        return self._connected

    def status(self) -> dict[str, Any]:
        return {
            "backend": "postgresql",
            "database": self.where,
            "connected": self._connected,
            "last_notified_change": self._last_notified,
            "reconnects": self._reconnects,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        self._closing.set()
        if self._listener is not None:
            # Wake the listener out of its wait; when the database cannot be reached, it sees the flag within
            # half a second anyway.
            with contextlib.suppress(Exception), self._pool.connection(timeout=1) as conn:
                conn.execute("SELECT pg_notify(%s, '')", (self._wake,))
            self._listener.join(timeout=5)
        self._pool.close()


def _read_state(conn: psycopg.Connection[Any]) -> StoredState:
    state = StoredState()
    row = conn.execute("SELECT change FROM registry_meta").fetchone()
    state.change = int(row[0]) if row else 0
    for name, revision, definition, created_at in conn.execute(
        "SELECT name, revision, definition, created_at FROM pipeline_revisions ORDER BY name, revision"
    ):
        state.revisions.setdefault(name, []).append(Revision(name, revision, orjson.loads(definition), created_at))
    state.associations = {
        (index, kind): name
        for index, kind, name in conn.execute("SELECT index_name, pipeline_type, pipeline FROM associations")
    }
    state.udfs = {
        (row[0], row[1]): UdfRecord(*row)
        for row in conn.execute("SELECT name, version, sha256, size, created_at, source_sha256 FROM udfs")
    }
    state.revision_marks = dict(conn.execute("SELECT name, revision FROM revision_marks").fetchall())
    state.index_settings = {
        (index, key): value
        for index, key, value in conn.execute("SELECT index_name, key, value FROM index_settings")
    }
    return state

