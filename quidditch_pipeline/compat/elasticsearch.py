"""Elasticsearch ingest pipelines to and from document pipelines (DESIGN §13).

An Elasticsearch ingest pipeline ``{"description", "processors", "on_failure", "version", "_meta"}`` becomes a
document pipeline whose stages are native stages with the same keys (a ``pipeline`` processor becomes a
``pipeline`` stage). What maps:

* ``ignore_failure: true`` -> ``on_failure: continue``; ``description`` -> the stage's description; ``tag`` ->
  the stage's name (an untagged processor is named ``{processor}-{position}``, and such names export untagged);
* the integer ``version`` N -> ``N.0.0`` (no version -> ``0.0.0``); ``_meta`` -> ``metadata``;
* ``_source.``-prefixed field paths lose the prefix (a document pipeline's value *is* the source).

* an ``if`` that parses as a condition this project evaluates (CEL: ``ctx.kind == 'spam' && ctx.n > 10`` reads
  the same in Painless) is kept, with a note that a missing field is an error here where Painless compares
  ``null``; ``on_failure`` handler lists (per processor and per pipeline) become handler stages; Mustache
  templates in ``set``/``append`` values and fields and in ``fail`` messages are kept (rendered here too).

What does not is reported with its position and left out: processors without an equivalent (``script``,
``grok``, ``date``, ...), Painless-only conditions (the processor is left out rather than run
unconditionally), templates where this project renders none, ingest metadata fields (``_index``,
``_ingest.*``) and unsupported options. Any such loss refuses the import unless the caller accepts the report
(:meth:`Translation.require_lossless`).
"""

from __future__ import annotations

import re
from typing import Any, Final

import semver

from ..conditions import Condition
from ..definitions import (
    CompositeStage,
    FailurePolicy,
    NativeStage,
    PipelineDefinition,
    PipelineStage,
    PipelineType,
)
from ..errors import DefinitionError
from ._report import Translation
from ._stored import stored_definition

__all__ = ["from_elasticsearch", "to_elasticsearch"]

SOURCE: Final = "Elasticsearch ingest pipeline"

#: Keys every Elasticsearch processor takes, handled here rather than per processor.
_COMMON: Final = frozenset({"if", "on_failure", "ignore_failure", "tag", "description"})

#: Processor -> the keys this project's processor of the same name takes (the same meaning in both).
_SUPPORTED: Final[dict[str, frozenset[str]]] = {
    "set": frozenset({"field", "value", "override"}),
    "remove": frozenset({"field", "ignore_missing"}),
    "rename": frozenset({"field", "target_field", "ignore_missing", "override"}),
    "lowercase": frozenset({"field", "target_field", "ignore_missing"}),
    "uppercase": frozenset({"field", "target_field", "ignore_missing"}),
    "trim": frozenset({"field", "target_field", "ignore_missing"}),
    "split": frozenset({"field", "separator", "target_field", "ignore_missing", "preserve_trailing"}),
    "join": frozenset({"field", "separator", "target_field"}),
    "convert": frozenset({"field", "type", "target_field", "ignore_missing"}),
    "append": frozenset({"field", "value", "allow_duplicates"}),
    "drop": frozenset(),
    "fail": frozenset({"message"}),
}
_FIELD_KEYS: Final = ("field", "target_field")
#: Processors whose ``field`` may be a template here too (as in Elasticsearch).
_TEMPLATED_FIELDS: Final = frozenset({"set", "append"})
_CONVERT_TYPES: Final = frozenset({"integer", "long", "float", "double", "string", "boolean"})
#: Ingest metadata a document pipeline here does not see: its value is the source alone.
_METADATA_FIELDS: Final = frozenset(
    {"_index", "_id", "_routing", "_version", "_version_type", "_if_seq_no", "_if_primary_term", "_dynamic_templates"}
)
_TEMPLATE: Final = re.compile(r"\{\{")
#: The metadata key that keeps a semantic version Elasticsearch's integer version cannot hold.
VERSION_KEY: Final = "quidditch_version"


def from_elasticsearch(body: Any, name: str) -> Translation:
    """Translate an Elasticsearch ingest pipeline body into the document pipeline ``name``.

    Raises :class:`DefinitionError` when ``body`` is not an ingest pipeline at all; everything that merely has
    no equivalent is in the returned translation's findings.
    """
    if not isinstance(body, dict):
        raise DefinitionError([("", "an ingest pipeline is a JSON object")], subject=SOURCE)
    unknown = sorted(set(body) - {"description", "processors", "on_failure", "version", "_meta", "deprecated"})
    if unknown:
        raise DefinitionError([(key, "unknown field") for key in unknown], subject=SOURCE)
    processors = body.get("processors", [])
    if not isinstance(processors, list):
        raise DefinitionError([("processors", "must be a list")], subject=SOURCE)
    translation = Translation(SOURCE)
    meta = body.get("_meta", {})
    if not isinstance(meta, dict):
        raise DefinitionError([("_meta", "must be an object")], subject=SOURCE)
    metadata = dict(meta)
    definition: dict[str, Any] = {
        "name": name,
        "version": _import_version(body.get("version"), metadata.pop(VERSION_KEY, None)),
        "type": "document",
        "metadata": metadata,
        "stages": [],
    }
    if isinstance(body.get("description"), str):
        definition["description"] = body["description"]
    if body.get("deprecated"):
        translation.note("deprecated", "a deprecated flag has no equivalent; it is kept in metadata", lossy=False)
        metadata["deprecated"] = True
    names: set[str] = set()
    for i, processor in enumerate(processors):
        stage = _stage(processor, f"processors[{i}]", i, translation, names)
        if stage is not None:
            definition["stages"].append(stage)
    if body.get("on_failure"):
        handlers = _handlers(body["on_failure"], "on_failure", translation, names)
        if handlers is not None:
            definition["on_failure"] = handlers
    translation.definitions.append(definition)
    return translation


def _import_version(version: Any, kept: Any) -> str:
    if isinstance(kept, str):
        return kept
    if version is None:
        return "0.0.0"
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise DefinitionError([("version", f"must be a non-negative integer, got {version!r}")], subject=SOURCE)
    return f"{version}.0.0"


def _stage(
    processor: Any, path: str, position: int, translation: Translation, names: set[str]
) -> dict[str, Any] | None:
    kind, options = translation.processor(processor, path)
    here = f"{path}.{kind}"
    if kind != "pipeline" and kind not in _SUPPORTED:
        translation.note(path, f"[{kind}] has no equivalent")
        return None
    config = {k: v for k, v in options.items() if k not in _COMMON}
    losses = len(translation.lossy)
    stage = translation.stage_head(kind, options, position, here, names)
    if "if" in options:
        condition = _condition(options["if"], f"{here}.if", translation)
        if condition is not None:
            stage["if"] = condition
    if options.get("on_failure"):
        if options.get("ignore_failure") is True:
            translation.note(f"{here}.on_failure", "ignore_failure together with on_failure handlers is ambiguous")
        else:
            handlers = _handlers(options["on_failure"], f"{here}.on_failure", translation, names)
            if handlers is not None:
                stage["on_failure"] = handlers
    if kind == "pipeline":
        stage.update(type="pipeline", config=_pipeline_config(config, here, translation))
    else:
        stage.update(type="native", config={"processor": kind, **_processor_config(kind, config, here, translation)})
    # A processor whose translation lost anything is left out whole: half of it would be worse than none.
    return stage if len(translation.lossy) == losses else None


def _condition(source: Any, path: str, translation: Translation) -> str | None:
    """The processor's ``if`` when it parses as a condition evaluated here; else a loss noted at ``path``."""
    if not isinstance(source, str):
        translation.note(path, f"a condition is a string, got {source!r}; processor left out")
        return None
    try:
        Condition(source)
    except ValueError as exc:
        translation.note(path, f"Painless-only condition {source!r} ({exc}); processor left out")
        return None
    translation.note(
        path,
        "kept as a CEL condition: a field it reads that is missing is a stage error here, where Painless compares "
        "null (guard with has(ctx.field))",
        lossy=False,
    )
    return source


def _handlers(processors: Any, path: str, translation: Translation, names: set[str]) -> list[dict[str, Any]] | None:
    """``on_failure`` handler processors as handler stages; ``None`` when any of them is lost (noted)."""
    if not isinstance(processors, list) or not processors:
        translation.note(path, "on_failure must be a non-empty list of processors")
        return None
    losses = len(translation.lossy)
    stages = [_stage(processor, f"{path}[{i}]", i, translation, names) for i, processor in enumerate(processors)]
    kept = [stage for stage in stages if stage is not None]
    return kept if len(translation.lossy) == losses and len(kept) == len(stages) else None


def _pipeline_config(config: dict[str, Any], here: str, translation: Translation) -> dict[str, Any]:
    for key in sorted(set(config) - {"name", "ignore_missing_pipeline"}):
        translation.note(f"{here}.{key}", f"option [{key}] has no equivalent")
    target = config.get("name")
    if not isinstance(target, str) or _TEMPLATE.search(target):
        translation.note(f"{here}.name", f"pipeline name {target!r} must be a plain name (no template)")
    if config.get("ignore_missing_pipeline") is True:
        translation.note(f"{here}.ignore_missing_pipeline", "a pipeline stage's target must exist")
    return {"pipeline": target}


def _processor_config(kind: str, config: dict[str, Any], here: str, translation: Translation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key not in _SUPPORTED[kind]:
            translation.note(f"{here}.{key}", f"option [{key}] of [{kind}] has no equivalent")
            continue
        if key in _FIELD_KEYS or (kind == "remove" and key == "field"):
            value = _field(value, f"{here}.{key}", translation, templated=key == "field" and kind in _TEMPLATED_FIELDS)
        elif kind == "convert" and key == "type" and (not isinstance(value, str) or value not in _CONVERT_TYPES):
            translation.note(f"{here}.type", f"conversion to [{value}] has no equivalent")
        out[key] = value
    return out


def _field(value: Any, path: str, translation: Translation, *, templated: bool = False) -> Any:
    if isinstance(value, list):
        return [_field(v, f"{path}[{i}]", translation) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value  # the processor's own validation names it
    if _TEMPLATE.search(value) and not templated:
        translation.note(path, f"templated field name {value!r} is not evaluated here")
    if value.startswith("_source."):
        return value.removeprefix("_source.")
    root = value.split(".", 1)[0]
    if root in _METADATA_FIELDS or root == "_ingest":
        translation.note(path, f"[{value}] is ingest metadata, which a document pipeline does not see")
    return value


# --- export ------------------------------------------------------------------------------------------------


def to_elasticsearch(definition: PipelineDefinition | dict[str, Any]) -> dict[str, Any]:
    """The Elasticsearch ingest pipeline equivalent to a document pipeline.

    Raises :class:`DefinitionError` (400) naming every part that Elasticsearch cannot express: another pipeline
    type, python or composite stages, timeouts, retries, disabled stages or pipeline.
    """
    definition = stored_definition(definition)
    problems: list[tuple[str, str]] = []
    if definition.type is not PipelineType.DOCUMENT:
        problems.append(("type", f"a {definition.type} pipeline is not an ingest pipeline"))
    if not definition.enabled:
        problems.append(("enabled", "a disabled pipeline cannot be expressed"))
    if definition.timeout_ms is not None:
        problems.append(("timeout_ms", "timeouts cannot be expressed"))
    if definition.on_failure is FailurePolicy.RETRY:
        problems.append(("on_failure", "retries cannot be expressed"))
    if definition.parameters:
        problems.append(("parameters", "parameters cannot be expressed"))
    handlers = _handler_processors(definition.handlers, "on_failure", definition.default_policy, problems)
    processors = []
    for i, stage in enumerate(definition.stages):
        processor = _processor(stage, f"stages[{i}]", definition.default_policy, problems)
        if processor is not None:
            processors.append(processor)
    if problems:
        raise DefinitionError(problems, subject=f"export of [{definition.name}] to Elasticsearch")
    version = semver.Version.parse(definition.version)
    meta = dict(definition.metadata)
    if (version.minor, version.patch, version.prerelease, version.build) != (0, 0, None, None):
        meta[VERSION_KEY] = definition.version
    body: dict[str, Any] = {}
    if definition.description is not None:
        body["description"] = definition.description
    body["processors"] = processors
    if handlers:
        body["on_failure"] = handlers
    if version.major or meta.get(VERSION_KEY):
        body["version"] = version.major
    if meta:
        body["_meta"] = meta
    return body


def _processor(stage: Any, path: str, default: FailurePolicy, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    if not isinstance(stage, (NativeStage, PipelineStage)):
        kind = "composite" if isinstance(stage, CompositeStage) else stage.type
        problems.append((f"{path}.type", f"a {kind} stage has no Elasticsearch processor"))
        return None
    if not stage.enabled:
        problems.append((f"{path}.enabled", "a disabled stage cannot be expressed"))
    if stage.timeout_ms is not None:
        problems.append((f"{path}.timeout_ms", "timeouts cannot be expressed"))
    handlers = _handler_processors(stage.handlers, f"{path}.on_failure", default, problems)
    if stage.if_ is not None and not _reads_alike_in_painless(stage.if_):
        problems.append((f"{path}.if", "this CEL condition has no Painless equivalent (only comparisons of fields "
                         "and literals joined by &&, || and ! read alike in both)"))  # fmt: skip
    policy = stage.policy or default
    if policy is FailurePolicy.RETRY:
        problems.append((f"{path}.on_failure", "retries cannot be expressed"))
    kind, options = _options(stage)
    if kind != "pipeline":
        if kind not in _SUPPORTED:
            problems.append((f"{path}.config.processor", f"[{kind}] has no Elasticsearch processor"))
            return None
        for key in sorted(set(options) - _SUPPORTED[kind]):
            problems.append((f"{path}.config.{key}", f"[{kind}] in Elasticsearch has no [{key}] option"))
    if not re.fullmatch(rf"{re.escape(kind)}-\d+", stage.name):
        options["tag"] = stage.name
    if stage.description is not None:
        options["description"] = stage.description
    if policy is FailurePolicy.CONTINUE:
        options["ignore_failure"] = True
    if stage.if_ is not None:
        options["if"] = stage.if_
    if handlers:
        options["on_failure"] = handlers
    return {kind: options}


def _handler_processors(
    handlers: Any, path: str, default: FailurePolicy, problems: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Failure handler stages as Elasticsearch ``on_failure`` processors (none: an empty list)."""
    if not handlers:
        return []
    exported = [_processor(stage, f"{path}[{i}]", default, problems) for i, stage in enumerate(handlers)]
    return [processor for processor in exported if processor is not None]


#: The tokens a condition may use to read the same in CEL and Painless: field paths, literals, comparisons, and
#: &&, || and ! (no function calls, macros, ``in`` or ternaries, whose meanings differ or do not exist).
_COMMON_CONDITION_TOKEN: Final = re.compile(
    r"\s+|'(?:[^'\\]|\\.)*'|\d+(?:\.\d+)?|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|==|!=|<=|>=|&&|\|\||[<>!()]"
)
_NOT_IN_COMMON: Final = frozenset({"in", "has", "size", "matches", "exists", "all", "exists_one", "map", "filter"})


def _reads_alike_in_painless(source: str) -> bool:
    position = 0
    while position < len(source):
        match = _COMMON_CONDITION_TOKEN.match(source, position)
        if match is None:
            return False
        token = match.group()
        if token.split(".")[0] in _NOT_IN_COMMON:
            return False
        position = match.end()
        if token[0].isalpha() or token[0] == "_":
            rest = source[position:].lstrip()
            if rest.startswith("("):  # a function or method call: CEL's and Painless's are not the same
                return False
    return True


def _options(stage: NativeStage | PipelineStage) -> tuple[str, dict[str, Any]]:
    if isinstance(stage, PipelineStage):
        return "pipeline", {"name": stage.config.pipeline}
    return stage.config.processor, dict(stage.config.options)
