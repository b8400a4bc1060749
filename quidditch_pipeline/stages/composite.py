"""The ``composite`` and ``pipeline`` stages: compound stages that run other stages as one.

Both run their children on a copy of each unit (a composite through the :data:`~.base.StageRunner` it was
built with, a ``pipeline`` stage through its target's ``run``), then report what became of it as the stage's
outcome, so the compound stage's own failure policy decides what a failure inside it means. Each copy carries
its unit's budget as its limit, and what it spent is what the unit took.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .._outcome import DROP
from ..errors import StageError, StageUnavailableError
from .base import Item, Run, Stage, StageRunner, Status, Unit

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
            limit=u.budget,
            ingest=u.item.ingest,
        )
        for u in units
    ]


def _outcomes(units: list[Unit], subs: list[Item]) -> list[Any]:
    out: list[Any] = []
    for unit, sub in zip(units, subs, strict=True):
        unit.children = sub.trace
        unit.took = sub.spent
        if sub.status is Status.FAILED:
            out.append(sub.error or StageError("failed"))
        elif sub.status in (Status.DROPPED, Status.REJECTED):
            out.append(DROP)
        else:
            out.append(sub.value)
    return out


class CompositeStage(Stage):
    def __init__(self, children: list[Stage], *, runner: StageRunner, **common: Any) -> None:
        super().__init__(**common)
        self.children = children
        self._run_stages = runner

    def invoke(self, units: list[Unit], run: Run) -> list[Any]:
        subs = _sub_items(units, run)
        self._run_stages(self.children, subs, run)
        return _outcomes(units, subs)


class PipelineCallStage(Stage):
    def __init__(self, target: str, **common: Any) -> None:
        super().__init__(**common)
        self.target = target

    def invoke(self, units: list[Unit], run: Run) -> list[Any]:
        if run.depth >= MAX_CALL_DEPTH:
            return [StageError(f"pipeline calls nest deeper than {MAX_CALL_DEPTH}")] * len(units)
        try:
            target = run.resolve(self.target)
        except Exception as exc:  # deleted or unbuildable since this pipeline was built: fail closed
            return [StageUnavailableError(f"pipeline [{self.target}] is unavailable: {exc}")] * len(units)
        if target.type is not self.pipeline_type:
            return [StageError(f"pipeline [{self.target}] is a {target.type} pipeline")] * len(units)
        subs = _sub_items(units, run)
        target.run(subs, dataclasses.replace(run, depth=run.depth + 1))
        return _outcomes(units, subs)
