"""The ``native`` stage: a trusted processor run in-process on each unit, each unit timed on its own."""

from __future__ import annotations

from typing import Any

from ..errors import StageError
from ..processors import BoundProcessor, ProcessorError
from .base import Run, Stage, Unit, ingest_of

__all__ = ["NativeStage"]


class NativeStage(Stage):
    def __init__(self, processor: BoundProcessor, *, per_hit: bool, **common: Any):
        super().__init__(**common)
        self._fn = processor.fn
        self._wants_ingest = processor.wants_ingest
        self.per_hit = per_hit

    def invoke(self, units: list[Unit], run: Run) -> list[Any]:
        fn = self._fn
        wants_ingest = self._wants_ingest
        now = run.clock.now
        out: list[Any] = []
        for unit in units:
            # Timed only under a budget: the executor judges each unit by its own time, not its batch's.
            t0 = now() if unit.budget is not None else 0.0
            try:
                result: Any = fn(unit.value, ingest_of(unit.item) if wants_ingest else None)
            except ProcessorError as exc:
                result = StageError(str(exc))
            except Exception as exc:  # a host processor's bug fails its stage only
                result = StageError(f"{type(exc).__name__}: {exc}")
            if unit.budget is not None:
                unit.took = now() - t0
            out.append(result)
        return out
