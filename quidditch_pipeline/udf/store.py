"""The UDF store: name + semantic version -> a component in the content-addressed artifact folder.

Metadata lives in the registry's database (:meth:`Registry.put_udf`); bytes live in :class:`ArtifactStore`.
Versions are immutable: the same bytes (or the same Python source) again is a no-op, other bytes are refused.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from ..definitions import is_valid_name, parse_semver
from ..errors import DefinitionError
from ..registry import Registry
from ..stages.python import UdfRef
from ..storage import UdfRecord
from .artifacts import ArtifactStore
from .build import build_component, is_wasm

__all__ = ["PutUdfResult", "UdfStore"]

Builder = Callable[..., bytes]


class PutUdfResult:
    __slots__ = ("created", "record")

    def __init__(self, record: UdfRecord, created: bool) -> None:
        self.record = record
        self.created = created


class UdfStore:
    """Registers, resolves and deletes UDF versions (implements the python stage's ``UdfResolver``)."""

    def __init__(
        self,
        registry: Registry,
        artifacts: ArtifactStore,
        *,
        builder: Builder = build_component,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self._registry = registry
        self._artifacts = artifacts
        self._builder = builder
        self._progress = progress
        # (name, version, sha256) -> its reference; a python stage resolves its UDF on every call.
        self._refs: dict[tuple[str, str, str], UdfRef] = {}

    def put(self, name: str, version: str, source_or_wasm: str | bytes) -> PutUdfResult:
        """Register ``name@version`` from Python source (built here) or a component's bytes."""
        problems = []
        if not is_valid_name(name):
            problems.append(("name", f"[{name}] is not a valid UDF name ([a-z0-9][a-z0-9_.-]{{0,127}})"))
        try:
            parse_semver(version)
        except ValueError as exc:
            problems.append(("version", str(exc)))
        if problems:
            raise DefinitionError(problems, subject="UDF")
        source_sha: str | None = None
        if isinstance(source_or_wasm, bytes) and is_wasm(source_or_wasm):
            component = source_or_wasm
        else:
            source = self._source(source_or_wasm)
            source_sha = hashlib.sha256(source.encode()).hexdigest()
            existing = self._registry.udf_record(name, version)
            if existing is not None and existing.source_sha256 == source_sha:
                return PutUdfResult(existing, False)
            component = self._builder(source, filename=f"{name}.py", progress=self._progress)
        sha = self._artifacts.put(component)
        record = UdfRecord(name, version, sha, len(component), time.time(), source_sha)
        created = self._registry.put_udf(record)
        return PutUdfResult(record if created else self._registry.udf(name, version), created)

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
        record = self._registry.udf(name, version)
        key = (record.name, record.version, record.sha256)
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = UdfRef(*key, self._artifacts.path(record.sha256))
        return ref

    def delete(self, name: str, version: str) -> UdfRecord:
        record = self._registry.delete_udf(name, version)
        self._refs.pop((record.name, record.version, record.sha256), None)
        if not self._registry.sha_in_use(record.sha256):
            self._artifacts.delete(record.sha256)
        return record

    def versions(self, name: str) -> list[str]:
        return self._registry.udf_versions(name)
