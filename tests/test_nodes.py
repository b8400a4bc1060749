"""Several nodes on one PostgreSQL registry: the rules hold under cross-node races, and changes propagate.

Each "node" is its own :class:`Registry` over its own :class:`PostgresStorage` (its own connection pool and
listener connection), as separate processes would have. The races start conflicting changes on two nodes at
once (a barrier), many rounds over, and check the invariant over what a fresh reader finds stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from quidditch_pipeline.definitions import PipelineDefinition, parse_definition
from quidditch_pipeline.errors import ConflictError, DefinitionError, NotFoundError, StorageUnavailableError
from quidditch_pipeline.registry import Registry
from quidditch_pipeline.storage import PostgresStorage, UdfRecord

ROUNDS = 25


def definition(name: str, calls: tuple[str, ...] = ()) -> PipelineDefinition:
    stages: list[dict[str, Any]] = [{"name": f"call-{t}", "type": "pipeline", "config": {"pipeline": t}} for t in calls]
    stages.append({"name": "set", "type": "native", "config": {"processor": "set", "field": "by", "value": name}})
    return parse_definition({"name": name, "version": "1.0.0", "type": "document", "stages": stages})


@pytest.fixture
def nodes(postgres_dsn: str) -> Iterator[list[Registry]]:
    registries = [Registry(PostgresStorage(postgres_dsn)) for _ in range(3)]
    yield registries
    for registry in registries:
        registry.close()


def race(*changes: Callable[[], object]) -> list[BaseException | None]:
    """Run ``changes`` at once, one thread each; what each raised (None: it succeeded)."""
    barrier = threading.Barrier(len(changes))
    outcomes: list[BaseException | None] = [None] * len(changes)

    def run(i: int) -> None:
        barrier.wait()
        try:
            changes[i]()
        except (ConflictError, DefinitionError, NotFoundError) as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(changes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def stored(dsn: str) -> Registry:
    """A fresh reader of what the database holds now."""
    return Registry(PostgresStorage(dsn))


def test_two_puts_that_together_close_a_cycle_never_both_succeed(nodes: list[Registry], postgres_dsn: str) -> None:
    a, b = nodes[0], nodes[1]
    a.put(definition("x"))
    a.put(definition("y"))
    for _ in range(ROUNDS):
        outcomes = race(lambda: a.put(definition("x", ("y",))), lambda: b.put(definition("y", ("x",))))
        assert sum(o is None for o in outcomes) == 1, outcomes
        refused = next(o for o in outcomes if o is not None)
        assert isinstance(refused, DefinitionError) and "pipeline cycle" in refused.message
        reader = stored(postgres_dsn)
        try:
            x_calls = [t for _, t in reader.get("x").definition.pipeline_targets()]
            y_calls = [t for _, t in reader.get("y").definition.pipeline_targets()]
        finally:
            reader.close()
        assert not ("y" in x_calls and "x" in y_calls)
        a.put(definition("x"))  # undo for the next round
        a.put(definition("y"))


def test_a_delete_racing_a_put_that_calls_it_never_leaves_a_dangling_call(
    nodes: list[Registry], postgres_dsn: str
) -> None:
    a, b = nodes[0], nodes[1]
    for i in range(ROUNDS):
        target, caller = f"t{i}", f"c{i}"
        a.put(definition(target))
        outcomes = race(lambda: a.delete(target), lambda: b.put(definition(caller, (target,))))  # noqa: B023
        assert sum(o is None for o in outcomes) == 1, outcomes
    reader = stored(postgres_dsn)
    try:
        for name in reader.names():
            for _, target in reader.get(name).definition.pipeline_targets():
                assert reader.exists(target), f"{name} calls {target}, which is not stored"
    finally:
        reader.close()


def test_two_puts_of_one_udf_version_with_other_bytes_store_one(nodes: list[Registry], postgres_dsn: str) -> None:
    a, b = nodes[0], nodes[1]
    for i in range(ROUNDS):
        version = f"1.{i}.0"
        first = UdfRecord("f", version, "a" * 64, 1, 1.0)
        second = UdfRecord("f", version, "b" * 64, 1, 1.0)
        outcomes = race(lambda: a.put_udf(first), lambda: b.put_udf(second))  # noqa: B023
        assert sum(o is None for o in outcomes) == 1, outcomes
        winner = first if outcomes[0] is None else second
        assert isinstance(outcomes[1 if winner is first else 0], ConflictError)
        reader = stored(postgres_dsn)
        try:
            assert reader.udf("f", version).sha256 == winner.sha256
        finally:
            reader.close()


def test_revisions_stay_consecutive_when_every_node_puts_at_once(nodes: list[Registry], postgres_dsn: str) -> None:
    for _ in range(10):
        race(*(lambda node=node: node.put(definition("p")) for node in nodes))
    reader = stored(postgres_dsn)
    try:
        assert [r.revision for r in reader.history("p")] == list(range(1, 31))
    finally:
        reader.close()


def test_a_change_on_one_node_is_in_force_on_the_others(nodes: list[Registry]) -> None:
    a, b, c = nodes
    result = a.put(definition("shared"))
    assert result.change is not None
    for other in (b, c):
        assert other.wait_for_change(result.change, timeout_s=5)
        assert other.get("shared").revision == 1
    a.associate("products", definition("shared").type, "shared")
    change = a.status()["change"]
    assert b.wait_for_change(change, timeout_s=5)
    assert b.pipeline_for("products", definition("shared").type) == "shared"
    with pytest.raises(ConflictError):  # b knows the association: it refuses the delete by itself
        b.delete("shared")
    a.disassociate("products", definition("shared").type)
    b.delete("shared")
    assert a.wait_for_change(b.status()["change"], timeout_s=5)
    assert not a.exists("shared")
    assert a.status()["connected"] and a.status()["backend"] == "postgresql"


def test_a_node_whose_view_is_behind_checks_against_the_database(nodes: list[Registry], postgres_dsn: str) -> None:
    """Even without its notifications (a node that has not heard yet), a change is checked against the
    database's current state: node b has not refreshed, yet its put that would close a cycle is refused."""
    a = nodes[0]
    lagging = DeafRegistry(PostgresStorage(postgres_dsn))
    try:
        a.put(definition("y"))
        a.put(definition("x", ("y",)))
        with pytest.raises(DefinitionError, match="pipeline cycle"):
            lagging.put(definition("y", ("x",)))
    finally:
        lagging.close()


class DeafRegistry(Registry):
    """A node that hears no notifications (as one whose listener lags)."""

    def _on_change(self, change: int | None) -> None:
        return None


def test_an_unreachable_database_is_a_503() -> None:
    with pytest.raises(StorageUnavailableError) as caught:
        PostgresStorage("postgresql://nobody:secret@127.0.0.1:9/none")
    assert caught.value.status == 503
    assert "secret" not in caught.value.message
