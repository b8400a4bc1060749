"""``PipelineService``: the one object an embedding search engine talks to (DESIGN §7).

It ties the registry (durable definitions, associations, UDF versions), the UDF store and WASM runtime,
the stats and the executor together, and runs the three hooks: :meth:`process_documents` (and its raw-JSON
twin :meth:`process_documents_json`) before documents are written, :meth:`process_query` before a search,
:meth:`process_results` after it. With ``workers=N`` document batches run in N worker processes
(:mod:`quidditch_pipeline.workers`), with the same semantics and statistics.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ._clock import SYSTEM_CLOCK, Clock
from .builder import BuildContext, build_pipeline
from .definitions import PipelineDefinition, PipelineType, parse_definition
from .errors import (
    DefinitionError,
    InputError,
    NotFoundError,
    PipelineUnavailableError,
    QueryRejectedError,
    QuidditchError,
    RejectedExecutionError,
    StageError,
    UdfCallError,
    WorkerError,
)
from .executor import CompiledPipeline, snapshot, validate_input
from .mapping import UnmappableResult, map_udf_result
from .registry import Registry, StoredPipeline
from .stages import Item, Run, Status
from .stats import PipelineMetrics, StatsRegistry
from .storage import MemoryStorage, SqliteStorage, Storage, open_storage
from .storage.artifacts import artifact_store
from .udf.build import BuildLimits
from .udf.runtime import UdfRuntime
from .udf.store import UdfStore, inline_udf, record_mode
from .workers import _wire
from .workers.pool import BatchAnswer, WorkerPool
from .workers.worker import WorkerConfig, parse_input

__all__ = ["DocumentOutcome", "JsonDocumentOutcome", "PipelineService"]

_UNSET: Any = object()


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs twice as much, once per document
class DocumentOutcome:
    """What the document pipeline made of one document of a batch."""

    id: str | None
    status: str  # "success" | "dropped" | "failed"
    source: dict[str, Any] | None
    error: QuidditchError | None


@dataclass(slots=True)
class JsonDocumentOutcome:
    """:class:`DocumentOutcome` with the source as JSON bytes (``None`` unless ``status`` is ``success``)."""

    id: str | None
    status: str  # "success" | "dropped" | "failed"
    source_json: bytes | None
    error: QuidditchError | None


class PipelineService:
    """Registry + UDF store + runtime + executor + stats. Thread-safe; close it (or use ``with``)."""

    def __init__(
        self,
        storage: Storage,
        artifacts_dir: Path,
        *,
        runtime: UdfRuntime | None = None,
        compiled_cache_dir: Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
        default_udf_timeout_ms: float = 1000.0,
        memory_limit_mb: int = 128,
        pool_size: int = 4,
        max_call_ms: int = 2000,
        udf_build_limits: BuildLimits | None = None,
        udf_mode: str = "component",
        workers: int = 0,
        worker_grace_s: float = 5.0,
        worker_batch_timeout_s: float = 60.0,
        search_in_workers: bool = False,
    ) -> None:
        """``workers``: worker processes for document batches (0: run in this process). A worker's wait is
        bounded by the batch's deadline (the pipeline's ``timeout_ms`` per input, else
        ``worker_batch_timeout_s`` per chunk) plus ``worker_grace_s``; ``search_in_workers`` sends query and
        result pipelines to the workers too (off: one round trip costs more than their whole pipeline)."""
        if workers < 0:
            raise ValueError("workers must be >= 0")
        self.registry = Registry(storage)
        self._owns_runtime = runtime is None  # a runtime handed in is shared: its owner closes it
        self.runtime = runtime or UdfRuntime(
            compiled_cache_dir, pool_size=pool_size, memory_limit_mb=memory_limit_mb, max_call_ms=max_call_ms
        )
        self.udfs = UdfStore(
            self.registry,
            artifact_store(storage, artifacts_dir),
            self.runtime,
            limits=udf_build_limits,
            default_mode=udf_mode,
        )
        self.stats_registry = StatsRegistry()
        self._clock = clock
        self._build_ctx = BuildContext(self.udfs, self.runtime, default_udf_timeout_ms)
        self._lock = threading.Lock()
        self._compiled: dict[str, CompiledPipeline] = {}
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._worker_batch_timeout_s = worker_batch_timeout_s
        self._search_in_workers = search_in_workers
        self._pool: WorkerPool | None = None
        if workers:
            if storage.locator is None:
                self.close()
                raise ValueError("workers need a registry they can read: open the service on a data directory")
            config = WorkerConfig(
                registry=storage.locator,
                artifacts_dir=str(artifacts_dir),
                compiled_cache_dir=None if self.runtime.cache_dir is None else str(self.runtime.cache_dir),
                pool_size=self.runtime.pool_size,
                memory_limit_mb=max(1, self.runtime.memory_limit_bytes >> 20),
                max_call_ms=round(self.runtime.max_call_s * 1000),
                default_udf_timeout_ms=default_udf_timeout_ms,
                interpreter_dir=str(self.runtime.interpreter_dir),
            )
            try:
                self._pool = WorkerPool(workers, config, merge_stats=self.stats_registry.merge, grace_s=worker_grace_s)
            except BaseException:
                self.close()
                raise

    @classmethod
    def open(cls, data_dir: str | Path, *, registry: str | None = None, **options: Any) -> PipelineService:
        """A durable service under ``data_dir``: ``registry.sqlite``, ``udfs/`` (components) and
        ``compiled/`` (wasmtime's compiled artifacts, keyed by sha256 and wasmtime version).

        ``registry="postgresql://…"`` keeps the registry (and the components) in that PostgreSQL database
        instead, shared with every node opened on it; ``udfs/`` and ``compiled/`` are then this node's caches."""
        root = Path(data_dir)
        root.mkdir(parents=True, exist_ok=True)
        return cls(
            open_storage(registry, root),
            root / "udfs",
            compiled_cache_dir=root / "compiled",
            **options,
        )

    @classmethod
    def in_memory(cls, **options: Any) -> PipelineService:
        """A service that keeps nothing after :meth:`close` (components go to a temporary folder; with
        ``workers``, the registry too, in SQLite, so that the worker processes can read it)."""
        tmp = tempfile.TemporaryDirectory(prefix="quidditch-")
        options.setdefault("compiled_cache_dir", Path(tmp.name) / "compiled")
        storage: Storage = MemoryStorage()
        if options.get("workers"):
            storage = SqliteStorage(Path(tmp.name) / "registry.sqlite")
        service = cls(storage, Path(tmp.name) / "udfs", **options)
        service._tempdir = tmp
        return service

    def close(self) -> None:
        pool = getattr(self, "_pool", None)  # absent when __init__ failed before the pool
        if pool is not None:
            pool.close()
            self._pool = None
        if self._owns_runtime:
            self.runtime.close()
        self.registry.close()
        if self._tempdir is not None:
            self._tempdir.cleanup()

    def __enter__(self) -> PipelineService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- pipelines ------------------------------------------------------------------------------------------

    def put_pipeline(
        self,
        definition: dict[str, Any] | PipelineDefinition,
        name: str | None = None,
        *,
        if_version: int | None = None,
        if_revision: int | None = None,
    ) -> dict[str, Any]:
        """Create or replace a pipeline; every put stores a new revision.

        ``if_version`` (Elasticsearch's name) and ``if_revision`` (an alias) are optimistic concurrency: the put
        happens only if the stored pipeline's latest *revision* is that number, else :class:`ConflictError`
        (409), also when the pipeline does not exist yet. The revision is compared, not the definition's
        ``version``: a semantic version is the author's label, the revision counts every put.
        """
        expected = _expected_revision(if_version, if_revision)
        if isinstance(definition, dict):
            if name is not None and "name" not in definition:
                definition = {**definition, "name": name}
            definition = parse_definition(definition)
        if name is not None and definition.name != name:
            raise DefinitionError([("name", f"[{definition.name}] differs from the pipeline name [{name}] in the URL")])
        inline = definition.inline_sources()
        if inline:
            reason = "inline UDF source runs in _execute only: put the UDF (PUT /_udf/{name}/{version}) and name it"
            raise DefinitionError([(path, reason) for path in inline])
        result = self.registry.put(definition, if_revision=expected)
        with self._lock:
            self._compiled.pop(result.name, None)
        answer = {
            "acknowledged": True,
            "name": result.name,
            "version": result.version,
            "revision": result.revision,
            "created": result.created,
        }
        if result.change is not None:  # a shared registry: other nodes can wait for it (GET /_cluster/health)
            answer["change"] = result.change
        return answer

    def get_pipeline(self, name: str, revision: int | None = None) -> dict[str, Any]:
        return _stored_dict(self.registry.get(name, revision))

    def list_pipelines(self, type: str | None = None) -> dict[str, Any]:
        kind = _pipeline_type(type) if type is not None else None
        pipelines = [_stored_dict(p) for p in self.registry.pipelines(kind)]
        return {"total": len(pipelines), "pipelines": pipelines}

    def pipeline_history(self, name: str) -> dict[str, Any]:
        revisions = [
            {
                "revision": r.revision,
                "version": r.definition.get("version"),
                "created_at": _iso(r.created_at),
            }
            for r in self.registry.history(name)
        ]
        return {"name": name, "revisions": revisions}

    def delete_pipeline(self, name: str) -> dict[str, Any]:
        self.registry.delete(name)
        with self._lock:
            self._compiled.pop(name, None)
        self.stats_registry.discard(name)
        return {"acknowledged": True}

    def associate(self, index: str, type: str, name: str) -> None:
        """Attach ``name`` to ``index`` as its ``document``, ``query`` or ``result`` pipeline, or as its
        ``document_final`` / ``query_final`` pipeline (runs after the other, cannot be skipped with ``_none``)."""
        kind, final = _association_kind(type)
        self.registry.associate(index, kind, name, final=final)

    def disassociate(self, index: str, type: str) -> None:
        kind, final = _association_kind(type)
        self.registry.disassociate(index, kind, final=final)

    def associations(self, index: str) -> dict[str, str]:
        return self.registry.associations(index)

    def set_index_settings(self, index: str, changes: Mapping[str, str | None]) -> None:
        """Keep index settings besides the pipelines in the registry (flat keys; ``None`` removes), all or
        none: what a gateway keeps of this project's settings instead of sending them to its cluster."""
        self.registry.set_index_settings(index, changes)

    def index_settings(self, index: str) -> dict[str, str]:
        return self.registry.index_settings(index)

    def compiled(self, name: str) -> CompiledPipeline:
        """The runnable form of the latest revision of ``name`` (built once per revision)."""
        found = self._compiled.get(name)  # the hot path: built already, and still the latest revision
        if found is not None and found.revision == self.registry.latest_revision(name):
            return found
        stored = self.registry.get(name)
        with self._lock:
            found = self._compiled.get(name)
            if found is not None and found.revision == stored.revision:
                return found
        built = build_pipeline(
            stored.definition, stored.revision, self.stats_registry.for_pipeline(name), self._build_ctx
        )
        with self._lock:
            current = self._compiled.get(name)
            if current is None or current.revision < built.revision:
                self._compiled[name] = built
        return built

    # --- running ----------------------------------------------------------------------------------------------

    def _run(
        self,
        pipeline: CompiledPipeline,
        items: list[Item],
        params: dict[str, Any] | None = None,
        verbose: bool = False,
        resolve: Callable[[str], CompiledPipeline] | None = None,
    ) -> None:
        pipeline.run(items, Run(params or {}, None, verbose, self._clock, resolve or self.compiled))

    def execute(
        self,
        pipeline: str | dict[str, Any],
        input: Any = _UNSET,
        *,
        inputs: Sequence[Any] | None = None,
        params: dict[str, Any] | None = None,
        verbose: bool = True,
        substitutions: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run a stored (by name) or inline (a definition) pipeline on sample input(s): the ``_execute`` API.

        ``substitutions`` maps pipeline names to definitions used in their place for this run only (the
        pipeline itself, when named, and any pipeline its ``pipeline`` stages call); nothing is stored, and
        their stats are not the stored pipelines'.
        """
        subs = self._substitutions(substitutions)
        resolve = self.compiled if not subs else lambda name: subs[name] if name in subs else self.compiled(name)
        compiled = resolve(pipeline) if isinstance(pipeline, str) else self._inline(pipeline, subs)
        if (input is _UNSET) == (inputs is None):
            raise InputError("give exactly one of [input] and [inputs]")
        if params is not None and not isinstance(params, dict):
            raise InputError("params: expected an object")
        batch = [input] if inputs is None else list(inputs)
        if inputs is not None and not batch:
            raise InputError("inputs: give at least one input")
        for i, value in enumerate(batch):
            validate_input(compiled.type, value, "input" if inputs is None else f"inputs[{i}]")
        items = [Item(i, None, value, {"index": None}, trace=[] if verbose else None) for i, value in enumerate(batch)]
        start = self._clock.now()
        self._run(compiled, items, params, verbose, resolve)
        took = self._clock.now() - start
        results = [_execute_result(item, took / len(items), verbose) for item in items]
        if inputs is None:
            return results[0]
        return {"took_us": round(took * 1e6, 1), "results": results}

    def _inline(
        self, data: dict[str, Any], subs: dict[str, CompiledPipeline] | None = None, field: str = "pipeline"
    ) -> CompiledPipeline:
        """Build a definition that is not stored (``_execute``'s inline pipeline or a substitution)."""
        if not isinstance(data, dict):
            raise DefinitionError([(field, "expected a pipeline definition object")])
        data = {"name": "inline", "version": "0.0.0", **data}
        try:
            definition = parse_definition(data)
        except DefinitionError as exc:
            if field == "pipeline":
                raise
            raise DefinitionError([(f"{field}.{p}" if p else field, m) for p, m in exc.problems]) from exc
        if not subs:
            self.registry.check_references(definition)
        else:  # targets may be substitutions: check each against what this run will call
            problems = []
            for path, target in definition.pipeline_targets():
                called = subs[target].type if target in subs else self._stored_type(target)
                if called is None:
                    problems.append((f"{field}.{path}", f"pipeline [{target}] does not exist"))
                elif called is not definition.type:
                    problems.append((f"{field}.{path}", f"pipeline [{target}] is a {called} pipeline"))
            if problems:
                raise DefinitionError(problems)
        return build_pipeline(definition, 0, PipelineMetrics(definition.name), self._build_ctx)

    def _stored_type(self, name: str) -> PipelineType | None:
        try:
            return self.registry.get(name).definition.type
        except NotFoundError:
            return None

    def _substitutions(self, substitutions: dict[str, Any] | None) -> dict[str, CompiledPipeline]:
        """Each substitution built (never stored). Built in two passes, so that one may call another."""
        if substitutions is None:
            return {}
        if not isinstance(substitutions, dict):
            raise DefinitionError([("substitutions", "expected an object of pipeline name -> definition")])
        named: dict[str, dict[str, Any]] = {}
        for name, data in substitutions.items():
            field = f"substitutions.{name}"
            if not isinstance(data, dict):
                raise DefinitionError([(field, "expected a pipeline definition object")])
            if data.get("name", name) != name:
                raise DefinitionError([(f"{field}.name", f"[{data['name']}] differs from the substituted name")])
            named[name] = {**data, "name": name}
        # First pass: each one's type, so that the second can check calls between substitutions.
        typed = {
            name: self._inline({**data, "stages": [], "on_failure": "abort"}, None, f"substitutions.{name}")
            for name, data in named.items()
        }
        return {name: self._inline(data, typed, f"substitutions.{name}") for name, data in named.items()}

    def _pick(self, index: str, kind: PipelineType, override: str | None) -> CompiledPipeline | None:
        """The pipeline that guards ``index`` (``override``: named by the request; ``"_none"``: none).

        Fails closed: a pipeline that is named but missing or cannot be built (nor any pipeline it calls)
        raises :class:`PipelineUnavailableError`, so nothing is written or searched without it.
        """
        if override == "_none":
            return None
        name = override if override is not None else self.registry.pipeline_for(index, kind)
        return None if name is None else self._guard(index, kind, name)

    def _pick_final(self, index: str, kind: PipelineType, final: str | None) -> CompiledPipeline | None:
        """The index's final pipeline (``final``: named by the caller, e.g. from the index's settings;
        ``"_none"``: none). A request's ``pipeline=_none`` does not reach here: it cannot skip this one."""
        if final == "_none":
            return None
        name = final if final is not None else self.registry.final_pipeline_for(index, kind)
        return None if name is None else self._guard(index, kind, name)

    def _guard(self, index: str, kind: PipelineType, name: str) -> CompiledPipeline:
        """``name`` built (with every pipeline it calls) to guard ``index``; fails closed."""
        try:
            compiled = self.compiled(name)
            if compiled.calls:
                self._check_calls(compiled, {name})
        except QuidditchError as exc:
            raise PipelineUnavailableError(index, kind.value, name, exc.message) from exc
        if compiled.type is not kind:
            raise InputError(f"pipeline [{name}] is a {compiled.type} pipeline, not a {kind} pipeline")
        return compiled

    def _check_calls(self, pipeline: CompiledPipeline, seen: set[str]) -> None:
        """Build every pipeline that ``pipeline`` calls, transitively (once per revision, so this is cheap)."""
        for target in pipeline.calls:
            if target not in seen:
                seen.add(target)
                try:
                    called = self.compiled(target)
                except QuidditchError as exc:
                    raise QuidditchError(f"it calls pipeline [{target}], which is unavailable: {exc.message}") from exc
                self._check_calls(called, seen)

    def _run_guard(self, index: str, pipeline: CompiledPipeline, items: list[Item], verbose: bool = False) -> None:
        """Run one of the pipelines that guard ``index`` over the items still going (a default or request
        pipeline, then the final one): each starts with its own time limit (and, ``verbose``, its own trace)."""
        going = [item for item in items if item.status is Status.SUCCESS or item.status is Status.SKIPPED]
        for item in going:
            item.status, item.spent, item.limit = Status.SUCCESS, 0.0, None
            if verbose:
                item.trace = []
        if going:
            self._run(pipeline, going, verbose=verbose)
            self._unavailable(index, pipeline, going)

    def _unavailable(self, index: str, pipeline: CompiledPipeline, items: list[Item]) -> None:
        """Fail closed when a stage turned out unavailable while running (e.g. a UDF deleted since the build)."""
        self._refuse_unavailable(index, pipeline, (item.error for item in items if item.status is Status.FAILED))

    def _refuse_unavailable(
        self, index: str, pipeline: CompiledPipeline, errors: Iterable[QuidditchError | None]
    ) -> None:
        """Raise :class:`PipelineUnavailableError` when one of ``errors`` (in process or from a worker) says a
        stage could not run at all."""
        for error in errors:
            if isinstance(error, StageError) and error.kind == "unavailable":
                with self._lock:  # built again on the next request, which then fails at build time
                    self._compiled.pop(pipeline.name, None)
                raise PipelineUnavailableError(index, pipeline.type.value, pipeline.name, error.message)

    def process_document(
        self,
        index: str,
        doc_id: str | None,
        source: dict[str, Any],
        *,
        pipeline: str | None = None,
        final_pipeline: str | None = None,
    ) -> dict[str, Any] | None:
        """The document as it should be written, ``None`` when dropped; raises the error when it aborts."""
        outcome = self.process_documents(index, [(doc_id, source)], pipeline=pipeline, final_pipeline=final_pipeline)[0]
        if outcome.error is not None:
            raise outcome.error
        return outcome.source

    def process_documents(
        self,
        index: str,
        items: Sequence[tuple[str | None, dict[str, Any]]],
        *,
        pipeline: str | None = None,
        final_pipeline: str | None = None,
    ) -> list[DocumentOutcome]:
        """Run the index's document pipeline over a batch, then its final pipeline; one outcome per document.

        ``pipeline`` names the request's pipeline (``"_none"``: none) in place of the index's default;
        ``final_pipeline`` names the final one (``None``: the index's ``document_final`` association,
        ``"_none"``: none). Either one missing or unbuildable refuses the batch (fail closed).
        """
        compiled = self._pick(index, PipelineType.DOCUMENT, pipeline)
        final = self._pick_final(index, PipelineType.DOCUMENT, final_pipeline)
        if compiled is None and final is None:
            return [DocumentOutcome(doc_id, "success", source, None) for doc_id, source in items]
        if self._pool is not None:
            answered: list[DocumentOutcome | None] = [None] * len(items)
            going = list(enumerate(items))
            for guard in (compiled, final):  # the default (or request) pipeline, then the final one
                if guard is None:
                    continue
                outcomes = self._documents_in_workers(guard, index, [item for _, item in going])
                still: list[tuple[int, tuple[str | None, dict[str, Any]]]] = []
                for (i, _), outcome in zip(going, outcomes, strict=True):
                    answered[i] = outcome
                    if outcome.status == "success" and outcome.source is not None:
                        still.append((i, (outcome.id, outcome.source)))
                going = still
            return [outcome for outcome in answered if outcome is not None]
        meta = {"index": index}  # read-only, shared by the batch's items
        run_items = [
            Item(i, doc_id, source, meta) for i, (doc_id, source) in enumerate(items) if isinstance(source, dict)
        ]
        if run_items:
            for guard in (compiled, final):
                if guard is not None:
                    self._run_guard(index, guard, run_items)
        if len(run_items) == len(items):
            return [_document_outcome(item) for item in run_items]
        outcomes = [_not_an_object(doc_id) for doc_id, _ in items]
        for item in run_items:
            outcomes[item.position] = _document_outcome(item)
        return outcomes

    def simulate_documents(
        self,
        index: str,
        items: Sequence[tuple[str | None, dict[str, Any]]],
        *,
        pipeline: str | None = None,
        final_pipeline: str | None = None,
    ) -> list[dict[str, Any]]:
        """What writing ``items`` to ``index`` would do, without writing: the pipelines a write runs (``pipeline``
        and ``final_pipeline`` as in :meth:`process_documents`, failing closed alike), run verbose, in this
        process. One answer per document: ``status`` (``success``, ``dropped``, ``failed``), the ``source`` it
        would be written with, the ``error``, ``executed_pipelines``, and per pipeline its per-stage trace
        (``pipelines``: ``[{"pipeline", "status", "stages"}]``, stages as in :meth:`execute`)."""
        compiled = self._pick(index, PipelineType.DOCUMENT, pipeline)
        final = self._pick_final(index, PipelineType.DOCUMENT, final_pipeline)
        for i, (_, source) in enumerate(items):
            validate_input(PipelineType.DOCUMENT, source, f"docs[{i}]._source")
        meta = {"index": index}
        run_items = [Item(i, doc_id, source, meta) for i, (doc_id, source) in enumerate(items)]
        traces: list[list[dict[str, Any]]] = [[] for _ in items]
        for guard in (compiled, final):
            if guard is None:
                continue
            self._run_guard(index, guard, run_items, verbose=True)
            for item in run_items:
                if item.trace is not None:
                    traces[item.position].append(
                        {"pipeline": guard.name, "status": item.status.value, "stages": item.trace}
                    )
                    item.trace = None  # the next guard starts a trace of its own for those still going
        answers = []
        for item, ran in zip(run_items, traces, strict=True):
            outcome = _document_outcome(item)
            answers.append(
                {
                    "_id": item.id,
                    "status": outcome.status,
                    "source": outcome.source,
                    "error": outcome.error,
                    "executed_pipelines": [entry["pipeline"] for entry in ran],
                    "pipelines": ran,
                }
            )
        return answers

    def _documents_in_workers(
        self, compiled: CompiledPipeline, index: str, items: Sequence[tuple[str | None, dict[str, Any]]]
    ) -> list[DocumentOutcome]:
        outcomes = [_not_an_object(doc_id) for doc_id, _ in items]
        sent = [i for i, (_, source) in enumerate(items) if isinstance(source, dict)]
        answers = self._in_workers(
            compiled, index, [items[i][0] for i in sent], [orjson.dumps(items[i][1]) for i in sent]
        )
        for k, (i, code) in enumerate(zip(sent, answers.codes, strict=True)):
            doc_id, source = items[i]
            if code == _wire.UNCHANGED:
                outcomes[i] = DocumentOutcome(doc_id, "success", source, None)
            elif code == _wire.CHANGED:
                outcomes[i] = DocumentOutcome(doc_id, "success", orjson.loads(answers.data[k] or b"null"), None)
            elif code == _wire.DROPPED:
                outcomes[i] = DocumentOutcome(doc_id, "dropped", None, None)
            else:
                outcomes[i] = DocumentOutcome(doc_id, "failed", None, _answer_error(answers, k))
        self._refuse_unavailable(index, compiled, (outcome.error for outcome in outcomes))
        return outcomes

    def process_documents_json(
        self,
        index: str,
        items: Sequence[tuple[str | None, bytes]],
        *,
        pipeline: str | None = None,
        final_pipeline: str | None = None,
    ) -> list[JsonDocumentOutcome]:
        """:meth:`process_documents` on documents given as JSON bytes, answering JSON bytes: the way in for a
        ``_bulk`` whose lines need not be parsed by this process when workers run the pipeline. A document
        whose bytes are not a JSON object fails alone; an unchanged document answers the bytes it came with.
        ``pipeline`` and ``final_pipeline`` as in :meth:`process_documents`.
        """
        compiled = self._pick(index, PipelineType.DOCUMENT, pipeline)
        final = self._pick_final(index, PipelineType.DOCUMENT, final_pipeline)
        guards = [guard for guard in (compiled, final) if guard is not None]
        if guards and self._pool is not None:
            return self._documents_json_in_workers(guards, index, items)
        outcomes: list[JsonDocumentOutcome] = []
        run_items: list[Item] = []
        meta = {"index": index}
        for pos, (doc_id, raw) in enumerate(items):
            try:
                value = parse_input(PipelineType.DOCUMENT, doc_id, raw)
            except InputError as exc:
                outcomes.append(JsonDocumentOutcome(doc_id, "failed", None, exc))
                continue
            outcomes.append(JsonDocumentOutcome(doc_id, "success", raw, None))
            run_items.append(Item(pos, doc_id, value, meta))
        if not guards or not run_items:
            return outcomes
        originals = [item.value for item in run_items]
        for guard in guards:
            self._run_guard(index, guard, run_items)
        for item, original in zip(run_items, originals, strict=True):
            outcome = _document_outcome(item)
            out = outcomes[item.position]
            out.status, out.error = outcome.status, outcome.error
            if outcome.status != "success":
                out.source_json = None
            elif item.value is not original:
                out.source_json = orjson.dumps(item.value)
        return outcomes

    def _documents_json_in_workers(
        self, guards: list[CompiledPipeline], index: str, items: Sequence[tuple[str | None, bytes]]
    ) -> list[JsonDocumentOutcome]:
        """:meth:`process_documents_json` with workers. This process's per-document work is what caps how
        many workers one parent can feed, so it keeps parallel lists and builds each outcome once, at the end
        (measured: 0.40 against 0.65 µs per document for an outcome object per document and guard)."""
        ids = [doc_id for doc_id, _ in items]
        data: list[bytes | None] = [raw for _, raw in items]
        done: dict[int, JsonDocumentOutcome] = {}  # the dropped and failed, by position
        going: Sequence[int] = range(len(items))
        for guard in guards:  # the default (or request) pipeline, then the final one
            if done:
                going = [i for i in going if i not in done]
            answers = self._in_workers(guard, index, [ids[i] for i in going], [data[i] or b"null" for i in going])
            answer_data = answers.data
            for k, code in enumerate(answers.codes):
                if code == _wire.CHANGED:
                    data[going[k]] = answer_data[k]
                elif code != _wire.UNCHANGED:
                    i = going[k]
                    done[i] = (
                        JsonDocumentOutcome(ids[i], "dropped", None, None)
                        if code == _wire.DROPPED
                        else JsonDocumentOutcome(ids[i], "failed", None, _answer_error(answers, k))
                    )
            self._refuse_unavailable(index, guard, answers.errors.values())
        outcomes = [JsonDocumentOutcome(doc_id, "success", raw, None) for doc_id, raw in zip(ids, data, strict=True)]
        for i, outcome in done.items():
            outcomes[i] = outcome
        return outcomes

    def _in_workers(
        self,
        compiled: CompiledPipeline,
        index: str | None,
        ids: Sequence[str | None],
        payloads: Sequence[bytes],
        params: dict[str, Any] | None = None,
    ) -> BatchAnswer:
        """Run ``compiled`` over inputs given as JSON bytes in the worker processes; one answer per input."""
        assert self._pool is not None
        if not payloads:
            return BatchAnswer([], [], {})
        pins, udfs = self._worker_plan(compiled)
        header = {"pipeline": compiled.name, "pins": pins, "udfs": udfs, "index": index, "params": params or {}}
        per_input = compiled.timeout_s
        fixed = self._worker_batch_timeout_s
        metric = compiled.metrics.pipeline
        metric.begin(len(payloads))  # in flight in the workers: ``current`` shows them here meanwhile
        start = self._clock.now()
        try:
            answers = self._pool.run(
                header, ids, payloads, (lambda n: per_input * n) if per_input is not None else (lambda n: fixed)
            )
        except BaseException:
            metric.begin(-len(payloads))
            raise
        lost = [e for e in answers.errors.values() if isinstance(e, (WorkerError, RejectedExecutionError))]
        metric.begin(len(lost) - len(payloads))  # the answered ones: the workers' own events counted them
        if lost:
            # Items a worker never answered for count as executions that failed, as they would in-process.
            took_us = (self._clock.now() - start) * 1e6 * len(lost) / len(payloads)
            metric.finish(len(lost), took_us, failed=len(lost), error=lost[-1].message)
        return answers

    def _worker_plan(self, root: CompiledPipeline) -> tuple[dict[str, list[Any]], list[list[Any]]]:
        """What a worker must run exactly as this process would: the revision (and its time, which tells a
        re-created pipeline's revision 1 from the old one) of ``root`` and of every pipeline it calls, and the
        version each of their UDF stages resolves to now."""
        stored = self.registry.get(root.name, root.revision)
        pins: dict[str, list[Any]] = {root.name: [root.revision, stored.updated_at]}
        udfs: list[list[Any]] = []
        seen: set[tuple[str, str | None]] = set()
        todo: list[tuple[Iterable[tuple[str, str | None]], Iterable[str]]] = [(root.udfs, root.calls)]
        while todo:
            references, targets = todo.pop()
            for udf, version in references:
                if (udf, version) in seen:
                    continue
                seen.add((udf, version))
                try:
                    udfs.append([udf, version is not None, self.registry.udf(udf, version).version])
                except NotFoundError:
                    continue  # the stage fails in the worker, as it would here
            for target in targets:
                if target in pins:
                    continue
                try:
                    nested = self.registry.get(target)
                except NotFoundError:
                    continue
                pins[target] = [nested.revision, nested.updated_at]
                definition = nested.definition
                todo.append(
                    (
                        ((udf, version) for _, udf, version in definition.udf_references()),
                        (name for _, name in definition.pipeline_targets()),
                    )
                )
        return pins, udfs

    def _run_one(self, compiled: CompiledPipeline, item: Item, trace: list[dict[str, Any]] | None = None) -> None:
        """Run a query or result pipeline over one input: here, or in a worker with ``search_in_workers``.

        With ``trace``, it runs here, verbose (a worker's answer carries no trace), and appends
        ``{"pipeline", "type", "status", "input", "stages"}``: the ``_execute`` trace of its stages."""
        if trace is not None:
            entry = {"pipeline": compiled.name, "type": compiled.type.value, "input": snapshot(item.value)}
            item.trace = []
            self._run(compiled, [item], verbose=True)
            trace.append({**entry, "status": item.status.value, "stages": item.trace})
            item.trace = None
            return
        if self._pool is None or not self._search_in_workers:
            self._run(compiled, [item])
            return
        answers = self._in_workers(compiled, item.meta["index"], [None], [orjson.dumps(item.value)])
        code = answers.codes[0]
        if code == _wire.CHANGED:
            item.value = orjson.loads(answers.data[0] or b"null")
        elif code == _wire.DROPPED:
            item.status = Status.DROPPED
        elif code == _wire.REJECTED:
            item.status = Status.REJECTED
        elif code == _wire.FAILED:
            error = _answer_error(answers, 0)
            item.status = Status.FAILED
            item.error = error if isinstance(error, StageError) else StageError(error.message, pipeline=compiled.name)

    def process_query(
        self,
        index: str,
        body: dict[str, Any],
        *,
        pipeline: str | None = None,
        final_pipeline: str | None = None,
        trace: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The search body as the query pipeline, then the final query pipeline, rewrote it; raises
        ``QueryRejectedError`` on a reject. ``pipeline`` and ``final_pipeline`` as in :meth:`process_documents`.
        With ``trace`` (a list), each pipeline that runs appends its verbose trace to it (see :meth:`_run_one`)."""
        compiled = self._pick(index, PipelineType.QUERY, pipeline)
        final = self._pick_final(index, PipelineType.QUERY, final_pipeline)
        if compiled is None and final is None:
            return body
        validate_input(PipelineType.QUERY, body, "body")
        item = Item(0, None, body, {"index": index})
        for guard in (compiled, final):
            if guard is None:
                continue
            item.status, item.spent, item.limit = Status.SUCCESS, 0.0, None  # a skip by the first one included
            self._run_one(guard, item, trace)
            self._unavailable(index, guard, [item])
            if item.status is Status.REJECTED:
                raise QueryRejectedError(
                    f"query pipeline [{guard.name}] rejected the search request", pipeline=guard.name
                )
            if item.status is Status.FAILED and item.error is not None:
                raise item.error
        return body if item.value is body else dict(item.value)

    def process_results(
        self,
        index: str,
        body: dict[str, Any],
        response: dict[str, Any],
        *,
        pipeline: str | None = None,
        trace: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An Elasticsearch-shaped search response after the result pipeline (hits re-scored, re-sorted, removed).
        ``trace`` as in :meth:`process_query`."""
        compiled = self._pick(index, PipelineType.RESULT, pipeline)
        if compiled is None:
            return response
        outer = response.get("hits") or {}
        hits = [
            {**hit, "_score": float(hit.get("_score") or 0.0), "_source": hit.get("_source") or {}}
            for hit in outer.get("hits", [])
        ]
        value = {"hits": hits, "total": outer.get("total"), "query": body}
        validate_input(PipelineType.RESULT, value, "response")
        item = Item(0, None, value, {"index": index})
        self._run_one(compiled, item, trace)
        self._unavailable(index, compiled, [item])
        if item.status is Status.FAILED and item.error is not None:
            raise item.error
        new_hits: list[dict[str, Any]] = [] if item.status is Status.DROPPED else item.value["hits"]
        scores = [h["_score"] for h in new_hits if isinstance(h.get("_score"), (int, float))]
        extra = {k: v for k, v in item.value.items() if k not in ("hits", "total", "query")}
        return {
            **response,
            **extra,
            "hits": {**outer, "hits": new_hits, "max_score": max(scores) if scores else None},
        }

    # --- stats ----------------------------------------------------------------------------------------------

    def stats(self, name: str | None = None) -> dict[str, Any]:
        """The ``_stats`` response: one pipeline's snapshot, or ``{"pipelines": {name: snapshot}}``."""
        if name is not None:
            if not self.registry.exists(name):
                raise NotFoundError("pipeline", name)
            self._layout(name)
            return self.stats_registry.snapshot(name)
        snapshot = self.metrics().snapshot()
        if self._pool is not None:
            snapshot["workers"] = self._pool.describe()
        return snapshot

    def metrics(self) -> StatsRegistry:
        """The live metrics that :meth:`stats` snapshots (every worker's merged in), with every stored pipeline's
        stage layout attached: for exporters such as ``GET /_prometheus/metrics``."""
        for stored in self.registry.names():
            self._layout(stored)
        return self.stats_registry

    def workers(self) -> list[dict[str, Any]]:
        """The worker processes (empty without workers): pid, batches, items, busy time, restarts, last exit."""
        return [] if self._pool is None else self._pool.describe()

    def _layout(self, name: str) -> None:
        """Attach ``name``'s stage layout to its stats even before its first run, when it can be built: one
        that cannot (fail closed on its hooks) still shows what it recorded."""
        try:
            self.compiled(name)
        except QuidditchError:
            return

    def reset_stats(self, name: str | None = None) -> None:
        if name is not None and not self.registry.exists(name):
            raise NotFoundError("pipeline", name)
        self.stats_registry.reset(name)

    # --- UDFs -----------------------------------------------------------------------------------------------

    def put_udf(
        self, name: str, version: str, source_or_wasm: str | bytes, *, mode: str | None = None
    ) -> dict[str, Any]:
        """Register a UDF version from Python source (built with componentize-py, or with ``mode="source"``
        kept as source for the shared interpreter) or component bytes; it is loaded and instantiated before
        it is registered, so a broken UDF is refused at upload (and the first document does not wait for
        the compile)."""
        result = self.udfs.put(name, version, source_or_wasm, mode=mode)
        record = result.record
        return {
            "acknowledged": True,
            "name": record.name,
            "version": record.version,
            "sha256": record.sha256,
            "size": record.size,
            "mode": record_mode(record),
            "created": result.created,
        }

    def udf_versions(self, name: str) -> list[str]:
        versions = self.udfs.versions(name)
        if not versions:
            raise NotFoundError("udf", name)
        return versions

    def udf_info(self, name: str) -> dict[str, Any]:
        versions = []
        for version in self.udf_versions(name):
            record = self.registry.udf(name, version)
            versions.append(
                {
                    "version": version,
                    "sha256": record.sha256,
                    "size": record.size,
                    "mode": record_mode(record),
                    "created_at": _iso(record.created_at),
                }
            )
        return {"name": name, "latest": self.udfs.latest(name), "versions": versions}

    def list_udfs(self) -> dict[str, Any]:
        udfs = [
            {"name": name, "versions": versions, "latest": self.udfs.latest(name)}
            for name in self.registry.udf_names()
            if (versions := self.udfs.versions(name))
        ]
        return {"total": len(udfs), "udfs": udfs}

    def delete_udf(self, name: str, version: str) -> dict[str, Any]:
        self.udfs.delete(name, version)
        return {"acknowledged": True}

    def execute_udf(
        self,
        name: str | None,
        input: Any,
        *,
        source: str | None = None,
        version: str | None = None,
        params: dict[str, Any] | None = None,
        type: str = "document",
        scope: str = "hit",
        target_field: str | None = None,
    ) -> dict[str, Any]:
        """Run one UDF on one input: the raw value it returned and what the mapping makes of it. With
        ``source`` (and no ``name``), that source runs on the shared interpreter, stored nowhere but the
        runtime's cache (by sha256), so the next call with the same source starts warm."""
        kind = _pipeline_type(type)
        if source is not None:
            ref = inline_udf(self.runtime, source)
        else:
            assert name is not None
            ref = self.udfs.resolve(name, None if version in (None, "latest") else version)
        hit_scope = kind is PipelineType.RESULT and scope == "hit"
        if hit_scope:
            if not isinstance(input, dict) or not {"_id", "_score", "_source"} <= input.keys():
                raise InputError("input: a hit-scoped result UDF takes one hit {_id, _score, _source}")
        else:
            validate_input(kind, input)
        meta = {"index": None, "id": None, "pipeline": None, "stage": None, "type": kind.value}
        start = self._clock.now()
        out: dict[str, Any] = {
            "udf": ref.name,
            "version": ref.version,
            "raw": None,
            "mapped": None,
            "error": None,
        }
        try:
            result = self.runtime.call_batch(
                ref.sha256,
                ref.path,
                [input],
                params or {},
                [meta],
                timeout_s=self._build_ctx.default_udf_timeout_ms / 1000,
            )[0]
        except UdfCallError as exc:
            # Named like the python stage names it: the runtime knows the component, not the UDF.
            out.update(
                status="failed", error={"type": exc.kind, "reason": f"UDF [{ref.name}@{ref.version}] {exc.message}"}
            )
        else:
            if not result.ok:
                err = result.error
                out.update(
                    status="failed",
                    error={"type": err.type, "reason": err.message, "line": err.line} if err else None,
                )
            else:
                out["raw"] = result.value
                try:
                    mapped = map_udf_result(
                        result.value,
                        input,
                        pipeline_type=kind,
                        hit_scope=hit_scope,
                        target_field=target_field,
                    )
                except UnmappableResult as exc:
                    out.update(status="failed", error={"type": "unmappable_result", "reason": str(exc)})
                else:
                    if mapped is not input and not isinstance(mapped, dict):
                        out["status"] = "rejected" if kind is PipelineType.QUERY else "dropped"
                    else:
                        out.update(status="success", mapped=snapshot(mapped))
        out["took_us"] = round((self._clock.now() - start) * 1e6, 1)
        return out


def _association_kind(value: str) -> tuple[PipelineType, bool]:
    """``document`` -> (document, not final); ``document_final`` -> (document, final)."""
    if value in ("document_final", "query_final"):
        return PipelineType(value.removesuffix("_final")), True
    try:
        return PipelineType(value), False
    except ValueError:
        raise InputError(
            f"type: [{value}] is not an association type (document, query, result, document_final, query_final)"
        ) from None


def _expected_revision(if_version: int | None, if_revision: int | None) -> int | None:
    """The revision a conditional put expects; both spellings must agree."""
    for field, value in (("if_version", if_version), ("if_revision", if_revision)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InputError(f"{field}: expected a revision number (an integer >= 1), got {value!r}")
    if if_version is not None and if_revision is not None and if_version != if_revision:
        raise InputError(f"if_version [{if_version}] and if_revision [{if_revision}] differ; give one")
    return if_version if if_version is not None else if_revision


def _pipeline_type(value: str) -> PipelineType:
    try:
        return PipelineType(value)
    except ValueError:
        raise InputError(f"type: [{value}] is not a pipeline type (query, document or result)") from None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _stored_dict(stored: StoredPipeline) -> dict[str, Any]:
    return {
        **stored.definition.to_dict(),
        "revision": stored.revision,
        "created_at": _iso(stored.created_at),
        "updated_at": _iso(stored.updated_at),
    }


def _execute_result(item: Item, took_s: float, verbose: bool) -> dict[str, Any]:
    status = item.status.value
    output = snapshot(item.value) if item.status in (Status.SUCCESS, Status.SKIPPED) else None
    result: dict[str, Any] = {
        "status": status,
        "output": output,
        "error": item.error.to_dict() if item.error is not None else None,
        "took_us": round(took_s * 1e6, 1),
    }
    if verbose:
        result["stages"] = item.trace or []
    return result


def _not_an_object(doc_id: str | None) -> DocumentOutcome:
    return DocumentOutcome(doc_id, "failed", None, InputError(f"document [{doc_id}]: the source must be a JSON object"))


def _answer_error(answers: BatchAnswer, position: int) -> QuidditchError:
    error = answers.errors.get(position)
    return error if error is not None else StageError("failed without an error (a worker answered no reason)")


def _document_outcome(item: Item) -> DocumentOutcome:
    status = item.status
    if status is Status.FAILED:
        return DocumentOutcome(item.id, "failed", None, item.error or StageError("failed"))
    if status is Status.DROPPED:
        return DocumentOutcome(item.id, "dropped", None, None)
    return DocumentOutcome(item.id, "success", item.value, None)  # success, or skipped (pipeline disabled)
