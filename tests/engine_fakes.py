"""Fakes the engine's unit tests share: a clock that moves only when told, and native processors that
spend fake time, fail or drop on cue per document (registered for a test module by :func:`fake_processors`).

Beside them, tests with the real clock (``time.sleep`` in a registered processor) and real WebAssembly prove
the same behaviours end to end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from quidditch_pipeline._outcome import DROP, Drop
from quidditch_pipeline.builder import BuildContext, build_pipeline
from quidditch_pipeline.definitions import parse_definition
from quidditch_pipeline.executor import CompiledPipeline
from quidditch_pipeline.processors import PROCESSORS, ProcessorError, register_processor
from quidditch_pipeline.stages import Item, Run, UdfRef
from quidditch_pipeline.stats import StatsRegistry


class FakeClock:
    """Seconds that pass only when a processor spends them or the executor sleeps."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


CLOCK = FakeClock()
#: Calls per document key, for processors that fail the first N calls.
CALLS: dict[str, int] = {}


class CostConfig(BaseModel):
    """``fake_cost``: spends ``doc[field]`` ms of fake time; fails while ``doc[fail]`` is set (or for the first
    ``doc["failures"]`` calls of ``doc["key"]``), drops when ``doc[drop]`` is set, else counts in ``doc[mark]``."""

    model_config = ConfigDict(extra="forbid")
    field: str = "cost_ms"
    mark: str = "ran"
    fail: str = "fail"
    drop: str = "drop"


def _cost(doc: dict[str, Any], config: CostConfig) -> dict[str, Any] | Drop:
    CLOCK.sleep(float(doc.get(config.field, 0)) / 1000)
    key = doc.get("key")
    if key is not None:
        CALLS[key] = CALLS.get(key, 0) + 1
        if CALLS[key] <= int(doc.get("failures", 0)):
            raise ProcessorError(f"failure {CALLS[key]} of [{key}]")
    if doc.get(config.fail):
        raise ProcessorError("failing on purpose")
    if doc.get(config.drop):
        return DROP
    doc[config.mark] = doc.get(config.mark, 0) + 1
    return doc


def fake_processors() -> Iterator[None]:
    """Register ``fake_cost`` for the duration of a test module (use as a module-scoped fixture body)."""
    register_processor("fake_cost", config=CostConfig)(_cost)
    try:
        yield
    finally:
        PROCESSORS.unregister("fake_cost")


def cost(name: str, **extra: Any) -> dict[str, Any]:
    """A native stage running ``fake_cost``; ``extra`` holds stage keys (timeout_ms, on_failure, enabled)."""
    config = {k: extra.pop(k) for k in ("field", "mark", "fail", "drop") if k in extra}
    return {"name": name, "type": "native", "config": {"processor": "fake_cost", **config}, **extra}


def build(definition: dict[str, Any], ctx: BuildContext | None = None, name: str = "p") -> CompiledPipeline:
    defn = parse_definition({"name": name, "version": "1.0.0", "type": "document", **definition})
    return build_pipeline(defn, 1, StatsRegistry().for_pipeline(defn.name), ctx or BuildContext())


def run(
    pipeline: CompiledPipeline,
    values: list[dict[str, Any]],
    *,
    pipelines: dict[str, CompiledPipeline] | None = None,
    verbose: bool = False,
    clock: Any = CLOCK,
) -> list[Item]:
    items = [Item(i, f"d{i}", v, {"index": "idx"}, trace=[] if verbose else None) for i, v in enumerate(values)]
    pipeline.run(items, Run({}, None, verbose, clock, (pipelines or {}).__getitem__))
    return items


class UdfAnswer:
    """One item's answer from a fake UDF runtime (the fields the python stage reads)."""

    def __init__(self, value: Any) -> None:
        self.ok, self.value, self.error = True, value, None


class FakeUdfRuntime(ABC):
    """Resolver and runtime of a python stage without WebAssembly: every UDF resolves, loads with arity 2,
    and :meth:`answer` says what a call returns (tests beside these run real components)."""

    def resolve(self, name: str, version: str | None) -> UdfRef:
        return UdfRef(name, version or "1.0.0", name, Path("/nonexistent"))

    def load(self, sha256: str, wasm_path: Path) -> int:
        return 2

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
    ) -> list[UdfAnswer]:
        return self.answer(values, timeout_s)

    @abstractmethod
    def answer(self, values: Sequence[Any], timeout_s: float | None) -> list[UdfAnswer]:
        """What one call returns for ``values`` (it may spend fake time or raise, as a real call would)."""
