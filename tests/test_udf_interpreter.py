"""The shared interpreter's folder: the bounded cache of inline sources beside it, and ``udf prepare``, which
builds and compiles the interpreter at install time so that the first ``serve --demo`` finds it ready.

The tests that need the interpreter take the session's (built and compiled once per toolchain) and copy it
into a folder of their own where they need one."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from quidditch_pipeline.cli import main
from quidditch_pipeline.udf import UdfRuntime
from quidditch_pipeline.udf.interpreter import SOURCES_MAX_FILES, interpreter_built, keep_source

from .udf_fixtures import BuiltUdf


def interpreter_copy(source_udf: BuiltUdf, folder: Path) -> Path:
    """``folder`` holding the session's interpreter component (which ``source_udf`` runs on) and its compiled
    form: a folder of this test's own, without building or compiling anything."""
    interpreter = source_udf.path.parents[1]
    folder.mkdir()
    for built in [*interpreter.glob("interpreter-*.wasm"), *interpreter.glob("*.cwasm")]:
        shutil.copy(built, folder)
    return folder


def keep(folder: Path, text: str, *, when: float | None = None, **bounds: int) -> Path:
    data = text.encode()
    path = keep_source(folder, hashlib.sha256(data).hexdigest(), data, **bounds)
    if when is not None:
        os.utime(path, (when, when))
    return path


def kept(folder: Path) -> set[str]:
    return {path.name for path in (folder / "sources").glob("*.py")}


def test_sources_beyond_the_count_go_least_recently_used_first(tmp_path: Path) -> None:
    old, middle, new = (keep(tmp_path, f"# {n}\n", when=1_000 + n, max_files=3) for n in range(3))
    keep(tmp_path, "# 0\n", max_files=3)  # used again: now the most recent
    fourth = keep(tmp_path, "# 3\n", max_files=3)
    assert kept(tmp_path) == {old.name, new.name, fourth.name}  # `middle` was the least recently used
    assert not middle.exists()


def test_sources_beyond_the_size_go_until_the_rest_fits_and_the_new_one_always_stays(tmp_path: Path) -> None:
    small = [keep(tmp_path, f"# {n}\n" + "x" * 100, when=1_000 + n, max_bytes=1_000) for n in range(5)]
    assert kept(tmp_path) == {path.name for path in small}
    medium = keep(tmp_path, "# medium\n" + "y" * 600, max_bytes=1_000)
    # 5 x 104 + 609 bytes is over 1000, and so is 4 x 104 + 609: the two oldest go, the rest fits.
    assert kept(tmp_path) == {medium.name} | {path.name for path in small[2:]}
    huge = keep(tmp_path, "# huge\n" + "z" * 5_000, max_bytes=1_000)
    assert kept(tmp_path) == {huge.name}  # alone over the bound, but what was just asked for is kept


def test_keeping_a_source_again_rewrites_nothing_and_renews_its_use(tmp_path: Path) -> None:
    path = keep(tmp_path, "def process(value, params):\n    return value\n", when=1_000)
    again = keep(tmp_path, "def process(value, params):\n    return value\n")
    assert again == path and path.stat().st_mtime > 1_000


def test_the_runtime_bounds_the_sources_of_inline_udfs(tmp_path: Path, hostile_source_udf: BuiltUdf) -> None:
    """A runtime on a copy of the session's interpreter folder (built and compiled by the fixture) whose
    sources folder already holds as many stale sources as the bound allows."""
    folder = interpreter_copy(hostile_source_udf, tmp_path / "interpreter")
    (folder / "sources").mkdir()
    stale = []
    for n in range(SOURCES_MAX_FILES):
        data = f"# stale {n}\n".encode()
        path = folder / "sources" / f"{hashlib.sha256(data).hexdigest()}.py"
        path.write_bytes(data)
        os.utime(path, (1_000 + n, 1_000 + n))
        stale.append(path)
    with UdfRuntime(tmp_path / "compiled", interpreter_dir=folder) as runtime:
        sha256, path = runtime.load_source("def process(value, params):\n    return value * 2\n")
        [result] = runtime.call_batch(sha256, path, [21], {}, None, timeout_s=5)
        assert result.value == 42 and runtime.stats().compiles == 0  # the interpreter's compiled form was found
    assert kept(folder) == {path.name} | {p.name for p in stale[1:]}  # the oldest made room for it


def test_udf_prepare_leaves_the_interpreter_built_and_compiled_for_the_first_start(
    tmp_path: Path, hostile_source_udf: BuiltUdf, capsys: pytest.CaptureFixture[str]
) -> None:
    """``udf prepare`` on the session's interpreter folder (built and compiled by the fixture): it reports it
    ready; a new runtime there (a first ``serve``) then loads a source UDF without building or compiling."""
    interpreter = hostile_source_udf.path.parents[1]
    assert main(["udf", "prepare", "--cache-dir", str(interpreter)]) == 0
    out = capsys.readouterr().out
    assert "ready" in out and "already compiled" in out
    assert interpreter_built(interpreter)
    with UdfRuntime(tmp_path / "compiled", interpreter_dir=interpreter) as runtime:
        runtime.load_source("def process(value, params):\n    return value\n")
        stats = runtime.stats()
    assert (stats.compiles, stats.cache_loads) == (0, 1)
