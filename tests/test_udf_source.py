"""Source mode (issue 12): UDF source run on the shared interpreter component, stored as source, inline in
``_execute``, and the author-facing errors of the loop.

Everything here runs real WebAssembly: the shared interpreter (built once per toolchain into the test cache,
see ``udf_fixtures.interpreter_dir``) in the session's runtime.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from quidditch_pipeline import DefinitionError, PipelineService
from quidditch_pipeline.errors import ConflictError, UdfBuildError, UdfLoadError
from quidditch_pipeline.server import TantivyBackend, create_app
from quidditch_pipeline.storage import MemoryStorage, SqliteStorage
from quidditch_pipeline.udf import UdfItemResult, UdfRuntime
from quidditch_pipeline.udf.interpreter import interpreter_built

from .server_harness import serve_app
from .udf_fixtures import EXAMPLES_DIR, source_udf

COUNTER = """\
COUNT = [0]


def process(value, params):
    COUNT[0] += 1
    return {"start": params["start"], "count": COUNT[0]}
"""

DOUBLER = """\
def process(value, params, meta):
    if value.get("n") is None:
        raise KeyError("n")
    return {"n": value["n"] * 2, "type": meta["type"]}
"""


def call(runtime: UdfRuntime, sha: str, path: Path, values: list[Any], **params: Any) -> list[UdfItemResult]:
    return runtime.call_batch(sha, path, values, params, None, timeout_s=5)


# -- the shared interpreter ------------------------------------------------------------------------------


def test_two_source_udfs_with_module_level_state_do_not_share_it(udf_runtime: UdfRuntime) -> None:
    # The same counting module under two sources that differ only in a comment: two UDFs, one compiled
    # interpreter, two pools with their own instances and linear memory.
    first = source_udf(udf_runtime, "first", COUNTER)
    second = source_udf(udf_runtime, "second", COUNTER + "# another UDF\n")
    assert first.sha256 != second.sha256
    before = call(udf_runtime, first.sha256, first.path, [0, 0], start=1)
    counted = [r.value["count"] for r in before]
    assert counted[1] == counted[0] + 1
    # The second UDF's module starts at zero whatever the first has counted.
    assert call(udf_runtime, second.sha256, second.path, [0], start=2)[0].value == {"start": 2, "count": 1}
    assert call(udf_runtime, first.sha256, first.path, [0], start=1)[0].value["count"] == counted[1] + 1


def test_the_interpreter_is_built_once_into_its_folder_and_found_there(tmp_path: Path, udf_runtime: UdfRuntime) -> None:
    sha256, path = udf_runtime.interpreter()
    assert path.parent == udf_runtime.interpreter_dir and interpreter_built(udf_runtime.interpreter_dir)
    assert not interpreter_built(tmp_path)  # another folder: its first use would build one there
    assert udf_runtime.interpreter() == (sha256, path)


def test_a_source_udf_gets_meta_per_item_errors_with_its_line_and_the_same_results(udf_runtime: UdfRuntime) -> None:
    udf = source_udf(udf_runtime, "doubler", DOUBLER)
    assert udf_runtime.load(udf.sha256, udf.path) == 3
    results = udf_runtime.call_batch(
        udf.sha256, udf.path, [{"n": 2}, {}], {}, [{"type": "document"}, {"type": "document"}], timeout_s=5
    )
    assert results[0] == UdfItemResult(True, {"n": 4, "type": "document"})
    assert results[1].error is not None
    assert (results[1].error.type, results[1].error.line) == ("KeyError", 3)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES_DIR.glob("*.py")))
def test_every_example_udf_loads_in_source_mode(udf_runtime: UdfRuntime, example: str) -> None:
    source = (EXAMPLES_DIR / example).read_text(encoding="utf-8")
    udf = source_udf(udf_runtime, example.removesuffix(".py"), source)
    assert udf_runtime.load(udf.sha256, udf.path) in (2, 3)


# -- author-facing errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("def process(value, params)\n    return 1\n", r"author\.py:1: syntax error", id="syntax"),
        pytest.param(
            "def handle(value, params):\n    return 1\n", r"author\.py: no top-level function", id="no-process"
        ),
        pytest.param("def process(value):\n    return 1\n", r"author\.py:1: process must take", id="arity"),
        pytest.param(
            "import requests\n\ndef process(v, p):\n    pass\n", r"author\.py:1: cannot import 'requests'", id="import"
        ),
        pytest.param("import socket\n\ndef process(v, p):\n    pass\n", r"author\.py:1: .*no network", id="withheld"),
    ],
)
def test_static_mistakes_are_refused_with_file_line_and_fix(svc: PipelineService, source: str, expected: str) -> None:
    started = time.monotonic()
    with pytest.raises(UdfBuildError, match=expected):
        svc.put_udf("author", "1.0.0", source, mode="source")
    assert time.monotonic() - started < 1.0  # the loop's budget: no build was started
    assert svc.udfs.versions("author") == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            "TABLE = {}\nTABLE['x'] = 1 / 0\n\ndef process(v, p):\n    pass\n",
            r"author\.py:2: ZeroDivisionError: division by zero \(module-level code raised",
            id="raises",
        ),
        pytest.param(
            "while True:\n    pass\n\ndef process(v, p):\n    pass\n",
            r"author\.py: module-level code ran past 300 ms .* precompute",
            id="runs-too-long",
        ),
        pytest.param(
            "process = lambda value: value\n",
            r"author\.py: TypeError: line 1: process must take \(value, params\) or \(value, params, meta\)",
            id="not-a-def",
        ),
        pytest.param(
            "try:\n    import yaml\nexcept ImportError:\n    raise\n\ndef process(v, p):\n    pass\n",
            r"author\.py:2: ModuleNotFoundError: No module named 'yaml' \(a UDF can import the sandbox's standard",
            id="guarded-import",
        ),
    ],
)
def test_module_level_failures_name_file_line_and_fix_when_the_instance_is_created(
    tmp_path: Path, udf_runtime: UdfRuntime, source: str, expected: str
) -> None:
    with (
        UdfRuntime(tmp_path / "compiled", max_call_ms=300, interpreter_dir=udf_runtime.interpreter_dir) as runtime,
        PipelineService(MemoryStorage(), tmp_path / "udfs", runtime=runtime) as service,
    ):
        started = time.monotonic()
        with pytest.raises(UdfLoadError, match=expected):
            service.put_udf("author", "1.0.0", source, mode="source")
        assert time.monotonic() - started < 2.0
        assert service.udfs.versions("author") == []
        assert list((tmp_path / "udfs").iterdir()) == []  # nothing left behind


# -- source mode in the store --------------------------------------------------------------------------------


@pytest.fixture
def svc(tmp_path: Path, udf_runtime: UdfRuntime) -> Iterator[PipelineService]:
    with PipelineService(MemoryStorage(), tmp_path / "udfs", runtime=udf_runtime) as service:
        yield service


def test_a_version_put_as_source_is_stored_as_its_source_and_runs(svc: PipelineService) -> None:
    started = time.monotonic()
    put = svc.put_udf("doubler", "1.0.0", DOUBLER, mode="source")
    took = time.monotonic() - started
    assert put["created"] and put["mode"] == "source"
    assert svc.udf_info("doubler")["versions"][0]["mode"] == "source"
    assert took < 1.0  # no build: the check and one instance of the shared interpreter
    ref = svc.udfs.resolve("doubler", None)
    assert ref.path.read_text(encoding="utf-8") == DOUBLER  # the artifact is the source, content-addressed
    out = svc.execute_udf("doubler", {"n": 21})
    assert (out["status"], out["raw"]) == ("success", {"n": 42, "type": "document"})
    # Versions stay immutable: the same source again is a no-op, other source a conflict.
    assert svc.put_udf("doubler", "1.0.0", DOUBLER, mode="source")["created"] is False
    with pytest.raises(ConflictError, match="versions are immutable"):
        svc.put_udf("doubler", "1.0.0", DOUBLER + "\n# changed\n", mode="source")
    svc.delete_udf("doubler", "1.0.0")
    assert not ref.path.exists()


def test_a_pipeline_runs_a_source_mode_udf(svc: PipelineService) -> None:
    svc.put_udf("doubler", "1.0.0", DOUBLER, mode="source")
    stage = {"name": "double", "type": "python", "config": {"udf_name": "doubler"}}
    svc.put_pipeline({"name": "p", "version": "1.0.0", "type": "document", "stages": [stage]})
    result = svc.execute("p", input={"n": 5})
    assert result["output"] == {"n": 10, "type": "document"}


def test_a_source_mode_udf_runs_in_worker_processes(tmp_path: Path, udf_runtime: UdfRuntime) -> None:
    # The workers open the registry and the artifacts themselves, and find the interpreter where the
    # parent's runtime keeps it.
    with PipelineService(
        SqliteStorage(tmp_path / "registry.sqlite"), tmp_path / "udfs", runtime=udf_runtime, workers=1
    ) as service:
        service.put_udf("doubler", "1.0.0", DOUBLER, mode="source")
        stage = {"name": "double", "type": "python", "config": {"udf_name": "doubler"}}
        service.put_pipeline({"name": "p", "version": "1.0.0", "type": "document", "stages": [stage]})
        outcomes = service.process_documents("idx", [("a", {"n": 7}), ("b", {})], pipeline="p")
        assert outcomes[0].source == {"n": 14, "type": "document"}
        assert outcomes[1].status == "failed" and "KeyError" in str(outcomes[1].error)


def test_the_service_default_mode_can_be_source(tmp_path: Path, udf_runtime: UdfRuntime) -> None:
    with PipelineService(MemoryStorage(), tmp_path / "udfs", runtime=udf_runtime, udf_mode="source") as service:
        assert service.put_udf("doubler", "1.0.0", DOUBLER)["mode"] == "source"
        assert service.put_udf("doubler", "2.0.0", DOUBLER, mode="source")["mode"] == "source"


def test_an_unknown_mode_is_a_definition_error(svc: PipelineService) -> None:
    with pytest.raises(DefinitionError, match=r"mode.*\[fast\] is not a UDF mode"):
        svc.put_udf("doubler", "1.0.0", DOUBLER, mode="fast")


# -- inline source -------------------------------------------------------------------------------------------


def test_inline_source_runs_unstored_and_is_cached_by_its_sha256(svc: PipelineService) -> None:
    first = svc.execute_udf(None, {"n": 1}, source=DOUBLER)
    assert (first["udf"], first["status"], first["raw"]) == ("inline", "success", {"n": 2, "type": "document"})
    created = svc.runtime.stats().instances_created
    again = svc.execute_udf(None, {"n": 2}, source=DOUBLER)
    assert again["raw"] == {"n": 4, "type": "document"}
    assert svc.runtime.stats().instances_created == created  # warm: no new instance, no new load
    assert svc.registry.udf_names() == []


def test_only_the_last_inline_sources_stay_loaded(tmp_path: Path, udf_runtime: UdfRuntime) -> None:
    # Every save of an author's file is a new source: a long session must not keep a pool for each.
    with UdfRuntime(tmp_path, inline_sources=3, interpreter_dir=udf_runtime.interpreter_dir) as runtime:
        loaded = [runtime.load_source(f"{DOUBLER}# save {i}\n") for i in range(6)]
        assert runtime.stats().loaded == 3
        sha, path = loaded[0]  # unloaded, and loaded again when called
        assert runtime.call_batch(sha, path, [{"n": 1}], {}, [{"type": "document"}], timeout_s=5)[0].value == {
            "n": 2,
            "type": "document",
        }


def test_inline_source_in_a_pipeline_runs_in_execute_and_is_refused_when_stored(svc: PipelineService) -> None:
    stage = {"name": "double", "type": "python", "config": {"source": DOUBLER}}
    definition = {"name": "p", "version": "1.0.0", "type": "document", "stages": [stage]}
    assert svc.execute(definition, input={"n": 3})["output"] == {"n": 6, "type": "document"}
    with pytest.raises(DefinitionError, match=r"stages\[0\]\.config\.source.*_execute only"):
        svc.put_pipeline(definition)
    both = {"name": "x", "type": "python", "config": {"source": DOUBLER, "udf_name": "doubler"}}
    with pytest.raises(DefinitionError, match="exactly one of udf_name"):
        svc.execute({**definition, "stages": [both]}, input={})


def test_bad_inline_source_in_a_pipeline_names_the_stage_field_and_line(svc: PipelineService) -> None:
    stage = {"name": "double", "type": "python", "config": {"source": "x = 1\ndef process(v, p)\n"}}
    definition = {"name": "p", "version": "1.0.0", "type": "document", "stages": [stage]}
    with pytest.raises(DefinitionError, match=r"stages\[0\]\.config\.source.*inline\.py:2: syntax error"):
        svc.execute(definition, input={})


# -- over HTTP -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory, udf_runtime: UdfRuntime) -> Iterator[httpx.Client]:
    data = tmp_path_factory.mktemp("source-http")
    with (
        PipelineService(MemoryStorage(), data / "udfs", runtime=udf_runtime) as service,
        TantivyBackend(data / "index") as backend,
        serve_app(create_app(service, backend)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


PYTHON = {"content-type": "text/x-python"}


def es_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["error"]["type"] == error_type, body
    return dict(body["error"])


def test_put_with_mode_source_over_http(http: httpx.Client) -> None:
    response = http.put("/_udf/doubler/1.0.0", params={"mode": "source"}, content=DOUBLER, headers=PYTHON)
    assert response.status_code == 201, response.text
    assert response.json()["mode"] == "source"
    out = http.post("/_udf/doubler/_execute", json={"input": {"n": 4}}).json()
    assert out["raw"] == {"n": 8, "type": "document"}
    bad = http.put("/_udf/doubler/2.0.0", params={"mode": "fast"}, content=DOUBLER, headers=PYTHON)
    es_error(bad, 400, "parse_exception")


def test_execute_inline_source_over_http(http: httpx.Client) -> None:
    body = {"source": DOUBLER, "input": {"n": 5}, "type": "document"}
    out = http.post("/_udf/_execute", json=body).json()
    assert (out["status"], out["raw"], out["mapped"]) == (
        "success",
        {"n": 10, "type": "document"},
        {"n": 10, "type": "document"},
    )
    many = http.post("/_udf/_execute", json={"source": DOUBLER, "inputs": [{"n": 1}, {}]}).json()["results"]
    assert many[0]["raw"] == {"n": 2, "type": "document"}
    assert many[1]["error"] == {"type": "KeyError", "reason": "'n'", "line": 3}
    target = http.post(
        "/_udf/_execute", json={"source": "def process(v, p):\n    return 7\n", "input": {"a": 1}, "target_field": "b"}
    ).json()
    assert target["mapped"] == {"a": 1, "b": 7}


def test_execute_inline_source_errors_over_http(http: httpx.Client) -> None:
    syntax = es_error(
        http.post("/_udf/_execute", json={"source": "def process(\n", "input": {}}), 400, "udf_build_exception"
    )
    assert "inline.py:1: syntax error" in syntax["reason"]
    raises = es_error(
        http.post("/_udf/_execute", json={"source": "X = {}['k']\ndef process(v, p):\n    pass\n", "input": {}}),
        400,
        "udf_load_exception",
    )
    assert "inline.py:1: KeyError" in raises["reason"]
    problems = es_error(http.post("/_udf/_execute", json={"input": {}}), 400, "parse_exception")
    assert "source" in str(problems)
    both = es_error(
        http.post("/_udf/_execute", json={"source": DOUBLER, "input": {}, "inputs": []}), 400, "parse_exception"
    )
    assert "exactly one of input and inputs" in str(both)


def test_pipeline_execute_with_an_inline_source_stage_over_http(http: httpx.Client) -> None:
    stage = {"name": "double", "type": "python", "config": {"source": DOUBLER}}
    pipeline = {"type": "document", "stages": [stage]}
    out = http.post("/_pipeline/_execute", json={"pipeline": pipeline, "input": {"n": 6}}).json()
    assert out["output"] == {"n": 12, "type": "document"}
    stored = http.put("/_pipeline/inline", json={"version": "1.0.0", **pipeline})
    error = es_error(stored, 400, "parse_exception")
    assert "stages[0].config.source" in str(error)
