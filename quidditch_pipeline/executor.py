"""The sequential executor (DESIGN §4): one execution path for every stage type.

:func:`run_stages` runs stages in order over a batch of items; each stage is called once per attempt for all
the units still pending, so a WASM stage crosses into the guest once per batch. Failure policies apply per
unit: ``abort`` fails the unit's item, ``continue`` records the error and passes the unit on unchanged,
``retry`` calls the stage again for just the failed units after an exponential backoff that never runs past
the pipeline deadline, then does what ``retry.then`` says.

A pipeline is itself a compound stage (:class:`CompiledPipeline`); ``composite`` and ``pipeline`` stages run
their children through :func:`run_stages` too.

Deadlines: ``timeout_ms`` of a stage and of a pipeline are per input. A batch of *n* items gets *n* times
the budget, and a stage's budget is never more than what is left of the pipeline's. A stage that returns
after its deadline has timed out even if it could not be preempted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import orjson

from ._outcome import DROP
from .definitions import FailurePolicy, PipelineDefinition, PipelineType
from .errors import InputError, PipelineTimeoutError, StageError, StageTimeoutError
from .stages.base import Item, Run, Stage, Status, Unit
from .stats import PipelineMetrics

__all__ = ["CompiledPipeline", "run_stages", "validate_input"]


def validate_input(pipeline_type: PipelineType, value: Any, where: str = "input") -> None:
    """Refuse, before any stage runs, an input that the pipeline type cannot take."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: a {pipeline_type} pipeline takes a JSON object, got {_json_kind(value)}")
    if pipeline_type is not PipelineType.RESULT:
        return
    hits = value.get("hits")
    if not isinstance(hits, list):
        raise InputError(f"{where}.hits: a result pipeline's input needs a [hits] list")
    for i, hit in enumerate(hits):
        if not isinstance(hit, dict):
            raise InputError(f"{where}.hits[{i}]: a hit is an object, got {_json_kind(hit)}")
        for key, kinds in (("_id", (str,)), ("_score", (int, float)), ("_source", (dict,))):
            if key not in hit:
                raise InputError(f"{where}.hits[{i}].{key}: field required")
            if not isinstance(hit[key], kinds) or isinstance(hit[key], bool):
                raise InputError(f"{where}.hits[{i}].{key}: wrong type {_json_kind(hit[key])}")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def snapshot(value: Any) -> Any:
    """A deep, independent copy of JSON data (for verbose traces)."""
    return orjson.loads(orjson.dumps(value))


def run_stages(stages: Sequence[Stage], items: list[Item], run: Run) -> None:
    """Run ``stages`` in order over ``items``; each item ends active, dropped, rejected or failed."""
    success = Status.SUCCESS
    active = [item for item in items if item.status is success]
    units: list[Unit] | None = None  # item-level units, shared by stages until an item leaves
    for stage in stages:
        if not active:
            return
        if units is None and not run.verbose:
            units = [Unit(item) for item in active]
        call = _StageCall(stage, active, run, None if stage.per_hit or run.verbose else units)
        call.execute()
        if call.changed:
            active = [item for item in active if item.status is success]
            units = None


class _StageCall:
    """One stage over the active items of a batch: attempts, policies, stats and trace."""

    __slots__ = (
        "attempts",
        "changed",
        "copied",
        "dropped",
        "end",
        "errors",
        "failed",
        "ignored",
        "items",
        "last_error",
        "retries",
        "run",
        "stage",
        "timeouts",
        "took",
        "units",
    )

    def __init__(self, stage: Stage, items: list[Item], run: Run, units: list[Unit] | None = None) -> None:
        self.stage = stage
        self.items = items
        self.run = run
        if units is not None:
            self.units = units
        elif stage.per_hit:
            self.units = [Unit(item, i) for item in items for i in range(len(item.value["hits"]))]
        else:
            self.units = [Unit(item) for item in items]
        n = len(self.units)
        # Attempts and times per unit feed only the verbose trace; errors are sparse.
        self.attempts = [0] * n if run.verbose else []
        self.took = [0.0] * n if run.verbose else []
        self.errors: dict[int, StageError] = {}
        self.ignored: dict[int, StageError] = {}
        self.copied: set[int] = set()
        self.failed = self.dropped = self.retries = self.timeouts = 0
        self.last_error: StageError | None = None
        self.changed = False  # an item left the batch (failed, dropped, rejected)
        self.end = 0.0

    def execute(self) -> None:
        stage, run, clock = self.stage, self.run, self.run.clock
        n = len(self.units)
        if not stage.enabled:
            stage.metric.skip(n)
            self._trace(skipped=True)
            return
        start = clock.now()
        if run.deadline is not None and start >= run.deadline:
            cause = PipelineTimeoutError("the pipeline's deadline passed before this stage started")
            for i, unit in enumerate(self.units):
                self._fail(i, unit, cause)
            stage.metric.finish(0, 0, timeouts=n, error=cause.cause)
            self._trace()
            return
        stage.metric.begin(n)
        pending = self._attempt(None, 1, start)
        attempt = 1
        while pending:
            backoff = stage.retry.backoff_s(attempt)
            if run.deadline is not None and clock.now() + backoff >= run.deadline:
                for i in pending:
                    self._give_up(i, self._error(i), stage.retry.then)
                break
            clock.sleep(backoff)
            self.retries += len(pending)
            attempt += 1
            pending = self._attempt(pending, attempt, clock.now())
        if self.copied:
            self._finish_hits()
        last = self.last_error
        stage.metric.finish(
            n,
            (self.end - start) * 1e6,
            succeeded=n - self.failed - self.dropped,
            failed=self.failed,
            dropped=self.dropped,
            retries=self.retries,
            timeouts=self.timeouts,
            error=last.message if last is not None else None,
        )
        if run.verbose:
            self._trace()

    def _error(self, i: int) -> StageError:
        return self.errors[i]

    def _attempt(self, pending: list[int] | None, attempt: int, t0: float) -> list[int]:
        """Call the stage for the pending units (``None``: all); the units to retry."""
        stage, clock = self.stage, self.run.clock
        if pending is None:
            indexes: Sequence[int] = range(len(self.units))
            units = self.units
        else:
            indexes = [i for i in pending if self.units[i].item.status is Status.SUCCESS]
            units = [self.units[i] for i in indexes]
            if not units:
                return []
        try:
            stage.prepare(self.run)
        except Exception as exc:
            error = exc if isinstance(exc, StageError) else StageError(str(exc))
            outcomes: list[Any] = [error] * len(units)
        else:
            outcomes = []
        if stage.preemptive:
            t0 = clock.now()  # prepare() may have loaded a UDF: that time is not the stage's
        deadline = self.run.deadline
        if stage.timeout_s is not None:
            own = t0 + stage.timeout_s * len(units)
            deadline = own if deadline is None else min(deadline, own)
        if not outcomes:
            try:
                outcomes = stage.invoke(units, self.run, deadline)
            except StageError as exc:
                outcomes = [exc] * len(units)
            except Exception as exc:  # a bug in a stage fails that stage, never the caller
                outcomes = [StageError(f"{type(exc).__name__}: {exc}")] * len(units)
        t1 = self.end = clock.now()
        overran = deadline is not None and t1 > deadline and not stage.preemptive
        share = (t1 - t0) / len(units)
        retry: list[int] = []
        attempts, took = self.attempts, self.took
        verbose = self.run.verbose
        for i, unit, outcome in zip(indexes, units, outcomes, strict=True):
            if verbose:
                attempts[i] = attempt
                took[i] += share
            if overran and not isinstance(outcome, StageError):
                budget_ms = (deadline - t0) * 1000 / len(units) if deadline is not None else 0.0
                outcome = StageTimeoutError(
                    f"ran {(t1 - t0) * 1000 / len(units):.1f} ms per input, past its budget of {budget_ms:.1f} ms"
                )
            if outcome is DROP:
                self.dropped += 1
                self._drop(unit)
            elif isinstance(outcome, StageError):
                located = self._locate(unit, outcome)
                self.errors[i] = self.last_error = located
                if located.kind == "timeout":
                    self.timeouts += 1
                if unit.item.status is not Status.SUCCESS:
                    continue
                if stage.policy is FailurePolicy.RETRY and attempt < stage.retry.max_attempts:
                    retry.append(i)
                    continue
                policy = stage.retry.then if stage.policy is FailurePolicy.RETRY else stage.policy
                self._give_up(i, located, policy)
            elif unit.hit is None:
                unit.item.value = outcome
            else:
                self._apply_hit(unit, outcome)
        return retry

    def _locate(self, unit: Unit, error: StageError) -> StageError:
        stage = self.stage
        return error.located(pipeline=stage.pipeline, stage=stage.path, stage_type=stage.type, input_id=unit.item.label)

    def _give_up(self, i: int, error: StageError, policy: FailurePolicy | str) -> None:
        unit = self.units[i]
        self.failed += 1
        if policy == FailurePolicy.CONTINUE:
            self.ignored.setdefault(id(unit.item), error)
        else:
            self._fail(i, unit, error)

    def _fail(self, i: int, unit: Unit, error: StageError) -> None:
        located = self._locate(unit, error)
        self.errors[i] = located
        if unit.item.active:
            unit.item.status = Status.FAILED
            unit.item.error = located
            self.changed = True

    def _drop(self, unit: Unit) -> None:
        item = unit.item
        if unit.hit is not None:
            self._hits(item)[unit.hit] = None
        elif self.stage.pipeline_type is PipelineType.QUERY:
            item.status = Status.REJECTED
            self.changed = True
        else:
            item.status = Status.DROPPED
            self.changed = True

    def _apply_hit(self, unit: Unit, value: Any) -> None:
        assert unit.hit is not None
        item = unit.item
        hits = self._hits(item)
        old = hits[unit.hit]
        if old is not None and value.get("_score") != old.get("_score"):
            item.resort = True
        hits[unit.hit] = value

    def _hits(self, item: Item) -> list[Any]:
        """The item's hit list, copied once per stage so the stage's input is never changed."""
        if id(item) not in self.copied:
            self.copied.add(id(item))
            item.value = {**item.value, "hits": list(item.value["hits"])}
        hits: list[Any] = item.value["hits"]
        return hits

    def _finish_hits(self) -> None:
        for item in self.items:
            if id(item) not in self.copied:
                continue
            hits = [hit for hit in item.value["hits"] if hit is not None]
            if item.resort:
                hits.sort(key=lambda hit: -float(hit.get("_score") or 0.0))
                item.resort = False
            item.value["hits"] = hits

    def _trace(self, *, skipped: bool = False) -> None:
        if not self.run.verbose:
            return
        stage = self.stage
        per_item: dict[int, list[int]] = {}
        for i, unit in enumerate(self.units):
            per_item.setdefault(id(unit.item), []).append(i)
        for item in self.items:
            if item.trace is None:
                continue
            idx = per_item.get(id(item), [])
            entry: dict[str, Any] = {
                "name": stage.name,
                "type": stage.type,
                "status": "skipped",
                "attempts": max((self.attempts[i] for i in idx), default=0),
                "took_us": round(sum(self.took[i] for i in idx) * 1e6, 1),
                "error": None,
                "output": None,
            }
            if not skipped:
                entry["status"], error = self._item_status(item, idx)
                entry["error"] = error.message if error is not None else None
                if item.active:
                    entry["output"] = snapshot(item.value)
            children = [self.units[i].children for i in idx if self.units[i].children is not None]
            if children:
                entry["stages"] = children[0]
            item.trace.append(entry)

    def _item_status(self, item: Item, idx: list[int]) -> tuple[str, StageError | None]:
        if item.status is Status.FAILED and any(self.errors.get(i) is item.error for i in idx):
            return "error", item.error
        if item.status in (Status.DROPPED, Status.REJECTED):
            return "dropped", None
        ignored = self.ignored.get(id(item))
        if ignored is not None:
            return "error_ignored", ignored
        if any(self.attempts[i] > 1 for i in idx):
            return "retried", None
        return "success", None


class CompiledPipeline:
    """A stored pipeline, built: its stages resolved and their metrics attached. Thread-safe to run."""

    def __init__(
        self,
        definition: PipelineDefinition,
        revision: int,
        stages: list[Stage],
        metrics: PipelineMetrics,
    ) -> None:
        self.definition = definition
        self.name = definition.name
        self.type = definition.type
        self.revision = revision
        self.stages = stages
        self.metrics = metrics
        self.timeout_s = definition.timeout_ms / 1000.0 if definition.timeout_ms else None

    def run(self, items: list[Item], run: Run) -> None:
        """Run the pipeline over ``items`` (already validated), recording its stats."""
        metric = self.metrics.pipeline
        n = len(items)
        if not self.definition.enabled:
            for item in items:
                item.status = Status.SKIPPED
            metric.skip(n)
            return
        clock = run.clock
        start = clock.now()
        deadline = run.deadline
        if self.timeout_s is not None:
            own = start + self.timeout_s * n
            deadline = own if deadline is None else min(deadline, own)
        metric.begin(n)
        try:
            run_stages(
                self.stages, items, run if deadline is run.deadline else dataclasses.replace(run, deadline=deadline)
            )
        finally:
            took_us = (clock.now() - start) * 1e6
            succeeded = failed = dropped = timeouts = 0
            error: str | None = None
            for item in items:  # one pass: this runs for every batch
                status = item.status
                if status is Status.SUCCESS:
                    succeeded += 1
                elif status is Status.FAILED:
                    failed += 1
                    cause = item.error
                    error = cause.message if cause is not None else None
                    timeouts += cause is not None and cause.kind == "timeout"
                elif status is Status.DROPPED or status is Status.REJECTED:
                    dropped += 1
            metric.finish(
                n,
                took_us,
                succeeded=succeeded,
                failed=failed,
                dropped=dropped,
                timeouts=timeouts,
                error=error,
            )
