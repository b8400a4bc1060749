"""The python stage end to end through PipelineService and real WebAssembly (issue 3 §7).

Components come from the session's build cache (tests/udf_fixtures.py) and run in the session's runtime;
``SELECTOR`` runs in source mode on the shared interpreter, so this module builds no component of its own
(but the one whose build is the point of a test).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quidditch_pipeline import ConflictError, DefinitionError, NotFoundError, PipelineService, StageError
from quidditch_pipeline.storage import SqliteStorage
from quidditch_pipeline.udf import UdfRuntime
from tests.conftest import IN_PROCESS_AND_WORKERS
from tests.udf_fixtures import HOSTILE_SOURCE, BuiltUdf, UdfBuilds, UdfSources

# Behaviour chosen per document, so one batch can hold a runaway next to well-behaved neighbours.
SELECTOR = """\
def process(value, params):
    if value.get("loop"):
        while True:
            pass
    if value.get("boom"):
        raise ValueError("boom " + str(value["boom"]))
    return {"seen": params.get("tag", True)}
"""


@pytest.fixture(scope="module")
def selector(udf_sources: UdfSources) -> BuiltUdf:
    return udf_sources.build("selector", SELECTOR)


@pytest.fixture
def svc(
    tmp_path: Path, udf_runtime: UdfRuntime, hostile_udf: BuiltUdf, selector: BuiltUdf, options: dict[str, Any]
) -> Iterator[PipelineService]:
    with PipelineService(
        SqliteStorage(tmp_path / "registry.sqlite"), tmp_path / "udfs", runtime=udf_runtime, **options
    ) as service:
        service.put_udf("hostile", "1.0.0", hostile_udf.wasm)
        service.put_udf("selector", "1.0.0", selector.source, mode="source")
        yield service


def python_stage(udf: str, **config: Any) -> dict[str, Any]:
    extra = {k: config.pop(k) for k in ("on_failure", "timeout_ms") if k in config}
    return {"name": udf, "type": "python", **extra, "config": {"udf_name": udf, **config}}


def pipeline(name: str, kind: str, *stages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "type": kind, "stages": list(stages), **extra}


@IN_PROCESS_AND_WORKERS
def test_a_batch_crosses_in_one_call_and_maps_per_document(svc: PipelineService) -> None:
    svc.put_pipeline(pipeline("docs", "document", python_stage("selector", parameters={"tag": "t"})))
    svc.associate("idx", "document", "docs")
    outcomes = svc.process_documents("idx", [("1", {"a": 1}), ("2", {"boom": 2}), ("3", {"a": 3})])
    assert [o.status for o in outcomes] == ["success", "failed", "success"]
    assert outcomes[0].source == {"a": 1, "seen": "t"}
    assert isinstance(outcomes[1].error, StageError)
    assert "raised ValueError: boom 2 (line 6)" in outcomes[1].error.message
    assert outcomes[1].error.input_id == "2"


@IN_PROCESS_AND_WORKERS
def test_one_runaway_document_is_preempted_and_its_neighbours_go_on(svc: PipelineService) -> None:
    svc.put_pipeline(pipeline("docs", "document", python_stage("selector", timeout_ms=100)))
    svc.associate("idx", "document", "docs")
    start = time.perf_counter()
    outcomes = svc.process_documents("idx", [("1", {}), ("2", {"loop": True}), ("3", {})])
    elapsed = time.perf_counter() - start
    assert [o.status for o in outcomes] == ["success", "failed", "success"]
    assert outcomes[1].error is not None and outcomes[1].error.kind == "timeout"
    # The batch's budget (3 x 100 ms) is preempted, then the runaway alone (100 ms): well under a second.
    assert elapsed < 1.5
    assert svc.process_document("idx", "4", {}) == {"seen": True}


@IN_PROCESS_AND_WORKERS
def test_under_a_pipeline_timeout_the_runaway_fails_alone_and_its_neighbours_keep_their_own_budget(
    svc: PipelineService,
) -> None:
    # Pipeline and stage both allow 100 ms per input. The batch call is preempted at 3 x 100 ms; each input is
    # then called alone with its own 100 ms, not with what is left of the batch's 300 ms (nothing).
    svc.put_pipeline(pipeline("docs", "document", python_stage("selector", timeout_ms=100), timeout_ms=100))
    svc.associate("idx", "document", "docs")
    outcomes = svc.process_documents("idx", [("1", {}), ("2", {"loop": True}), ("3", {})])
    assert [o.status for o in outcomes] == ["success", "failed", "success"]
    assert outcomes[0].source == {"seen": True} and outcomes[2].source == {"seen": True}
    assert outcomes[1].error is not None and outcomes[1].error.kind == "timeout"


@IN_PROCESS_AND_WORKERS
def test_params_merge_and_meta_reach_the_guest(svc: PipelineService) -> None:
    stage = python_stage("hostile", parameters={"do": "params", "stage": 1}, target_field="x")
    svc.put_pipeline(pipeline("p", "document", stage, parameters={"pipe": 1, "stage": 0, "run": 0}))
    out = svc.execute("p", {"a": 1}, params={"run": 2})
    assert out["status"] == "success"
    assert out["output"] == {"a": 1, "do": "params", "stage": 1, "pipe": 1, "run": 2}
    svc.put_pipeline(pipeline("m", "document", python_stage("hostile", parameters={"do": "meta"})))
    svc.associate("idx", "document", "m")
    assert svc.process_document("idx", "42", {}) == {
        "index": "idx",
        "id": "42",
        "pipeline": "m",
        "stage": "hostile",
        "type": "document",
    }


def test_retry_after_timeouts_preempts_each_attempt_and_the_udf_still_works(svc: PipelineService) -> None:
    stage = python_stage("hostile", parameters={"do": "loop"}, on_failure="retry", timeout_ms=50)
    svc.put_pipeline(pipeline("r", "document", stage, retry={"max_attempts": 3, "initial_backoff_ms": 5}))
    start = time.perf_counter()
    out = svc.execute("r", {"a": 1})
    elapsed = time.perf_counter() - start
    assert out["status"] == "failed" and out["error"]["type"] == "timeout"
    assert out["stages"][0]["attempts"] == 3
    assert elapsed < 3 * 0.05 + 0.5
    assert svc.stats("r")["stages"][0]["timeouts"] == 3
    assert svc.stats("r")["stages"][0]["retries"] == 2
    svc.put_pipeline(pipeline("ok", "document", python_stage("hostile", parameters={"do": "none"})))
    assert svc.execute("ok", {"a": 1})["output"] == {"a": 1}


def test_continue_after_a_trap_passes_the_input_on(svc: PipelineService) -> None:
    trap = python_stage("hostile", parameters={"do": "unbounded_recursion"}, on_failure="continue")
    after = {"name": "after", "type": "native", "config": {"processor": "set", "field": "after", "value": 1}}
    svc.put_pipeline(pipeline("t", "document", trap, after))
    out = svc.execute("t", {"a": 1})
    assert out["status"] == "success" and out["output"] == {"a": 1, "after": 1}
    assert out["stages"][0]["status"] == "error_ignored"
    assert svc.execute("t", {"b": 2})["output"] == {"b": 2, "after": 1}  # the trapped instance was replaced


def test_memory_bomb_fails_its_stage_with_a_memory_error(svc: PipelineService) -> None:
    stage = python_stage("hostile", parameters={"do": "memory"}, memory_limit_mb=64)
    svc.put_pipeline(pipeline("mem", "document", stage))
    out = svc.execute("mem", {})
    assert out["status"] == "failed" and out["error"]["type"] == "memory"


def test_result_pipeline_rescores_and_resorts_hits_with_the_example_udf(
    svc: PipelineService, udf_builds: UdfBuilds
) -> None:
    svc.put_udf("recency_boost", "1.0.0", udf_builds.get("recency_boost").wasm)
    svc.put_pipeline(pipeline("boost", "result", python_stage("recency_boost", parameters={"days": 7, "boost": 3.0})))
    svc.associate("idx", "result", "boost")
    response = {
        "hits": {
            "total": {"value": 3, "relation": "eq"},
            "hits": [
                {"_index": "idx", "_id": "old", "_score": 2.0, "_source": {"age_days": 100}},
                {"_index": "idx", "_id": "new", "_score": 1.0, "_source": {"age_days": 1}},
                {"_index": "idx", "_id": "undated", "_score": 1.5, "_source": {}},
            ],
        }
    }
    out = svc.process_results("idx", {"query": {"match_all": {}}}, response)
    assert [(h["_id"], h["_score"]) for h in out["hits"]["hits"]] == [("new", 3.0), ("old", 2.0), ("undated", 1.5)]
    assert out["hits"]["max_score"] == 3.0


def test_udf_versions_are_immutable_and_latest_is_the_highest(
    svc: PipelineService, hostile_udf: BuiltUdf, selector: BuiltUdf
) -> None:
    assert svc.put_udf("selector", "1.0.0", selector.source, mode="source")["created"] is False
    with pytest.raises(ConflictError, match="immutable"):
        svc.put_udf("selector", "1.0.0", hostile_udf.wasm)
    svc.put_udf("selector", "1.10.0", hostile_udf.wasm)
    svc.put_udf("selector", "1.9.0", selector.source, mode="source")
    assert svc.udf_versions("selector") == ["1.0.0", "1.9.0", "1.10.0"]
    svc.put_pipeline(pipeline("latest", "document", python_stage("selector", parameters={"do": "none"})))
    assert svc.execute("latest", {"x": 1})["output"] == {"x": 1}  # 1.10.0 is the hostile component
    svc.put_pipeline(pipeline("pinned", "document", python_stage("selector", udf_version="1.9.0")))
    assert svc.execute("pinned", {"x": 1})["output"] == {"x": 1, "seen": True}
    with pytest.raises(ConflictError, match=r"\[pinned\]"):
        svc.delete_udf("selector", "1.9.0")
    svc.delete_udf("selector", "1.10.0")
    assert svc.execute("latest", {"x": 1})["output"] == {"x": 1, "seen": True}  # now 1.9.0
    svc.put_udf("selector", "2.0.0", hostile_udf.wasm)
    assert svc.execute("latest", {"x": 1})["output"] == {"x": 1}  # the version put since, at the next run
    with pytest.raises(DefinitionError, match=r"stages\[0\]\.config\.udf_version"):
        svc.put_pipeline(pipeline("bad", "document", python_stage("selector", udf_version="3.0.0")))
    with pytest.raises(NotFoundError):
        svc.udf_versions("nope")


def test_the_same_source_again_is_a_no_op_without_a_rebuild(
    svc: PipelineService, udf_builds: UdfBuilds, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first put's build is a real componentize-py build, taken from the session's cache (the hostile
    # UDF's source: built once for the suite) so that this test pays no build of its own. What is under test
    # is the second put, which must build nothing: the store counts the builds it ran.
    def cached_build(source: str, **_: Any) -> bytes:
        return udf_builds.build("hostile", source).wasm

    monkeypatch.setattr(svc.udfs, "_builder", cached_build)
    first = svc.put_udf("noop", "1.0.0", HOSTILE_SOURCE)
    assert svc.udfs.builds[0] == 1
    again = svc.put_udf("noop", "1.0.0", HOSTILE_SOURCE)
    assert (first["created"], again["created"], again["sha256"]) == (True, False, first["sha256"])
    with pytest.raises(ConflictError):
        svc.put_udf("noop", "1.0.0", HOSTILE_SOURCE + "# changed\n")
    assert svc.udfs.builds[0] == 1  # neither the same source again nor a changed one was built


def test_execute_udf_shows_the_raw_value_and_its_mapping(svc: PipelineService) -> None:
    out = svc.execute_udf("selector", {"a": 1}, params={"tag": "x"})
    assert (out["status"], out["raw"], out["mapped"]) == ("success", {"seen": "x"}, {"a": 1, "seen": "x"})
    failed = svc.execute_udf("selector", {"boom": 1})
    assert failed["status"] == "failed" and failed["error"]["type"] == "ValueError" and failed["error"]["line"] == 6


def test_a_restart_runs_udfs_from_the_stored_components(tmp_path: Path, selector: BuiltUdf) -> None:
    with PipelineService.open(tmp_path / "d") as first:
        first.put_udf("selector", "1.0.0", selector.source, mode="source")
        first.put_pipeline(pipeline("p", "document", python_stage("selector")))
    with PipelineService.open(tmp_path / "d") as second:
        start = time.perf_counter()
        assert second.execute("p", {"a": 1})["output"] == {"a": 1, "seen": True}
        assert time.perf_counter() - start < 2.0  # mapped back from compiled/, not recompiled


def test_input_fields_send_the_udf_only_those_fields_and_map_onto_the_whole_document(svc: PipelineService) -> None:
    # The hostile UDF's "echo" returns what it was given: exactly the projection. Mapped as a dict, it is
    # merged into the whole document, so the fields the UDF never saw (a.x, d) are still there at the top.
    echo = python_stage("hostile", parameters={"do": "echo"}, input_fields=["a.b", "c", "nope.z"])
    svc.put_pipeline(pipeline("docs", "document", echo))
    svc.associate("idx", "document", "docs")
    doc = {"a": {"b": 1, "x": 2}, "c": [3], "d": 4}
    assert svc.process_document("idx", "1", doc) == {"a": {"b": 1}, "c": [3], "d": 4}
    assert doc == {"a": {"b": 1, "x": 2}, "c": [3], "d": 4}


def test_input_fields_give_the_example_udf_the_same_results_as_whole_documents(
    svc: PipelineService, udf_builds: UdfBuilds
) -> None:
    svc.put_udf("recency_boost", "1.0.0", udf_builds.get("recency_boost").wasm)
    params = {"days": 30, "boost": 2.0, "decay": 0.25, "now": "2025-06-01"}
    whole = python_stage("recency_boost", parameters=params, target_field="boosted")
    projected = {
        **whole,
        "config": {**whole["config"], "input_fields": ["_score", "_source.age_days", "_source.published"]},
    }
    svc.put_pipeline(pipeline("whole", "document", whole))
    svc.put_pipeline(pipeline("projected", "document", projected))
    svc.associate("w", "document", "whole")
    svc.associate("p", "document", "projected")
    docs = [
        (str(i), {"_id": str(i), "_score": 1.0 + i, "_source": {"title": "t" * i, **source}})
        for i, source in enumerate([{"age_days": 3}, {"age_days": 90}, {"published": "2025-05-20"}, {}])
    ]
    expected = [o.source for o in svc.process_documents("w", docs)]
    assert [o.source for o in svc.process_documents("p", docs)] == expected
    assert [None if s is None else s.get("boosted") for s in expected] == [2.0, 1.0, 6.0, None]
