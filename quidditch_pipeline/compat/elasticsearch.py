"""Elasticsearch ingest pipelines to and from document pipelines (DESIGN §13).

An Elasticsearch ingest pipeline ``{"description", "processors", "on_failure", "version", "_meta"}`` becomes a
document pipeline whose stages are native stages with the same keys (a ``pipeline`` processor becomes a
``pipeline`` stage). What maps:

* ``ignore_failure: true`` -> ``on_failure: continue``; ``description`` -> the stage's description; ``tag`` ->
  the stage's name (an untagged processor is named ``{processor}-{position}``, and such names export untagged);
* the integer ``version`` N -> ``N.0.0`` (no version -> ``0.0.0``); ``_meta`` -> ``metadata``;
* ``_source.``-prefixed field paths lose the prefix (a document pipeline's value *is* the source).

What does not is reported with its position and left out: processors without an equivalent (``script``,
``grok``, ``date``, ...), ``if`` conditions (the processor is left out rather than run unconditionally),
``on_failure`` handler lists (the stage then aborts on failure, loudly, instead of running handlers), Mustache
templates, ingest metadata fields (``_index``, ``_ingest.*``) and unsupported options. Any such loss refuses
the import unless the caller accepts the report (:meth:`Translation.require_lossless`).
"""

from __future__ import annotations

import re
from typing import Any, Final

import semver

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
_TEMPLATE_KEYS: Final = ("value", "message")
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
    if body.get("on_failure"):
        translation.note(
            "on_failure", "pipeline on_failure handlers cannot be expressed yet: a failing stage aborts the document"
        )
    names: set[str] = set()
    for i, processor in enumerate(processors):
        stage = _stage(processor, f"processors[{i}]", i, translation, names)
        if stage is not None:
            definition["stages"].append(stage)
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
    if "if" in options:
        translation.note(f"{here}.if", f"conditions cannot be expressed yet ({options['if']!r}); processor left out")
    if options.get("on_failure"):
        translation.note(f"{here}.on_failure", "on_failure handlers cannot be expressed yet; the stage aborts instead")
    stage = translation.stage_head(kind, options, position, here, names)
    if kind == "pipeline":
        stage.update(type="pipeline", config=_pipeline_config(config, here, translation))
    else:
        stage.update(type="native", config={"processor": kind, **_processor_config(kind, config, here, translation)})
    # A processor whose translation lost anything is left out whole: half of it would be worse than none.
    return stage if len(translation.lossy) == losses else None


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
            value = _field(value, f"{here}.{key}", translation)
        elif key in _TEMPLATE_KEYS and _has_template(value):
            translation.note(f"{here}.{key}", "Mustache templates are not evaluated yet")
        elif kind == "convert" and key == "type" and (not isinstance(value, str) or value not in _CONVERT_TYPES):
            translation.note(f"{here}.type", f"conversion to [{value}] has no equivalent")
        out[key] = value
    return out


def _field(value: Any, path: str, translation: Translation) -> Any:
    if isinstance(value, list):
        return [_field(v, f"{path}[{i}]", translation) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value  # the processor's own validation names it
    if _TEMPLATE.search(value):
        translation.note(path, f"templated field name {value!r} is not evaluated yet")
    if value.startswith("_source."):
        return value.removeprefix("_source.")
    root = value.split(".", 1)[0]
    if root in _METADATA_FIELDS or root == "_ingest":
        translation.note(path, f"[{value}] is ingest metadata, which a document pipeline does not see")
    return value


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_TEMPLATE.search(value))
    if isinstance(value, list):
        return any(_has_template(v) for v in value)
    if isinstance(value, dict):
        return any(_has_template(v) for v in value.values())
    return False


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
    if definition.handlers is not None:
        problems.append(("on_failure", "failure handlers cannot be exported yet"))
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
    if stage.handlers is not None:
        problems.append((f"{path}.on_failure", "failure handlers cannot be exported yet"))
    if stage.if_ is not None:
        problems.append((f"{path}.if", "a CEL condition has no Painless equivalent"))
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
    return {kind: options}


def _options(stage: NativeStage | PipelineStage) -> tuple[str, dict[str, Any]]:
    if isinstance(stage, PipelineStage):
        return "pipeline", {"name": stage.config.pipeline}
    return stage.config.processor, dict(stage.config.options)
