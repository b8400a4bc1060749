"""The registry over both durable back-ends (SQLite, PostgreSQL): revisions, associations, references, cycles,
UDF versions."""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quidditch_pipeline.definitions import PipelineDefinition, PipelineType, parse_definition
from quidditch_pipeline.errors import ConflictError, DefinitionError, NotFoundError
from quidditch_pipeline.registry import Registry
from quidditch_pipeline.storage import MemoryStorage, PostgresStorage, SqliteStorage, Storage, UdfRecord

DOC = PipelineType.DOCUMENT
QUERY = PipelineType.QUERY
RESULT = PipelineType.RESULT


class FakeClock:
    def __init__(self) -> None:
        self._ticks = itertools.count(1000)

    def __call__(self) -> float:
        return float(next(self._ticks))


@pytest.fixture(params=["sqlite", "postgres"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """A registry on each durable back-end: the same rules hold on both."""
    storage: Storage
    if request.param == "sqlite":
        storage = SqliteStorage(tmp_path / "registry.sqlite")
    else:
        storage = PostgresStorage(request.getfixturevalue("postgres_dsn"))
    registry = Registry(storage, now=FakeClock())
    yield registry
    registry.close()


def definition(
    name: str,
    *,
    type: str = "document",
    version: str = "1.0.0",
    calls: tuple[str, ...] = (),
    stages: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> PipelineDefinition:
    all_stages = list(stages or [])
    all_stages += [{"name": f"call-{t}", "type": "pipeline", "config": {"pipeline": t}} for t in calls]
    if not all_stages:
        all_stages = [{"name": "set", "type": "native", "config": {"processor": "set", "field": "by", "value": name}}]
    return parse_definition({"name": name, "version": version, "type": type, "stages": all_stages, **extra})


def python_stage(udf: str, version: str | None = None, name: str = "udf") -> dict[str, Any]:
    config: dict[str, Any] = {"udf_name": udf}
    if version is not None:
        config["udf_version"] = version
    return {"name": name, "type": "python", "config": config}


def udf(name: str, version: str, sha: str = "a" * 64, source: str | None = None) -> UdfRecord:
    return UdfRecord(name, version, sha, 1234, 1.0, source)


def problems(exc: pytest.ExceptionInfo[DefinitionError]) -> list[tuple[str, str]]:
    return exc.value.problems


# --- put, get, history ---------------------------------------------------------------------------------------


def test_put_creates_then_adds_revisions(reg: Registry) -> None:
    first = reg.put(definition("p", version="1.0.0"))
    assert (first.name, first.version, first.revision, first.created) == ("p", "1.0.0", 1, True)
    second = reg.put(definition("p", version="1.1.0"))
    assert (second.revision, second.created, second.version) == (2, False, "1.1.0")
    third = reg.put(definition("p", version="1.1.0"))  # same version string again: still a new revision
    assert (third.revision, third.created) == (3, False)
    assert [r.revision for r in reg.history("p")] == [1, 2, 3]
    assert [r.definition["version"] for r in reg.history("p")] == ["1.0.0", "1.1.0", "1.1.0"]


def test_get_latest_and_by_revision(reg: Registry) -> None:
    v1 = definition("p", version="1.0.0")
    v2 = definition("p", version="2.0.0", type="document", description="second")
    reg.put(v1)
    reg.put(v2)
    latest = reg.get("p")
    assert latest.revision == 2
    assert latest.definition == v2
    old = reg.get("p", revision=1)
    assert old.revision == 1
    assert old.definition == v1
    assert reg.get("p", revision=2).definition == v2


def test_get_times(reg: Registry) -> None:
    reg.put(definition("p"))  # now() == 1000
    reg.put(definition("p"))  # now() == 1001
    latest = reg.get("p")
    assert (latest.created_at, latest.updated_at) == (1000.0, 1001.0)
    first = reg.get("p", revision=1)
    assert (first.created_at, first.updated_at) == (1000.0, 1000.0)
    assert [r.created_at for r in reg.history("p")] == [1000.0, 1001.0]


def test_get_unknown(reg: Registry) -> None:
    with pytest.raises(NotFoundError) as info:
        reg.get("nope")
    assert (info.value.kind, info.value.name) == ("pipeline", "nope")
    assert info.value.status == 404
    reg.put(definition("p"))
    with pytest.raises(NotFoundError, match="no revision 7"):
        reg.get("p", revision=7)
    with pytest.raises(NotFoundError):
        reg.history("nope")


def test_history_keeps_each_revision_as_stored(reg: Registry) -> None:
    reg.put(definition("p", version="1.0.0"))
    reg.put(definition("p", version="1.0.1", stages=[{"name": "x", "type": "native", "config": {"processor": "drop"}}]))
    history = reg.history("p")
    assert [r.name for r in history] == ["p", "p"]
    assert history[0].definition == definition("p", version="1.0.0").to_dict()
    assert history[1].definition["stages"][0]["name"] == "x"
    # The history is a copy: changing it does not change the registry.
    history.clear()
    assert len(reg.history("p")) == 2


def test_exists_and_names(reg: Registry) -> None:
    assert not reg.exists("p")
    reg.put(definition("p"))
    reg.put(definition("a"))
    assert reg.exists("p")
    assert reg.names() == ["a", "p"]


def test_list_sorted_and_filtered_by_type(reg: Registry) -> None:
    for name, kind in [("zeta", "query"), ("alpha", "document"), ("mid", "result"), ("beta", "query")]:
        reg.put(definition(name, type=kind))
    reg.put(definition("alpha", type="document", version="2.0.0"))
    everything = reg.pipelines()
    assert [p.definition.name for p in everything] == ["alpha", "beta", "mid", "zeta"]
    assert everything[0].revision == 2  # the latest revision of each
    assert [p.definition.name for p in reg.pipelines(QUERY)] == ["beta", "zeta"]
    assert [p.definition.name for p in reg.pipelines(DOC)] == ["alpha"]
    assert [p.definition.name for p in reg.pipelines(RESULT)] == ["mid"]


def test_put_concurrently_gives_consecutive_revisions(reg: Registry) -> None:
    threads_n, per_thread = 8, 25
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                reg.put(definition("p", version=f"{t}.{i}.0"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    revisions = [r.revision for r in reg.history("p")]
    assert revisions == list(range(1, threads_n * per_thread + 1))
    assert len({r.definition["version"] for r in reg.history("p")}) == threads_n * per_thread


# --- delete --------------------------------------------------------------------------------------------------


def test_delete(reg: Registry) -> None:
    reg.put(definition("p"))
    reg.put(definition("p"))
    reg.delete("p")
    assert not reg.exists("p")
    with pytest.raises(NotFoundError):
        reg.get("p")
    # Put again after a delete: a new pipeline, whose revisions continue where the deleted one's stopped
    # (a (name, revision) pair never names two definitions).
    again = reg.put(definition("p"))
    assert (again.revision, again.created) == (3, True)
    assert [r.revision for r in reg.history("p")] == [3]


def test_delete_unknown(reg: Registry) -> None:
    with pytest.raises(NotFoundError) as info:
        reg.delete("ghost")
    assert info.value.status == 404


def test_delete_refused_while_an_index_uses_it(reg: Registry) -> None:
    reg.put(definition("p"))
    reg.associate("products", DOC, "p")
    reg.associate("articles", DOC, "p")
    with pytest.raises(ConflictError) as info:
        reg.delete("p")
    assert "index [articles] (document)" in info.value.message
    assert "index [products] (document)" in info.value.message
    assert info.value.status == 409
    assert reg.exists("p")
    reg.disassociate("products", DOC)
    reg.disassociate("articles", DOC)
    reg.delete("p")
    assert not reg.exists("p")


def test_delete_refused_while_another_pipeline_calls_it(reg: Registry) -> None:
    reg.put(definition("shared"))
    reg.put(definition("caller", calls=("shared",)))
    with pytest.raises(ConflictError) as info:
        reg.delete("shared")
    assert "pipeline [caller]" in info.value.message
    assert reg.exists("shared")
    # Once the caller stops calling it, it can go.
    reg.put(definition("caller"))
    reg.delete("shared")
    assert reg.names() == ["caller"]


def test_delete_refused_names_every_user(reg: Registry) -> None:
    reg.put(definition("shared"))
    nested = {
        "name": "g",
        "type": "composite",
        "config": {"stages": [{"name": "c", "type": "pipeline", "config": {"pipeline": "shared"}}]},
    }
    reg.put(definition("one", stages=[nested]))
    reg.put(definition("two", calls=("shared",)))
    reg.associate("idx", DOC, "shared")
    with pytest.raises(ConflictError) as info:
        reg.delete("shared")
    message = info.value.message
    for user in ("index [idx] (document)", "pipeline [one]", "pipeline [two]"):
        assert user in message


def test_delete_the_only_pipeline(reg: Registry) -> None:
    reg.put(definition("p"))
    reg.delete("p")
    assert reg.names() == []


# --- associations --------------------------------------------------------------------------------------------


def test_associate_and_disassociate(reg: Registry) -> None:
    reg.put(definition("d", type="document"))
    reg.put(definition("q", type="query"))
    reg.put(definition("r", type="result"))
    assert reg.pipeline_for("products", DOC) is None
    reg.associate("products", DOC, "d")
    reg.associate("products", QUERY, "q")
    reg.associate("products", RESULT, "r")
    assert reg.pipeline_for("products", DOC) == "d"
    assert reg.pipeline_for("products", QUERY) == "q"
    assert reg.pipeline_for("products", RESULT) == "r"
    assert reg.associations("products") == {"document": "d", "query": "q", "result": "r"}
    assert reg.associations("other") == {}

    reg.disassociate("products", QUERY)
    assert reg.pipeline_for("products", QUERY) is None
    assert reg.associations("products") == {"document": "d", "result": "r"}
    reg.disassociate("products", QUERY)  # twice is harmless
    reg.disassociate("never", DOC)


def test_associate_replaces_the_pipeline_of_that_type(reg: Registry) -> None:
    reg.put(definition("d1"))
    reg.put(definition("d2"))
    reg.associate("idx", DOC, "d1")
    reg.associate("idx", DOC, "d2")
    assert reg.pipeline_for("idx", DOC) == "d2"
    reg.delete("d1")  # no longer used


def test_associate_checks_the_type(reg: Registry) -> None:
    reg.put(definition("q", type="query"))
    with pytest.raises(ConflictError) as info:
        reg.associate("products", DOC, "q")
    assert "[q] is a query pipeline" in info.value.message
    assert "needs a document pipeline" in info.value.message
    assert reg.pipeline_for("products", DOC) is None


def test_associate_unknown_pipeline(reg: Registry) -> None:
    with pytest.raises(NotFoundError):
        reg.associate("products", DOC, "ghost")


# --- references: pipeline stages -----------------------------------------------------------------------------


def test_pipeline_stage_target_must_exist(reg: Registry) -> None:
    with pytest.raises(DefinitionError) as info:
        reg.put(definition("a", calls=("ghost",)))
    assert problems(info) == [("stages[0].config.pipeline", "pipeline [ghost] does not exist")]
    assert not reg.exists("a")


def test_pipeline_stage_target_nested_in_a_composite(reg: Registry) -> None:
    nested = {
        "name": "g",
        "type": "composite",
        "config": {
            "stages": [
                {"name": "x", "type": "native", "config": {"processor": "drop", "field": "x"}},
                {"name": "c", "type": "pipeline", "config": {"pipeline": "ghost"}},
            ]
        },
    }
    with pytest.raises(DefinitionError) as info:
        reg.put(definition("a", stages=[nested]))
    assert problems(info) == [("stages[0].config.stages[1].config.pipeline", "pipeline [ghost] does not exist")]


def test_pipeline_stage_target_must_be_of_the_same_type(reg: Registry) -> None:
    reg.put(definition("q", type="query"))
    with pytest.raises(DefinitionError) as info:
        reg.put(definition("d", type="document", calls=("q",)))
    [(path, message)] = problems(info)
    assert path == "stages[0].config.pipeline"
    assert message == "pipeline [q] is a query pipeline, not a document pipeline"


def test_self_cycle(reg: Registry) -> None:
    with pytest.raises(DefinitionError) as info:
        reg.put(definition("a", calls=("a",)))
    assert problems(info) == [("stages[0].config.pipeline", "pipeline cycle: a -> a")]
    # Also when a already exists.
    reg.put(definition("a"))
    with pytest.raises(DefinitionError, match="a -> a"):
        reg.put(definition("a", calls=("a",)))
    assert reg.get("a").revision == 1


def test_two_cycle(reg: Registry) -> None:
    reg.put(definition("b"))
    reg.put(definition("a", calls=("b",)))
    with pytest.raises(DefinitionError) as info:
        reg.put(definition("b", calls=("a",)))
    assert problems(info) == [("stages", "pipeline cycle: b -> a -> b")]
    # Nothing was stored.
    assert reg.get("b").revision == 1
    assert reg.get("b").definition.pipeline_targets() == []


def test_three_cycle_created_by_re_putting(reg: Registry) -> None:
    reg.put(definition("c"))
    reg.put(definition("b", calls=("c",)))
    reg.put(definition("a", calls=("b",)))
    with pytest.raises(DefinitionError) as info:
        reg.put(definition("c", calls=("a",)))
    assert problems(info) == [("stages", "pipeline cycle: c -> a -> b -> c")]
    assert reg.get("c").revision == 1


def test_cycle_through_a_branch_is_found(reg: Registry) -> None:
    # a calls x (a dead end) and b; b calls c; re-putting c to call a closes c -> a -> b -> c.
    reg.put(definition("x"))
    reg.put(definition("c"))
    reg.put(definition("b", calls=("c",)))
    reg.put(definition("a", calls=("x", "b")))
    with pytest.raises(DefinitionError, match=r"pipeline cycle: c -> a -> b -> c"):
        reg.put(definition("c", calls=("x", "a")))


def test_diamond_is_not_a_cycle(reg: Registry) -> None:
    reg.put(definition("d"))
    reg.put(definition("b", calls=("d",)))
    reg.put(definition("c", calls=("d",)))
    reg.put(definition("a", calls=("b", "c", "d")))
    reg.put(definition("a", calls=("b", "c")))
    assert reg.get("a").revision == 2


def test_type_change_refused_while_an_index_uses_it(reg: Registry) -> None:
    reg.put(definition("p", type="document"))
    reg.associate("idx", DOC, "p")
    with pytest.raises(ConflictError) as info:
        reg.put(definition("p", type="query"))
    assert "cannot change type from document to query" in info.value.message
    assert "index [idx] (document)" in info.value.message
    assert reg.get("p").definition.type is DOC
    assert len(reg.history("p")) == 1


def test_type_change_refused_while_another_pipeline_calls_it(reg: Registry) -> None:
    reg.put(definition("shared", type="document"))
    reg.put(definition("caller", type="document", calls=("shared",)))
    with pytest.raises(ConflictError, match=r"pipeline \[caller\]"):
        reg.put(definition("shared", type="result"))


def test_type_change_allowed_when_unused(reg: Registry) -> None:
    reg.put(definition("p", type="document"))
    result = reg.put(definition("p", type="query"))
    assert result.revision == 2
    assert reg.get("p").definition.type is QUERY
    reg.associate("idx", QUERY, "p")


# --- UDF versions --------------------------------------------------------------------------------------------


def test_put_udf_and_immutability(reg: Registry) -> None:
    assert reg.put_udf(udf("f", "1.0.0", "a" * 64)) is True
    assert reg.put_udf(udf("f", "1.0.0", "a" * 64)) is False  # same bytes: nothing to do
    with pytest.raises(ConflictError) as info:
        reg.put_udf(udf("f", "1.0.0", "b" * 64))
    assert "versions are immutable" in info.value.message
    assert info.value.status == 409
    assert reg.udf("f", "1.0.0").sha256 == "a" * 64


def test_put_udf_same_source_is_a_no_op(reg: Registry) -> None:
    # The same Python source rebuilt gives other component bytes; it is the same version all the same.
    assert reg.put_udf(udf("f", "1.0.0", "a" * 64, source="s" * 64)) is True
    assert reg.put_udf(udf("f", "1.0.0", "b" * 64, source="s" * 64)) is False
    assert reg.udf("f", "1.0.0").sha256 == "a" * 64
    with pytest.raises(ConflictError):
        reg.put_udf(udf("f", "1.0.0", "c" * 64, source="t" * 64))
    with pytest.raises(ConflictError):
        reg.put_udf(udf("f", "1.0.0", "c" * 64))  # an uploaded component with other bytes


def test_udf_versions_in_semver_order(reg: Registry) -> None:
    for version in ["1.10.0", "1.9.0", "1.2.0", "2.0.0-rc.1", "2.0.0", "0.1.0"]:
        reg.put_udf(udf("f", version))
    reg.put_udf(udf("g", "5.0.0"))
    assert reg.udf_versions("f") == ["0.1.0", "1.2.0", "1.9.0", "1.10.0", "2.0.0-rc.1", "2.0.0"]
    assert reg.udf_versions("missing") == []
    assert reg.udf_names() == ["f", "g"]


def test_udf_lookups_without_the_lock_see_whole_versions_while_others_put_and_delete(reg: Registry) -> None:
    # udf() reads without the registry lock (it runs once per UDF stage call): a reader racing puts and
    # deletes must get the latest version as of some moment, never a half-made version list.
    reg.put_udf(udf("f", "1.0.0", "1" * 64))
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                record = reg.udf("f", None)
                minor = int(record.version.split(".")[1])
                assert record.sha256 == ("1" * 64 if minor == 0 else f"{minor:064x}"), record
                seen.add(record.version)
            except BaseException as exc:  # any failure at all is the finding
                errors.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    interval = sys.getswitchinterval()
    # Switch threads often: the window is a few bytecodes of a put or delete. (And with the default 5 ms, the
    # writer waits up to a switch interval for the GIL after each of its database round trips.)
    sys.setswitchinterval(1e-5)
    try:
        for thread in readers:
            thread.start()
        for minor in range(1, 40):
            version = f"1.{minor}.0"
            reg.put_udf(udf("f", version, f"{minor:064x}"))
            reg.delete_udf("f", version)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert "1.0.0" in seen
    assert seen <= {"1.0.0", *(f"1.{m}.0" for m in range(1, 40))}
    assert reg.udf("f", None).version == "1.0.0"


def test_udf_latest_is_the_highest_semver(reg: Registry) -> None:
    reg.put_udf(udf("f", "1.9.0", "9" * 64))
    reg.put_udf(udf("f", "1.10.0", "a" * 64))
    reg.put_udf(udf("f", "1.2.0", "2" * 64))
    latest = reg.udf("f", None)
    assert (latest.version, latest.sha256) == ("1.10.0", "a" * 64)
    assert reg.udf("f", "1.9.0").sha256 == "9" * 64
    assert reg.udf_record("f", "1.2.0") is not None
    assert reg.udf_record("f", "3.0.0") is None


def test_udf_unknown(reg: Registry) -> None:
    with pytest.raises(NotFoundError) as info:
        reg.udf("ghost", None)
    assert info.value.kind == "udf"
    with pytest.raises(NotFoundError):
        reg.udf("ghost", "1.0.0")
    reg.put_udf(udf("f", "1.0.0"))
    with pytest.raises(NotFoundError) as info:
        reg.udf("f", "2.0.0")
    assert info.value.name == "f@2.0.0"


def test_sha_in_use(reg: Registry) -> None:
    reg.put_udf(udf("f", "1.0.0", "a" * 64))
    reg.put_udf(udf("g", "1.0.0", "a" * 64))
    assert reg.sha_in_use("a" * 64)
    assert not reg.sha_in_use("b" * 64)
    reg.delete_udf("f", "1.0.0")
    assert reg.sha_in_use("a" * 64)  # g still has those bytes
    reg.delete_udf("g", "1.0.0")
    assert not reg.sha_in_use("a" * 64)


def test_python_stage_needs_a_registered_udf(reg: Registry) -> None:
    with pytest.raises(DefinitionError) as info:
        reg.put(definition("p", stages=[python_stage("ghost")]))
    assert problems(info) == [("stages[0].config.udf_name", "UDF [ghost] is not registered")]
    reg.put_udf(udf("f", "1.0.0"))
    with pytest.raises(DefinitionError) as info:
        reg.put(definition("p", stages=[python_stage("f", "2.0.0")]))
    assert problems(info) == [("stages[0].config.udf_version", "UDF [f] has no version [2.0.0]")]
    assert not reg.exists("p")
    reg.put(definition("p", stages=[python_stage("f", "1.0.0")]))
    reg.put(definition("p", stages=[python_stage("f")]))
    reg.put(definition("p", stages=[python_stage("f", "latest")]))
    assert reg.get("p").revision == 3


def test_delete_udf(reg: Registry) -> None:
    reg.put_udf(udf("f", "1.0.0"))
    reg.put_udf(udf("f", "1.1.0"))
    removed = reg.delete_udf("f", "1.0.0")
    assert removed.version == "1.0.0"
    assert reg.udf_versions("f") == ["1.1.0"]
    with pytest.raises(NotFoundError):
        reg.delete_udf("f", "1.0.0")
    with pytest.raises(NotFoundError):
        reg.delete_udf("ghost", "1.0.0")


def test_delete_udf_refused_while_pinned(reg: Registry) -> None:
    reg.put_udf(udf("f", "1.0.0"))
    reg.put_udf(udf("f", "2.0.0"))
    reg.put(definition("pinner", stages=[python_stage("f", "1.0.0")]))
    with pytest.raises(ConflictError) as info:
        reg.delete_udf("f", "1.0.0")
    assert "[pinner]" in info.value.message
    assert reg.udf_versions("f") == ["1.0.0", "2.0.0"]
    # 2.0.0 is not pinned, and 1.0.0 would still be there for a `latest` user.
    reg.delete_udf("f", "2.0.0")
    assert reg.udf_versions("f") == ["1.0.0"]


def test_delete_udf_refused_for_the_last_version_while_latest_is_used(reg: Registry) -> None:
    reg.put_udf(udf("f", "1.0.0"))
    reg.put_udf(udf("f", "2.0.0"))
    reg.put(definition("floating", stages=[python_stage("f")]))
    reg.delete_udf("f", "2.0.0")  # 1.0.0 becomes latest
    with pytest.raises(ConflictError, match=r"\[floating\]"):
        reg.delete_udf("f", "1.0.0")
    reg.put(definition("floating"))  # stops using the UDF
    reg.delete_udf("f", "1.0.0")
    assert reg.udf_versions("f") == []


def test_delete_udf_checks_nested_python_stages(reg: Registry) -> None:
    reg.put_udf(udf("f", "1.0.0"))
    nested = {"name": "g", "type": "composite", "config": {"stages": [python_stage("f", "1.0.0")]}}
    reg.put(definition("p", stages=[nested]))
    with pytest.raises(ConflictError, match=r"\[p\]"):
        reg.delete_udf("f", "1.0.0")


def test_a_second_registry_over_the_same_storage_sees_everything() -> None:
    storage = MemoryStorage()
    first = Registry(storage, now=FakeClock())
    first.put_udf(udf("f", "1.0.0"))
    first.put(definition("shared"))
    first.put(definition("p", calls=("shared",), stages=[python_stage("f")]))
    first.put(definition("p", calls=("shared",), stages=[python_stage("f", "1.0.0")]))
    first.associate("idx", DOC, "p")

    second = Registry(storage)
    assert second.names() == ["p", "shared"]
    assert [r.revision for r in second.history("p")] == [1, 2]
    assert second.get("p").definition == first.get("p").definition
    assert second.get("p", revision=1).definition == first.get("p", revision=1).definition
    assert second.pipeline_for("idx", DOC) == "p"
    assert second.udf("f", None) == first.udf("f", None)
    # Rules hold over what was loaded.
    with pytest.raises(ConflictError):
        second.delete("shared")
    with pytest.raises(DefinitionError, match="shared -> p -> shared"):
        second.put(definition("shared", calls=("p",)))


def test_latest_is_the_highest_release_and_pre_releases_are_pinned(reg: Registry) -> None:
    reg.put_udf(udf("f", "2.0.0-rc.1", "a" * 64))
    assert reg.udf("f", None).version == "2.0.0-rc.1"  # only pre-releases: the highest of them
    reg.put_udf(udf("f", "1.0.0", "b" * 64))
    reg.put_udf(udf("f", "1.2.0-beta", "c" * 64))
    assert reg.udf_versions("f") == ["1.0.0", "1.2.0-beta", "2.0.0-rc.1"]
    assert reg.udf("f", None).version == "1.0.0"
    assert reg.udf("f", "2.0.0-rc.1").sha256 == "a" * 64
    reg.put_udf(udf("f", "1.1.0", "d" * 64))
    assert reg.udf("f", None).version == "1.1.0"
    reg.delete_udf("f", "1.1.0")
    assert reg.udf("f", None).version == "1.0.0"


def test_latest_survives_a_restart(tmp_path: Path) -> None:
    first = Registry(SqliteStorage(tmp_path / "r.sqlite"))
    for version, sha in [("3.0.0-rc.1", "a"), ("2.0.0", "b"), ("10.0.0-alpha", "c")]:
        first.put_udf(udf("f", version, sha * 64))
    first.close()
    again = Registry(SqliteStorage(tmp_path / "r.sqlite"))
    try:
        assert again.udf("f", None).version == "2.0.0"
    finally:
        again.close()


def test_udf_lookups_without_the_lock_never_miss_while_the_view_is_refreshed(reg: Registry) -> None:
    # A node re-reads its whole view whenever another node changes the registry; a python stage resolving its
    # UDF at that moment must still find it (the version maps are never seen half-filled).
    for i in range(100):
        reg.put_udf(udf(f"f{i}", "1.0.0", f"{i:064x}"))
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                for i in (0, 50, 99):
                    assert reg.udf(f"f{i}", None).sha256 == f"{i:064x}"
            except BaseException as exc:  # any failure at all is the finding
                errors.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: the window is short
    try:
        for thread in readers:
            thread.start()
        for _ in range(50):
            state = reg._storage.load()
            with reg._lock:
                reg._adopt(state)  # what refresh() does once it has read the store
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        sys.setswitchinterval(interval)
    assert errors == []
