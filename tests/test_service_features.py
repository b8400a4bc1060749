"""PipelineService: final pipelines, conditional puts (if_version / if_revision), _execute substitutions."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from quidditch_pipeline import (
    ConflictError,
    DefinitionError,
    InputError,
    PipelineService,
    PipelineUnavailableError,
    QueryRejectedError,
)


def native(name: str, processor: str = "set", **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


def pipeline(name: str, stages: list[dict[str, Any]], kind: str = "document", **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "type": kind, "stages": stages, **extra}


@pytest.fixture
def guarded(service: PipelineService) -> PipelineService:
    service.put_pipeline(pipeline("default", [native("d", field="by_default", value=True)]))
    service.put_pipeline(pipeline("request", [native("r", field="by_request", value=True)]))
    service.put_pipeline(pipeline("strip-pii", [native("pii", "remove", field="ssn", ignore_missing=True)]))
    service.associate("people", "document", "default")
    service.associate("people", "document_final", "strip-pii")
    return service


# --- final pipelines ---------------------------------------------------------------------------------------


def test_final_pipeline_runs_after_the_default_one(guarded: PipelineService) -> None:
    out = guarded.process_document("people", "1", {"name": "a", "ssn": "123"})
    assert out == {"name": "a", "by_default": True}
    assert guarded.associations("people") == {"document": "default", "document_final": "strip-pii"}


def test_none_skips_the_default_but_never_the_final(guarded: PipelineService) -> None:
    assert guarded.process_document("people", "1", {"ssn": "1"}, pipeline="_none") == {}
    assert guarded.process_document("people", "1", {"ssn": "1"}, pipeline="request") == {"by_request": True}
    stats = guarded.stats("strip-pii")
    assert stats["count"] == 2 and stats["succeeded"] == 2


def test_final_pipeline_named_by_the_caller(guarded: PipelineService) -> None:
    guarded.put_pipeline(pipeline("stamp", [native("s", field="stamped", value=True)]))
    outs = guarded.process_documents("people", [("1", {"ssn": "x"})], final_pipeline="stamp")
    assert outs[0].source == {"ssn": "x", "by_default": True, "stamped": True}
    assert guarded.process_documents("people", [("1", {"ssn": "x"})], final_pipeline="_none")[0].source == {
        "ssn": "x",
        "by_default": True,
    }


def test_final_pipeline_does_not_see_dropped_or_failed_documents(guarded: PipelineService) -> None:
    guarded.put_pipeline(
        pipeline(
            "gate", [native("drop", "drop", field="kind", value="spam"), native("f", "convert", field="n", type="int")]
        )
    )
    outs = guarded.process_documents(
        "people", [("1", {"kind": "spam"}), ("2", {"n": "x"}), ("3", {"n": "4", "ssn": "s"})], pipeline="gate"
    )
    assert [o.status for o in outs] == ["dropped", "failed", "success"]
    assert outs[2].source == {"n": 4}
    assert guarded.stats("strip-pii")["count"] == 1


def test_final_pipeline_missing_fails_closed(guarded: PipelineService) -> None:
    with pytest.raises(PipelineUnavailableError) as err:
        guarded.process_documents("people", [("1", {})], final_pipeline="ghost")
    assert err.value.pipeline == "ghost" and err.value.index == "people"
    # the associated final pipeline broken out of band: refused, with _none as well
    guarded.registry._history.pop("strip-pii")
    guarded._compiled.pop("strip-pii", None)
    with pytest.raises(PipelineUnavailableError):
        guarded.process_document("people", "1", {"ssn": "1"}, pipeline="_none")


def test_final_query_pipeline(service: PipelineService) -> None:
    service.put_pipeline(pipeline("q", [native("size", field="size", value=10)], "query"))
    service.put_pipeline(pipeline("cap", [native("no", "drop", field="size", value=10000)], "query"))
    service.put_pipeline(pipeline("limit", [native("t", field="timeout", value="1s")], "query"))
    service.associate("shop", "query", "q")
    service.associate("shop", "query_final", "limit")
    assert service.process_query("shop", {"query": {}}) == {"query": {}, "size": 10, "timeout": "1s"}
    assert service.process_query("shop", {}, pipeline="_none") == {"timeout": "1s"}
    with pytest.raises(QueryRejectedError) as err:
        service.process_query("shop", {"size": 10000}, pipeline="_none", final_pipeline="cap")
    assert err.value.pipeline == "cap"


def test_final_association_type_checked(service: PipelineService) -> None:
    service.put_pipeline(pipeline("q", [native("size", field="size", value=10)], "query"))
    with pytest.raises(ConflictError):
        service.associate("shop", "document_final", "q")
    with pytest.raises(InputError):
        service.associate("shop", "result_final", "q")
    service.associate("shop", "query_final", "q")
    with pytest.raises(ConflictError):
        service.delete_pipeline("q")  # in use by the final association
    service.disassociate("shop", "query_final")
    service.delete_pipeline("q")


# --- if_version / if_revision --------------------------------------------------------------------------------


def test_if_version_compares_the_stored_revision(service: PipelineService) -> None:
    p = pipeline("p", [native("a", field="x", value=1)])
    with pytest.raises(ConflictError, match="does not exist"):
        service.put_pipeline(p, if_version=1)
    assert service.put_pipeline(p)["revision"] == 1
    assert service.put_pipeline(p, if_version=1)["revision"] == 2
    with pytest.raises(ConflictError, match=r"required revision \[1\], but its revision is \[2\]") as err:
        service.put_pipeline(p, if_version=1)
    assert err.value.status == 409
    assert service.put_pipeline(p, if_revision=2)["revision"] == 3
    assert service.pipeline_history("p")["revisions"][-1]["revision"] == 3
    with pytest.raises(InputError):
        service.put_pipeline(p, if_version=3, if_revision=4)
    with pytest.raises(InputError):
        service.put_pipeline(p, if_version=0)


def test_if_version_is_atomic_with_the_put(service: PipelineService) -> None:
    service.put_pipeline(pipeline("p", [native("a", field="x", value=0)]))
    won: list[int] = []
    lost: list[int] = []
    barrier = threading.Barrier(8)

    def editor(n: int) -> None:
        barrier.wait()
        try:
            service.put_pipeline(pipeline("p", [native("a", field="x", value=n)]), if_version=1)
            won.append(n)
        except ConflictError:
            lost.append(n)

    threads = [threading.Thread(target=editor, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    stored = service.get_pipeline("p")
    assert stored["revision"] == 2 and stored["stages"][0]["config"]["value"] == won[0]


# --- _execute substitutions ------------------------------------------------------------------------------------


def test_substitution_replaces_a_called_pipeline_for_one_run(service: PipelineService) -> None:
    service.put_pipeline(pipeline("shared", [native("old", field="v", value="old")]))
    service.put_pipeline(pipeline("main", [{"name": "call", "type": "pipeline", "config": {"pipeline": "shared"}}]))
    new = {"type": "document", "version": "2.0.0", "stages": [native("new", field="v", value="new")]}
    assert service.execute("main", {}, substitutions={"shared": new})["output"] == {"v": "new"}
    assert service.execute("main", {})["output"] == {"v": "old"}  # nothing stored
    assert service.get_pipeline("shared")["revision"] == 1 and service.stats("shared")["count"] == 1


def test_substitution_of_the_executed_pipeline_and_of_a_new_one(service: PipelineService) -> None:
    service.put_pipeline(pipeline("main", [native("a", field="v", value=1)]))
    subs = {
        "main": pipeline("main", [{"name": "call", "type": "pipeline", "config": {"pipeline": "draft"}}]),
        "draft": {"type": "document", "stages": [native("d", field="draft", value=True)]},
    }
    assert service.execute("main", {}, substitutions=subs)["output"] == {"draft": True}
    assert not service.registry.exists("draft")


def test_bad_substitutions_refused_with_field_paths(service: PipelineService) -> None:
    service.put_pipeline(pipeline("main", [native("a", field="v", value=1)]))
    with pytest.raises(DefinitionError) as err:
        service.execute("main", {}, substitutions={"x": {"type": "document", "stages": [{"name": "s", "type": "bad"}]}})
    assert err.value.problems[0][0] == "substitutions.x.stages[0].type"
    with pytest.raises(DefinitionError) as err:
        service.execute("main", {}, substitutions={"x": {**pipeline("y", [])}})
    assert err.value.problems[0][0] == "substitutions.x.name"
    with pytest.raises(DefinitionError) as err:
        service.execute(
            "main",
            {},
            substitutions={
                "x": pipeline("x", [{"name": "c", "type": "pipeline", "config": {"pipeline": "q"}}]),
                "q": pipeline("q", [], "query"),
            },
        )
    assert err.value.problems[0] == ("substitutions.x.stages[0].config.pipeline", "pipeline [q] is a query pipeline")
