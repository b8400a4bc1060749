"""PipelineService (DESIGN §7): the facade over registry, executor and stats, with native stages.

UDF-backed paths through real WebAssembly are in tests/test_service_udf.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from quidditch_pipeline import (
    ConflictError,
    DefinitionError,
    InputError,
    NotFoundError,
    PipelineService,
    QueryRejectedError,
    StageError,
)
from tests.conftest import IN_PROCESS_AND_WORKERS


def definition(name: str, kind: str = "document", **extra: Any) -> dict[str, Any]:
    stages = extra.pop(
        "stages", [{"name": "lower", "type": "native", "config": {"processor": "lowercase", "field": "title"}}]
    )
    return {"name": name, "version": "1.0.0", "type": kind, "stages": stages, **extra}


def test_put_get_history_list_delete(service: PipelineService) -> None:
    first = service.put_pipeline(definition("a"))
    assert first == {"acknowledged": True, "name": "a", "version": "1.0.0", "revision": 1, "created": True}
    second = service.put_pipeline({**definition("a"), "version": "1.1.0"}, name="a")
    assert (second["revision"], second["created"]) == (2, False)
    got = service.get_pipeline("a")
    assert (got["version"], got["revision"]) == ("1.1.0", 2) and got["created_at"] <= got["updated_at"]
    assert service.get_pipeline("a", revision=1)["version"] == "1.0.0"
    history = service.pipeline_history("a")["revisions"]
    assert [(r["revision"], r["version"]) for r in history] == [(1, "1.0.0"), (2, "1.1.0")]
    service.put_pipeline(definition("b", "query", stages=[]))
    assert [p["name"] for p in service.list_pipelines()["pipelines"]] == ["a", "b"]
    assert service.list_pipelines(type="query")["total"] == 1
    assert service.delete_pipeline("a") == {"acknowledged": True}
    with pytest.raises(NotFoundError):
        service.get_pipeline("a")


def test_the_name_in_the_url_must_match(service: PipelineService) -> None:
    with pytest.raises(DefinitionError, match=r"name: \[a\] differs"):
        service.put_pipeline(definition("a"), name="b")
    assert service.put_pipeline({k: v for k, v in definition("a").items() if k != "name"}, name="a")["name"] == "a"


def test_delete_is_refused_while_an_index_or_pipeline_uses_it(service: PipelineService) -> None:
    service.put_pipeline(definition("shared"))
    service.put_pipeline(
        definition("main", stages=[{"name": "c", "type": "pipeline", "config": {"pipeline": "shared"}}])
    )
    service.associate("products", "document", "shared")
    with pytest.raises(ConflictError, match=r"index \[products\].*pipeline \[main\]"):
        service.delete_pipeline("shared")
    with pytest.raises(ConflictError, match="needs a query pipeline"):
        service.associate("products", "query", "shared")


@IN_PROCESS_AND_WORKERS
def test_process_documents_batch_has_one_outcome_per_document(service: PipelineService) -> None:
    service.put_pipeline(
        definition(
            "docs",
            stages=[
                {"name": "lower", "type": "native", "config": {"processor": "lowercase", "field": "title"}},
                {"name": "drop", "type": "native", "config": {"processor": "drop", "field": "title", "value": "spam"}},
            ],
        )
    )
    service.associate("products", "document", "docs")
    outcomes = service.process_documents(
        "products", [("1", {"title": "Shoe"}), ("2", {"x": 1}), ("3", {"title": "SPAM"})]
    )
    assert [(o.id, o.status) for o in outcomes] == [("1", "success"), ("2", "failed"), ("3", "dropped")]
    assert outcomes[0].source == {"title": "shoe"}
    assert isinstance(outcomes[1].error, StageError) and outcomes[1].error.stage == "lower"
    assert service.process_document("products", "9", {"title": "OK"}) == {"title": "ok"}
    assert service.process_document("products", "9", {"title": "spam"}) is None
    assert service.process_document("products", "9", {"title": "SKIP"}, pipeline="_none") == {"title": "SKIP"}
    with pytest.raises(StageError, match=r"pipeline \[docs\] stage \[lower\].*input \[9\]"):
        service.process_document("products", "9", {})
    assert service.process_document("other-index", "1", {"title": "As Is"}) == {"title": "As Is"}


@IN_PROCESS_AND_WORKERS
def test_process_query_rewrites_or_rejects(service: PipelineService) -> None:
    service.put_pipeline(
        definition(
            "q",
            "query",
            stages=[
                {"name": "size", "type": "native", "config": {"processor": "set", "field": "size", "value": 5}},
                {"name": "no", "type": "native", "config": {"processor": "drop", "field": "blocked", "value": True}},
            ],
        )
    )
    service.associate("products", "query", "q")
    assert service.process_query("products", {"query": {"match_all": {}}}) == {"query": {"match_all": {}}, "size": 5}
    with pytest.raises(QueryRejectedError, match=r"\[q\] rejected"):
        service.process_query("products", {"blocked": True})


@IN_PROCESS_AND_WORKERS
def test_process_results_keeps_the_response_shape(service: PipelineService) -> None:
    service.put_pipeline(
        definition(
            "r",
            "result",
            stages=[
                {
                    "name": "hide",
                    "type": "native",
                    "config": {"processor": "drop", "field": "_source.hidden", "value": True},
                }
            ],
        )
    )
    service.associate("products", "result", "r")
    response = {
        "took": 3,
        "hits": {
            "total": {"value": 2, "relation": "eq"},
            "max_score": 2.0,
            "hits": [
                {"_index": "products", "_id": "1", "_score": 2.0, "_source": {"hidden": True}},
                {"_index": "products", "_id": "2", "_score": 1.0, "_source": {"hidden": False}},
            ],
        },
    }
    out = service.process_results("products", {}, response)
    assert [h["_id"] for h in out["hits"]["hits"]] == ["2"]
    assert out["hits"]["max_score"] == 1.0 and out["took"] == 3 and out["hits"]["hits"][0]["_index"] == "products"


def test_execute_stored_inline_and_batch(service: PipelineService) -> None:
    service.put_pipeline(definition("docs"))
    single = service.execute("docs", {"title": "ABC"})
    assert single["status"] == "success" and single["output"] == {"title": "abc"}
    assert single["stages"][0]["status"] == "success" and single["took_us"] >= 0
    batch = service.execute("docs", inputs=[{"title": "X"}, {"nope": 1}], verbose=False)
    assert [r["status"] for r in batch["results"]] == ["success", "failed"]
    assert "stages" not in batch["results"][0]
    assert batch["results"][1]["error"]["stage"] == "lower"
    inline = service.execute(definition("tmp", enabled=False), {"title": "ABC"})
    assert inline["status"] == "skipped" and inline["output"] == {"title": "ABC"}
    with pytest.raises(InputError, match="exactly one"):
        service.execute("docs")
    with pytest.raises(InputError, match=r"inputs\[1\]"):
        service.execute("docs", inputs=[{}, []])
    with pytest.raises(NotFoundError):
        service.execute("missing", {})
    with pytest.raises(DefinitionError, match=r"stages\[0\]\.config\.pipeline"):
        service.execute(
            definition("tmp", stages=[{"name": "c", "type": "pipeline", "config": {"pipeline": "nope"}}]), {}
        )


@IN_PROCESS_AND_WORKERS
def test_stats_are_recorded_on_every_path_and_reset(service: PipelineService) -> None:
    service.put_pipeline(definition("docs"))
    service.associate("products", "document", "docs")
    service.execute("docs", {"title": "A"})
    service.process_documents("products", [("1", {"title": "B"}), ("2", {})])
    stats = service.stats("docs")
    assert (stats["count"], stats["succeeded"], stats["failed"]) == (3, 2, 1)
    assert stats["stages"][0]["name"] == "lower" and stats["stages"][0]["count"] == 3
    assert stats["last_error"]["message"].startswith("pipeline [docs] stage [lower]")
    assert "docs" in service.stats()["pipelines"]
    service.reset_stats("docs")
    assert service.stats("docs")["count"] == 0
    with pytest.raises(NotFoundError):
        service.stats("missing")


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    with PipelineService.open(tmp_path) as svc:
        svc.put_pipeline(definition("a"))
        svc.put_pipeline({**definition("a"), "version": "2.0.0"})
        svc.associate("products", "document", "a")
        before = (svc.get_pipeline("a"), svc.pipeline_history("a"), svc.associations("products"))
    with PipelineService.open(tmp_path) as svc:
        assert (svc.get_pipeline("a"), svc.pipeline_history("a"), svc.associations("products")) == before
        assert svc.process_document("products", "1", {"title": "Up"}) == {"title": "up"}


@IN_PROCESS_AND_WORKERS
def test_concurrent_execution_while_pipelines_change(service: PipelineService) -> None:
    """8 threads execute while 2 threads re-put, delete and re-associate; the counters add up exactly."""
    service.put_pipeline(definition("a"))
    service.put_pipeline(definition("b"))
    service.associate("idx", "document", "a")
    stop = time.monotonic() + 1.0
    done = {"index": 0, "a": 0, "changes": 0}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def executor() -> None:
        try:
            while time.monotonic() < stop:
                outcomes = service.process_documents("idx", [(str(i), {"title": "T"}) for i in range(5)])
                assert all(o.status == "success" and o.source == {"title": "t"} for o in outcomes)
                assert service.execute("a", {"title": "X"}, verbose=False)["output"] == {"title": "x"}
                with contextlib.suppress(NotFoundError):
                    service.execute("scratch", {"title": "Y"}, verbose=False)
                with lock:
                    done["index"] += 5
                    done["a"] += 1
        except BaseException as exc:
            errors.append(exc)

    def writer(seed: int) -> None:
        try:
            n = 0
            while time.monotonic() < stop:
                n += 1
                service.put_pipeline({**definition("a"), "version": f"1.{seed}.{n}"})
                service.put_pipeline({**definition("b"), "version": f"1.{seed}.{n}"})
                service.associate("idx", "document", "b" if n % 2 else "a")
                service.put_pipeline(definition("scratch"))
                with contextlib.suppress(NotFoundError):
                    service.delete_pipeline("scratch")
                with lock:
                    done["changes"] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=executor) for _ in range(8)] + [
        threading.Thread(target=writer, args=(s,)) for s in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    a, b = service.stats("a"), service.stats("b")
    assert a["count"] + b["count"] == done["index"] + done["a"]
    assert a["succeeded"] + b["succeeded"] == done["index"] + done["a"]
    assert a["current"] == b["current"] == 0
    assert done["a"] > 0 and done["changes"] > 0  # the pipelines did change while they were executed
