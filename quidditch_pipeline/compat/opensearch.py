"""OpenSearch search pipelines to and from a query pipeline and a result pipeline (DESIGN §13).

A search pipeline ``{"description", "request_processors", "response_processors", "phase_results_processors"}``
named N becomes the query pipeline ``N-request`` (from its request processors) and the result pipeline
``N-response`` (from its response processors); a side without processors is not created. What maps:
``filter_query`` (the processor of :mod:`.search_processors`) and ``rename_field`` (``rename`` of
``_source.field`` to ``_source.target_field``: a result pipeline's native stage runs on each hit); ``tag``,
``description`` and ``ignore_failure`` as for Elasticsearch.

Reported and left out: ``truncate_hits`` and ``collapse`` (they decide across hits, and a native stage of a
result pipeline sees one hit at a time), ``phase_results_processors`` (score normalization between query and
fetch phases has no stage here), ML and external-service processors (``neural_query_enricher``,
``ml_inference``, ``rerank``, ``retrieval_augmented_generation``, ``personalize_search_ranking``, ...),
``script``, ``oversample``, ``sort``, ``split``.
"""

from __future__ import annotations

from typing import Any, Final

import semver

from ..definitions import NativeStage, PipelineDefinition, PipelineType
from ..errors import DefinitionError
from . import search_processors as _registered  # noqa: F401  (the processors the translation targets)
from ._report import Translation

__all__ = ["from_opensearch", "pipeline_names", "to_opensearch"]

SOURCE: Final = "OpenSearch search pipeline"
_COMMON: Final = frozenset({"tag", "description", "ignore_failure"})
#: Side -> processor -> the keys it keeps (the same meaning as this project's processor of that name).
_SUPPORTED: Final[dict[str, dict[str, frozenset[str]]]] = {
    "request_processors": {"filter_query": frozenset({"query"})},
    "response_processors": {"rename_field": frozenset({"field", "target_field", "ignore_missing"})},
}
#: Processors that decide across hits: a result pipeline's native stage sees one hit at a time.
_ACROSS_HITS: Final = frozenset({"truncate_hits", "collapse", "sort", "split"})
_SOURCE_PREFIX: Final = "_source."
_ML: Final = frozenset(
    {
        "neural_query_enricher", "neural_sparse_two_phase_processor", "ml_inference", "rerank",
        "retrieval_augmented_generation", "personalize_search_ranking", "agentic_query_translator",
        "agentic_context", "normalization-processor", "score-ranker-processor", "hybrid_score_explanation",
    }
)  # fmt: skip
_KINDS: Final = {"request_processors": "query", "response_processors": "result"}
_SUFFIX: Final = {"query": "request", "result": "response"}


def pipeline_names(name: str) -> dict[str, str]:
    """Pipeline type -> the name its side of search pipeline ``name`` is stored under."""
    return {kind: f"{name}-{suffix}" for kind, suffix in _SUFFIX.items()}


def from_opensearch(body: Any, name: str) -> Translation:
    """Translate an OpenSearch search pipeline into ``{name}-request`` and ``{name}-response``."""
    if not isinstance(body, dict):
        raise DefinitionError([("", "a search pipeline is a JSON object")], subject=SOURCE)
    known = {"description", "version", "request_processors", "response_processors", "phase_results_processors"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise DefinitionError([(key, "unknown field") for key in unknown], subject=SOURCE)
    version = body.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise DefinitionError([("version", f"must be a non-negative integer, got {version!r}")], subject=SOURCE)
    translation = Translation(SOURCE)
    for i, _ in enumerate(_list(body, "phase_results_processors")):
        translation.note(f"phase_results_processors[{i}]", "phase results processors have no equivalent")
    names = pipeline_names(name)
    for side, kind in _KINDS.items():
        used: set[str] = set()
        stages = [
            stage
            for i, processor in enumerate(_list(body, side))
            if (stage := _stage(processor, side, i, translation, used)) is not None
        ]
        if not stages:
            continue
        definition: dict[str, Any] = {"name": names[kind], "version": f"{version}.0.0", "type": kind, "stages": stages}
        if isinstance(body.get("description"), str):
            definition["description"] = body["description"]
        translation.definitions.append(definition)
    return translation


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise DefinitionError([(key, "must be a list")], subject=SOURCE)
    return value


def _stage(
    processor: Any, side: str, position: int, translation: Translation, names: set[str]
) -> dict[str, Any] | None:
    path = f"{side}[{position}]"
    kind, options = translation.processor(processor, path)
    supported = _SUPPORTED[side].get(kind)
    if supported is None:
        why = "has no equivalent"
        if kind in _ML:
            why = "is an ML or external-service processor"
        elif kind in _ACROSS_HITS:
            why = "decides across hits, and a result pipeline's native stage sees one hit at a time"
        translation.note(path, f"[{kind}] {why}")
        return None
    losses = len(translation.lossy)
    config = {k: v for k, v in options.items() if k not in _COMMON}
    for key in sorted(set(config) - supported):
        translation.note(f"{path}.{kind}.{key}", f"option [{key}] of [{kind}] has no equivalent")
    stage = translation.stage_head(kind, options, position, f"{path}.{kind}", names)
    kept = {k: v for k, v in config.items() if k in supported}
    if kind == "rename_field":
        # OpenSearch's rename_field replaces a target that exists.
        kind, kept["override"] = "rename", True
        for key in ("field", "target_field"):
            if isinstance(kept.get(key), str):
                kept[key] = _SOURCE_PREFIX + kept[key]
    stage.update(type="native", config={"processor": kind, **kept})
    return stage if len(translation.lossy) == losses else None


def to_opensearch(request: PipelineDefinition | None, response: PipelineDefinition | None) -> dict[str, Any]:
    """The OpenSearch search pipeline made of a query pipeline and a result pipeline (either may be absent).

    Raises :class:`DefinitionError` naming every stage OpenSearch cannot express.
    """
    problems: list[tuple[str, str]] = []
    body: dict[str, Any] = {}
    for side, definition, kind in (("request_processors", request, PipelineType.QUERY),
                                   ("response_processors", response, PipelineType.RESULT)):  # fmt: skip
        if definition is None:
            continue
        if definition.type is not kind:
            problems.append((f"{definition.name}.type", f"a {definition.type} pipeline cannot be the {side}"))
            continue
        if definition.description is not None:
            body.setdefault("description", definition.description)
        major = semver.Version.parse(definition.version).major
        if major:
            body.setdefault("version", major)
        body[side] = [_processor(definition, i, stage, side, problems) for i, stage in enumerate(definition.stages)]
    if problems:
        raise DefinitionError(problems, subject="export to OpenSearch")
    return body


def _processor(
    definition: PipelineDefinition, i: int, stage: Any, side: str, problems: list[tuple[str, str]]
) -> dict[str, Any]:
    path = f"{definition.name}.stages[{i}]"
    kind, options = _opensearch_processor(stage)
    if kind not in _SUPPORTED[side]:
        what = f"a {stage.type} stage" if kind == "" else kind
        problems.append((path, f"[{what}] has no OpenSearch {side[:-1].replace('_', ' ')}"))
        return {}
    if not stage.enabled or stage.timeout_ms is not None or (stage.on_failure or definition.on_failure) == "retry":
        problems.append((path, "enabled: false, timeouts and retries cannot be expressed"))
    if stage.name != f"{kind}-{i}":
        options["tag"] = stage.name
    if stage.description is not None:
        options["description"] = stage.description
    if (stage.on_failure or definition.on_failure) == "continue":
        options["ignore_failure"] = True
    return {kind: options}


def _opensearch_processor(stage: Any) -> tuple[str, dict[str, Any]]:
    """The OpenSearch processor a stage is (``""`` when none): ``rename`` within ``_source`` is ``rename_field``."""
    if not isinstance(stage, NativeStage):
        return "", {}
    kind, options = stage.config.processor, dict(stage.config.options)
    if kind != "rename":
        return kind, options
    paths = [options.get("field", ""), options.get("target_field", "")]
    if not options.get("override") or not all(p.startswith(_SOURCE_PREFIX) for p in paths):
        return kind, options
    options.update(field=paths[0].removeprefix(_SOURCE_PREFIX), target_field=paths[1].removeprefix(_SOURCE_PREFIX))
    options.pop("override", None)
    return "rename_field", options
