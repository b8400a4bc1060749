"""The ``python`` stage: a UDF compiled to a WebAssembly component, one call into the guest per batch.

The batch's values cross in one call; what comes back is one small raw result per unit, which
:class:`~quidditch_pipeline.mapping.ResultMapping` applies to the unit on the host. When the whole call fails
(a trap, a timeout, running out of memory) and it carried more than one unit, each unit is called again on
its own with its own budget, so one runaway document fails alone and its neighbours go on.

A UDF version that cannot be resolved or loaded makes the stage unavailable (:class:`StageUnavailableError`):
the input fails whatever the stage's policy, rather than passing on without the UDF.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .. import _paths
from ..definitions import PipelineType, PythonConfig
from ..errors import QuidditchError, StageError, StageTimeoutError, StageUnavailableError, UdfCallError
from ..mapping import ResultMapping, UnmappableResult
from ..udf.store import UdfRef, inline_udf
from .base import Run, Stage, Unit

__all__ = ["PythonStage", "UdfRef", "UdfResolver", "UdfRunner"]


class UdfResolver(Protocol):
    def resolve(self, name: str, version: str | None) -> UdfRef:
        """The artifact of ``name`` at ``version`` (``None``: the highest version registered now)."""
        ...


class _ItemError(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def line(self) -> int | None: ...


class _ItemResult(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def value(self) -> Any: ...
    @property
    def error(self) -> _ItemError | None: ...


class UdfRunner(Protocol):
    def load(self, sha256: str, wasm_path: Path) -> int:
        """Compile (or load from cache) the component once per process; the arity of its ``process``."""
        ...

    def load_source(self, source: str, *, filename: str = "udf.py") -> tuple[str, Path]:
        """Load inline source on the shared interpreter; its sha256 and path (see ``UdfRuntime``)."""
        ...

    def call_batch(
        self,
        sha256: str,
        wasm_path: Path,
        values: Sequence[Any],
        params: Mapping[str, Any],
        metas: Sequence[Mapping[str, Any]] | None,
        *,
        timeout_s: float | None,
        memory_limit_mb: int | None = None,
    ) -> Sequence[_ItemResult]: ...


class PythonStage(Stage):
    #: The runtime preempts a call at its deadline; the executor need not second-guess it afterwards.
    preemptive = True

    def __init__(
        self,
        config: PythonConfig,
        *,
        udfs: UdfResolver,
        runtime: UdfRunner,
        pipeline_params: Mapping[str, Any],
        **common: Any,
    ) -> None:
        super().__init__(params=pipeline_params, **common)
        self.config = config
        self._udfs = udfs
        self._runtime = runtime
        self._params = {**pipeline_params, **config.parameters}
        self._inputs = None if config.input_fields is None else _paths.projection(config.input_fields)
        target = config.target_field
        self._mapping = ResultMapping(self.pipeline_type, hit_scope=False, target_field=target)
        self._hit_mapping = ResultMapping(self.pipeline_type, hit_scope=True, target_field=target)
        self.per_hit = self.pipeline_type is PipelineType.RESULT and config.scope == "hit"
        self._ready: tuple[UdfRef, int] | None = None  # set by prepare(); read whole, never changed in place

    def params(self, run: Run) -> dict[str, Any]:
        """``pipeline.parameters < execute-time params < stage.config.parameters``."""
        if not run.params:
            return self._params
        return {**self._pipeline_params, **run.params, **self.config.parameters}

    def condition_params(self, run: Run) -> Mapping[str, Any]:
        """A condition on a python stage reads the parameters its UDF gets."""
        return self.params(run)

    def prepare(self, run: Run) -> None:
        """Resolve the UDF version and load its component (compiling it on first use) before the clock starts."""
        try:
            self._ready = self._resolve()
        except QuidditchError as exc:
            raise StageUnavailableError(exc.message) from exc

    def _resolve(self) -> tuple[UdfRef, int]:
        """The UDF's artifact at the configured version (resolved now), loaded; the arity of its ``process``."""
        if self.config.source is not None:  # inline, in _execute: on the shared interpreter, unregistered
            ref = inline_udf(self._runtime, self.config.source)
        else:
            assert self.config.udf_name is not None
            ref = self._udfs.resolve(self.config.udf_name, self.config.udf_version)
        return ref, self._runtime.load(ref.sha256, ref.path)

    def invoke(self, units: list[Unit], run: Run) -> list[Any]:
        # What prepare() resolved just before this call. Another thread's prepare() may have replaced it
        # since, with the same UDF or (for an unpinned version) one registered since: either is loaded and
        # is the configured version as of this run.
        ready = self._ready
        if ready is None:
            try:
                ready = self._resolve()
            except QuidditchError as exc:
                return [StageUnavailableError(exc.message)] * len(units)
        ref, arity = ready
        params = self.params(run)
        # One call for the batch, preempted when the sum of its units' budgets is spent.
        budgets = [unit.budget for unit in units if unit.budget is not None]
        try:
            return self._call(ref, arity, units, params, sum(budgets) if len(budgets) == len(units) else None)
        except UdfCallError as exc:
            if len(units) == 1:
                return [self._call_error(exc, ref)]
        # The batch failed as a whole: find the unit(s) to blame by calling each alone, each with its own
        # budget (the batch's time is spent, but not by the units that are not to blame), timed alone.
        now = run.clock.now
        out: list[Any] = []
        for unit in units:
            t0 = now()
            try:
                out.extend(self._call(ref, arity, [unit], params, unit.budget))
            except UdfCallError as exc:
                out.append(self._call_error(exc, ref))
            unit.took = now() - t0
        return out

    def _call(
        self, ref: UdfRef, arity: int, units: list[Unit], params: dict[str, Any], timeout_s: float | None
    ) -> list[Any]:
        metas = None
        if arity == 3:  # only a process(value, params, meta) gets them
            metas = [
                {
                    "index": unit.item.meta.get("index"),
                    "id": unit.item.id if unit.hit is None else unit.value.get("_id"),
                    "pipeline": self.pipeline,
                    "stage": self.name,
                    "type": self.pipeline_type.value,
                }
                for unit in units
            ]
        inputs = self._inputs
        # An item-level unit's value is its item's: read it directly rather than through Unit.value, once
        # per document.
        values = [unit.value for unit in units] if self.per_hit else [unit.item.value for unit in units]
        results = self._runtime.call_batch(
            ref.sha256,
            ref.path,
            values if inputs is None else [_paths.project(value, inputs) for value in values],
            params,
            metas,
            timeout_s=timeout_s,
            memory_limit_mb=self.config.memory_limit_mb,
        )
        map_one = self._map
        return [map_one(unit, value, result, ref) for unit, value, result in zip(units, values, results, strict=True)]

    def _map(self, unit: Unit, value: Any, result: _ItemResult, ref: UdfRef) -> Any:
        if not result.ok:
            err = result.error
            if err is None:
                return StageError(f"UDF [{ref.name}@{ref.version}] failed")
            line = f" (line {err.line})" if err.line else ""
            return StageError(
                f"UDF [{ref.name}@{ref.version}] raised {err.type}: {err.message}{line}", cause_type=err.type
            )
        mapping = self._mapping if unit.hit is None else self._hit_mapping
        try:
            return mapping.apply(result.value, value)
        except UnmappableResult as exc:
            return StageError(f"UDF [{ref.name}@{ref.version}] {exc}", cause_type="unmappable_result")

    def _call_error(self, exc: UdfCallError, ref: UdfRef) -> StageError:
        if exc.kind == "timeout":
            return StageTimeoutError(f"UDF [{ref.name}@{ref.version}] preempted: {exc.message}", cause_type="timeout")
        return StageError(f"UDF [{ref.name}@{ref.version}] {exc.kind}: {exc.message}", cause_type=exc.kind)
