"""The sequential executor (DESIGN §4): one execution path for every stage type.

:func:`run_stages` runs stages in order over a batch of items; each stage is called once per attempt for all
the units still pending, so a WASM stage crosses into the guest once per batch. Failure policies apply per
unit: ``abort`` fails the unit's item, ``continue`` records the error and passes the unit on unchanged,
``retry`` calls the stage again for just the failed units after an exponential backoff that never runs past
the pipeline deadline, then does what ``retry.then`` says.

A pipeline is itself a compound stage (:class:`CompiledPipeline`); ``composite`` and ``pipeline`` stages run
their children through :func:`run_stages` too.

Deadlines: ``timeout_ms`` of a stage and of a pipeline are per input, and judged per input. Each item
carries the stage time it has spent against the pipeline's limit; each unit of a stage call gets its own
budget (the stage's timeout, never more than what its item has left) and is charged what it took alone: a
native stage times every unit, a compound stage reports what each copy spent in its children, a python stage
is preempted per call and re-runs units alone after a whole-call failure. A unit that ran past its own budget
has timed out even if it could not be preempted; its neighbours have not. Only what cannot be measured alone
is charged an equal share of the call.

Conditions and failure handlers: a stage's ``if`` is evaluated per unit before the stage is called; false
skips the stage for that unit (``skipped`` in its stats and trace), an evaluation error is a stage error under
the stage's policy (not retried: it would fail the same way). A unit the stage fails (after retries) goes to
the stage's handler stages when it has them, instead of its policy; they run on the unit's input with the
failure described under ``_ingest`` and their answer is the stage's. A pipeline's handlers catch whatever
failure its stages did not handle: the pipeline ends for that input with what the handlers made of it. A
failing handler fails the input; a stage that is unavailable is never handled (fail closed).

Fail closed: a stage that cannot run at all (:class:`StageUnavailableError`: a UDF version or called pipeline
gone) fails its input whatever the policy. A stage's answer of the wrong shape (not an object, a result set
without a ``hits`` list, a hit without ``_score``) is a stage error under the stage's policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ._outcome import DROP
from .definitions import FailurePolicy, PipelineDefinition, PipelineType
from .errors import InputError, PipelineTimeoutError, StageError, StageTimeoutError
from .stages.base import Item, Run, Stage, Status, Unit, ingest_of
from .stats import PipelineMetrics

__all__ = ["CompiledPipeline", "run_stages", "validate_input"]


def validate_input(pipeline_type: PipelineType, value: Any, where: str = "input") -> None:
    """Refuse, before any stage runs, an input that the pipeline type cannot take."""
    problem = _value_problem(pipeline_type, value, where)
    if problem is not None:
        raise InputError(problem)


def _value_problem(pipeline_type: PipelineType, value: Any, where: str) -> str | None:
    """What is wrong with ``value`` as the input (or a stage's output) of a ``pipeline_type`` pipeline."""
    if not isinstance(value, dict):
        return f"{where}: a {pipeline_type} pipeline takes a JSON object, got {_json_kind(value)}"
    if pipeline_type is not PipelineType.RESULT:
        return None
    hits = value.get("hits")
    if not isinstance(hits, list):
        return f"{where}.hits: a result pipeline's input needs a [hits] list"
    for i, hit in enumerate(hits):
        problem = _hit_problem(hit, f"{where}.hits[{i}]")
        if problem is not None:
            return problem
    return None


def _hit_problem(hit: Any, where: str) -> str | None:
    if not isinstance(hit, dict):
        return f"{where}: a hit is an object, got {_json_kind(hit)}"
    for key, kinds in (("_id", (str,)), ("_score", (int, float)), ("_source", (dict,))):
        if key not in hit:
            return f"{where}.{key}: field required"
        if not isinstance(hit[key], kinds) or isinstance(hit[key], bool):
            return f"{where}.{key}: wrong type {_json_kind(hit[key])}"
    return None


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
    units: list[Unit] | None = None  # item-level units, shared by untimed stages until an item leaves
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
        elif call.timed:
            units = None  # their budgets were this stage's


class _StageCall:
    """One stage over the active items of a batch: attempts, policies, stats and trace.

    Time is judged per unit: each unit gets its own budget (the stage's ``timeout_ms``, capped by what its
    input has left of the pipeline's and by the caller's deadline) and is charged what it took alone when the
    stage could measure that, else an equal share of the call.
    """

    __slots__ = (
        "attempts",
        "changed",
        "copied",
        "dropped",
        "end",
        "errors",
        "failed",
        "handled",
        "handler_traces",
        "ignored",
        "items",
        "last_error",
        "retries",
        "run",
        "skipped",
        "stage",
        "timed",
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
        # Made when first needed (a condition, a handler): most stage calls need neither.
        self.handled: dict[int, StageError] | None = None  # unit index -> the error its handlers ran for
        self.handler_traces: dict[int, list[dict[str, Any]] | None] | None = None
        self.skipped: set[int] | None = None  # units whose condition was false
        self.copied: set[int] = set()
        self.failed = self.dropped = self.retries = self.timeouts = 0
        self.last_error: StageError | None = None
        self.changed = False  # an item left the batch (failed, dropped, rejected)
        # The items of one run share whether they have a limit (their pipeline, or their compound stage's
        # budget, sets it for all of them), so the first one tells.
        self.timed = stage.timeout_s is not None or run.deadline is not None or items[0].limit is not None
        self.end = 0.0

    def execute(self) -> None:
        stage, clock = self.stage, self.run.clock
        n = len(self.units)
        if not stage.enabled:
            stage.metric.skip(n)
            self._trace(skipped=True)
            return
        first = None
        if stage.condition is not None:
            first = self._conditions()
            skipped = len(self.skipped or ())
            if skipped:
                stage.metric.skip(skipped)
                n -= skipped
            elif len(first) == n:
                first = None  # every unit runs: the path without a condition
        start = self.end = clock.now()
        stage.metric.begin(n)
        try:
            pending = self._attempt(first, 1, start)
            attempt = 1
            while pending:
                backoff = stage.retry.backoff_s(attempt)
                if self.timed:
                    pending = self._wait(pending, backoff)
                    if not pending:
                        break
                clock.sleep(backoff)
                self.retries += len(pending)
                attempt += 1
                pending = self._attempt(pending, attempt, clock.now())
            if self.handled:
                self._run_handlers()
                self.end = clock.now()
        except BaseException:
            self.failed = n - self.dropped  # what became of the rest is unknown: none of it succeeded
            raise
        finally:
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
        if self.run.verbose:
            self._trace()

    def _conditions(self) -> list[int]:
        """Evaluate the stage's condition for each unit: the units to call. A false condition skips the unit;
        one that cannot be evaluated is a stage error, under the policy (retrying would fail the same way)."""
        stage, run = self.stage, self.run
        condition = stage.condition
        assert condition is not None
        variables: dict[str, Any] = {"params": stage.condition_params(run)}
        needs_meta, needs_ingest = condition.needs_meta, condition.needs_ingest
        call: list[int] = []
        self.skipped = skipped = set()
        for i, unit in enumerate(self.units):
            item = unit.item
            variables["ctx"] = value = unit.value
            if needs_meta:
                variables["meta"] = {
                    "index": item.meta.get("index"),
                    "id": item.id if unit.hit is None else value.get("_id"),
                    "pipeline": stage.pipeline,
                    "stage": stage.name,
                    "type": stage.pipeline_type.value,
                    "tag": stage.tag,
                }
            if needs_ingest:
                variables["_ingest"] = ingest_of(item)
            try:
                run_it = condition.evaluate(variables)
            except ValueError as exc:
                error = self._locate(unit, StageError(str(exc), cause_type="condition_error"))
                self.errors[i] = self.last_error = error
                if self.attempts:
                    self.attempts[i] = 1
                self._give_up(i, error, stage.retry.then if stage.policy is FailurePolicy.RETRY else stage.policy)
                continue
            if run_it:
                call.append(i)
            else:
                skipped.add(i)
        return call

    def _run_handlers(self) -> None:
        """Run the stage's handler stages on the units it failed; their answer becomes the stage's."""
        stage, run = self.stage, self.run
        assert stage.handlers is not None and self.handled is not None
        errors = self.handled
        handled = [(i, self.units[i]) for i in errors if self.units[i].item.status is Status.SUCCESS]
        # A hit's handlers get a result holding just that hit: their hit-scoped stages are called on it.
        subs = [
            _handler_item(
                unit.item,
                unit.value if unit.hit is None else {**unit.item.value, "hits": [unit.value]},
                errors[i],
                run.verbose,
            )
            for i, unit in handled
        ]
        run_stages(stage.handlers, subs, run)
        traces = self.handler_traces = {}
        for (i, unit), sub in zip(handled, subs, strict=True):
            if self.timed:
                unit.item.spent += sub.spent
            if run.verbose:
                traces[i] = sub.trace
            if sub.status is Status.FAILED:
                self._fail(i, unit, sub.error or StageError("a failure handler failed"))
            elif sub.status is Status.DROPPED or sub.status is Status.REJECTED:
                self._drop(unit)
            elif unit.hit is None:
                unit.item.value = sub.value
            elif not sub.value["hits"]:  # its handlers removed the hit
                self._drop(unit)
            elif len(sub.value["hits"]) == 1:
                self._apply_hit(unit, sub.value["hits"][0])
            else:
                cause = f"failure handlers answered {len(sub.value['hits'])} hits for one"
                self._fail(i, unit, StageError(cause, cause_type="invalid_output"))

    def _wait(self, pending: list[int], backoff: float) -> list[int]:
        """The units that can wait ``backoff`` for their next attempt, charged for it; the others give up."""
        units, deadline = self.units, self.run.deadline
        late = deadline is not None and self.run.clock.now() + backoff >= deadline
        waiting: list[int] = []
        charged: set[int] = set()
        for i in pending:
            item = units[i].item
            if late or (item.limit is not None and item.spent + backoff >= item.limit):
                self._give_up(i, self.errors[i], self.stage.retry.then)
                continue
            waiting.append(i)
            if id(item) not in charged:
                charged.add(id(item))
                item.spent += backoff
        return waiting

    def _budgets(self, indexes: Sequence[int], now: float) -> list[int]:
        """Give each unit its budget for this attempt; fail those whose input has no time left."""
        stage_budget, deadline = self.stage.timeout_s, self.run.deadline
        live: list[int] = []
        for i in indexes:
            unit = self.units[i]
            item = unit.item
            budget = stage_budget
            if item.limit is not None:
                left = item.limit - item.spent
                budget = left if budget is None else min(budget, left)
            if deadline is not None:
                budget = deadline - now if budget is None else min(budget, deadline - now)
            if budget is not None and budget <= 0:
                self.failed += 1
                self.timeouts += 1
                cause = PipelineTimeoutError("the pipeline's deadline passed before this stage started")
                self._fail(i, unit, cause)
                self.last_error = self.errors[i]
                continue
            unit.budget = budget
            unit.took = None
            live.append(i)
        return live

    def _attempt(self, pending: list[int] | None, attempt: int, t0: float) -> list[int]:
        """Call the stage for the pending units (``None``: all); the units to retry."""
        stage, clock = self.stage, self.run.clock
        if pending is None:
            indexes: Sequence[int] = range(len(self.units))
        else:
            indexes = [i for i in pending if self.units[i].item.status is Status.SUCCESS]
            self.failed += len(pending) - len(indexes)  # their input was failed by a sibling hit meanwhile
        timed = self.timed
        if timed:
            indexes = self._budgets(indexes, t0)
        units = self.units if pending is None and not timed else [self.units[i] for i in indexes]
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
        if not outcomes:
            try:
                outcomes = stage.invoke(units, self.run)
            except StageError as exc:
                outcomes = [exc] * len(units)
            except Exception as exc:  # a bug in a stage fails that stage, never the caller
                outcomes = [StageError(f"{type(exc).__name__}: {exc}")] * len(units)
        if len(outcomes) != len(units):
            outcomes = [StageError(f"answered {len(outcomes)} outcomes for {len(units)} inputs")] * len(units)
        t1 = self.end = clock.now()
        share = (t1 - t0) / len(units)
        retry: list[int] = []
        attempts, took = self.attempts, self.took
        verbose = self.run.verbose
        check_timeout = timed and not stage.preemptive
        plain = stage.pipeline_type is not PipelineType.RESULT  # any object is a document or a search body
        for i, unit, outcome in zip(indexes, units, outcomes, strict=True):
            if timed or verbose:
                spent = share if unit.took is None or not timed else unit.took
                if timed:
                    unit.item.spent += spent
                if verbose:
                    attempts[i] = attempt
                    took[i] += spent
                budget = unit.budget
                if check_timeout and budget is not None and spent > budget and not isinstance(outcome, StageError):
                    outcome = StageTimeoutError(
                        f"ran {spent * 1000:.1f} ms on this input, past its budget of {budget * 1000:.1f} ms"
                    )
            if outcome is not DROP and not (plain and type(outcome) is dict) and not isinstance(outcome, StageError):
                problem = self._output_problem(unit, outcome)
                if problem is not None:
                    outcome = StageError(problem, cause_type="invalid_output")
            if outcome is DROP:
                self.dropped += 1
                self._drop(unit)
            elif isinstance(outcome, StageError):
                located = self._locate(unit, outcome)
                self.errors[i] = self.last_error = located
                if located.kind == "timeout":
                    self.timeouts += 1
                if unit.item.status is not Status.SUCCESS:  # a sibling hit failed the input already
                    self.failed += 1
                    continue
                if located.kind == "unavailable":  # no policy may pass the input on without this stage
                    self.failed += 1
                    self._fail(i, unit, located)
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

    def _output_problem(self, unit: Unit, value: Any) -> str | None:
        """Why a stage's answer for ``unit`` is not a value of the right shape (``None``: it is)."""
        if unit.hit is not None:
            problem = _hit_problem(value, "hit")
        else:
            problem = _value_problem(self.stage.pipeline_type, value, "value")
        return None if problem is None else f"returned an invalid {problem}"

    def _locate(self, unit: Unit, error: StageError) -> StageError:
        stage = self.stage
        return error.located(
            pipeline=stage.pipeline, stage=stage.path, stage_type=stage.type, input_id=unit.item.label, tag=stage.tag
        )

    def _give_up(self, i: int, error: StageError, policy: FailurePolicy | str) -> None:
        unit = self.units[i]
        self.failed += 1
        if policy == FailurePolicy.CONTINUE:
            self.ignored.setdefault(id(unit.item), error)
        elif self.stage.handlers is not None:
            if self.handled is None:
                self.handled = {}
            self.handled[i] = error
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
                **({"tag": stage.tag} if stage.tag else {}),
                "status": "skipped",
                "attempts": max((self.attempts[i] for i in idx), default=0),
                "took_us": round(sum(self.took[i] for i in idx) * 1e6, 1),
                "error": None,
                "output": None,
            }
            condition_skipped = self.skipped is not None and all(i in self.skipped for i in idx)
            if not skipped and not condition_skipped:
                entry["status"], error = self._item_status(item, idx)
                entry["error"] = error.message if error is not None else None
                if item.active:
                    entry["output"] = snapshot(item.value)
            children = [self.units[i].children for i in idx if self.units[i].children is not None]
            if children:
                entry["stages"] = children[0]
            traces = self.handler_traces
            handlers = [traces[i] for i in idx if traces.get(i) is not None] if traces else []
            if handlers:
                entry["on_failure"] = handlers[0]
            item.trace.append(entry)

    def _item_status(self, item: Item, idx: list[int]) -> tuple[str, StageError | None]:
        if item.status is Status.FAILED and any(self.errors.get(i) is item.error for i in idx):
            return "error", item.error
        if item.status in (Status.DROPPED, Status.REJECTED):
            return "dropped", None
        ignored = self.ignored.get(id(item))
        if ignored is not None:
            return "error_ignored", ignored
        errors = self.handled
        handled = [errors[i] for i in idx if i in errors] if errors else []
        if handled:
            return "error_handled", handled[0]
        if any(self.attempts[i] > 1 for i in idx):
            return "retried", None
        return "success", None


def _handler_item(item: Item, value: Any, error: StageError, verbose: bool) -> Item:
    """A copy of ``item`` (with ``value``) for failure handlers: the failure is described under ``_ingest``,
    with Elasticsearch's names, and the handlers get what is left of the item's time."""
    ingest = {
        **ingest_of(item),
        "on_failure_message": error.cause,
        "on_failure_stage": error.stage,
        "on_failure_stage_type": error.stage_type,
        "on_failure_pipeline": error.pipeline,
        "on_failure_tag": error.tag,
    }
    limit = None if item.limit is None else item.limit - item.spent
    return Item(item.position, item.id, value, item.meta, trace=[] if verbose else None, limit=limit, ingest=ingest)


class CompiledPipeline:
    """A stored pipeline, built: its stages resolved and their metrics attached. Thread-safe to run."""

    def __init__(
        self,
        definition: PipelineDefinition,
        revision: int,
        stages: list[Stage],
        metrics: PipelineMetrics,
        handlers: list[Stage] | None = None,
    ) -> None:
        self.definition = definition
        self.name = definition.name
        self.type = definition.type
        self.revision = revision
        self.stages = stages
        #: Stages that catch whatever failure the stages did not handle (the pipeline's ``on_failure`` list).
        self.handlers = handlers
        self.metrics = metrics
        self.timeout_s = definition.timeout_ms / 1000.0 if definition.timeout_ms else None
        #: The pipelines its ``pipeline`` stages call, by name.
        self.calls = tuple(dict.fromkeys(target for _, target in definition.pipeline_targets()))
        #: ``(udf name, pinned version or None)`` of its python stages, once each: what a batch sent to a worker
        #: resolves on every call (walking the definition for it cost more than the rest of that plan).
        self.udfs = tuple(dict.fromkeys((udf, version) for _, udf, version in definition.udf_references()))

    def _handle(self, items: list[Item], run: Run) -> None:
        """Run the pipeline's handlers on the items its stages failed (never on an unavailable stage's)."""
        assert self.handlers is not None
        failed = [
            (item, item.error)
            for item in items
            if item.status is Status.FAILED and item.error is not None and item.error.kind != "unavailable"
        ]
        if not failed:
            return
        subs = [_handler_item(item, item.value, error, run.verbose) for item, error in failed]
        run_stages(self.handlers, subs, run)
        for (item, _), sub in zip(failed, subs, strict=True):
            item.spent += sub.spent
            item.status, item.value = sub.status, sub.value
            item.error = sub.error if sub.status is Status.FAILED else None
            if item.trace is not None:
                item.trace.append(
                    {
                        "name": "on_failure",
                        "type": "on_failure",
                        "status": "error" if sub.status is Status.FAILED else "success",
                        "error": sub.error.message if sub.error is not None else None,
                        "stages": sub.trace or [],
                    }
                )

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
        limit = self.timeout_s
        if limit is not None:  # per input: each item may spend this much stage time, whatever its batch does
            for item in items:
                item.limit = limit if item.limit is None else min(item.limit, limit)
        metric.begin(n)
        finished = False
        try:
            run_stages(self.stages, items, run)
            if self.handlers is not None:
                self._handle(items, run)
            finished = True
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
            if not finished:  # an exception escaped: what looked active did not succeed
                failed, succeeded = failed + succeeded, 0
            metric.finish(
                n,
                took_us,
                succeeded=succeeded,
                failed=failed,
                dropped=dropped,
                timeouts=timeouts,
                error=error,
            )
