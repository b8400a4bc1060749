"""Fail closed on a missing pipeline (issue 10 §1): a document, query or result pipeline named for an index
(by association or by the request) that does not exist or cannot be built refuses what it guards with
``PipelineUnavailableError`` naming index and pipeline; nothing runs without it.

The registry is real SQLite, broken out of band with ``sqlite3`` the way a bad restore, a manual edit or a
half-migrated database would leave it, then the service is opened again on it. The last test goes through
the real server over HTTP.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from quidditch_pipeline import NotFoundError, PipelineService, PipelineUnavailableError
from quidditch_pipeline.builder import BuildContext
from quidditch_pipeline.server import TantivyBackend, create_app
from quidditch_pipeline.stages import Status, UdfRef
from quidditch_pipeline.storage import SqliteStorage
from quidditch_pipeline.udf import UdfRuntime
from tests.engine_fakes import build, run
from tests.server_harness import serve_app
from tests.udf_fixtures import BuiltUdf

# The test UDF echoes its parameters: a document that went through it carries ``udf_ran``.
UDF_PARAMS = {"do": "params", "udf_ran": True}


def native_set(name: str, field: str) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": "set", "field": field, "value": True}}


def python_stage(name: str = "udf", version: str | None = None, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"udf_name": "hostile", "parameters": UDF_PARAMS}
    if version is not None:
        config["udf_version"] = version
    return {"name": name, "type": "python", "config": config, **extra}


def pipeline(name: str, kind: str, *stages: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "type": kind, "stages": list(stages)}


class Registry:
    """A data directory whose SQLite registry the test can open as a service or break out of band."""

    def __init__(self, root: Path, runtime: UdfRuntime) -> None:
        self.root = root
        self.runtime = runtime

    def open(self) -> PipelineService:
        return PipelineService(SqliteStorage(self.root / "registry.sqlite"), self.root / "udfs", runtime=self.runtime)

    def sql(self, statement: str, *args: Any) -> int:
        db = sqlite3.connect(self.root / "registry.sqlite")
        try:
            changed = db.execute(statement, args).rowcount
            db.commit()
            return changed
        finally:
            db.close()


@pytest.fixture
def registry(tmp_path: Path, udf_runtime: UdfRuntime, hostile_source_udf: BuiltUdf) -> Iterator[Registry]:
    # In source mode on the shared interpreter: what fails closed is the registry's lookup of a UDF, whatever
    # its mode, so no component is built for it (building one cost this fixture ~36 s on a cold cache).
    reg = Registry(tmp_path, udf_runtime)
    with reg.open() as svc:
        svc.put_udf("hostile", "1.0.0", hostile_source_udf.source, mode="source")
    yield reg


def unavailable(raised: pytest.ExceptionInfo[PipelineUnavailableError], kind: str, name: str) -> str:
    error = raised.value
    assert (error.index, error.kind, error.pipeline) == ("idx", kind, name)
    assert error.status == 400 and error.error_type == "illegal_argument_exception"
    assert f"index [idx]: {kind} pipeline [{name}] is unavailable" in error.message
    return error.cause


RESPONSE = {"hits": {"total": {"value": 1}, "hits": [{"_id": "1", "_score": 1.0, "_source": {"a": 1}}]}}


def test_pipelines_deleted_out_of_band_refuse_writes_searches_and_results(registry: Registry) -> None:
    with registry.open() as svc:
        for name, kind in (("docs", "document"), ("query", "query"), ("results", "result")):
            svc.put_pipeline(pipeline(name, kind, native_set("mark", "marked")))
            svc.associate("idx", kind, name)
        assert svc.process_document("idx", "1", {"a": 1}) == {"a": 1, "marked": True}
    assert registry.sql("DELETE FROM pipeline_revisions") == 3
    with registry.open() as svc:
        with pytest.raises(PipelineUnavailableError) as raised:
            svc.process_document("idx", "1", {"a": 1})
        assert "pipeline [docs] not found" in unavailable(raised, "document", "docs")
        with pytest.raises(PipelineUnavailableError) as raised:
            svc.process_documents("idx", [("1", {"a": 1}), ("2", {"b": 2})])
        unavailable(raised, "document", "docs")
        with pytest.raises(PipelineUnavailableError) as raised:
            svc.process_query("idx", {"query": {"match_all": {}}})
        unavailable(raised, "query", "query")
        with pytest.raises(PipelineUnavailableError) as raised:
            svc.process_results("idx", {}, RESPONSE)
        unavailable(raised, "result", "results")


def test_a_corrupt_stored_definition_refuses_what_it_guards(registry: Registry) -> None:
    with registry.open() as svc:
        svc.put_pipeline(pipeline("docs", "document", native_set("mark", "marked")))
        svc.associate("idx", "document", "docs")
    corrupt = b'{"name": "docs", "version": "1.0.0", "type": "document", "stages": "not a list"}'
    assert registry.sql("UPDATE pipeline_revisions SET definition = ? WHERE name = 'docs'", corrupt) == 1
    with registry.open() as svc, pytest.raises(PipelineUnavailableError) as raised:
        svc.process_documents("idx", [("1", {"a": 1})])
    assert "stages" in unavailable(raised, "document", "docs")


@pytest.mark.parametrize("version", ["1.0.0", None], ids=["pinned", "latest"])
def test_a_udf_gone_refuses_documents_even_when_its_stage_would_continue(
    registry: Registry, version: str | None
) -> None:
    with registry.open() as svc:
        svc.put_pipeline(pipeline("docs", "document", python_stage(version=version, on_failure="continue")))
        svc.associate("idx", "document", "docs")
        assert svc.process_document("idx", "1", {"a": 1}) == {"a": 1, **UDF_PARAMS}
    # The pinned version (or, unpinned, every version) is gone from the registry.
    assert registry.sql("DELETE FROM udfs WHERE name = 'hostile'") == 1
    with registry.open() as svc:
        with pytest.raises(PipelineUnavailableError) as raised:
            svc.process_document("idx", "1", {"a": 1})
        cause = unavailable(raised, "document", "docs")
        assert "stages[0].config.udf_name" in cause and "hostile" in cause
        assert svc.process_document("idx", "1", {"a": 1}, pipeline="_none") == {"a": 1}  # _none still skips
        # Stats still answer, for it and for all: only the hooks it guards are refused.
        assert svc.stats("docs")["count"] == 0
        assert svc.stats()["pipelines"]["docs"]["count"] == 0


def test_a_udf_gone_inside_a_composite_refuses(registry: Registry) -> None:
    group = {
        "name": "group",
        "type": "composite",
        "on_failure": "continue",
        "config": {"stages": [native_set("mark", "marked"), python_stage(version="1.0.0")]},
    }
    with registry.open() as svc:
        svc.put_pipeline(pipeline("docs", "document", group))
        svc.associate("idx", "document", "docs")
    registry.sql("DELETE FROM udfs")
    with registry.open() as svc, pytest.raises(PipelineUnavailableError) as raised:
        svc.process_document("idx", "1", {"a": 1})
    assert "stages[0].config.stages[1]" in unavailable(raised, "document", "docs")


@pytest.mark.parametrize("broken", ["udf", "called pipeline"])
def test_a_called_pipeline_that_cannot_be_built_refuses_its_caller(registry: Registry, broken: str) -> None:
    call = {"name": "call", "type": "pipeline", "on_failure": "continue", "config": {"pipeline": "inner"}}
    with registry.open() as svc:
        svc.put_pipeline(pipeline("inner", "document", python_stage(version="1.0.0")))
        svc.put_pipeline(pipeline("outer", "document", native_set("mark", "marked"), call))
        svc.associate("idx", "document", "outer")
        assert svc.process_document("idx", "1", {}) == {"marked": True, **UDF_PARAMS}
    if broken == "udf":
        registry.sql("DELETE FROM udfs")
    else:
        registry.sql("DELETE FROM pipeline_revisions WHERE name = 'inner'")
    with registry.open() as svc, pytest.raises(PipelineUnavailableError) as raised:
        svc.process_document("idx", "1", {})
    assert "it calls pipeline [inner], which is unavailable" in unavailable(raised, "document", "outer")


def test_a_pipeline_named_by_the_request_that_does_not_exist_is_refused(registry: Registry) -> None:
    with registry.open() as svc:
        with pytest.raises(PipelineUnavailableError) as raised:
            svc.process_document("idx", "1", {"a": 1}, pipeline="nope")
        unavailable(raised, "document", "nope")
        with pytest.raises(PipelineUnavailableError) as raised:
            svc.process_query("idx", {}, pipeline="nope")
        unavailable(raised, "query", "nope")
        assert svc.process_document("idx", "1", {"a": 1}) == {"a": 1}  # no pipeline configured: none runs


def test_a_udf_that_vanishes_after_the_build_still_fails_closed(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with registry.open() as svc:
        svc.put_pipeline(pipeline("docs", "document", python_stage(version="1.0.0", on_failure="continue")))
        svc.associate("idx", "document", "docs")
        svc.process_document("idx", "1", {})  # built, with its UDF resolved

        def gone(name: str, version: str | None) -> UdfRef:
            raise NotFoundError("udf", f"{name}@{version}")

        # What another node's delete would look like to this one: the UDF no longer resolves at run time.
        monkeypatch.setattr(svc.udfs, "resolve", gone)
        with pytest.raises(PipelineUnavailableError) as raised:
            svc.process_documents("idx", [("1", {}), ("2", {})])
        assert "udf [hostile@1.0.0] not found" in unavailable(raised, "document", "docs")
        with pytest.raises(PipelineUnavailableError) as raised:  # rebuilt on the next request: refused there
            svc.process_document("idx", "1", {})
        assert "stages[0].config.udf_name" in unavailable(raised, "document", "docs")


# --- the executor's part: no policy passes an input on without an unavailable stage ---------------------------


class GoneUdfs:
    """A UDF resolver and runtime whose UDF resolved when the pipeline was built, and is gone since."""

    def __init__(self) -> None:
        self.present = True

    def resolve(self, name: str, version: str | None) -> UdfRef:
        if not self.present:
            raise NotFoundError("udf", name)
        return UdfRef(name, version or "1.0.0", name, Path("/nonexistent"))

    def load(self, sha256: str, wasm_path: Path) -> int:
        return 2

    def call_batch(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise AssertionError("never called: the UDF is gone")


@pytest.mark.parametrize("policy", ["continue", "retry"])
def test_an_unavailable_stage_fails_its_input_whatever_the_policy(policy: str) -> None:
    udfs = GoneUdfs()
    stage = {"name": "u", "type": "python", "on_failure": policy, "config": {"udf_name": "u"}}
    group = {"name": "g", "type": "composite", "on_failure": policy, "config": {"stages": [stage]}}
    p = build({"retry": {"max_attempts": 3, "initial_backoff_ms": 0}, "stages": [group]}, BuildContext(udfs, udfs))
    udfs.present = False
    items = run(p, [{}, {}])
    assert [item.status for item in items] == [Status.FAILED, Status.FAILED]
    assert all(item.error is not None and item.error.kind == "unavailable" for item in items)


def test_a_called_pipeline_gone_at_run_time_fails_its_input_under_continue() -> None:
    call = {"name": "call", "type": "pipeline", "on_failure": "continue", "config": {"pipeline": "gone"}}
    p = build({"stages": [call]})
    [item] = run(p, [{}], pipelines={})
    assert item.status is Status.FAILED and item.error is not None and item.error.kind == "unavailable"
    assert "pipeline [gone] is unavailable" in item.error.message


# --- through the server -------------------------------------------------------------------------------------------


def test_the_server_refuses_a_write_and_a_search_whose_pipeline_is_gone(tmp_path: Path) -> None:
    with (
        PipelineService.open(tmp_path) as svc,
        TantivyBackend(tmp_path) as backend,
        serve_app(create_app(svc, backend)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        for name, kind in (("docs", "document"), ("query", "query")):
            response = client.put(f"/_pipeline/{name}", json=pipeline(name, kind, native_set("mark", "marked")))
            assert response.status_code == 200, response.text
        settings = {"index": {"document": {"default_pipeline": "docs"}, "query": {"default_pipeline": "query"}}}
        assert client.put("/idx", json={"settings": settings}).status_code == 200
        assert client.put("/idx/_doc/1", json={"a": 1}, params={"refresh": "true"}).status_code == 201
    assert Registry(tmp_path, svc.runtime).sql("DELETE FROM pipeline_revisions") == 2
    with (
        PipelineService.open(tmp_path) as svc,
        TantivyBackend(tmp_path) as backend,
        serve_app(create_app(svc, backend)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        refused = client.put("/idx/_doc/2", json={"a": 2})
        assert refused.status_code == 400, refused.text
        body = refused.json()
        assert body["status"] == 400 and body["error"]["type"] == "illegal_argument_exception"
        assert "index [idx]: document pipeline [docs] is unavailable" in body["error"]["reason"]
        assert client.get("/idx/_doc/2").status_code == 404  # not written without its pipeline
        bulk = client.post(
            "/_bulk",
            content=b'{"index": {"_index": "idx", "_id": "3"}}\n{"a": 3}\n',
            headers={"Content-Type": "application/x-ndjson"},
        ).json()
        assert bulk["errors"] is True
        item = bulk["items"][0]["index"]
        assert item["status"] == 400 and "document pipeline [docs] is unavailable" in item["error"]["reason"]
        assert client.get("/idx/_doc/3").status_code == 404
        search = client.post("/idx/_search", json={"query": {"match_all": {}}})
        assert search.status_code == 400, search.text
        assert "index [idx]: query pipeline [query] is unavailable" in search.json()["error"]["reason"]
