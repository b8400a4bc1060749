"""Building a definition into runnable stages, their policies, timeouts and metrics resolved once.

:func:`build_pipeline` resolves each stage's failure policy (its own, else the pipeline's; inside a composite,
abort to the composite), failure handlers, condition (compiled once), timeout and parameters, and attaches its
metric, when the pipeline is built. A
``python`` stage's UDF must resolve then (its pinned version, or at least one version when unpinned): a
pipeline that cannot be built this way is refused, never run without the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .conditions import Condition
from .definitions import CompositeStage as CompositeDef
from .definitions import FailurePolicy, PipelineDefinition, PipelineType, StageDefinition, StageType
from .definitions import NativeStage as NativeDef
from .definitions import PipelineStage as PipelineDef
from .definitions import PythonStage as PythonDef
from .errors import DefinitionError, QuidditchError
from .executor import CompiledPipeline, run_stages
from .processors import PROCESSORS
from .stages import CompositeStage, NativeStage, PipelineCallStage, PythonStage, Stage, UdfResolver, UdfRunner
from .stats import PipelineMetrics
from .udf.store import inline_udf

__all__ = ["BuildContext", "build_pipeline"]


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What building a ``python`` stage needs; ``None`` where the host runs without UDFs."""

    udfs: UdfResolver | None = None
    runtime: UdfRunner | None = None
    #: Per-input time limit of a python stage when neither it nor its pipeline sets one.
    default_udf_timeout_ms: float = 1000.0


def build_pipeline(
    definition: PipelineDefinition, revision: int, metrics: PipelineMetrics, ctx: BuildContext
) -> CompiledPipeline:
    """Build ``definition`` into a :class:`CompiledPipeline` with its stage metrics attached."""
    paths: list[str] = []
    stages = [
        _build(s, "", f"stages[{i}]", False, definition, metrics, ctx, paths) for i, s in enumerate(definition.stages)
    ]
    handlers = None
    if definition.handlers is not None:
        handlers = [
            _build(s, "on_failure/", f"on_failure[{i}]", True, definition, metrics, ctx, paths)
            for i, s in enumerate(definition.handlers)
        ]
    metrics.set_layout(paths)
    return CompiledPipeline(definition, revision, stages, metrics, handlers)


def _build(
    sdef: StageDefinition,
    prefix: str,
    field: str,
    nested: bool,
    pdef: PipelineDefinition,
    metrics: PipelineMetrics,
    ctx: BuildContext,
    paths: list[str],
) -> Stage:
    path = f"{prefix}{sdef.name}"  # the stage's name path (stats, errors); ``field`` is its definition's
    paths.append(path)
    # Inside a composite (or a handler list), a stage without its own policy hands its failure to its parent.
    default = FailurePolicy.ABORT if nested else pdef.default_policy
    handlers = None
    if sdef.handlers is not None:  # they replace the policy: no retry, no continue
        handlers = [
            _build(h, f"{path}/on_failure/", f"{field}.on_failure[{i}]", True, pdef, metrics, ctx, paths)
            for i, h in enumerate(sdef.handlers)
        ]
    condition = None
    if sdef.if_ is not None:
        try:
            condition = Condition(sdef.if_)
        except ValueError as exc:
            raise DefinitionError([(f"{field}.if", str(exc))]) from exc
    timeout_ms = sdef.timeout_ms
    if timeout_ms is None and isinstance(sdef, PythonDef) and pdef.timeout_ms is None:
        timeout_ms = ctx.default_udf_timeout_ms
    common: dict[str, Any] = {
        "name": sdef.name,
        "path": path,
        "stage_type": sdef.type.value,
        "pipeline": pdef.name,
        "pipeline_type": pdef.type,
        "enabled": sdef.enabled,
        "policy": FailurePolicy.ABORT if handlers is not None else sdef.policy or default,
        "retry": pdef.retry,
        "timeout_s": timeout_ms / 1000.0 if timeout_ms else None,
        "metric": metrics.stage(path, sdef.type.value, sdef.tag),
        "tag": sdef.tag,
        "condition": condition,
        "handlers": handlers,
    }
    if isinstance(sdef, NativeDef):
        processor = PROCESSORS.get(sdef.config.processor)
        if processor is None:
            raise DefinitionError([(f"{field}.config.processor", "unknown native processor")])
        return NativeStage(
            processor.bind(sdef.config.options),
            per_hit=pdef.type is PipelineType.RESULT,
            params=pdef.parameters,
            **common,
        )
    if isinstance(sdef, CompositeDef):
        children = [
            _build(c, f"{path}/", f"{field}.config.stages[{i}]", True, pdef, metrics, ctx, paths)
            for i, c in enumerate(sdef.config.stages)
        ]
        return CompositeStage(children, runner=run_stages, params=pdef.parameters, **common)
    if isinstance(sdef, PipelineDef):
        return PipelineCallStage(sdef.config.pipeline, params=pdef.parameters, **common)
    assert isinstance(sdef, PythonDef) and sdef.type is StageType.PYTHON
    if ctx.udfs is None or ctx.runtime is None:
        raise DefinitionError([(field, "python stages need a UDF runtime, and this service has none")])
    # Resolved now (and again per run for an unpinned version): a stage whose UDF version is gone is not built.
    inline = sdef.config.source
    try:
        if inline is not None:  # _execute only (a stored pipeline refuses it): checked and loaded now
            inline_udf(ctx.runtime, inline)
        else:
            assert sdef.config.udf_name is not None  # PythonConfig holds one of the two
            ctx.udfs.resolve(sdef.config.udf_name, sdef.config.udf_version)
    except QuidditchError as exc:
        key = "udf_name" if inline is None else "source"
        raise DefinitionError([(f"{field}.config.{key}", exc.message)]) from exc
    return PythonStage(sdef.config, udfs=ctx.udfs, runtime=ctx.runtime, pipeline_params=pdef.parameters, **common)
