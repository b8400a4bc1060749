"""Session fixtures for tests that run real UDF components (a pytest plugin: see ``pytest_plugins``).

Building a UDF takes seconds (componentize-py) and compiling it seconds more (wasmtime), so:

* components are cached on disk under ``$QP_TEST_CACHE`` (default ``~/.cache/quidditch-pipeline/test-udfs``,
  or ``$QUIDDITCH_CACHE_DIR/test-udfs``),
  keyed by a hash of everything that goes into one: the UDF's source and the modules it preloads (what
  build.py's check finds), the guest shim, the WIT world, how componentize-py is run (build.py's
  ``componentize``) and its version. A session builds only what changed; a change elsewhere in build.py
  (its checks' messages, its limits) does not rebuild every component.
* Most tests need what a UDF does, not its component: they run it in source mode (:class:`UdfSources`,
  ``udf_sources``) on the shared interpreter, which is built and compiled once (``udf prepare``, or the
  first session) where services and servers keep it too (:func:`interpreter_dir`). Components are for the
  tests of building, storing and loading them, and for the runtime and sandbox tests in both modes.
* The first time a session asks for a component, the ones the suite runs (:data:`PREFETCHED`) start
  building in the background, two at a time: a cold cache costs about the slowest builds, not their sum.
  Processes sharing the cache (pytest-xdist's workers) build each component once (a lock file per build).
* One :class:`UdfRuntime` serves the session; its compiled-component cache sits beside the components, so
  each component is compiled once, and later sessions only map it back.
* ``QUIDDITCH_CACHE_DIR`` moves every cache (the interpreter's and the suite's: for a cold run, point it
  at an empty folder); ``QP_TEST_CACHE`` moves the suite's alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from quidditch_pipeline._files import file_lock
from quidditch_pipeline.udf import UdfRuntime, build_component, check_source
from quidditch_pipeline.udf import build as build_module
from quidditch_pipeline.udf.interpreter import cache_root, default_cache_dir

__all__ = [
    "EXAMPLES_DIR",
    "HOSTILE_SOURCE",
    "BuiltUdf",
    "UdfBuilds",
    "UdfSources",
    "interpreter_dir",
    "line_of",
    "source_udf",
]

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "udfs"

# One component for every runtime and sandbox test: ``params["do"]`` picks the behaviour, so the suite pays
# for one build and one compile instead of one per behaviour. Takes ``meta`` (arity 3).
HOSTILE_SOURCE = '''\
"""Test UDF: params["do"] selects a behaviour, well-mannered or hostile."""
import os
import sys
import time

HOARD = []


def _recurse(n):
    return _recurse(n + 1)


def process(value, params, meta):
    do = params.get("do", "echo")
    if do == "echo":
        return value
    if do == "none":
        return None
    if do == "meta":
        return meta
    if do == "params":
        return params
    if do == "spin":
        end = time.monotonic() + params["seconds"]
        while time.monotonic() < end:
            pass
        return value
    if do == "loop":
        while True:
            pass
    if do == "memory":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if do == "hoard":
        HOARD.append(bytearray(params["mib"] << 20))
        return len(HOARD)
    if do == "recursion":
        return _recurse(0)
    if do == "unbounded_recursion":
        sys.setrecursionlimit(10**6)
        return _recurse(0)
    if do == "read_file":
        with open(params.get("path", "/etc/passwd")) as fh:
            return fh.read()
    if do == "listdir":
        return os.listdir(params.get("path", "/"))
    if do == "environ":
        return dict(os.environ)
    if do == "network":
        socket = __import__("socket")
        return socket.create_connection(("127.0.0.1", 80), timeout=1) and "connected"
    if do == "raise":
        raise ValueError(f"bad value {value!r}")  # marker: raise
    if do == "fail_odd":
        if value % 2:
            raise KeyError(value)
        return value * 2
    if do == "exit":
        sys.exit(3)
    if do == "unmappable":
        return {1, 2, 3}
    if do == "nan":
        return float("nan")
    if do == "nested":
        deep = []
        for _ in range(params["depth"]):
            deep = [deep]
        return deep
    if do == "big":
        return "x" * params["size"]
    if do == "print":
        print("to stdout")
        print("to stderr", file=sys.stderr)
        return "printed"
    if do == "late_import":
        import textwrap

        return textwrap.shorten(value, width=12, placeholder="...")
    if do == "tamper":
        shim = sys.modules["udf_guest"]
        reply = params["reply"]
        shim._run = None if reply is None else lambda request: reply
        return "tampered"
    raise NotImplementedError(do)
'''


def line_of(source: str, marker: str) -> int:
    """The 1-based line of ``source`` that contains ``marker``."""
    for number, text in enumerate(source.splitlines(), start=1):
        if marker in text:
            return number
    raise LookupError(marker)


@dataclass(frozen=True, slots=True)
class BuiltUdf:
    name: str
    source: str
    path: Path
    sha256: str

    @property
    def wasm(self) -> bytes:
        return self.path.read_bytes()

    @property
    def mode(self) -> str:
        """``component``, or ``source`` for source run on the shared interpreter."""
        return "source" if self.path.suffix == ".py" else "component"

    @property
    def baseline_mb(self) -> int:
        """What the guest's linear memory starts with, rounded up: the interpreter's snapshot also holds
        the pre-imported standard library. Memory tests add it to the limits they were written for."""
        return 32 if self.mode == "source" else 16


#: The known test UDFs the suite runs as components (the rest of its tests run UDFs in source mode, see
#: :class:`UdfSources`): the hostile UDF, for the runtime and sandbox tests in both modes, and the two examples
#: that the benchmarks' smoke tests build as components anyway.
PREFETCHED = ("hostile", "recency_boost", "query_synonyms")


def _known_sources() -> dict[str, str]:
    sources = {"hostile": HOSTILE_SOURCE}
    for path in sorted(EXAMPLES_DIR.glob("*.py")):
        sources[path.stem] = path.read_text(encoding="utf-8")
    return sources


def _toolchain_digest() -> bytes:
    """What besides a UDF's source decides the component built from it."""
    udf_dir = Path(build_module.__file__).parent
    parts = [
        (udf_dir / "guest" / "udf_guest.py").read_bytes(),
        (udf_dir / "wit" / "udf.wit").read_bytes(),
        inspect.getsource(build_module.componentize).encode(),
        importlib.metadata.version("componentize-py").encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).digest()


class UdfBuilds:
    """Components built from UDF sources, cached on disk; ``get`` a known one, ``build`` any source."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._known = _known_sources()
        self._toolchain = _toolchain_digest()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="udf-build")
        self._lock = threading.Lock()
        self._futures: dict[str, Future[BuiltUdf]] = {}

    def get(self, name: str) -> BuiltUdf:
        """A known test UDF (``hostile`` or an example's file stem) as a component; the first call starts
        building every one in :data:`PREFETCHED` too."""
        with self._lock:
            for known in {name} if self._futures else {name, *PREFETCHED}:
                if known not in self._futures:
                    self._futures[known] = self._pool.submit(self._build, known, self._known[known])
        return self._futures[name].result()

    def build(self, name: str, source: str) -> BuiltUdf:
        """Build ``source`` (or take it from the cache); ``name`` only names the file."""
        return self._build(name, source)

    def _build(self, name: str, source: str) -> BuiltUdf:
        # The check is what build_component runs first: a source it refuses raises here the same way.
        preload = json.dumps(check_source(source, filename=f"{name}.py").preload).encode()
        key = hashlib.sha256(b"\0".join([self._toolchain, source.encode(), preload])).hexdigest()[:20]
        path = self.cache_dir / f"{name}-{key}.wasm"
        if not path.exists():
            # Processes sharing the cache (pytest-xdist's workers, the benchmarks' smoke tests) build it once.
            lock = self.cache_dir / f".{name}-{key}.lock"
            lock.touch()
            with file_lock(lock):
                if not path.exists():
                    data = build_component(source, filename=f"{name}.py")
                    fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                    os.replace(tmp, path)
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        return BuiltUdf(name, source, path, sha256)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def interpreter_dir() -> Path:
    """Where the tests keep the shared interpreter component and its compiled form: where services, servers
    and workers started without one (and ``udf prepare``) keep it, so that a session builds and compiles it
    once, or not at all after ``udf prepare``."""
    return default_cache_dir()


def _cache_root() -> Path:
    explicit = os.environ.get("QP_TEST_CACHE")
    return Path(explicit) if explicit else cache_root() / "test-udfs"


@pytest.fixture(scope="session")
def udf_builds() -> Iterator[UdfBuilds]:
    builds = UdfBuilds(_cache_root() / "components")
    yield builds
    builds.close()


@pytest.fixture(scope="session")
def udf_runtime() -> Iterator[UdfRuntime]:
    """The session's runtime: default limits, compiled components cached across sessions.

    The shared interpreter is made ready in the background from the start (built and compiled, unless ``udf
    prepare`` or an earlier session did), so that on a cold cache its minute and a half overlaps other tests
    instead of stalling the first one in source mode (which waits for it)."""
    with UdfRuntime(_cache_root() / "compiled", interpreter_dir=interpreter_dir()) as runtime:
        ready = threading.Thread(target=_prepare_quietly, args=(runtime,), name="udf-interpreter", daemon=True)
        ready.start()
        yield runtime
        ready.join()


def _prepare_quietly(runtime: UdfRuntime) -> None:
    # Any failure here is the first source-mode test's to report: it asks for the interpreter again.
    with contextlib.suppress(Exception):
        runtime.prepare_interpreter()


@pytest.fixture(scope="session")
def hostile_udf(udf_builds: UdfBuilds) -> BuiltUdf:
    return udf_builds.get("hostile")


@pytest.fixture(scope="session")
def hostile_component_udf(udf_builds: UdfBuilds) -> BuiltUdf:
    """The hostile UDF as a component (``hostile_udf``, under a name a test module's override can ask for)."""
    return udf_builds.get("hostile")


def source_udf(runtime: UdfRuntime, name: str, source: str) -> BuiltUdf:
    """``source`` in source mode: loaded on the shared interpreter (built on first use, then cached)."""
    sha256, path = runtime.load_source(source, filename=f"{name}.py")
    return BuiltUdf(name, source, path, sha256)


class UdfSources:
    """Test UDFs in source mode on the session's shared interpreter: ``get`` and ``build`` as in
    :class:`UdfBuilds`, with no build and no compile of their own. For tests of what a UDF does in a
    pipeline, a service or a server; tests of building, storing or loading components use :class:`UdfBuilds`.
    Put one into a service with ``put_udf(name, version, udf.source, mode="source")``."""

    def __init__(self, runtime: UdfRuntime) -> None:
        self._runtime = runtime
        self._known = _known_sources()

    def get(self, name: str) -> BuiltUdf:
        """A known test UDF (``hostile`` or an example's file stem)."""
        return self.build(name, self._known[name])

    def build(self, name: str, source: str) -> BuiltUdf:
        """``source`` loaded in source mode; ``name`` names its file in errors."""
        return source_udf(self._runtime, name, source)


@pytest.fixture(scope="session")
def udf_sources(udf_runtime: UdfRuntime) -> UdfSources:
    return UdfSources(udf_runtime)


@pytest.fixture(scope="session")
def hostile_source_udf(udf_runtime: UdfRuntime) -> BuiltUdf:
    """The hostile UDF in source mode, on the shared interpreter."""
    return source_udf(udf_runtime, "hostile", HOSTILE_SOURCE)


@pytest.fixture
def seeded_cache(tmp_path: Path, udf_runtime: UdfRuntime, hostile_udf: BuiltUdf) -> Path:
    """A fresh cache folder holding the hostile UDF's compiled form (copied from the session's cache)."""
    return _seeded(tmp_path, udf_runtime, hostile_udf)


@pytest.fixture
def seeded_component_cache(tmp_path: Path, udf_runtime: UdfRuntime, hostile_component_udf: BuiltUdf) -> Path:
    """``seeded_cache`` for the hostile UDF as a component, whatever mode a test module picks."""
    return _seeded(tmp_path, udf_runtime, hostile_component_udf)


def _seeded(tmp_path: Path, runtime: UdfRuntime, udf: BuiltUdf) -> Path:
    runtime.load(udf.sha256, udf.path)
    cache = tmp_path / "compiled"
    cache.mkdir()
    if udf.mode == "component":  # source mode's compiled code is the interpreter's, kept apart
        compiled = runtime.compiled_path(udf.sha256)
        assert compiled is not None and compiled.is_file()
        shutil.copyfile(compiled, cache / compiled.name)
    return cache
