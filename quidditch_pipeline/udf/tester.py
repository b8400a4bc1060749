"""``quidditch-pipeline udf test SRC.py``: run a UDF's source on sample inputs in the sandbox, locally.

No server, no build: the source runs on the shared interpreter component (source mode) through an
in-memory service's ``execute_udf``, so the result, the mapping and the errors are the ones a pipeline
would give. With ``native``, each input also runs in the host's CPython (the file imported afresh with
importlib), and every input where the two disagree is reported: different results, an exception on one
side only, an import that works only natively, a value that cannot cross the sandbox's boundary.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import itertools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import InputError, QuidditchError
from .build import check_source

if TYPE_CHECKING:
    from ..service import PipelineService

__all__ = ["Outcome", "TestReport", "load_inputs", "run_udf_test"]

_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})
_CROSSING_ERRORS = frozenset({"unmappable_return_value", "output_too_large"})
_MAPPING_ERROR = "unmappable_result"
_SETTLE_S = 0.02
_native_names = itertools.count()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one input gave: the sandbox's answer, and (with ``native``) whether host CPython agrees."""

    index: int
    status: str
    raw: Any
    mapped: Any
    error: dict[str, Any] | None
    took_us: float
    disagreement: str | None = None

    def line(self, *, timed: bool = False) -> str:
        """The report's line for this input; ``--watch`` compares them without the time."""
        if self.error is not None:
            where = f" at line {self.error['line']}" if self.error.get("line") else ""
            text = f"[{self.index}] error {self.error['type']}{where}: {self.error['reason']}"
        else:
            text = f"[{self.index}] {self.status} raw={_json(self.raw)} mapped={_json(self.mapped)}"
        if timed:
            text += f"  ({self.took_us:.0f} µs)"
        if self.disagreement is not None:
            text += f"\n    native disagrees: {self.disagreement}"
        return text


@dataclass(frozen=True, slots=True)
class TestReport:
    """A whole run: the outcomes, or the error that stopped the source from loading."""

    outcomes: tuple[Outcome, ...] = ()
    load_error: str | None = None

    @property
    def failed(self) -> bool:
        return self.load_error is not None or any(o.error or o.disagreement for o in self.outcomes)


def load_inputs(path: Path | None, inline: Sequence[str]) -> list[Any]:
    """Sample inputs from ``path`` (a JSON array, or NDJSON: one value a line) and from ``inline`` (each a
    JSON value). Raises :class:`InputError` naming the file and line of what is not JSON."""
    values: list[Any] = []
    if path is not None:
        text = path.read_text(encoding="utf-8")
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
            for number, row in enumerate(text.splitlines(), start=1):
                if row.strip():
                    try:
                        values.append(json.loads(row))
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{path}:{number}: not a JSON value: {exc.msg}") from exc
        else:
            values.extend(whole if isinstance(whole, list) else [whole])
    for number, text in enumerate(inline, start=1):
        try:
            values.append(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InputError(f"--input #{number}: not a JSON value: {exc.msg}") from exc
    return values


def run_udf_test(
    service: PipelineService,
    path: Path,
    inputs: Sequence[Any],
    *,
    params: dict[str, Any] | None = None,
    type: str = "document",
    scope: str = "hit",
    target_field: str | None = None,
    native: bool = False,
) -> TestReport:
    """Run the UDF in ``path`` on every input in the sandbox (and natively); never raises for the UDF's
    own faults: a source that does not load is the report's ``load_error`` (file, line and the fix)."""
    try:
        source = path.read_text(encoding="utf-8")
        check_source(source, filename=path.name)
        # Loaded under the author's file name first: its load errors then name that file.
        sha, artifact = service.runtime.load_source(source, filename=path.name)
        arity = service.runtime.load(sha, artifact)
    except (OSError, UnicodeDecodeError) as exc:
        return TestReport(load_error=f"cannot read {path}: {exc}")
    except QuidditchError as exc:
        return TestReport(load_error=exc.message)
    process, native_error = _native_process(path) if native else (None, None)
    outcomes = []
    for index, value in enumerate(inputs):
        try:
            out = service.execute_udf(
                None, value, source=source, params=params, type=type, scope=scope, target_field=target_field
            )
        except QuidditchError as exc:  # an input the pipeline type cannot take
            out = {"status": "failed", "error": {"type": exc.error_type, "reason": exc.message}, "took_us": 0.0}
        outcome = Outcome(index, out["status"], out.get("raw"), out.get("mapped"), out["error"], out["took_us"])
        if native:
            disagreement = native_error or _compare(outcome, process, value, params or {}, arity, type, path)
            outcome = dataclasses.replace(outcome, disagreement=disagreement)
        outcomes.append(outcome)
    return TestReport(tuple(outcomes))


def _native_process(path: Path) -> tuple[Callable[..., Any] | None, str | None]:
    """``process`` from ``path`` imported into a fresh module of the host's CPython, or why it failed."""
    spec = importlib.util.spec_from_file_location(f"_qp_udf_native_{next(_native_names)}", path)
    if spec is None or spec.loader is None:
        return None, f"cannot import {path} natively"
    module: ModuleType = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # the author's module-level code
        return None, f"importing the file natively raised {type(exc).__name__}: {exc}"
    process = getattr(module, "process", None)
    return (process, None) if callable(process) else (None, "the file defines no process natively")


def _compare(
    outcome: Outcome,
    process: Callable[..., Any] | None,
    value: Any,
    params: dict[str, Any],
    arity: int,
    kind: str,
    path: Path,
) -> str | None:
    assert process is not None
    meta = {"index": None, "id": None, "pipeline": None, "stage": None, "type": kind}
    args = (copy.deepcopy(value), copy.deepcopy(params), meta)[:arity]
    try:
        native = process(*args)
    except BaseException as exc:  # the author's code, natively: anything, SystemExit included
        native_error = f"{type(exc).__name__}{_native_line(exc, path)}: {exc}"
        if outcome.error is None or outcome.error["type"] == _MAPPING_ERROR:
            return f"raises natively only ({native_error}); the sandbox returned {_json(outcome.raw)}"
        if outcome.error["type"] != type(exc).__name__:
            return f"different errors: sandbox {outcome.error['type']}, native {native_error}"
        return None
    # The mapping failing on the host (say, a number without target_field) happens after both returned.
    error = None if outcome.error is None or outcome.error["type"] == _MAPPING_ERROR else outcome.error
    if error is not None:
        if error["type"] in _IMPORT_ERRORS:
            return f"an import that works only natively: {error['reason']} (the sandbox has the standard library only)"
        if error["type"] in _CROSSING_ERRORS:
            return f"the value cannot cross the sandbox's boundary: {error['reason']}"
        return f"raises in the sandbox only ({error['type']}: {error['reason']}); natively it returned {native!r}"
    try:
        crossed = json.loads(json.dumps(native, allow_nan=False))
    except (TypeError, ValueError) as exc:
        return f"the native value cannot cross the sandbox's boundary ({exc})"
    if crossed != outcome.raw:
        return f"different results: sandbox {_json(outcome.raw)}, native {_json(crossed)}"
    return None


def _native_line(exc: BaseException, path: Path) -> str:
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return "" if line is None else f" at line {line}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def watch_runs(path: Path, extra: Sequence[Path], run: Callable[[], TestReport], emit: Callable[[str], None]) -> None:
    """Run now, then again on every save of ``path`` (or of ``extra``, the inputs file), emitting only the
    inputs whose report changed; returns when interrupted.

    One watcher lives across runs, and what a run read is compared with the files after it: a save made
    while a run was going is never missed, and a save that changed nothing starts no run.
    """
    from watchfiles import watch  # imported here: only --watch needs it

    targets = [p.resolve() for p in (path, *extra)]
    changes = watch(*{p.parent for p in targets})
    previous: dict[int, str] = {}
    previous_error: str | None = None
    ran: list[bytes | None] | None = None
    for number in itertools.count(1):
        while ran is not None and _contents(targets) == ran:  # wait for a save that changed something
            next(changes)
        ran = _settled(targets, None if number == 1 else changes)
        started = time.monotonic()
        report = run()
        lines = {o.index: o.line() for o in report.outcomes}
        changed = [o for o in report.outcomes if previous.get(o.index) != lines[o.index]]
        took = (time.monotonic() - started) * 1000
        status = "FAIL" if report.failed else "ok"
        emit(f"run {number} ({status}, {took:.0f} ms): {len(changed)} of {len(lines)} inputs changed")
        if report.load_error is not None and report.load_error != previous_error:
            emit(report.load_error)
        for outcome in changed:
            emit(outcome.line(timed=True))
        previous, previous_error = lines, report.load_error


def _settled(paths: Sequence[Path], changes: Iterator[object] | None) -> list[bytes | None]:
    """The files' contents once a save is over: the same on two reads ``_SETTLE_S`` apart (an editor that
    truncates, then writes, is otherwise caught with an empty file). With ``changes`` (every run after the
    first), an empty or unreadable file is a save still under way, however long the editor takes between
    truncating and writing (a loaded machine can deschedule it for longer than any settling delay): it
    waits for the next change instead of running what no UDF or inputs file can be."""
    before = _contents(paths)
    while True:
        if changes is not None and not all(before):
            next(changes)
            before = _contents(paths)
            continue
        time.sleep(_SETTLE_S)
        now = _contents(paths)
        if now == before:
            return now
        before = now


def _contents(paths: Sequence[Path]) -> list[bytes | None]:
    contents: list[bytes | None] = []
    for path in paths:
        try:
            contents.append(path.read_bytes())
        except OSError:  # mid-save (an editor's rename), or deleted: the next event tells
            contents.append(None)
    return contents
