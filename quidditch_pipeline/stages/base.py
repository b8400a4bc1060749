"""What every stage shares: the items a run carries, the units a stage is called on, and the Stage base.

An :class:`Item` is one input travelling through a pipeline (a document, a search body, a result set). A
stage is called on :class:`Unit` s: the item itself, or for a hit-scoped stage of a result pipeline each of the
item's hits. :meth:`Stage.invoke` answers one outcome per unit, in order: the unit's new value, ``DROP``, or
a :class:`~quidditch_pipeline.errors.StageError`. Everything else (policies, retries, deadlines, stats,
the verbose trace) is the executor's, the same for every stage type.

Time is per input: an :class:`Item` carries the stage time it has ``spent`` against its ``limit`` (the
pipeline's ``timeout_ms``), and the executor gives each :class:`Unit` its own ``budget`` for a stage call. A
stage that can measure what each unit took writes it to :attr:`Unit.took`, so a unit is judged by its own
time, never by its neighbours'.

Conditions (``if``), tags and failure handlers are attributes of every stage, applied by the executor: a
condition is evaluated per unit before the stage is called; handlers run on the units the stage failed.
Ingest metadata (``_ingest.timestamp``, and in handlers ``_ingest.on_failure_*``) lives on the :class:`Item`,
beside its value, never in it: templates and conditions read it, the document does not carry it.

Stages never import the executor: a compound stage is handed a :data:`StageRunner` when it is built, and a
``pipeline`` stage finds its target through :attr:`Run.resolve` as a :class:`RunnablePipeline`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from .._clock import Clock
from ..conditions import Condition
from ..definitions import FailurePolicy, PipelineType, RetryPolicy
from ..errors import StageError
from ..stats import Metric

__all__ = ["Item", "Run", "RunnablePipeline", "Stage", "StageRunner", "Status", "Unit", "ingest_of"]


class Status(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    DROPPED = "dropped"
    REJECTED = "rejected"
    SKIPPED = "skipped"


@dataclass(slots=True, eq=False)
class Item:
    """One input on its way through a pipeline."""

    position: int
    id: str | None
    value: Any
    meta: dict[str, Any]
    status: Status = Status.SUCCESS
    error: StageError | None = None
    trace: list[dict[str, Any]] | None = None
    resort: bool = False
    #: Seconds of stage time this input has spent in the current pipeline, and how many it may spend
    #: (``None``: no limit). Kept only while a limit applies; the items of one run all have one or none.
    spent: float = 0.0
    limit: float | None = None
    #: Ingest metadata (``timestamp``; ``on_failure_*`` in failure handlers), made when first read.
    ingest: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """How errors name this input: its id, else its position in the batch."""
        return self.id if self.id is not None else f"#{self.position}"

    @property
    def active(self) -> bool:
        return self.status is Status.SUCCESS


@dataclass(slots=True, eq=False)
class Unit:
    """What one stage call sees: an item, or one hit of a result item (``hit`` is its index)."""

    item: Item
    hit: int | None = None
    #: A compound stage's nested trace for this unit (verbose runs only).
    children: list[dict[str, Any]] | None = None
    #: Seconds this unit may take in the current stage call (``None``: no limit), set by the executor.
    budget: float | None = None
    #: Seconds this unit took in the current stage call, when the stage could measure it alone.
    took: float | None = None

    @property
    def value(self) -> Any:
        if self.hit is None:
            return self.item.value
        return self.item.value["hits"][self.hit]


def ingest_of(item: Item) -> dict[str, Any]:
    """The item's ingest metadata; ``timestamp`` is when it was first read (Elasticsearch: when the document
    entered the ingest pipeline), in ISO 8601, UTC."""
    ingest = item.ingest
    if ingest is None:
        ingest = item.ingest = {"timestamp": datetime.now(UTC).isoformat()}
    return ingest


class RunnablePipeline(Protocol):
    """What a ``pipeline`` stage calls: a built pipeline of some type that runs a batch of items."""

    @property
    def type(self) -> PipelineType: ...

    def run(self, items: list[Item], run: Run) -> None: ...


@dataclass(slots=True)
class Run:
    """One execution of a pipeline over a batch: what every stage call in it shares."""

    params: dict[str, Any]
    #: The caller's wall-clock deadline for the whole run (``None``: none); per-input limits are on items.
    deadline: float | None
    verbose: bool
    clock: Clock
    resolve: Callable[[str], RunnablePipeline]
    depth: int = 0


class Stage(ABC):
    """A built stage: its definition resolved, its metric attached."""

    #: Units are hits rather than whole items (hit-scoped stages of result pipelines).
    per_hit: bool = False
    #: The stage stops itself at its deadline; otherwise the executor fails what returns past it.
    preemptive: bool = False

    def __init__(
        self,
        *,
        name: str,
        path: str,
        stage_type: str,
        pipeline: str,
        pipeline_type: PipelineType,
        enabled: bool,
        policy: FailurePolicy,
        retry: RetryPolicy,
        timeout_s: float | None,
        metric: Metric,
        tag: str | None = None,
        condition: Condition | None = None,
        handlers: list[Stage] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.type = stage_type
        self.pipeline = pipeline
        self.pipeline_type = pipeline_type
        self.enabled = enabled
        self.policy = policy
        self.retry = retry
        self.timeout_s = timeout_s
        self.metric = metric
        self.tag = tag
        self.condition = condition
        #: Stages that run on a unit this stage failed (after retries), instead of its policy.
        self.handlers = handlers
        self._pipeline_params: Mapping[str, Any] = params or {}

    def condition_params(self, run: Run) -> Mapping[str, Any]:
        """``params`` as a condition of this stage reads it: ``pipeline.parameters < execute-time params``."""
        base = self._pipeline_params
        return {**base, **run.params} if run.params else base

    def prepare(self, run: Run) -> None:
        """Get ready to be called (e.g. load a UDF); the time it takes does not count against the deadline."""
        return None

    @abstractmethod
    def invoke(self, units: list[Unit], run: Run) -> list[Any]:
        """One outcome per unit: a new value, ``DROP`` or a ``StageError``. Must not change the inputs.

        Each unit may take ``unit.budget`` seconds; a stage that can tell what each unit took sets
        ``unit.took`` (the executor otherwise charges every unit an equal share of the call).
        """

    def __repr__(self) -> str:
        tag = f" tag={self.tag}" if self.tag else ""
        return f"<{type(self).__name__} {self.pipeline}/{self.path}{tag}>"


#: Runs stages in order over a batch of items (the executor's ``run_stages``, handed to compound stages).
StageRunner = Callable[[Sequence[Stage], list[Item], Run], None]
