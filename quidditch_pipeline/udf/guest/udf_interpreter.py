"""The guest side of the shared interpreter: one component that runs any UDF's source, given as data.

componentize-py builds it once per release of the package (see ``..interpreter``) from this file, the
per-UDF shim ``udf_guest.py`` unchanged, a placeholder ``udf_source`` and, as the shim's preload list, the
sandbox's standard library: every module a UDF may import is imported at build time and lives in the
snapshot, since the sandbox has no files to import from later.

On a new instance the host calls ``load_source`` once: the source is compiled under the UDF's file name and
run in a fresh module, and the shim's globals are pointed at its ``process``; from then on ``run_batch`` is
the per-UDF shim's, so per-item errors, limits and the answer's shape are the same in both modes. Each
instance has its own linear memory: what one UDF's module keeps is invisible to every other.
"""

import sys
import types
from collections.abc import Callable

import udf_guest  # type: ignore[import-not-found]  # the per-UDF shim; its preload imports the stdlib

_encode: Callable[[object], str] = udf_guest._encode
_FATAL_MEMORY: str = udf_guest._FATAL_MEMORY


def _load(source: str, filename: str) -> str:
    # Named as in a per-UDF component; registered before it runs, as an import would (dataclasses and
    # pickle look a module's classes up there).
    module = types.ModuleType("udf_source")
    module.__file__ = filename
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return _encode({"error": ["SyntaxError", str(exc.msg), exc.lineno]})
    udf_guest._UDF_FILE = filename  # per-item errors name lines in this file
    sys.modules[module.__name__] = module
    try:
        exec(code, module.__dict__)
        process = getattr(module, "process", None)
        if not callable(process):
            raise TypeError("the UDF defines no top-level function process(value, params)")
        arity = udf_guest._arity(process)
    except MemoryError:
        return _FATAL_MEMORY
    except BaseException as exc:  # module-level code may raise anything, SystemExit included
        return _encode({"error": udf_guest._error(0, exc)[1:]})
    udf_guest._PROCESS = process
    description = _encode({"abi": udf_guest.ABI, "arity": arity})
    udf_guest._DESCRIPTION = description
    return description


class WitWorld(udf_guest.WitWorld):  # type: ignore[misc]  # its base is wit_world.WitWorld, generated from udf-source.wit
    def load_source(self, source: str, filename: str) -> str:
        try:
            return _load(source, filename)
        except MemoryError:
            return _FATAL_MEMORY
