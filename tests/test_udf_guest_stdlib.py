"""The build's import allowlist is what the guest really has: a probe UDF imports every module of the guest's
``sys.stdlib_module_names`` at build time and reports which imported."""

from __future__ import annotations

from quidditch_pipeline.udf import UdfRuntime
from quidditch_pipeline.udf.guest_stdlib import GUEST_PYTHON, GUEST_STDLIB

from .udf_fixtures import UdfBuilds

PROBE_SOURCE = '''\
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


def process(value, params):
    return {"ok": _OK, "bad": _BAD, "version": list(sys.version_info[:3]), "builtin": sorted(sys.builtin_module_names)}
'''


def test_the_allowlist_is_exactly_what_the_guest_imports(udf_builds: UdfBuilds, udf_runtime: UdfRuntime) -> None:
    probe = udf_builds.build("stdlib_probe", PROBE_SOURCE)
    [result] = udf_runtime.call_batch(probe.sha256, probe.path, [0], {}, None, timeout_s=30)
    assert result.ok, result.error
    report = result.value
    assert ".".join(map(str, report["version"])) == GUEST_PYTHON
    assert set(report["ok"]) == GUEST_STDLIB
    # What the guest lacks is refused by the check too: native-library modules, and the network ones.
    assert {"ssl", "ctypes", "lzma", "bz2", "mmap", "resource"} <= set(report["bad"])
    assert not {"ssl", "ctypes", "lzma", "bz2", "mmap", "resource"} & GUEST_STDLIB
