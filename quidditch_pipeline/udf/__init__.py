"""Python UDFs as WebAssembly components: build them, store them, run them sandboxed.

* :mod:`.build` — check a UDF's source and build it into a component with componentize-py;
* :mod:`.artifacts` — the content-addressed folder of ``.wasm`` files;
* :mod:`.store` — UDF versions: registered once they load, immutable, builds bounded;
* :mod:`.runtime` — wasmtime: compile once, cache on disk, pool instances, bound time and memory;
* ``wit/udf.wit`` and ``guest/udf_guest.py`` — the versioned contract between host and guest, and the shim
  built into every component;
* :mod:`.interpreter` — the shared interpreter component (``wit_source/udf-source.wit``,
  ``guest/udf_interpreter.py``): one build that runs any UDF's source, for source mode and inline source;
* :mod:`.tester` — ``udf test``: sample inputs in the sandbox, compared with native CPython, on every save.
"""

from .artifacts import ArtifactStore
from .build import BuildLimits, CheckedSource, build_component, check_source, is_wasm
from .runtime import ABI, UdfItemError, UdfItemResult, UdfRuntime, UdfRuntimeStats
from .store import UdfRef, UdfStore

__all__ = [
    "ABI",
    "ArtifactStore",
    "BuildLimits",
    "CheckedSource",
    "UdfItemError",
    "UdfItemResult",
    "UdfRef",
    "UdfRuntime",
    "UdfRuntimeStats",
    "UdfStore",
    "build_component",
    "check_source",
    "is_wasm",
]
