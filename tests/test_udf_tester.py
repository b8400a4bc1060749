"""``quidditch-pipeline udf test`` through the command line (a subprocess, as an author runs it): sample
inputs in the sandbox, ``--native`` disagreements, exit status, and ``--watch`` re-running on every save."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quidditch_pipeline.errors import InputError
from quidditch_pipeline.udf.tester import load_inputs

from .udf_fixtures import interpreter_dir

GOOD = """\
def process(value, params):
    return {"n": value["n"] * params.get("factor", 2)}
"""

# Each input picks a way for the sandbox and host CPython to part.
DIVERGENT = """\
import sys


def process(value, params):
    kind = value["kind"]
    if kind == "same":
        return value["n"] + 1
    if kind == "raise":
        raise ValueError("no good")
    if kind == "set":
        return {"tags": {1, 2}}
    if kind == "late_import":
        try:
            import yaml
        except ImportError:
            raise
        return yaml.__name__
    if kind == "platform":
        return sys.platform
    return None
"""


def udf_test(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "quidditch_pipeline.cli", "udf", "test", *args]
    command += ["--cache-dir", str(interpreter_dir())]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def test_every_input_runs_in_the_sandbox_with_result_mapping_and_time(tmp_path: Path) -> None:
    src = tmp_path / "double.py"
    src.write_text(GOOD, encoding="utf-8")
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps([{"n": 1}, {"n": 5}]), encoding="utf-8")
    done = udf_test(str(src), "--inputs", str(inputs), "--input", '{"n": 10}', "--params", '{"factor": 3}')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith('[0] success raw={"n": 3} mapped={"n": 3}  (') and lines[0].endswith(" µs)")
    assert lines[1].startswith('[1] success raw={"n": 15}')
    assert lines[2].startswith('[2] success raw={"n": 30}')
    assert lines[3] == "3 inputs: 0 errors"


def test_errors_give_their_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    src = tmp_path / "double.py"
    src.write_text(GOOD, encoding="utf-8")
    done = udf_test(str(src), "--input", '{"m": 1}', "--type", "query", "--target-field", "x")
    assert done.returncode == 1
    assert "[0] error KeyError at line 2: 'n'" in done.stdout


def test_native_reports_every_input_where_cpython_and_the_sandbox_disagree(tmp_path: Path) -> None:
    src = tmp_path / "divergent.py"
    src.write_text(DIVERGENT, encoding="utf-8")
    inputs = tmp_path / "inputs.ndjson"
    kinds = ["same", "raise", "set", "late_import", "platform"]
    inputs.write_text("".join(json.dumps({"kind": k, "n": 1}) + "\n" for k in kinds), encoding="utf-8")
    done = udf_test(str(src), "--inputs", str(inputs), "--native")
    assert done.returncode == 1
    out = done.stdout
    report = {k: block for k, block in zip(kinds, out.split("\n[")[: len(kinds)], strict=True)}
    # A number cannot replace a document: the mapping refuses it, on the host, after both sides agreed.
    assert "error unmappable_result" in report["same"] and "native disagrees" not in report["same"]
    assert "native disagrees" not in report["raise"]  # both raise ValueError: they agree
    assert "error ValueError at line 9: no good" in report["raise"]
    assert "native disagrees: the value cannot cross the sandbox's boundary" in report["set"]
    assert "native disagrees: an import that works only natively: No module named 'yaml'" in report["late_import"]
    assert 'native disagrees: different results: sandbox "wasi", native "linux"' in report["platform"]
    assert out.splitlines()[-1] == "5 inputs: 5 errors, 3 disagreements with native CPython"
    mapped = udf_test(str(src), "--input", '{"kind": "same", "n": 1}', "--native", "--target-field", "out")
    assert mapped.returncode == 0, mapped.stdout
    assert mapped.stdout.startswith('[0] success raw=2 mapped={"kind": "same", "n": 1, "out": 2}')


def test_a_source_that_does_not_load_names_file_line_and_fix(tmp_path: Path) -> None:
    src = tmp_path / "broken.py"
    src.write_text("import json\nLIMIT = json.loads('{')\n\ndef process(v, p):\n    pass\n", encoding="utf-8")
    done = udf_test(str(src), "--input", "{}")
    assert done.returncode == 1
    assert "broken.py:2: JSONDecodeError" in done.stderr
    assert "move it into process" in done.stderr


def test_inputs_that_are_not_json_are_refused_with_their_line(tmp_path: Path) -> None:
    bad = tmp_path / "inputs.ndjson"
    bad.write_text('{"n": 1}\n{nope\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"inputs\.ndjson:2: not a JSON value"):
        load_inputs(bad, [])
    assert load_inputs(None, ["1", '"two"']) == [1, "two"]


def test_watch_runs_again_on_every_save_printing_only_what_changed(tmp_path: Path) -> None:
    src = tmp_path / "double.py"
    src.write_text(GOOD, encoding="utf-8")
    command = [sys.executable, "-m", "quidditch_pipeline.cli", "udf", "test", str(src), "--watch"]
    command += ["--input", '{"n": 1}', "--input", '{"n": 2}', "--cache-dir", str(interpreter_dir())]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True)
        reader.start()
        try:

            def until(prefix: str) -> list[str]:
                seen = []
                deadline = time.monotonic() + 60
                while True:
                    line = lines.get(timeout=max(0.1, deadline - time.monotonic())).rstrip("\n")
                    seen.append(line)
                    if line.startswith(prefix):
                        return seen

            until("run 1 (ok")
            first = [lines.get(timeout=10), lines.get(timeout=10)]
            assert first[0].startswith('[0] success raw={"n": 2}') and first[1].startswith('[1] success raw={"n": 4}')
            time.sleep(0.5)  # the watcher is set up once the first run has printed
            src.write_text(GOOD.replace('value["n"] * ', 'value["n"] + '), encoding="utf-8")
            run2 = until("run 2")[-1]
            assert run2.startswith("run 2 (ok") and run2.endswith("1 of 2 inputs changed")  # 2 + 2 is 2 * 2
            assert lines.get(timeout=10).startswith('[0] success raw={"n": 3}')
            src.write_text(GOOD.replace('value["n"]', 'value["missing"]'), encoding="utf-8")
            run3 = until("run 3")[-1]
            assert run3.startswith("run 3 (FAIL") and run3.endswith("2 of 2 inputs changed")
            assert "error KeyError at line 2: 'missing'" in lines.get(timeout=10)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
    assert process.returncode == 1  # the last run failed


def test_watch_waits_out_a_save_caught_between_truncating_and_writing(tmp_path: Path) -> None:
    # An editor (or a loaded machine) that truncates the file, then writes it a while later: the watcher
    # must not run the empty file in between, however long the gap.
    from quidditch_pipeline.udf.tester import _settled

    src = tmp_path / "double.py"
    src.write_text("", encoding="utf-8")

    def changes() -> Iterator[object]:
        time.sleep(0.3)  # far past the settling delay
        src.write_text(GOOD, encoding="utf-8")
        yield {("modified", str(src))}

    assert _settled([src], changes()) == [GOOD.encode()]
