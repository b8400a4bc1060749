"""The ``composite`` and ``pipeline`` stages: compound stages that run other stages as one.

Both call :func:`~quidditch_pipeline.executor.run_stages` (through :meth:`CompiledPipeline.run` for a
``pipeline`` stage) on a copy of each unit, then report what became of it as the stage's outcome, so the
compound stage's own failure policy decides what a failure inside it means.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .._outcome import DROP
from ..errors import StageError
from .base import Item, Run, Stage, Status, Unit

__all__ = ["CompositeStage", "PipelineCallStage"]

#: How deep ``pipeline`` stages may call one another at run time (cycles are refused when stored; this
#: guards against a cycle made by a concurrent re-put between the check and the run).
MAX_CALL_DEPTH = 32


def _sub_items(units: list[Unit], run: Run) -> list[Item]:
    return [
        Item(
            position=u.item.position,
            id=u.item.id,
            value=u.value,
            meta=u.item.meta,
            trace=[] if run.verbose else None,
        )
        for u in units
    ]


def _outcomes(units: list[Unit], subs: list[Item]) -> list[Any]:
    out: list[Any] = []
    for unit, sub in zip(units, subs, strict=True):
        unit.children = sub.trace
        if sub.status is Status.FAILED:
            out.append(sub.error or StageError("failed"))
        elif sub.status in (Status.DROPPED, Status.REJECTED):
            out.append(DROP)
        else:
            out.append(sub.value)
    return out


class CompositeStage(Stage):
    def __init__(self, children: list[Stage], **common: Any) -> None:
        super().__init__(**common)
        self.children = children

    def invoke(self, units: list[Unit], run: Run, deadline: float | None) -> list[Any]:
        from ..executor import run_stages

        subs = _sub_items(units, run)
        run_stages(self.children, subs, dataclasses.replace(run, deadline=deadline))
        return _outcomes(units, subs)


class PipelineCallStage(Stage):
    def __init__(self, target: str, **common: Any) -> None:
        super().__init__(**common)
        self.target = target

    def invoke(self, units: list[Unit], run: Run, deadline: float | None) -> list[Any]:
        if run.depth >= MAX_CALL_DEPTH:
            return [StageError(f"pipeline calls nest deeper than {MAX_CALL_DEPTH}")] * len(units)
        target = run.resolve(self.target)
        if target.type is not self.pipeline_type:
            return [StageError(f"pipeline [{self.target}] is a {target.type} pipeline")] * len(units)
        subs = _sub_items(units, run)
        target.run(subs, dataclasses.replace(run, deadline=deadline, depth=run.depth + 1))
        return _outcomes(units, subs)
