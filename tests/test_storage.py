"""Durable storage: write, close, reopen, equal on both durable back-ends (SQLite, PostgreSQL); a SQLite writer
killed with SIGKILL leaves whole pipelines; a failed PostgreSQL change leaves no trace, in the database or in
the registry's view."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quidditch_pipeline.definitions import PipelineDefinition, PipelineType, parse_definition
from quidditch_pipeline.errors import ConflictError, DefinitionError, NotFoundError, StorageError
from quidditch_pipeline.registry import Registry
from quidditch_pipeline.storage import (
    Change,
    MemoryStorage,
    PostgresStorage,
    Revision,
    SqliteStorage,
    Storage,
    StoredState,
    UdfRecord,
)

from .test_postgres_nodes import eventually

DOC = PipelineType.DOCUMENT
QUERY = PipelineType.QUERY


def definition(name: str, *, type: str = "document", version: str = "1.0.0", **extra: Any) -> PipelineDefinition:
    stages = extra.pop(
        "stages", [{"name": "set", "type": "native", "config": {"processor": "set", "field": "by", "value": name}}]
    )
    return parse_definition({"name": name, "version": version, "type": type, "stages": stages, **extra})


@pytest.fixture(params=["sqlite", "postgres"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Storage]:
    """Opens the same durable store again on every call (a restart), on each back-end."""
    if request.param == "sqlite":
        return lambda: SqliteStorage(tmp_path / "data" / "registry.sqlite")  # the folder is created
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresStorage(dsn)


def loaded(storage: Storage) -> StoredState:
    """What ``storage`` holds, without the change id (which only a shared store keeps)."""
    state = storage.load()
    state.change = None
    return state


def apply_changes(storage: Storage) -> None:
    """The same sequence of changes, for any storage."""
    storage.add_revision(Revision("a", 1, {"name": "a", "v": 1, "nested": {"list": [1, 2.5, None, "x"]}}, 10.0))
    storage.add_revision(Revision("a", 2, {"name": "a", "v": 2}, 11.5))
    storage.add_revision(Revision("b", 1, {"name": "b", "unicode": "ünïcødé ✓"}, 12.0))
    storage.add_revision(Revision("gone", 1, {"name": "gone"}, 13.0))
    storage.delete_pipeline("gone")
    storage.set_association("products", "document", "a")
    storage.set_association("products", "query", "b")
    storage.set_association("products", "query", "a")  # replaces
    storage.set_association("old", "result", "b")
    storage.set_association("old", "result", None)  # removes
    storage.put_udf(UdfRecord("f", "1.0.0", "a" * 64, 100, 20.0, "s" * 64))
    storage.put_udf(UdfRecord("f", "1.10.0", "b" * 64, 200, 21.0, None))
    storage.put_udf(UdfRecord("g", "0.1.0", "c" * 64, 300, 22.0))
    storage.delete_udf("g", "0.1.0")
    storage.set_index_setting("products", "index.failure_store.enabled", "true")
    storage.set_index_setting("products", "index.failure_store.enabled", "false")  # replaces
    storage.set_index_setting("products", "index.failure_store.max_search_failures", "10")
    storage.set_index_setting("old", "index.failure_store.enabled", "true")
    storage.set_index_setting("old", "index.failure_store.enabled", None)  # removes


EXPECTED = StoredState(
    revisions={
        "a": [
            Revision("a", 1, {"name": "a", "v": 1, "nested": {"list": [1, 2.5, None, "x"]}}, 10.0),
            Revision("a", 2, {"name": "a", "v": 2}, 11.5),
        ],
        "b": [Revision("b", 1, {"name": "b", "unicode": "ünïcødé ✓"}, 12.0)],
    },
    associations={("products", "document"): "a", ("products", "query"): "a"},
    udfs={
        ("f", "1.0.0"): UdfRecord("f", "1.0.0", "a" * 64, 100, 20.0, "s" * 64),
        ("f", "1.10.0"): UdfRecord("f", "1.10.0", "b" * 64, 200, 21.0, None),
    },
    # A deleted pipeline's mark stays: its name's next revision continues from there.
    revision_marks={"a": 2, "b": 1, "gone": 1},
    index_settings={
        ("products", "index.failure_store.enabled"): "false",
        ("products", "index.failure_store.max_search_failures"): "10",
    },
)


# --- the storage interface -----------------------------------------------------------------------------------


def test_memory_storage_state() -> None:
    storage = MemoryStorage()
    apply_changes(storage)
    assert storage.load() == EXPECTED


def test_memory_storage_load_is_a_copy() -> None:
    storage = MemoryStorage()
    apply_changes(storage)
    state = storage.load()
    state.revisions["a"].clear()
    state.associations.clear()
    state.udfs.clear()
    state.index_settings.clear()
    assert storage.load() == EXPECTED


def test_write_close_reopen_equal(reopen: Callable[[], Storage]) -> None:
    storage = reopen()
    apply_changes(storage)
    assert loaded(storage) == EXPECTED
    storage.close()

    reopened = reopen()
    try:
        assert loaded(reopened) == EXPECTED
    finally:
        reopened.close()


def test_durable_and_memory_agree(reopen: Callable[[], Storage]) -> None:
    memory = MemoryStorage()
    durable = reopen()
    try:
        apply_changes(memory)
        apply_changes(durable)
        assert loaded(durable) == memory.load()
    finally:
        durable.close()


def test_postgres_counts_every_change_and_a_failed_one_leaves_no_trace(postgres_dsn: str) -> None:
    storage = PostgresStorage(postgres_dsn)
    try:
        apply_changes(storage)
        state = storage.load()
        assert state.change == 19  # one id per committed change
        with pytest.raises(StorageError, match="duplicate key"), storage.transaction():
            storage.set_association("new", "document", "a")
            storage.add_revision(Revision("a", 1, {"name": "a", "again": True}, 99.0))  # (a, 1) exists
        assert storage.load() == state
    finally:
        storage.close()


def test_a_registry_view_keeps_nothing_the_database_did_not_commit(postgres_dsn: str) -> None:
    class CommitFails(PostgresStorage):
        """The write goes through, the commit does not (as when the database goes away at that moment)."""

        @contextlib.contextmanager
        def transaction(self) -> Iterator[Change]:
            with super().transaction() as change:
                yield change
                raise StorageError("connection lost at commit")  # rolls back what the change wrote

    reg = Registry(CommitFails(postgres_dsn))
    try:
        with pytest.raises(StorageError):
            reg.put(definition("p"))
        assert not reg.exists("p")
        with pytest.raises(StorageError):
            reg.set_index_settings("logs", {"index.failure_store.enabled": "true"})
        assert reg.index_settings("logs") == {}
        assert reg.status()["change"] == 0  # the view's change id is the last one the database committed
        assert reg.status()["change"] == 0
    finally:
        reg.close()
    fresh = PostgresStorage(postgres_dsn)
    try:
        assert fresh.load().revisions == {}
        assert fresh.load().index_settings == {}
    finally:
        fresh.close()


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    SqliteStorage(path).close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_sqlite_open_failure_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot open the registry database"):
        SqliteStorage(blocker / "registry.sqlite")


def test_sqlite_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    path.write_bytes(b"this is not an sqlite file at all" * 100)
    with pytest.raises(StorageError):
        SqliteStorage(path).load()


def test_sqlite_write_failure_is_a_storage_error_and_leaves_no_trace(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "r.sqlite")
    try:
        storage.add_revision(Revision("a", 1, {"v": 1}, 1.0))
        with pytest.raises(StorageError, match="write failed"):
            storage.add_revision(Revision("a", 1, {"v": "duplicate"}, 2.0))
        # The failed transaction was rolled back; the connection still works.
        storage.add_revision(Revision("a", 2, {"v": 2}, 3.0))
        assert [r.definition for r in storage.load().revisions["a"]] == [{"v": 1}, {"v": 2}]
    finally:
        storage.close()


def test_sqlite_write_after_close_is_a_storage_error(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "r.sqlite")
    storage.close()
    with pytest.raises(StorageError):
        storage.add_revision(Revision("a", 1, {}, 1.0))


# --- through the registry ------------------------------------------------------------------------------------


def fill(reg: Registry) -> None:
    reg.put_udf(UdfRecord("boost", "1.9.0", "1" * 64, 10, 1.0, "s1" * 32))
    reg.put_udf(UdfRecord("boost", "1.10.0", "2" * 64, 20, 2.0))
    reg.put(definition("shared", version="0.1.0"))
    reg.put(definition("shared", version="0.2.0", description="second revision", metadata={"k": [1, {"x": None}]}))
    reg.put(
        definition(
            "main",
            stages=[
                {"name": "call", "type": "pipeline", "config": {"pipeline": "shared"}},
                {"name": "udf", "type": "python", "config": {"udf_name": "boost", "udf_version": "1.9.0"}},
                {
                    "name": "group",
                    "type": "composite",
                    "on_failure": "continue",
                    "config": {
                        "stages": [{"name": "t", "type": "native", "config": {"processor": "trim", "field": "a"}}]
                    },
                },
            ],
            retry={"max_attempts": 4, "then": "continue"},
            timeout_ms=250,
        )
    )
    reg.put(definition("q", type="query"))
    reg.associate("products", DOC, "main")
    reg.associate("products", QUERY, "q")
    reg.associate("articles", DOC, "shared")
    reg.set_index_settings(
        "products", {"index.failure_store.enabled": "true", "index.failure_store.max_search_failures": "10"}
    )
    reg.set_index_settings("articles", {"index.failure_store.enabled": "false"})


def snapshot(reg: Registry) -> dict[str, Any]:
    return {
        "names": reg.names(),
        "history": {n: reg.history(n) for n in reg.names()},
        "definitions": {n: [reg.get(n, r.revision) for r in reg.history(n)] for n in reg.names()},
        "associations": {i: reg.associations(i) for i in ("products", "articles", "none")},
        "index_settings": {i: reg.index_settings(i) for i in ("products", "articles", "none")},
        "udfs": {n: [reg.udf(n, v) for v in reg.udf_versions(n)] for n in reg.udf_names()},
    }


def test_registry_write_close_reopen_equal(reopen: Callable[[], Storage]) -> None:
    reg = Registry(reopen())
    fill(reg)
    before = snapshot(reg)
    reg.close()

    again = Registry(reopen())
    try:
        assert snapshot(again) == before
        assert [r.revision for r in again.history("shared")] == [1, 2]
        assert again.get("shared", revision=1).definition.version == "0.1.0"
        assert again.udf("boost", None).version == "1.10.0"
        assert again.pipeline_for("products", DOC) == "main"
        # The rules still hold over what was reloaded.
        with pytest.raises(ConflictError):
            again.delete("shared")
        with pytest.raises(ConflictError):
            again.delete_udf("boost", "1.9.0")
        with pytest.raises(DefinitionError, match="shared -> main -> shared"):
            again.put(definition("shared", stages=[{"name": "c", "type": "pipeline", "config": {"pipeline": "main"}}]))
        # And new revisions continue the numbering.
        assert again.put(definition("shared", version="0.3.0")).revision == 3
    finally:
        again.close()


def test_registry_deletes_survive_a_reopen(reopen: Callable[[], Storage]) -> None:
    reg = Registry(reopen())
    fill(reg)
    reg.disassociate("articles", DOC)
    reg.disassociate("products", QUERY)
    reg.delete("q")
    reg.put(definition("main"))  # no longer calls shared nor pins boost 1.9.0
    reg.delete_udf("boost", "1.9.0")
    reg.set_index_settings("articles", {"index.failure_store.enabled": None})
    reg.set_index_settings("products", {"index.failure_store.enabled": "false"})
    before = snapshot(reg)
    reg.close()

    again = Registry(reopen())
    try:
        assert snapshot(again) == before
        assert again.names() == ["main", "shared"]
        assert again.associations("articles") == {}
        assert again.associations("products") == {"document": "main"}
        assert again.udf_versions("boost") == ["1.10.0"]
        assert again.index_settings("articles") == {}
        assert again.index_settings("products") == {
            "index.failure_store.enabled": "false",
            "index.failure_store.max_search_failures": "10",
        }
        again.delete("shared")
    finally:
        again.close()


def test_index_settings_change_together_and_reach_every_node(postgres_dsn: str) -> None:
    a, b = Registry(PostgresStorage(postgres_dsn)), Registry(PostgresStorage(postgres_dsn))
    try:
        both = {"index.failure_store.enabled": "true", "index.failure_store.max_search_failures": "5"}
        start = a.status()["change"]
        a.set_index_settings("logs", both)
        assert a.status()["change"] == start + 1  # both keys in one change
        eventually(lambda: b.index_settings("logs") == both)  # through LISTEN/NOTIFY
        b.set_index_settings("logs", {"index.failure_store.enabled": None})
        eventually(lambda: a.index_settings("logs") == {"index.failure_store.max_search_failures": "5"})
        changed = a.status()["change"]
        a.set_index_settings("logs", {"index.failure_store.max_search_failures": "5"})  # what it is already
        assert a.status()["change"] == changed
        assert a.index_settings("other") == {}
    finally:
        a.close()
        b.close()


def test_a_null_processor_value_survives_a_reopen(reopen: Callable[[], Storage]) -> None:
    # {"processor": "set", "value": null} is valid; the stored form must parse again after a restart.
    nulling = definition(
        "p", stages=[{"name": "n", "type": "native", "config": {"processor": "set", "field": "x", "value": None}}]
    )
    reg = Registry(reopen())
    reg.put(nulling)
    reg.close()
    again = Registry(reopen())
    try:
        assert again.get("p").definition == nulling
    finally:
        again.close()


def test_a_value_sqlite_cannot_store_is_refused_cleanly(tmp_path: Path) -> None:
    # YAML can carry an integer beyond 64 bits; storing it must be refused with the project's errors,
    # not crash with a serialiser's TypeError, and leave nothing half-stored.
    reg = Registry(SqliteStorage(tmp_path / "registry.sqlite"))
    try:
        with pytest.raises((DefinitionError, StorageError)):
            reg.put(definition("p", metadata={"n": 2**70}))
        assert not reg.exists("p")
    finally:
        reg.close()


# --- crash safety --------------------------------------------------------------------------------------------

WRITER = r"""
import sys
from quidditch_pipeline.definitions import PipelineType, parse_definition
from quidditch_pipeline.registry import Registry
from quidditch_pipeline.storage import SqliteStorage

reg = Registry(SqliteStorage(sys.argv[1]))
start = len(reg.history("counter")) if reg.exists("counter") else 0
print("ready", flush=True)
i = start
while True:
    i += 1
    width = 1 + i % 40
    stages = [
        {"name": f"s{k}", "type": "native", "config": {"processor": "set", "field": f"f{k}", "value": "x" * (k * 50)}}
        for k in range(width)
    ]
    name = f"p{i % 5}"
    meta = {"seq": i, "stages": width}
    data = {"name": name, "version": f"1.{i}.0", "type": "document", "metadata": meta, "stages": stages}
    reg.put(parse_definition(data))
    reg.put(parse_definition({"name": "counter", "version": f"0.0.{i}", "type": "query", "stages": []}))
    if i % 3 == 0:
        reg.associate(f"idx{i % 4}", PipelineType.DOCUMENT, name)
    if i % 7 == 0:
        victim = f"p{(i + 2) % 5}"
        if reg.exists(victim) and not any(
            reg.pipeline_for(f"idx{k}", PipelineType.DOCUMENT) == victim for k in range(4)
        ):
            reg.delete(victim)
    if i % 11 == 0:
        for k in range(4):
            reg.disassociate(f"idx{k}", PipelineType.DOCUMENT)
"""


def check_whole(path: Path) -> int:
    """Open what the killed writer left: everything parses, revisions are consecutive (a re-created pipeline
    continues its deleted namesake's numbers) and below the name's mark. Returns the counter."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    reg = Registry(SqliteStorage(path))
    try:
        for name in reg.names():
            history = reg.history(name)
            first = history[0].revision
            assert [r.revision for r in history] == list(range(first, first + len(history))), name
            assert reg.put(reg.get(name).definition).revision == history[-1].revision + 1
            for revision in history:
                stored = reg.get(name, revision.revision).definition
                assert stored.name == name
                if name != "counter":
                    assert stored.metadata["stages"] == len(stored.stages)
                    for k, stage in enumerate(stored.stages):
                        assert stage.config.options["value"] == "x" * (k * 50)  # type: ignore[union-attr]
        for k in range(4):
            target = reg.pipeline_for(f"idx{k}", DOC)
            assert target is None or reg.exists(target)
        return len(reg.history("counter")) if reg.exists("counter") else 0
    finally:
        reg.close()


def test_sigkill_during_writes_leaves_only_whole_pipelines(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    rng = random.Random()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    counters = [0]
    delays: list[float] = []
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line == b"ready\n", (line, child.stderr.read() if child.stderr else b"")
            delay = rng.uniform(0.05, 0.4)
            delays.append(delay)
            time.sleep(delay)
            assert child.poll() is None, child.stderr.read() if child.stderr else b""
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=10)
            if child.stdout is not None:
                child.stdout.close()
            if child.stderr is not None:
                child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        counter = check_whole(path)
        assert counter >= counters[-1], delays
        counters.append(counter)
    # The writer really was writing when it was killed.
    assert counters[-1] > 5, (counters, delays)


# --- issue 10: durability, failed writes, revisions never reused ---------------------------------------------


def test_sqlite_keeps_every_acknowledged_write_across_power_loss(tmp_path: Path) -> None:
    """WAL with synchronous=FULL: each commit fsyncs the WAL before it returns (NORMAL would only at
    checkpoints, so a power loss could take acknowledged PUTs with it)."""
    storage = SqliteStorage(tmp_path / "registry.sqlite")
    try:
        assert storage._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert storage._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert storage._db.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    finally:
        storage.close()


class FailingConnection:
    """A sqlite3 connection whose next COMMIT fails the way a full disk or an I/O error makes it fail."""

    def __init__(self, db: sqlite3.Connection, message: str) -> None:
        self._db = db
        self.message = message
        self.armed = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.armed:
            self.armed = False
            raise sqlite3.OperationalError(self.message)
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@pytest.mark.parametrize("message", ["disk I/O error", "database or disk is full"])
def test_a_failed_commit_is_a_storage_error_and_leaves_the_previous_state(tmp_path: Path, message: str) -> None:
    path = tmp_path / "registry.sqlite"
    reg = Registry(SqliteStorage(path))
    reg.put(definition("kept"))
    storage = reg._storage
    assert isinstance(storage, SqliteStorage)
    storage._db = FailingConnection(storage._db, message)  # type: ignore[assignment]
    with pytest.raises(StorageError, match=message):
        reg.put(definition("lost"))
    assert not reg.exists("lost") and reg.history("kept")[-1].revision == 1
    # The failed change is not committed by the next one (it was rolled back, not left open).
    assert reg.put(definition("kept")).revision == 2
    reg.close()
    reopened = Registry(SqliteStorage(path))
    try:
        assert reopened.names() == ["kept"]
        assert [r.revision for r in reopened.history("kept")] == [1, 2]
    finally:
        reopened.close()


def test_a_full_disk_refuses_the_write_and_keeps_every_acknowledged_one(tmp_path: Path) -> None:
    """A real SQLITE_FULL: the database may not grow past a few pages more than it has."""
    path = tmp_path / "registry.sqlite"
    reg = Registry(SqliteStorage(path))
    storage = reg._storage
    assert isinstance(storage, SqliteStorage)
    pages = storage._db.execute("PRAGMA page_count").fetchone()[0]
    storage._db.execute(f"PRAGMA max_page_count = {pages + 8}")
    big = [{"name": "s", "type": "native", "config": {"processor": "set", "field": "f", "value": "x" * 3000}}]
    acknowledged: list[int] = []
    with pytest.raises(StorageError, match="full"):
        for _ in range(100):
            acknowledged.append(reg.put(definition("p", stages=big)).revision)
    assert acknowledged and len(reg.history("p")) == len(acknowledged)
    reg.close()
    reopened = Registry(SqliteStorage(path))
    try:
        assert [r.revision for r in reopened.history("p")] == acknowledged
        assert reopened.put(definition("p")).revision == acknowledged[-1] + 1  # room again: writes go on
    finally:
        reopened.close()


@pytest.mark.parametrize("kind", ["memory", "durable"])
def test_a_recreated_pipeline_continues_its_revisions_across_a_restart(
    reopen: Callable[[], Storage], kind: str
) -> None:
    memory = MemoryStorage()

    def open_storage() -> Storage:
        return memory if kind == "memory" else reopen()

    reg = Registry(open_storage())
    assert [reg.put(definition("p")).revision for _ in range(3)] == [1, 2, 3]
    reg.delete("p")
    reg.close()
    reg = Registry(open_storage())  # a restart in between
    assert not reg.exists("p")
    again = reg.put(definition("p", version="2.0.0"))
    assert (again.revision, again.created) == (4, True)
    assert [r.revision for r in reg.history("p")] == [4]
    with pytest.raises(NotFoundError):
        reg.get("p", 1)  # the deleted definition is not served under its old number
    reg.close()


FILE_SIZE_WRITER = """
import resource, signal, sys
from pathlib import Path
from quidditch_pipeline.definitions import parse_definition
from quidditch_pipeline.errors import StorageError
from quidditch_pipeline.registry import Registry
from quidditch_pipeline.storage import SqliteStorage

path = Path(sys.argv[1])
reg = Registry(SqliteStorage(path))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
biggest = max(p.stat().st_size for p in path.parent.iterdir())
resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + (256 << 10), resource.RLIM_INFINITY))
stages = [{"name": "s", "type": "native", "config": {"processor": "set", "field": "f", "value": "x" * 4000}}]
acknowledged = 0
try:
    while True:
        reg.put(parse_definition({"name": "p", "version": "1.0.0", "type": "document", "stages": stages}))
        acknowledged += 1
except StorageError as exc:
    print(acknowledged, len(reg.history("p")), type(exc).__name__, str(exc), sep="\\t", flush=True)
"""


def test_a_file_system_that_refuses_writes_fails_them_with_storage_errors_and_loses_no_acknowledged_one(
    tmp_path: Path,
) -> None:
    """A real I/O failure under SQLite: the writer's file size limit (RLIMIT_FSIZE) makes the file system
    refuse its writes midway (EFBIG), as a full disk would."""
    path = tmp_path / "registry.sqlite"
    SqliteStorage(path).close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_WRITER, str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    acknowledged, in_memory, error, message = done.stdout.strip().split("\t")
    assert error == "StorageError" and "registry database write failed" in message
    assert int(acknowledged) > 0 and int(in_memory) == int(acknowledged)
    reopened = Registry(SqliteStorage(path))
    try:
        assert [r.revision for r in reopened.history("p")] == list(range(1, int(acknowledged) + 1))
    finally:
        reopened.close()
