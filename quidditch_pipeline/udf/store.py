"""The UDF store: name + semantic version -> a component in the content-addressed artifact folder.

Metadata lives in a :class:`UdfCatalog` (the registry is one); bytes live in :class:`ArtifactStore`; a
:class:`UdfLoader` (the runtime) compiles and instantiates them. The store depends on those three narrow
interfaces only, not on the pipeline registry or on a stage.

Rules it keeps:

* Versions are immutable: the same bytes (or the same Python source) again is a no-op, other content is
  refused before anything is built or loaded.
* A version is registered only once its component loads (compiled, instantiated, and its ABI checked): a
  component that does not is refused with :class:`UdfLoadError` naming the UDF and version, and leaves
  nothing behind (no record, no artifact, no compiled form), so a corrected upload of the same version succeeds.
* Server-side builds are bounded: at most ``BuildLimits.max_concurrent`` at once, a caller waits at most
  ``BuildLimits.queue_timeout_s`` for a slot, then gets :class:`RejectedExecutionError` (HTTP 429). Each
  build's time, memory and output size are bounded by :func:`build_component`; an upload's size here.
* A version put with ``mode="source"`` is stored as its source only (the source is the artifact, and its
  sha256 both the record's ``sha256`` and ``source_sha256``): the pre-build checks run, then it loads on the
  shared interpreter (its module-level code runs there), in milliseconds instead of a build.
* An artifact is deleted, and its component unloaded from the runtime, once no version uses it and no put
  of the same bytes is in flight.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

from ..definitions import is_valid_name, parse_udf_version
from ..errors import DefinitionError, PayloadTooLargeError, RejectedExecutionError, UdfLoadError
from ..storage import UdfRecord
from .artifacts import ArtifactStore
from .build import BuildLimits, build_component, check_source, is_wasm

__all__ = [
    "INLINE_NAME",
    "MODES",
    "PutUdfResult",
    "UdfCatalog",
    "UdfLoader",
    "UdfRef",
    "UdfStore",
    "inline_udf",
    "record_mode",
]

#: The name and file name inline source (in ``_execute``) runs under.
INLINE_NAME = "inline"

#: How a UDF version given as source is stored: built into a component, or kept as source for the shared
#: interpreter.
MODES = ("component", "source")

Builder = Callable[..., bytes]


class UdfRef(NamedTuple):
    """A resolved UDF version: its name, version, component sha256 and where the component lives."""

    name: str
    version: str
    sha256: str
    path: Path


class UdfCatalog(Protocol):
    """Where UDF records are kept (the registry, durably). ``put_udf`` is the authority on immutability."""

    def udf(self, name: str, version: str | None) -> UdfRecord:
        """``version`` of ``name``, or its ``latest`` when ``version`` is None; ``NotFoundError`` if none."""
        ...

    def udf_record(self, name: str, version: str) -> UdfRecord | None: ...
    def udf_versions(self, name: str) -> list[str]: ...
    def put_udf(self, record: UdfRecord) -> bool: ...
    def delete_udf(self, name: str, version: str) -> UdfRecord: ...
    def sha_in_use(self, sha256: str) -> bool: ...


class UdfLoader(Protocol):
    """What the store needs of the runtime: load a component (raising :class:`UdfLoadError`), forget one."""

    def load(self, sha256: str, wasm_path: Path, *, filename: str | None = None) -> int: ...
    def unload(self, sha256: str, *, drop_compiled: bool = False) -> None: ...


class PutUdfResult:
    __slots__ = ("created", "record")

    def __init__(self, record: UdfRecord, created: bool) -> None:
        self.record = record
        self.created = created


class UdfStore:
    """Registers, resolves and deletes UDF versions (implements the python stage's ``UdfResolver``)."""

    def __init__(
        self,
        catalog: UdfCatalog,
        artifacts: ArtifactStore,
        loader: UdfLoader,
        *,
        limits: BuildLimits | None = None,
        builder: Builder = build_component,
        progress: Callable[[str], None] | None = None,
        default_mode: str = "component",
    ) -> None:
        _check_mode(default_mode)
        self.default_mode = default_mode
        self._catalog = catalog
        self._artifacts = artifacts
        self._loader = loader
        self.limits = limits = limits or BuildLimits()
        self._builder = builder
        self._progress = progress
        self._builds = threading.BoundedSemaphore(limits.max_concurrent)
        # Artifacts a put is writing, loading or registering: not to be deleted under it. Guarded by _lock,
        # which also orders "is this artifact unused?" with deleting it.
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        # (name, version, sha256) -> its reference; a python stage resolves its UDF on every call.
        self._refs: dict[tuple[str, str, str], UdfRef] = {}
        #: Source builds (componentize-py) that succeeded: how many, and the seconds they took in all.
        self.builds = (0, 0.0)

    def put(
        self, name: str, version: str, source_or_wasm: str | bytes, *, mode: str | None = None
    ) -> PutUdfResult:
        """Register ``name@version`` from Python source or a component's bytes, once it loads. Source is
        built here (``mode="component"``) or kept as source for the shared interpreter (``"source"``);
        ``mode`` defaults to the store's ``default_mode``."""
        mode = self.default_mode if mode is None else mode
        _check_mode(mode)
        _check_name_version(name, version)
        existing = self._catalog.udf_record(name, version)
        source_sha: str | None = None
        if isinstance(source_or_wasm, bytes) and is_wasm(source_or_wasm):
            component = source_or_wasm
            if len(component) > self.limits.max_component_bytes:
                raise PayloadTooLargeError(
                    f"UDF [{name}] version [{version}]: the component is {len(component) / (1 << 20):.1f} MiB, "
                    f"over the limit of {self.limits.max_component_mb} MiB"
                )
            sha = hashlib.sha256(component).hexdigest()
            if existing is not None and existing.sha256 == sha:
                return PutUdfResult(existing, False)
        else:
            source = self._source(source_or_wasm)
            source_sha = hashlib.sha256(source.encode()).hexdigest()
            if existing is not None and existing.source_sha256 == source_sha:
                return PutUdfResult(existing, False)
            if existing is not None:
                raise existing.immutable_error()  # refused before spending a build
            if mode == "source":
                check_source(source, filename=f"{name}.py")
                component, sha = source.encode("utf-8"), source_sha
            else:
                component = self._build(name, version, source)
                sha = hashlib.sha256(component).hexdigest()
        if existing is not None:
            raise existing.immutable_error()
        record = UdfRecord(name, version, sha, len(component), time.time(), source_sha)
        return self._register(record, component)

    def _build(self, name: str, version: str, source: str) -> bytes:
        limits = self.limits
        if not self._builds.acquire(timeout=limits.queue_timeout_s):
            raise RejectedExecutionError(
                f"UDF [{name}] version [{version}]: {limits.max_concurrent} UDF builds are running and none "
                f"finished within {limits.queue_timeout_s:g} s; try again later"
            )
        try:
            start = time.perf_counter()
            component = self._builder(source, filename=f"{name}.py", progress=self._progress, limits=limits)
            took = time.perf_counter() - start
            with self._lock:
                count, seconds = self.builds
                self.builds = (count + 1, seconds + took)
            return component
        finally:
            self._builds.release()

    def _register(self, record: UdfRecord, component: bytes) -> PutUdfResult:
        """Store the artifact, load it, then record the version; undo the first two if a later step fails."""
        sha = record.sha256
        with self._lock:
            self._pending[sha] += 1
        registered = False
        try:
            self._artifacts.put(component)
            try:
                self._loader.load(sha, self._artifacts.path(sha), filename=f"{record.name}.py")
            except UdfLoadError as exc:
                raise UdfLoadError(
                    f"UDF [{record.name}] version [{record.version}] does not load: {exc.message}"
                ) from exc
            created = self._catalog.put_udf(record)
            registered = True
            return PutUdfResult(record if created else self._catalog.udf(record.name, record.version), created)
        finally:
            with self._lock:
                self._pending[sha] -= 1
                if not self._pending[sha]:
                    del self._pending[sha]
            if not registered:
                self._release(sha, drop_compiled=True)

    def _release(self, sha256: str, *, drop_compiled: bool = False) -> None:
        """Unload and delete the artifact ``sha256`` unless a version uses it or a put of it is in flight."""
        with self._lock:
            if self._pending[sha256] or self._catalog.sha_in_use(sha256):
                return
            self._loader.unload(sha256, drop_compiled=drop_compiled)
            self._artifacts.delete(sha256)

    @staticmethod
    def _source(data: str | bytes) -> str:
        if isinstance(data, str):
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DefinitionError(
                [("body", "neither a WebAssembly component nor UTF-8 Python source")], subject="UDF"
            ) from exc

    def resolve(self, name: str, version: str | None) -> UdfRef:
        record = self._catalog.udf(name, version)
        key = (record.name, record.version, record.sha256)
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = UdfRef(*key, self._artifacts.path(record.sha256))
        return ref

    def delete(self, name: str, version: str) -> UdfRecord:
        """Delete a version; its component is unloaded and its artifact deleted once no version uses them."""
        record = self._catalog.delete_udf(name, version)
        self._refs.pop((record.name, record.version, record.sha256), None)
        self._release(record.sha256)
        return record

    def versions(self, name: str) -> list[str]:
        return self._catalog.udf_versions(name)

    def latest(self, name: str) -> str:
        """The version ``latest`` (or no version) means now; ``NotFoundError`` when ``name`` has none."""
        return self._catalog.udf(name, None).version


class SourceLoader(Protocol):
    def load_source(self, source: str, *, filename: str = "udf.py") -> tuple[str, Path]: ...


def inline_udf(runtime: SourceLoader, source: str) -> UdfRef:
    """Check ``source`` and load it on the shared interpreter, unregistered (cached by its sha256): a
    reference a python stage or ``_execute`` can call. Raises UdfBuildError or UdfLoadError naming
    ``inline.py`` and the line."""
    filename = f"{INLINE_NAME}.py"
    check_source(source, filename=filename)
    sha, path = runtime.load_source(source, filename=filename)
    return UdfRef(INLINE_NAME, "source", sha, path)


def record_mode(record: UdfRecord) -> str:
    """``source`` for a version stored as its source (its artifact is the source itself), else ``component``."""
    return "source" if record.sha256 == record.source_sha256 else "component"


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise DefinitionError([("mode", f"[{mode}] is not a UDF mode ({' or '.join(MODES)})")], subject="UDF")


def _check_name_version(name: str, version: str) -> None:
    problems = []
    if not is_valid_name(name):
        problems.append(("name", f"[{name}] is not a valid UDF name ([a-z0-9][a-z0-9_.-]{{0,127}})"))
    try:
        parse_udf_version(version)
    except ValueError as exc:
        problems.append(("version", str(exc)))
    if problems:
        raise DefinitionError(problems, subject="UDF")
