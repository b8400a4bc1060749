"""Stage types (DESIGN §1): ``python`` (:mod:`.python`), ``native`` (:mod:`.native`), ``composite`` and
``pipeline`` (:mod:`.composite`), all sharing :class:`~.base.Stage` and run by the executor."""

from __future__ import annotations

from .base import Item, Run, RunnablePipeline, Stage, StageRunner, Status, Unit, ingest_of
from .composite import CompositeStage, PipelineCallStage
from .native import NativeStage
from .python import PythonStage, UdfRef, UdfResolver, UdfRunner

__all__ = [
    "CompositeStage",
    "Item",
    "NativeStage",
    "PipelineCallStage",
    "PythonStage",
    "Run",
    "RunnablePipeline",
    "Stage",
    "StageRunner",
    "Status",
    "UdfRef",
    "UdfResolver",
    "UdfRunner",
    "Unit",
    "ingest_of",
]
