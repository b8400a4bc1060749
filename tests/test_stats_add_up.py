"""Stats add up (issue 10 §11): every input that reaches a stage is counted in its ``count``, whatever became
of it, including inputs failed because their pipeline deadline had passed; ``count = succeeded + failed +
dropped + skipped`` per stage and per pipeline, and nothing stays ``current`` once a run is over."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quidditch_pipeline.executor import CompiledPipeline
from tests.engine_fakes import build, cost, fake_processors, run


@pytest.fixture(scope="module", autouse=True)
def processors() -> Iterator[None]:
    yield from fake_processors()


def add_up(snapshot: dict[str, Any]) -> bool:
    parts = snapshot["succeeded"] + snapshot["failed"] + snapshot["dropped"] + snapshot["skipped"]
    return bool(snapshot["count"] == parts and snapshot["current"] == 0)


def test_inputs_failed_because_the_deadline_passed_are_counted() -> None:
    p = build({"timeout_ms": 100, "on_failure": "continue", "stages": [cost("slow"), cost("after", field="x")]})
    items = run(p, [{"cost_ms": 150}, {"cost_ms": 10}])
    assert items[0].error is not None and "deadline passed before this stage started" in items[0].error.message
    slow, after = p.metrics.snapshot()["stages"]
    assert (slow["count"], slow["failed"], slow["timeouts"]) == (2, 1, 1)  # timed out, continued
    assert (after["count"], after["succeeded"], after["failed"], after["timeouts"]) == (2, 1, 1, 1)
    assert after["current"] == 0
    assert all(add_up(s) for s in (slow, after, p.metrics.snapshot()))


def test_skipped_stages_and_pipelines_count_their_inputs() -> None:
    p = build({"stages": [cost("off", enabled=False), cost("on")]})
    run(p, [{}, {}, {}])
    snap = p.metrics.snapshot()
    assert snap["stages"][0]["count"] == snap["stages"][0]["skipped"] == 3
    off = build({"enabled": False, "stages": [cost("s")]})
    run(off, [{}, {}])
    assert off.metrics.snapshot()["count"] == off.metrics.snapshot()["skipped"] == 2
    assert all(add_up(s) for s in (snap, *snap["stages"], off.metrics.snapshot()))


# --- the property ----------------------------------------------------------------------------------------------

POLICIES = st.sampled_from([None, "abort", "continue", "retry"])


@st.composite
def stage_defs(draw: st.DrawFn, index: int) -> dict[str, Any]:
    """A fake_cost stage reading its own fields of each document (cost, fail, drop), or a composite of them."""
    name = f"s{index}"
    common: dict[str, Any] = {"enabled": draw(st.sampled_from([True, True, False]))}
    policy = draw(POLICIES)
    if policy is not None:
        common["on_failure"] = policy
    if draw(st.booleans()):
        common["timeout_ms"] = draw(st.integers(5, 80))
    if draw(st.integers(0, 3)) == 0:
        children = [
            cost(f"{name}_{j}", field=f"c{index}_{j}", fail=f"f{index}_{j}", drop=f"d{index}_{j}")
            for j in range(draw(st.integers(1, 2)))
        ]
        return {"name": name, "type": "composite", "config": {"stages": children}, **common}
    return cost(name, field=f"c{index}", fail=f"f{index}", drop=f"d{index}", **common)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    n_stages = draw(st.integers(1, 5))
    stages = [draw(stage_defs(i)) for i in range(n_stages)]
    definition: dict[str, Any] = {
        "stages": stages,
        "enabled": draw(st.sampled_from([True, True, True, False])),
        "on_failure": draw(st.sampled_from(["abort", "continue", "retry"])),
        "retry": {
            "max_attempts": draw(st.integers(1, 3)),
            "initial_backoff_ms": draw(st.integers(0, 30)),
            "then": draw(st.sampled_from(["abort", "continue"])),
        },
    }
    if draw(st.booleans()):
        definition["timeout_ms"] = draw(st.integers(10, 150))
    fields = [f"{k}{i}" for i in range(n_stages) for k in "cfd"] + [
        f"{k}{i}_{j}" for i in range(n_stages) for j in range(2) for k in "cfd"
    ]
    docs = []
    for _ in range(draw(st.integers(1, 6))):
        doc: dict[str, Any] = {}
        for field in draw(st.lists(st.sampled_from(fields), max_size=6, unique=True)):
            doc[field] = draw(st.integers(0, 70)) if field.startswith("c") else True
        docs.append(doc)
    return definition, docs, draw(st.booleans())


def stage_snapshots(p: CompiledPipeline) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in p.metrics.snapshot()["stages"]}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_count_is_succeeded_failed_dropped_skipped_for_every_stage_and_the_pipeline(
    scenario: tuple[dict[str, Any], list[dict[str, Any]], bool],
) -> None:
    definition, docs, verbose = scenario
    p = build(definition)
    items = run(p, docs, verbose=verbose)
    snap = p.metrics.snapshot()
    assert add_up(snap), snap
    assert snap["count"] == len(docs)
    for stage in snap["stages"]:
        assert add_up(stage), stage
    if not verbose or not definition["enabled"]:
        return
    # Independently of the counters: a top-level stage's count is the number of inputs that reached it,
    # which the verbose trace shows (one entry per stage an input reached).
    stages = stage_snapshots(p)
    for sdef in definition["stages"]:
        reached = sum(1 for item in items if any(e["name"] == sdef["name"] for e in item.trace or []))
        assert stages[sdef["name"]]["count"] == reached, (sdef["name"], stages[sdef["name"]])
