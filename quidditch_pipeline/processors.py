"""Native processors: trusted built-ins (DESIGN §3) and the registration API for an embedding host.

A processor is a function ``(value, config) -> new value | DROP`` with a pydantic config model that parses its
keys strictly (unknown keys are refused). The built-ins never change the value they are given (see
:mod:`quidditch_pipeline._paths`); a host processor receives a deep copy, so it may change it in place.

Register your own::

    from pydantic import BaseModel
    from quidditch_pipeline import register_processor

    class Stamp(BaseModel, extra="forbid"):
        field: str = "ingested_by"

    @register_processor("stamp", config=Stamp)
    def stamp(doc: dict, config: Stamp) -> dict:
        doc[config.field] = "quidditch"
        return doc
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import _paths
from ._outcome import DROP, Drop
from .templates import Template, compile_value, is_template, render_value

__all__ = ["PROCESSORS", "Processor", "ProcessorError", "ProcessorRegistry", "register_processor"]

ConfigT = TypeVar("ConfigT", bound=BaseModel)
ProcessorFn = Callable[..., "dict[str, Any] | Drop"]
#: A processor with its config bound: ``(value, ingest metadata or None) -> new value | DROP``.
BoundFn = Callable[[dict[str, Any], "Mapping[str, Any] | None"], "dict[str, Any] | Drop"]


class ProcessorError(Exception):
    """A processor could not do its work on this value (the stage fails under its policy)."""


@dataclass(frozen=True, slots=True)
class Processor:
    name: str
    config_model: type[BaseModel]
    fn: ProcessorFn
    copy_input: bool
    #: ``fn(value, config, ingest)``: a built-in that reads the ingest metadata (its templates may).
    takes_ingest: bool = False

    def bind(self, options: dict[str, Any]) -> BoundProcessor:
        """The processor with its config parsed (and its templates compiled) once, ready to run on values."""
        config = self.config_model.model_validate(options)
        fn = self.fn
        if self.takes_ingest:
            # Configs with templates say so (``templated``): only those need the ingest metadata made.
            templated = bool(getattr(config, "templated", False))
            return BoundProcessor(lambda value, ingest: fn(value, config, ingest), templated)
        if self.copy_input:
            return BoundProcessor(lambda value, ingest: fn(copy.deepcopy(value), config), False)
        return BoundProcessor(lambda value, ingest: fn(value, config), False)


@dataclass(frozen=True, slots=True)
class BoundProcessor:
    """A processor bound to its config. ``wants_ingest``: it renders templates, so give it the ingest metadata
    (``_ingest.timestamp`` …); otherwise it is called with ``None``."""

    fn: BoundFn
    wants_ingest: bool

    def __call__(self, value: dict[str, Any], ingest: Mapping[str, Any] | None = None) -> dict[str, Any] | Drop:
        return self.fn(value, ingest)


class ProcessorRegistry:
    """Name -> processor; thread-safe, so a host may register while pipelines run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processors: dict[str, Processor] = {}

    def register(
        self,
        name: str,
        config: type[BaseModel],
        fn: ProcessorFn,
        *,
        copy_input: bool = True,
        takes_ingest: bool = False,
    ) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
            raise ValueError(f"invalid processor name [{name}]")
        with self._lock:
            if name in self._processors:
                raise ValueError(f"native processor [{name}] is already registered")
            self._processors[name] = Processor(name, config, fn, copy_input, takes_ingest)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._processors.pop(name, None)

    def get(self, name: str) -> Processor | None:
        return self._processors.get(name)

    def names(self) -> Iterator[str]:
        return iter(list(self._processors))


PROCESSORS = ProcessorRegistry()


def register_processor(
    name: str, *, config: type[ConfigT]
) -> Callable[[Callable[[dict[str, Any], ConfigT], dict[str, Any] | Drop]], Callable[..., Any]]:
    """Decorator: make ``fn(value, config)`` available as native processor ``name``.

    ``config`` is a pydantic model for the processor's keys (give it ``extra="forbid"`` to refuse unknown
    keys). ``fn`` receives a deep copy of the value and returns the new value, or ``DROP``; it raises
    :class:`ProcessorError` (or any exception) to fail the stage.
    """

    def decorate(fn: Callable[[dict[str, Any], ConfigT], dict[str, Any] | Drop]) -> Callable[..., Any]:
        PROCESSORS.register(name, config, fn)
        return fn

    return decorate


def _builtin(name: str, config: type[ConfigT], *, ingest: bool = False) -> Callable[[ProcessorFn], ProcessorFn]:
    """Register a built-in: it never changes its input; with ``ingest``, ``fn(value, config, ingest)``."""

    def decorate(fn: ProcessorFn) -> ProcessorFn:
        PROCESSORS.register(name, config, fn, copy_input=False, takes_ingest=ingest)
        return fn

    return decorate


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _FieldConfig(_Config):
    field: str

    @field_validator("field")
    @classmethod
    def _field(cls, value: str) -> str:
        _paths.check_path(value)
        return value

    @cached_property
    def path(self) -> tuple[str, ...]:
        return _paths.split_path(self.field)


class _OptionalTarget(_FieldConfig):
    target_field: str | None = None
    ignore_missing: bool = False

    @cached_property
    def target(self) -> tuple[str, ...]:
        return _paths.check_path(self.target_field) if self.target_field else self.path


def _read(value: dict[str, Any], config: _FieldConfig, ignore_missing: bool, *, null_is_missing: bool = False) -> Any:
    """The field's value, or ``MISSING`` when it is absent (an error unless ``ignore_missing``). With
    ``null_is_missing`` a null counts as absent under ``ignore_missing``, as Elasticsearch's string and
    convert processors have it ("does not exist or is null")."""
    found = _paths.get(value, config.path)
    if found is None and null_is_missing and ignore_missing:
        return _paths.MISSING
    if found is _paths.MISSING and not ignore_missing:
        raise ProcessorError(f"field [{config.field}] not present")
    return found


# --- set, remove, rename, copy -----------------------------------------------------------------------------


class _TemplatedField(_Config):
    """A ``field`` that may be a template (``{{kind}}_count``), rendered per input into a field path."""

    field: str

    @field_validator("field")
    @classmethod
    def _field(cls, value: str) -> str:
        if is_template(value):
            Template(value)
        else:
            _paths.check_path(value)
        return value

    @cached_property
    def path(self) -> tuple[str, ...]:
        """The field path when ``field`` is not a template."""
        return _paths.split_path(self.field)

    @cached_property
    def _field_template(self) -> Template | tuple[str, ...]:
        return Template(self.field) if is_template(self.field) else _paths.split_path(self.field)

    def target(self, value: dict[str, Any], ingest: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The field path for this input."""
        field = self._field_template
        if not isinstance(field, Template):
            return field
        rendered = field.render(value, ingest)
        try:
            return _paths.check_path(rendered)
        except ValueError as exc:
            raise ProcessorError(f"field template [{self.field}] rendered {exc}") from None


class _TemplatedValue(_TemplatedField):
    value: Any

    @field_validator("value")
    @classmethod
    def _value(cls, value: Any) -> Any:
        compile_value(value)  # a template error is refused when the pipeline is stored
        return value

    @cached_property
    def _compiled(self) -> Any:
        return compile_value(self.value)

    @cached_property
    def templated(self) -> bool:
        return self._compiled is not self.value or is_template(self.field)

    def rendered(self, value: dict[str, Any], ingest: Mapping[str, Any] | None) -> Any:
        """The configured value for this input: templates rendered, containers fresh (never shared)."""
        compiled = self._compiled
        if compiled is self.value:
            new = self.value
            return copy.deepcopy(new) if isinstance(new, (dict, list)) else new
        return render_value(compiled, value, ingest)


class SetConfig(_TemplatedValue):
    override: bool = True


@_builtin("set", SetConfig, ingest=True)
def _set(value: dict[str, Any], config: SetConfig, ingest: Mapping[str, Any] | None) -> dict[str, Any]:
    if config.templated:
        path = config.target(value, ingest)
        new = config.rendered(value, ingest)
    else:  # the common case, kept as cheap as before templates
        path = config.path
        new = config.value
        if isinstance(new, (dict, list)):
            new = copy.deepcopy(new)
    if not config.override and _paths.get(value, path, None) is not None:
        return value
    return _set_path(value, path, new)


def _set_path(value: dict[str, Any], path: tuple[str, ...], new: Any) -> dict[str, Any]:
    try:
        return _paths.set_(value, path, new)
    except ValueError as exc:
        raise ProcessorError(str(exc)) from exc


class RemoveConfig(_Config):
    field: str | list[str] = Field(min_length=1)
    ignore_missing: bool = False

    @field_validator("field")
    @classmethod
    def _fields(cls, value: str | list[str]) -> str | list[str]:
        for item in [value] if isinstance(value, str) else value:
            _paths.check_path(item)
        return value


@_builtin("remove", RemoveConfig)
def _remove(value: dict[str, Any], config: RemoveConfig) -> dict[str, Any]:
    for field in [config.field] if isinstance(config.field, str) else config.field:
        path = _paths.split_path(field)
        if not _paths.has(value, path):
            if config.ignore_missing:
                continue
            raise ProcessorError(f"field [{field}] not present")
        value = _paths.remove(value, path)
    return value


class MoveConfig(_FieldConfig):
    target_field: str
    ignore_missing: bool = False
    override: bool = False

    @field_validator("target_field")
    @classmethod
    def _target(cls, value: str) -> str:
        _paths.check_path(value)
        return value


@_builtin("rename", MoveConfig)
def _rename(value: dict[str, Any], config: MoveConfig) -> dict[str, Any]:
    return _move(value, config, keep_source=False)


@_builtin("copy", MoveConfig)
def _copy(value: dict[str, Any], config: MoveConfig) -> dict[str, Any]:
    return _move(value, config, keep_source=True)


def _move(value: dict[str, Any], config: MoveConfig, *, keep_source: bool) -> dict[str, Any]:
    found = _read(value, config, config.ignore_missing)
    if found is _paths.MISSING:
        return value
    target = _paths.split_path(config.target_field)
    if not config.override and _paths.has(value, target):
        raise ProcessorError(f"field [{config.target_field}] already exists")
    if not keep_source:
        value = _paths.remove(value, config.path)
    return _set_path(value, target, copy.deepcopy(found) if keep_source else found)


# --- strings -------------------------------------------------------------------------------------------------


def _string_processor(name: str, op: Callable[[str], str]) -> None:
    def run(value: dict[str, Any], config: _OptionalTarget) -> dict[str, Any]:
        found = _read(value, config, config.ignore_missing, null_is_missing=True)
        if found is _paths.MISSING:
            return value
        if isinstance(found, str):
            return _set_path(value, config.target, op(found))
        if isinstance(found, list) and all(isinstance(x, str) for x in found):
            return _set_path(value, config.target, [op(x) for x in found])
        raise ProcessorError(f"field [{config.field}] is a {_kind(found)}, not a string")

    PROCESSORS.register(name, _OptionalTarget, run, copy_input=False)


_string_processor("lowercase", str.lower)
_string_processor("uppercase", str.upper)
_string_processor("trim", str.strip)


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


class SplitConfig(_OptionalTarget):
    separator: str = Field(min_length=1)
    preserve_trailing: bool = False

    @field_validator("separator")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"separator [{value}] is not a valid regular expression: {exc}") from exc
        return value


@_builtin("split", SplitConfig)
def _split(value: dict[str, Any], config: SplitConfig) -> dict[str, Any]:
    found = _read(value, config, config.ignore_missing)
    if found is _paths.MISSING:
        return value
    if not isinstance(found, str):
        raise ProcessorError(f"field [{config.field}] is a {_kind(found)}, not a string")
    parts = re.split(config.separator, found)
    if not config.preserve_trailing:
        while parts and parts[-1] == "":
            parts.pop()
    return _set_path(value, config.target, parts)


class JoinConfig(_OptionalTarget):
    separator: str


@_builtin("join", JoinConfig)
def _join(value: dict[str, Any], config: JoinConfig) -> dict[str, Any]:
    found = _read(value, config, config.ignore_missing)
    if found is _paths.MISSING:
        return value
    if not isinstance(found, list):
        raise ProcessorError(f"field [{config.field}] is a {_kind(found)}, not a list")
    return _set_path(value, config.target, config.separator.join(_text(x) for x in found))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return orjson.dumps(value).decode()  # true, false, null, integers, JSON for objects and lists


# --- convert -------------------------------------------------------------------------------------------------

_TYPE_ALIASES = {"integer": "int", "long": "int", "double": "float", "boolean": "bool"}


class ConvertConfig(_OptionalTarget):
    type: Literal["int", "float", "bool", "string", "integer", "long", "double", "boolean"]

    @property
    def canonical_type(self) -> str:
        return _TYPE_ALIASES.get(self.type, self.type)


def _convert_one(raw: Any, to: str, field: str) -> Any:
    try:
        if raw is None:
            raise ValueError
        if to == "string":
            return _text(raw)
        if to == "bool":
            if isinstance(raw, bool):
                return raw
            text = _text(raw).strip().lower()
            if text in ("true", "false"):
                return text == "true"
            raise ValueError
        if isinstance(raw, bool) or raw is None or isinstance(raw, (dict, list)):
            raise ValueError
        if to == "int":
            if isinstance(raw, float):
                if not raw.is_integer() or not -(2**63) <= raw < 2**63:
                    raise ValueError
                return int(raw)
            text = str(raw).strip()
            integer = int(text, 0) if text.lower().startswith("0x") else int(text)
            if not -(2**63) <= integer < 2**63:
                raise ValueError
            return integer
        number = float(raw)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError
        return number
    except ValueError:
        raise ProcessorError(f"field [{field}]: cannot convert {raw!r} to {to}") from None


@_builtin("convert", ConvertConfig)
def _convert(value: dict[str, Any], config: ConvertConfig) -> dict[str, Any]:
    found = _read(value, config, config.ignore_missing, null_is_missing=True)
    if found is _paths.MISSING:
        return value
    to = config.canonical_type
    if isinstance(found, list):
        converted: Any = [_convert_one(x, to, config.field) for x in found]
    else:
        converted = _convert_one(found, to, config.field)
    return _set_path(value, config.target, converted)


# --- append, drop, fail --------------------------------------------------------------------------------------


class AppendConfig(_TemplatedValue):
    allow_duplicates: bool = True


@_builtin("append", AppendConfig, ingest=True)
def _append(value: dict[str, Any], config: AppendConfig, ingest: Mapping[str, Any] | None) -> dict[str, Any]:
    path = config.target(value, ingest)
    found = _paths.get(value, path)
    current: list[Any]
    if found is _paths.MISSING or found is None:
        current = []
    elif isinstance(found, list):
        current = list(found)
    else:
        current = [found]
    new = config.rendered(value, ingest)
    for item in new if isinstance(new, list) else [new]:
        if config.allow_duplicates or item not in current:
            current.append(item)
    return _set_path(value, path, current)


class DropConfig(_Config):
    field: str | None = None
    value: Any = None

    @field_validator("field")
    @classmethod
    def _field(cls, value: str | None) -> str | None:
        if value is not None:
            _paths.check_path(value)
        return value


@_builtin("drop", DropConfig)
def _drop(value: dict[str, Any], config: DropConfig) -> dict[str, Any] | Drop:
    if config.field is None:
        return DROP
    found = _paths.get(value, _paths.split_path(config.field))
    return DROP if found is not _paths.MISSING and found == config.value else value


class FailConfig(_Config):
    message: str = Field(min_length=1)

    @field_validator("message")
    @classmethod
    def _message(cls, value: str) -> str:
        compile_value(value)
        return value

    @cached_property
    def _template(self) -> Template | str:
        compiled: Template | str = compile_value(self.message)
        return compiled

    @cached_property
    def templated(self) -> bool:
        return isinstance(self._template, Template)


@_builtin("fail", FailConfig, ingest=True)
def _fail(value: dict[str, Any], config: FailConfig, ingest: Mapping[str, Any] | None) -> dict[str, Any]:
    message = config._template
    raise ProcessorError(message.render(value, ingest) if isinstance(message, Template) else message)
