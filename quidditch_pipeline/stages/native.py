"""The ``native`` stage: a trusted processor run in-process on each unit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._outcome import Drop
from ..errors import StageError, StageTimeoutError
from ..processors import ProcessorError
from .base import Run, Stage, Unit

__all__ = ["NativeStage"]


class NativeStage(Stage):
    def __init__(self, fn: Callable[[dict[str, Any]], dict[str, Any] | Drop], *, per_hit: bool, **common: Any):
        super().__init__(**common)
        self._fn = fn
        self.per_hit = per_hit

    def invoke(self, units: list[Unit], run: Run, deadline: float | None) -> list[Any]:
        fn = self._fn
        budget = self.timeout_s
        now = run.clock.now
        out: list[Any] = []
        for unit in units:
            t0 = now() if budget is not None else 0.0
            try:
                result: Any = fn(unit.value)
            except ProcessorError as exc:
                result = StageError(str(exc))
            except Exception as exc:  # a host processor's bug fails its stage only
                result = StageError(f"{type(exc).__name__}: {exc}")
            if budget is not None and now() - t0 > budget:
                result = StageTimeoutError(f"took longer than its timeout of {budget * 1000:.1f} ms")
            out.append(result)
        return out
