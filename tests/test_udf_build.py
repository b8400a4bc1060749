"""Building UDFs: the host-side source check, componentize-py builds and their errors, and ``udf build``.

The source checks take milliseconds; each test that really builds costs a componentize-py run (seconds),
so those are few: one that succeeds twice at once (and runs), and the failures only a build can find.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from quidditch_pipeline.cli import main as cli_main
from quidditch_pipeline.errors import UdfBuildError
from quidditch_pipeline.udf import BuildLimits, UdfRuntime, build_component, check_source, is_wasm
from quidditch_pipeline.udf.guest_stdlib import GUEST_PYTHON, GUEST_STDLIB

from .udf_fixtures import HOSTILE_SOURCE

# -- the source check (no build) ------------------------------------------------------------------------


def test_syntax_error_names_file_and_line() -> None:
    with pytest.raises(UdfBuildError) as info:
        check_source("def process(value, params):\n    return (\n\nx = 1 +\n", filename="broken.py")
    assert info.value.file == "broken.py"
    assert info.value.line is not None
    assert str(info.value).startswith("broken.py:")
    assert "syntax error" in info.value.message


def test_missing_process_is_refused() -> None:
    with pytest.raises(UdfBuildError, match="no top-level function process") as info:
        check_source("def handle(value, params):\n    return value\n", filename="u.py")
    assert info.value.file == "u.py"


def test_process_nested_in_a_class_is_not_top_level() -> None:
    with pytest.raises(UdfBuildError, match="no top-level function process"):
        check_source("class U:\n    def process(self, value, params):\n        return value\n")


@pytest.mark.parametrize(
    ("signature", "line"),
    [
        ("def process(value):", 2),
        ("def process(value, params, meta, extra):", 2),
        ("def process(value, params, *, flag):", 2),
        ("def process():", 2),
    ],
)
def test_wrong_arity_names_the_def_line(signature: str, line: int) -> None:
    source = f"import json\n{signature}\n    return None\n"
    with pytest.raises(UdfBuildError, match=r"process must take \(value, params\)") as info:
        check_source(source, filename="u.py")
    assert (info.value.file, info.value.line) == ("u.py", line)


def test_async_process_is_refused() -> None:
    with pytest.raises(UdfBuildError, match="not async def") as info:
        check_source("async def process(value, params):\n    return value\n")
    assert info.value.line == 1


@pytest.mark.parametrize(
    ("signature", "arity"),
    [
        ("def process(value, params):", 2),
        ("def process(value, params, meta):", 3),
        ("def process(value, params, meta=None):", 3),
        ("def process(value, params=None):", 2),
        ("def process(value, params, *rest):", 3),
        ("def process(value, /, params, meta, *, flag=False):", 3),
    ],
)
def test_arity_is_read_from_the_signature(signature: str, arity: int) -> None:
    assert check_source(f"{signature}\n    return None\n").arity == arity


def test_process_bound_otherwise_is_left_to_the_build() -> None:
    assert check_source("def _p(value, params):\n    return value\n\nprocess = _p\n").arity is None


@pytest.mark.parametrize(
    ("statement", "module"),
    [
        ("import socket", "socket"),
        ("import subprocess", "subprocess"),
        ("from urllib import request", "urllib.request"),
        ("import http.client", "http.client"),
        ("from ctypes import CDLL", "ctypes"),
    ],
)
def test_imports_the_sandbox_cannot_serve_are_refused_with_their_line(statement: str, module: str) -> None:
    source = f"import json\n\ndef process(value, params):\n    {statement}\n    return value\n"
    with pytest.raises(UdfBuildError, match=f"cannot import '{module}'") as info:
        check_source(source, filename="net.py")
    assert (info.value.file, info.value.line) == ("net.py", 4)


def test_harmless_neighbours_of_refused_modules_are_allowed() -> None:
    check_source("from urllib.parse import quote\nfrom http import HTTPStatus\ndef process(v, p):\n    return v\n")


def test_relative_imports_are_refused() -> None:
    with pytest.raises(UdfBuildError, match="relative imports") as info:
        check_source("from . import helpers\ndef process(v, p):\n    return v\n")
    assert info.value.line == 1


def test_imports_inside_functions_are_preloaded_and_guarded_ones_are_optional() -> None:
    source = (
        "import re\n"
        "def process(value, params):\n"
        "    import textwrap\n"
        "    try:\n"
        "        import tomllib\n"
        "    except ImportError:\n"
        "        tomllib = None\n"
        "    from os import path\n"
        "    return value\n"
    )
    checked = check_source(source)
    assert dict(checked.preload) == {"textwrap": False, "tomllib": True, "os": False, "os.path": True}
    assert checked.import_lines["re"] == 1
    assert checked.import_lines["textwrap"] == 3


# Four threads checking sources while the collector runs finalizers mid-parse: on CPython 3.11 two
# unserialized parses fail with "AST constructor recursion depth mismatch" within the first few hundred.
_PARALLEL_CHECKS = """
import gc, sys, threading, time
from quidditch_pipeline.udf import check_source
sys.setswitchinterval(1e-6)
gc.set_threshold(20, 1, 1)
SOURCE = sys.stdin.read()

class Finalized:
    def __del__(self):
        time.sleep(0)

failures = []

def check():
    for _ in range(100):
        for _ in range(5):
            a, b = Finalized(), Finalized()
            a.other, b.other = b, a
        try:
            check_source(SOURCE, filename="hostile.py")
        except SystemError as exc:
            failures.append(repr(exc))

threads = [threading.Thread(target=check) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(failures)
"""


def test_sources_checked_on_many_threads_at_once_never_fail_in_the_parser() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PARALLEL_CHECKS], input=HOSTILE_SOURCE, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_is_wasm() -> None:
    assert is_wasm(b"\0asm\x0d\x00\x01\x00rest")
    assert is_wasm(b"\0asm\x01\x00\x00\x00")
    assert not is_wasm(b"def process(value, params):\n")
    assert not is_wasm(b"")


# -- real builds ------------------------------------------------------------------------------------


# Imports every module of the guest's ``sys.stdlib_module_names`` at build time and reports which imported.
STDLIB_PROBE = '''\
import sys

_SKIP = {"antigravity", "this", "idlelib", "turtledemo", "turtle", "tkinter", "__hello__", "__phello__", "__main__"}
_OK = []
_BAD = {}
for _name in sorted(sys.stdlib_module_names):
    if _name in _SKIP:
        continue
    try:
        __import__(_name)
        _OK.append(_name)
    except BaseException as exc:  # noqa
        _BAD[_name] = f"{type(exc).__name__}: {exc}"


def process(value, params, meta):
    return {"ok": _OK, "bad": _BAD, "version": list(sys.version_info[:3]), "id": meta["id"]}
'''


def test_concurrent_builds_the_cli_builds_the_stdlib_probe_and_one_over_the_size_limit_fails_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two real builds at once (each costs seconds of componentize-py, the suite's slowest part, so one pair
    # holds four facts): `udf build` writes a component that runs; what it can import is exactly the build's
    # allowlist (guest_stdlib.py); the other build, held to 8 MiB, fails alone on its size; neither saw the
    # other's files.
    src = tmp_path / "stdlib_probe.py"
    src.write_text(STDLIB_PROBE)
    out = tmp_path / "out" / "stdlib_probe.wasm"
    out.parent.mkdir()
    outcomes: dict[str, object] = {}
    phases: list[str] = []

    def cli_build() -> None:
        command = ["udf", "build", str(src), "--name", "stdlib_probe", "--version", "1.0.0", "-o", str(out)]
        outcomes["cli"] = cli_main(command)

    def small_build() -> None:
        try:
            build_component("def process(value, params):\n    return value * 2\n", filename="small.py",
                            limits=BuildLimits(max_component_mb=8), progress=phases.append)  # fmt: skip
        except UdfBuildError as exc:
            outcomes["small"] = exc

    threads = [threading.Thread(target=cli_build), threading.Thread(target=small_build)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes["cli"] == 0
    assert "built stdlib_probe 1.0.0" in capsys.readouterr().out
    small = outcomes["small"]
    assert isinstance(small, UdfBuildError) and small.file == "small.py"
    assert re.search(r"the component is 1\d\.\d MiB, over the limit of 8 MiB", small.message), small.message
    assert "building component with componentize-py" in phases and "done" not in phases
    wasm = out.read_bytes()
    assert is_wasm(wasm)
    with UdfRuntime(tmp_path / "cache") as runtime:
        sha256 = hashlib.sha256(wasm).hexdigest()
        [result] = runtime.call_batch(sha256, out, [0], {}, [{"id": "doc-1"}], timeout_s=30)
    assert result.ok, result.error
    report = result.value
    assert report["id"] == "doc-1"
    assert ".".join(map(str, report["version"])) == GUEST_PYTHON
    assert set(report["ok"]) == GUEST_STDLIB
    # What the guest lacks is refused by the check too: native-library modules, and the network ones.
    assert {"ssl", "ctypes", "lzma", "bz2", "mmap", "resource"} <= set(report["bad"])
    assert not {"ssl", "ctypes", "lzma", "bz2", "mmap", "resource"} & GUEST_STDLIB


@pytest.mark.parametrize(
    ("statement", "module"),
    [("import numpy", "numpy"), ("import requests.adapters", "requests.adapters"), ("from lzma import open", "lzma")],
)
def test_an_import_the_guest_lacks_is_refused_before_the_build_at_its_line(statement: str, module: str) -> None:
    source = f"import json\n{statement}\n\ndef process(value, params):\n    return value\n"
    with pytest.raises(UdfBuildError) as info:
        check_source(source, filename="uses_it.py")  # the check alone: milliseconds, no build spent
    assert (info.value.file, info.value.line) == ("uses_it.py", 2)
    assert f"cannot import '{module}': it is not in the sandbox's Python 3.14.0 standard library" in info.value.message


def test_a_guarded_import_of_a_missing_package_is_left_to_the_udf() -> None:
    source = "try:\n    import numpy\nexcept ImportError:\n    numpy = None\n\ndef process(v, p):\n    return v\n"
    assert check_source(source).import_lines == {"numpy": 2}


@pytest.mark.parametrize(
    "expression",
    [
        "(" * 100_000 + "1" + ")" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        "-" * 100_000 + "1",
        "+".join(["a"] * 100_000),
    ],
    ids=["parentheses", "brackets", "unary", "binary"],
)
def test_pathological_nesting_is_a_build_error_naming_the_problem(expression: str) -> None:
    source = f"X = {expression}\n\ndef process(value, params):\n    return value\n"
    with pytest.raises(UdfBuildError, match=r"too many nested parentheses|the source nests too deeply") as info:
        check_source(source, filename="deep.py")
    assert info.value.file == "deep.py" and info.value.status == 400


def test_an_error_at_import_time_fails_the_build_at_its_line() -> None:
    source = "import json\n\nTABLE = json.loads('{broken')\n\ndef process(value, params):\n    return value\n"
    with pytest.raises(UdfBuildError) as info:
        build_component(source, filename="bad_table.py")
    assert (info.value.file, info.value.line) == ("bad_table.py", 3)
    assert "JSONDecodeError: Expecting property name" in info.value.message


def test_a_module_that_never_finishes_importing_times_the_build_out() -> None:
    source = "while True:\n    pass\n\ndef process(value, params):\n    return value\n"
    with pytest.raises(UdfBuildError, match="did not finish within 2 s"):
        build_component(source, filename="forever.py", limits=BuildLimits(timeout_s=2))


def test_a_module_that_allocates_too_much_at_import_time_fails_the_build_with_a_memory_error() -> None:
    # The module-level code runs in the build process, inside componentize-py's wasmtime: 1.5 GiB in 64 MiB
    # pieces (one object of a wasm32 guest cannot be 2 GiB) against a 1 GiB build memory limit.
    source = "HOARD = [bytearray(64 << 20) for _ in range(24)]\n\ndef process(value, params):\n    return value\n"
    with pytest.raises(UdfBuildError, match=r"the build ran out of memory \(its limit is 1024 MiB\)") as info:
        build_component(source, filename="hoard.py", limits=BuildLimits(memory_limit_mb=1024))
    assert info.value.file == "hoard.py"


# -- the command line -------------------------------------------------------------------------------


def test_cli_build_error_prints_file_line_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "broken.py"
    src.write_text("def process(value):\n    return value\n")
    code = cli_main(
        ["udf", "build", str(src), "--name", "broken", "--version", "1.0.0", "-o", str(tmp_path / "b.wasm")]
    )
    assert code == 1
    assert f"{src}:1: process must take (value, params)" in capsys.readouterr().err
    assert not (tmp_path / "b.wasm").exists()


@pytest.mark.parametrize(("name", "version"), [("Bad Name", "1.0.0"), ("ok", "one")])
def test_cli_build_refuses_a_bad_name_or_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, version: str
) -> None:
    src = tmp_path / "u.py"
    src.write_text("def process(value, params):\n    return value\n")
    assert cli_main(["udf", "build", str(src), "--name", name, "--version", version]) == 1
    assert "error:" in capsys.readouterr().err
