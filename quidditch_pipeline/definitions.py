"""Pipeline definitions (DESIGN §3): pydantic models, strict parsing, JSON and YAML load and dump.

Everything that can be checked without the registry is checked here, when a definition is parsed: field
types, unknown fields, stage names, native processor configs, nesting and size limits. What needs the
registry (pipeline targets, cycles, UDF names) is checked by :mod:`quidditch_pipeline.registry` when the
definition is stored. Every problem is reported with its field path, e.g. ``stages[2].config.udf_name``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
import semver
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from . import _paths
from .conditions import Condition
from .errors import DefinitionError
from .processors import PROCESSORS

__all__ = [
    "MAX_DEFINITION_DEPTH",
    "MAX_DEFINITION_NODES",
    "MAX_DEPTH",
    "MAX_STAGES",
    "CompositeConfig",
    "FailurePolicy",
    "NativeConfig",
    "PipelineConfig",
    "PipelineDefinition",
    "PipelineType",
    "PythonConfig",
    "RetryPolicy",
    "StageDefinition",
    "StageType",
    "dump_definition",
    "is_valid_name",
    "iter_stages",
    "latest_version",
    "load_definition",
    "load_yaml",
    "parse_definition",
    "parse_semver",
    "parse_udf_version",
]

MAX_DEPTH = 16
MAX_STAGES = 256
#: Bounds on a parsed definition as a whole (values, keys and containers; nesting of objects and lists),
#: checked before anything else looks at it: room for large parameter tables, none for a bomb. The depth
#: stays below what orjson serialises (254 levels), so whatever validates can be stored.
MAX_DEFINITION_NODES = 200_000
MAX_DEFINITION_DEPTH = 200
_NAME = r"[a-z0-9][a-z0-9_.-]{0,127}"
#: For pydantic, whose patterns are Rust regexes: there ``$`` is the end of the text, and nothing follows.
NAME_PATTERN = rf"^{_NAME}$"
#: For Python, matched whole (``fullmatch``): Python's ``$`` would also match before a final newline.
_NAME_RE = re.compile(_NAME)


def _checked_path(text: str) -> str:
    _paths.check_path(text)
    return text


#: A dotted field path (``_source.title``).
FieldPath = Annotated[str, AfterValidator(_checked_path)]


class PipelineType(StrEnum):
    QUERY = "query"
    DOCUMENT = "document"
    RESULT = "result"


class FailurePolicy(StrEnum):
    ABORT = "abort"
    CONTINUE = "continue"
    RETRY = "retry"


class StageType(StrEnum):
    PYTHON = "python"
    NATIVE = "native"
    COMPOSITE = "composite"
    PIPELINE = "pipeline"


def parse_semver(text: str) -> semver.Version:
    """A semantic version; raises ``ValueError`` naming the text when it is not one."""
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"[{text}] is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.2.0)") from exc


def parse_udf_version(text: str) -> semver.Version:
    """A UDF version: a semantic version without build metadata. Semantic versioning ignores ``+build`` when
    it orders versions, so ``1.0.0+a`` beside ``1.0.0`` would be two versions that ``latest`` and a pin
    cannot tell apart; it is refused rather than silently treated as ``1.0.0``."""
    version = parse_semver(text)
    if version.build is not None:
        raise ValueError(
            f"[{text}] carries build metadata (+{version.build}), which semantic versioning ignores when "
            f"comparing versions; a UDF version cannot have it (use {version.replace(build=None)} or a "
            "pre-release such as 1.0.0-rc.1)"
        )
    return version


def latest_version(versions: Sequence[str]) -> str | None:
    """What ``latest`` means among ``versions`` (sorted lowest first): the highest release; the highest
    pre-release only while there is no release (``2.0.0-rc.1`` is pinned explicitly, never picked over
    ``1.0.0``)."""
    for version in reversed(versions):
        if parse_semver(version).prerelease is None:
            return version
    return versions[-1] if versions else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RetryPolicy(_Strict):
    """How the ``retry`` policy retries: attempts in all, exponential backoff, then what."""

    max_attempts: int = Field(3, ge=1, le=100)
    initial_backoff_ms: float = Field(10, ge=0)
    multiplier: float = Field(2.0, ge=1.0)
    max_backoff_ms: float = Field(1000, ge=0)
    then: Literal["abort", "continue"] = "abort"

    def backoff_s(self, attempt: int) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based)."""
        ms = self.initial_backoff_ms * self.multiplier ** (attempt - 1)
        return min(ms, self.max_backoff_ms) / 1000.0


class PythonConfig(_Strict):
    #: Required, but None when the stage carries inline ``source`` instead.
    udf_name: str | None = Field(pattern=NAME_PATTERN)
    udf_version: str | None = None
    #: Inline UDF source in place of ``udf_name``: only in ``_pipeline/_execute``, never in a stored pipeline.
    source: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    target_field: FieldPath | None = None
    scope: Literal["hit", "response"] = "hit"
    memory_limit_mb: int | None = Field(None, ge=1, le=4096)
    #: The UDF is called with only these fields of its value; None: the whole value.
    input_fields: list[FieldPath] | None = Field(None, min_length=1, max_length=256)

    @field_validator("udf_version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is None or value == "latest":
            return None
        parse_udf_version(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _inline(cls, data: Any) -> Any:
        if isinstance(data, dict) and "source" in data and "udf_name" not in data:
            return {**data, "udf_name": None}
        return data

    @model_validator(mode="after")
    def _one_udf(self) -> PythonConfig:
        if (self.udf_name is None) == (self.source is None):
            raise ValueError("give exactly one of udf_name (a registered UDF) and source (inline, _execute only)")
        if self.source is not None and self.udf_version is not None:
            raise ValueError("udf_version goes with udf_name, not with inline source")
        return self


class NativeConfig(BaseModel):
    """``processor`` plus that processor's own keys, validated by the processor's config model."""

    model_config = ConfigDict(extra="allow", frozen=True)

    processor: str

    @field_validator("processor")
    @classmethod
    def _known(cls, value: str) -> str:
        if PROCESSORS.get(value) is None:
            known = ", ".join(sorted(PROCESSORS.names()))
            raise ValueError(f"unknown native processor [{value}] (known: {known})")
        return value

    @model_validator(mode="after")
    def _processor_config(self) -> NativeConfig:
        processor = PROCESSORS.get(self.processor)
        if processor is not None:
            processor.config_model.model_validate(self.options)
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_serializer(mode="wrap")
    def _keep_null_options(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # exclude_none must not drop a processor's own keys: {"processor": "set", "value": null} means something.
        data: dict[str, Any] = handler(self)
        data.update(self.options)
        return data


class CompositeConfig(_Strict):
    stages: list[StageDefinition] = Field(min_length=1)


class PipelineConfig(_Strict):
    pipeline: str = Field(pattern=NAME_PATTERN)


class _StageBase(_Strict):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    #: Names the stage in errors, traces and stats (Elasticsearch's processor ``tag``).
    tag: str | None = Field(None, min_length=1, max_length=256)
    enabled: bool = True
    #: A CEL condition (:mod:`quidditch_pipeline.conditions`); false skips the stage for that input.
    if_: str | None = Field(None, alias="if")
    #: A policy, or handler stages that run on the input instead when the stage fails.
    on_failure: FailurePolicy | list[StageDefinition] | None = None
    #: Elasticsearch's spelling of ``on_failure: continue``.
    ignore_failure: bool = False
    timeout_ms: float | None = Field(None, gt=0)

    @field_validator("if_")
    @classmethod
    def _condition(cls, value: str | None) -> str | None:
        if value is not None:
            Condition(value)  # a syntax error or an unknown variable is refused when stored
        return value

    @field_validator("on_failure", mode="before")
    @classmethod
    def _on_failure(cls, value: Any) -> Any:
        return _parse_on_failure(value)

    @model_validator(mode="after")
    def _ignore_failure(self) -> _StageBase:
        if self.ignore_failure and self.on_failure not in (None, FailurePolicy.CONTINUE):
            shown = "a list of handlers" if isinstance(self.on_failure, list) else f"[{self.on_failure}]"
            reason = f"ignore_failure: true means on_failure: continue; it contradicts on_failure {shown}"
            raise _Nested([("ignore_failure", reason)])
        return self

    @property
    def policy(self) -> FailurePolicy | None:
        """The stage's own policy (``None``: its pipeline's, or handlers), ``ignore_failure`` resolved."""
        if self.ignore_failure:
            return FailurePolicy.CONTINUE
        return self.on_failure if isinstance(self.on_failure, FailurePolicy) else None

    @property
    def handlers(self) -> list[StageDefinition] | None:
        return self.on_failure if isinstance(self.on_failure, list) else None


class _Nested(ValueError):
    """Problems found inside a field, by their paths relative to it (a ``ValueError``, so pydantic reports it at
    the field's location and :func:`_problems` joins the two)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))
        self.problems = problems


def _parse_on_failure(value: Any) -> Any:
    """``on_failure``: a policy name, or a non-empty list of handler stages (validated with their field paths)."""
    if value is None or isinstance(value, FailurePolicy):
        return value
    if isinstance(value, str):
        try:
            return FailurePolicy(value)
        except ValueError:
            raise ValueError(
                f"[{value}] is not a failure policy: give abort, continue, retry or a list of handler stages"
            ) from None
    if isinstance(value, list):
        if not value:
            raise ValueError("give at least one handler stage (or a policy: abort, continue, retry)")
        try:
            return _HANDLERS.validate_python(value)
        except ValidationError as exc:
            raise _Nested(_problems(exc)) from None
    raise ValueError(f"expected abort, continue, retry or a list of handler stages, got {type(value).__name__}")


class PythonStage(_StageBase):
    type: Literal[StageType.PYTHON] = StageType.PYTHON
    config: PythonConfig


class NativeStage(_StageBase):
    type: Literal[StageType.NATIVE] = StageType.NATIVE
    config: NativeConfig


class CompositeStage(_StageBase):
    type: Literal[StageType.COMPOSITE] = StageType.COMPOSITE
    config: CompositeConfig


class PipelineStage(_StageBase):
    type: Literal[StageType.PIPELINE] = StageType.PIPELINE
    config: PipelineConfig


StageDefinition = Annotated[PythonStage | NativeStage | CompositeStage | PipelineStage, Field(discriminator="type")]
for _model in (PythonStage, NativeStage, CompositeStage, PipelineStage, CompositeConfig):
    _model.model_rebuild()
_HANDLERS: TypeAdapter[list[StageDefinition]] = TypeAdapter(list[StageDefinition])


def iter_stages(
    stages: list[StageDefinition], path: str = "stages", depth: int = 1
) -> Iterator[tuple[str, int, StageDefinition]]:
    """Every stage, nested ones and failure handlers included, with its field path and nesting depth."""
    for i, stage in enumerate(stages):
        here = f"{path}[{i}]"
        yield here, depth, stage
        if isinstance(stage, CompositeStage):
            yield from iter_stages(stage.config.stages, f"{here}.config.stages", depth + 1)
        handlers = stage.handlers
        if handlers is not None:
            yield from iter_stages(handlers, f"{here}.on_failure", depth + 1)


class PipelineDefinition(_Strict):
    """A pipeline as DESIGN §3 defines it."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str
    type: PipelineType
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    #: The default policy of its stages, or handler stages that catch any failure the stages do not handle
    #: (the pipeline then ends for that input with what the handlers made of it).
    on_failure: FailurePolicy | list[StageDefinition] = FailurePolicy.ABORT
    retry: RetryPolicy = RetryPolicy()
    timeout_ms: float | None = Field(None, gt=0)
    parameters: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageDefinition]

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        parse_semver(value)
        return value

    @field_validator("on_failure", mode="before")
    @classmethod
    def _on_failure(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("expected abort, continue, retry or a list of handler stages")
        return _parse_on_failure(value)

    @model_validator(mode="after")
    def _shape(self) -> PipelineDefinition:
        problems = _shape_problems(self.all_stages())
        if problems:
            raise DefinitionError(problems)
        return self

    @property
    def default_policy(self) -> FailurePolicy:
        """What a stage without its own policy does when it fails (with pipeline handlers: abort, caught by them)."""
        return self.on_failure if isinstance(self.on_failure, FailurePolicy) else FailurePolicy.ABORT

    @property
    def handlers(self) -> list[StageDefinition] | None:
        return self.on_failure if isinstance(self.on_failure, list) else None

    def all_stages(self) -> list[tuple[str, int, StageDefinition]]:
        """Every stage with its field path and depth: the stages, then the pipeline's failure handlers."""
        found = list(iter_stages(self.stages))
        if self.handlers is not None:
            found += iter_stages(self.handlers, "on_failure")
        return found

    def to_dict(self) -> dict[str, Any]:
        """The definition as plain JSON data, without unset optional fields."""
        data: dict[str, Any] = _drop_false_ignore(self.model_dump(mode="json", exclude_none=True, by_alias=True))
        return data

    def pipeline_targets(self) -> list[tuple[str, str]]:
        """``(field path, target name)`` of every ``pipeline`` stage."""
        return [
            (f"{path}.config.pipeline", stage.config.pipeline)
            for path, _, stage in self.all_stages()
            if isinstance(stage, PipelineStage)
        ]

    def udf_references(self) -> list[tuple[str, str, str | None]]:
        """``(field path, udf name, pinned version or None)`` of every ``python`` stage."""
        return [
            (f"{path}.config", stage.config.udf_name, stage.config.udf_version)
            for path, _, stage in self.all_stages()
            if isinstance(stage, PythonStage) and stage.config.udf_name is not None
        ]

    def inline_sources(self) -> list[str]:
        """The field path of every python stage's inline ``source`` (allowed in ``_execute`` only)."""
        return [
            f"{path}.config.source"
            for path, _, stage in self.all_stages()
            if isinstance(stage, PythonStage) and stage.config.source is not None
        ]


def _drop_false_ignore(data: Any) -> Any:
    """``ignore_failure: false`` is the default: left out of what is stored and shown, like other defaults
    that definitions written before it did not have."""
    if isinstance(data, dict):
        if data.get("ignore_failure") is False:
            data = {k: v for k, v in data.items() if k != "ignore_failure"}
        return {k: _drop_false_ignore(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_drop_false_ignore(v) for v in data]
    return data


def _shape_problems(stages: list[tuple[str, int, StageDefinition]]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    total = 0
    seen: dict[str, set[str]] = {}
    for path, depth, stage in stages:
        total += 1
        if depth > MAX_DEPTH:
            problems.append((path, f"stages nest deeper than {MAX_DEPTH} levels"))
        scope = path.rsplit("[", 1)[0]
        names = seen.setdefault(scope, set())
        if stage.name in names:
            problems.append((f"{path}.name", f"duplicate stage name [{stage.name}]"))
        names.add(stage.name)
    if total > MAX_STAGES:
        problems.append(("stages", f"{total} stages in all; at most {MAX_STAGES} are allowed"))
    return problems


_STAGE_TAGS = {t.value for t in StageType}


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``('stages', 2, 'python', 'config', 'udf_name')`` -> ``stages[2].config.udf_name``."""
    out = ""
    previous: int | str | None = None
    for part in loc:
        # Skipped: the discriminated union's tag after a list index, and pydantic's validator names.
        skip = isinstance(part, str) and (
            (isinstance(previous, int) and part in _STAGE_TAGS) or part.startswith(("function-", "tagged-union"))
        )
        if isinstance(part, int):
            out += f"[{part}]"
        elif not skip:
            out += f".{part}" if out else part
        previous = part
    return out


def _join(path: str, inner: str) -> str:
    """``stages[1]`` + ``on_failure`` -> ``stages[1].on_failure``; ``stages[1].on_failure`` + ``[0].name`` ->
    ``stages[1].on_failure[0].name``."""
    if not path or not inner:
        return path or inner
    return f"{path}{inner}" if inner.startswith("[") else f"{path}.{inner}"


def _problems(exc: ValidationError, base: str = "") -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        path = _join(base, _field_path(tuple(err["loc"])))
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, (DefinitionError, _Nested)):
            problems.extend((_join(path, p), m) for p, m in ctx_error.problems)
            continue
        message = str(ctx_error) if isinstance(ctx_error, Exception) else err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "field required"
        elif err["type"] == "union_tag_invalid":
            tag = (err.get("ctx") or {}).get("tag")
            message = f"unknown stage type [{tag}]; expected one of python, native, composite, pipeline"
            path = f"{path}.type"
        elif err["type"] == "union_tag_not_found":
            message = "field required (python, native, composite or pipeline)"
            path = f"{path}.type"
        elif err["type"] == "string_pattern_mismatch":
            message = f"{err['input']!r} is not a valid name ([a-z0-9][a-z0-9_.-]{{0,127}})"
        elif err["type"] == "model_type":
            message = f"expected an object, got {type(err['input']).__name__}"
        problems.append((path, message))
    return problems


def parse_definition(data: Any) -> PipelineDefinition:
    """Validate JSON data as a pipeline definition; raises :class:`DefinitionError` with field paths."""
    if not isinstance(data, dict):
        raise DefinitionError([("", f"a pipeline definition is an object, got {type(data).__name__}")])
    _check_size(data)
    try:
        unrepresentable = _json_problems(data, "")
        if unrepresentable:
            raise DefinitionError(unrepresentable)
        return PipelineDefinition.model_validate(data)
    except ValidationError as exc:
        raise DefinitionError(_problems(exc)) from exc
    except DefinitionError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:
        raise DefinitionError([("", str(exc))]) from exc


def _check_size(data: dict[str, Any]) -> None:
    """Refuse a definition with more than MAX_DEFINITION_NODES values or nested deeper than
    MAX_DEFINITION_DEPTH, walking it without recursion: every later step (validation, the JSON checks,
    storing) may then recurse and iterate freely."""
    nodes = 0
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        nodes += 1
        if nodes > MAX_DEFINITION_NODES:
            raise DefinitionError([("", f"the definition holds more than {MAX_DEFINITION_NODES} values")])
        if depth > MAX_DEFINITION_DEPTH:
            raise DefinitionError([(path, f"values nest deeper than {MAX_DEFINITION_DEPTH} levels")])
        if isinstance(value, dict):
            nodes += len(value)  # the keys
            stack.extend((item, depth + 1, f"{path}.{key}" if path else str(key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(value))


def _json_problems(value: Any, path: str) -> list[tuple[str, str]]:
    """Values JSON (and so the store) cannot carry: NaN, infinities, integers beyond 64 bits."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(path, f"{value} is not a JSON number")]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return [(path, "integer out of the 64-bit range")]
    out: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _json_problems(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _json_problems(item, f"{path}[{i}]")
    return out


def load_definition(text: str | bytes, fmt: Literal["json", "yaml"] | None = None) -> PipelineDefinition:
    """Parse a definition written as JSON or YAML (``fmt=None`` tries JSON, then YAML)."""
    data: Any
    if fmt in (None, "json"):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if fmt == "json":
                raise DefinitionError([("", f"not valid JSON: {exc}")]) from exc
            data = load_yaml(text)
    else:
        data = load_yaml(text)
    return parse_definition(data)


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: ``*name`` repeats a node without copying it, so a few hundred
    bytes of nested aliases expand to billions of values ("billion laughs") for whatever walks the result.
    A pipeline definition never needs one; anchors alone are harmless."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _AliasRefused(
                f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed in a "
                "pipeline definition; write the value out"
            )
        return super().compose_node(parent, index)


class _AliasRefused(Exception):
    """Raised by :class:`_NoAliasLoader` (not a YAMLError: it must not read as a syntax error)."""


def load_yaml(text: str | bytes) -> Any:
    """YAML text as plain data, aliases refused (a :class:`DefinitionError` names why it cannot be read)."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: safe
    except _AliasRefused as exc:
        raise DefinitionError([("", str(exc))]) from exc
    except yaml.YAMLError as exc:
        raise DefinitionError([("", f"not valid JSON or YAML: {exc}")]) from exc
    except RecursionError as exc:  # PyYAML composes nested collections recursively
        raise DefinitionError([("", "the YAML nests too deeply")]) from exc


def dump_definition(definition: PipelineDefinition, fmt: Literal["json", "yaml"] = "json") -> str:
    """The definition as JSON or YAML text that :func:`load_definition` reads back equal."""
    data = definition.to_dict()
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=False)
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


def is_valid_name(name: str) -> bool:
    """True when ``name`` is a pipeline or UDF name, as a whole: ``[a-z0-9][a-z0-9_.-]{0,127}``."""
    return _NAME_RE.fullmatch(name) is not None
