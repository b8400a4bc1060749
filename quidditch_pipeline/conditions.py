"""Stage conditions (``if``): CEL expressions compiled once per build, evaluated per input.

A condition sees four variables: ``ctx`` (the value the stage would get: the document source, the search body,
one hit for a hit-scoped stage, the whole result for a response-scoped one), ``meta`` (``index``, ``id``,
``pipeline``, ``stage``, ``type``, ``tag``), ``params`` (the pipeline's parameters, merged as the stage sees
them) and ``_ingest`` (``timestamp``, and inside failure handlers ``on_failure_message``, ``on_failure_stage``,
``on_failure_stage_type``, ``on_failure_pipeline``, ``on_failure_tag``).

The library is ``common-expression-language`` (Rust ``cel`` bindings): measured against ``cel-python`` in the
same run it was ~26-31x faster per evaluation (see ``benchmarks/bench_conditions.py``). Its cost is dominated by
converting Python values into CEL values, so only the variables an expression names are handed over, and of
``ctx``/``params``/``meta``/``_ingest`` only the member paths it reads (``ctx.category``, ``ctx.price``) when
every use of the variable is such a path: the value a condition reads is never copied whole nor changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import cel

__all__ = ["VARIABLES", "Condition"]

#: The variables a condition may name.
VARIABLES = ("ctx", "meta", "params", "_ingest")

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# A use of a variable: its name, then a chain of ``.member`` selections, then what follows (``(`` marks the last
# member as a method call: ``ctx.tags.size()`` reads ``tags``).
_USE = {name: re.compile(rf"(?<![\w.]){name}((?:\s*\.\s*{_IDENT})*)(\s*\()?") for name in VARIABLES}
_SEGMENT = re.compile(_IDENT)

#: What a variable is handed to CEL as: a function of the whole value (the value itself, or a projection).
_Shaper = Callable[[Any], Any]


class Condition:
    """A compiled ``if`` expression. ``ValueError`` (with the library's message) when it does not compile."""

    __slots__ = ("_program", "_shapers", "needs_ingest", "needs_meta", "source")

    def __init__(self, source: str) -> None:
        if not source.strip():
            raise ValueError("an empty condition")
        try:
            self._program = cel.compile(source)
        except Exception as exc:  # the bindings raise ValueError for syntax errors; anything else alike
            raise ValueError(str(exc).split("\n|", 1)[0].strip()) from None
        names = list(self._program.variables())
        unknown = [name for name in names if name not in VARIABLES]
        if unknown:
            raise ValueError(
                f"unknown variable [{', '.join(unknown)}]; a condition reads ctx, meta, params and _ingest"
            )
        self.source = source
        self._shapers: tuple[tuple[str, _Shaper | None], ...] = tuple(
            (name, _shaper(source, name)) for name in VARIABLES if name in names
        )
        self.needs_meta = "meta" in names
        self.needs_ingest = "_ingest" in names

    def evaluate(self, variables: Mapping[str, Any]) -> bool:
        """Whether the stage runs for these ``variables`` (``ctx``, and ``meta``/``params``/``_ingest`` when
        named); raises ``ValueError`` when the expression fails (a missing key, a type mismatch) or is not a
        boolean."""
        activation = {
            name: variables[name] if shape is None else shape(variables[name]) for name, shape in self._shapers
        }
        try:
            result = self._program.execute(activation)
        except Exception as exc:  # KeyError for a missing key, TypeError for no overload, ValueError, …
            raise ValueError(f"condition [{self.source}] failed: {_describe(exc)}") from None
        if result is True or result is False:
            return result
        raise ValueError(f"condition [{self.source}] returned {type(result).__name__}, not a boolean")

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no such key {exc}"
    return str(exc) or type(exc).__name__


def _shaper(source: str, name: str) -> _Shaper | None:
    """How to hand ``name`` to CEL: ``None`` for the whole value, else a projection onto the member paths the
    expression reads (every use of ``name`` being ``name.a.b``)."""
    paths: list[tuple[str, ...]] = []
    for match in _USE[name].finditer(source):
        chain = _SEGMENT.findall(match.group(1))
        if match.group(2) and chain:
            chain = chain[:-1]  # a method call on the member before it: ``ctx.tags.size()`` reads ``tags``
        rest = source[match.end(1) :].lstrip()
        if not chain or rest.startswith("["):
            return None  # the whole value (``ctx``, ``ctx[k]``, ``size(ctx)``): no projection
        paths.append(tuple(chain))
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if child is None:
                break
            node = child
        else:
            node[path[-1]] = None
    return lambda value: _project(value, tree)


def _project(value: Any, tree: dict[str, Any]) -> Any:
    """``value`` with only the keys in ``tree``; a value that is not an object is kept whole, so CEL reports
    exactly what it would have on the whole value."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, inner in tree.items():
        if key in value:
            out[key] = value[key] if inner is None else _project(value[key], inner)
    return out
