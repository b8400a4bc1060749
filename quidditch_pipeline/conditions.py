"""Stage conditions (``if``): CEL expressions compiled once per build, evaluated per input.

A condition sees four variables: ``ctx`` (the value the stage would get: the document source, the search body,
one hit for a hit-scoped stage, the whole result for a response-scoped one), ``meta`` (``index``, ``id``,
``pipeline``, ``stage``, ``type``, ``tag``), ``params`` (the pipeline's parameters, merged as the stage sees
them) and ``_ingest`` (``timestamp``, and inside failure handlers ``on_failure_message``, ``on_failure_stage``,
``on_failure_stage_type``, ``on_failure_pipeline``, ``on_failure_tag``).

The library is ``common-expression-language`` (Rust ``cel`` bindings): measured against ``cel-python`` in the
same run it was ~40x faster per evaluation (see ``benchmarks/bench_conditions.py``). Its cost is dominated by
converting Python values into CEL values (a map costs several times a scalar), so only what an expression reads
is handed over: when every use of a variable is a member path (``ctx.category``), each path is bound as a
variable of its own (the expression is compiled with ``ctx.category`` renamed, outside string literals); when
``has()`` is used, the variable is handed over projected onto those paths; otherwise whole. Either way the
value a condition reads is never copied whole nor changed, and a missing key is an error as it would be.

Even bound as scalars, each variable costs about a microsecond to convert, a two-clause condition ~2 µs of
the ~3.5 µs it cost. So the commonest shape, a conjunction of member paths compared with literals
(``ctx.category == 'spam' && ctx.price > 10``), is also compiled to Python (:class:`_Conjunction`), which
answers only where it is sure to answer what CEL would: values of the literal's kind (a number with a number,
exactly representable; a string with a string; ``==``/``!=`` for booleans and ``null``). Anything else (a
missing key, another type, a NaN, a big integer) goes to CEL, so errors and heterogeneous comparisons are
CEL's own. A property test holds the two to the same answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["VARIABLES", "Condition"]

#: The variables a condition may name.
VARIABLES = ("ctx", "meta", "params", "_ingest")

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# A use of a variable: its name, then a chain of ``.member`` selections, then what follows (``(`` marks the last
# member as a method call: ``ctx.tags.size()`` reads ``tags``).
_USE = {name: re.compile(rf"(?<![\w.]){name}((?:\s*\.\s*{_IDENT})*)(\s*\()?") for name in VARIABLES}
_SEGMENT = re.compile(_IDENT)
# CEL string and bytes literals (raw or not, single or triple quoted): never rewritten.
_LITERAL = re.compile(
    r'[rRbB]{0,2}(?:"""(?:\\.|[^\\])*?"""|'
    + r"'''(?:\\.|[^\\])*?'''|"
    + r'"(?:\\.|[^"\\\n])*"|'
    + r"'(?:\\.|[^'\\\n])*')",
    re.S,
)
# Iteration variables of the comprehension macros (``ctx.tags.exists(t, t == 'a')``) are not free variables.
_MACRO_VAR = re.compile(rf"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*({_IDENT})\s*,")
_MISSING: Any = object()

#: What a variable is handed to CEL as: a function of the whole value (the value itself, or a projection).
_Shaper = Callable[[Any], Any]


class Condition:
    """A compiled ``if`` expression. ``ValueError`` (with the library's message) when it does not compile."""

    __slots__ = ("_fast", "_flat", "_names", "_program", "_shapers", "needs_ingest", "needs_meta", "source")

    def __init__(self, source: str) -> None:
        if not source.strip():
            raise ValueError("an empty condition")
        import cel  # here, not at the top: the package's __init__ also imports its REPL (typer, prompt_toolkit,
        # pygments), ~0.2 s of every process's start-up, and a server or worker may compile no condition at all

        try:
            self._program = cel.compile(source)
        except Exception as exc:  # the bindings raise ValueError for syntax errors; anything else alike
            raise ValueError(str(exc).split("\n|", 1)[0].strip()) from None
        macro_vars = set(_MACRO_VAR.findall(source))
        names = [name for name in self._program.variables() if name not in macro_vars]
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
        #: ``(bound name, variable, member path)`` of each member path bound on its own, or ``None``.
        self._flat: tuple[tuple[str, str, tuple[str, ...]], ...] | None = None
        self._names: dict[str, str] = {}  # bound name -> the dotted path it stands for (error messages)
        #: The Python form of a conjunction of comparisons with literals, or ``None``.
        fast = _Conjunction.parse(source)
        self._fast = None if fast is None else fast.evaluate
        planned = _flatten(source, names, macro_vars)
        if planned is not None:
            self._program, self._flat = planned
            self._names = {bound: ".".join((var, *path)) for bound, var, path in self._flat}
            self._shapers = tuple((name, shape) for name, shape in self._shapers if shape is None)

    def evaluate(self, variables: Mapping[str, Any]) -> bool:
        """Whether the stage runs for these ``variables`` (``ctx``, and ``meta``/``params``/``_ingest`` when
        named); raises ``ValueError`` when the expression fails (a missing key, a type mismatch) or is not a
        boolean."""
        fast = self._fast
        if fast is not None:
            answer = fast(variables)
            if answer is not None:
                return answer
        shapers = self._shapers
        activation = (
            {name: variables[name] if shape is None else shape(variables[name]) for name, shape in shapers}
            if shapers
            else {}
        )
        if self._flat is not None:
            for bound, var, path in self._flat:
                node = variables[var]
                for key in path:
                    node = node.get(key, _MISSING) if isinstance(node, dict) else _MISSING
                    if node is _MISSING:
                        break
                else:
                    activation[bound] = node  # left out when absent: CEL fails on it, as on a missing key
        try:
            result = self._program.execute(activation)
        except Exception as exc:  # KeyError for a missing key, TypeError for no overload, ValueError, …
            raise ValueError(f"condition [{self.source}] failed: {self._describe(exc)}") from None
        if result is True or result is False:
            return result
        raise ValueError(f"condition [{self.source}] returned {type(result).__name__}, not a boolean")

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, KeyError):
            return f"no such key {exc}"
        message = str(exc) or type(exc).__name__
        for bound, path in self._names.items():
            if f"'{bound}'" in message:
                return f"no such key [{path}]"
        return message

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def _flatten(
    source: str, names: list[str], macro_vars: set[str]
) -> tuple[Any, tuple[tuple[str, str, tuple[str, ...]], ...]] | None:
    """``source`` compiled with each member path of the variables used only as member paths renamed to a
    variable of its own (``ctx.price`` -> ``_q0``), and those paths; ``None`` when that does not apply
    (``has()`` tests a member's presence, or the result does not name exactly the expected variables)."""
    parts: list[tuple[bool, str]] = []  # (is a literal, text)
    at = 0
    for match in _LITERAL.finditer(source):
        parts.append((False, source[at : match.start()]))
        parts.append((True, match.group(0)))
        at = match.end()
    parts.append((False, source[at:]))
    code = " ".join(text for literal, text in parts if not literal)
    if re.search(r"\bhas\s*\(", code):
        return None
    flat = [name for name in names if _shaper(code, name) is not None]
    if not flat:
        return None
    bound: dict[tuple[str, tuple[str, ...]], str] = {}

    def rename(match: re.Match[str], var: str) -> str:
        chain = tuple(_SEGMENT.findall(match.group(1)))
        call = ""
        if match.group(2):  # ``ctx.tags.size(``: bind ``ctx.tags``, keep ``.size(``
            chain, call = chain[:-1], f".{chain[-1]}("
        return bound.setdefault((var, chain), f"_q{len(bound)}") + call

    rewritten = []
    for literal, text in parts:
        if not literal:
            for var in flat:
                text = _USE[var].sub(lambda m, v=var: rename(m, v), text)  # type: ignore[misc]
        rewritten.append(text)
    import cel  # see Condition.__init__

    try:
        program = cel.compile("".join(rewritten))
    except Exception:
        return None
    expected = set(bound.values()) | {name for name in names if name not in flat}
    if set(program.variables()) - macro_vars != expected:
        return None
    return program, tuple((name, var, chain) for (var, chain), name in bound.items())


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


# A comparison of a member path with a literal, then ``&&`` or the end: the clauses of a :class:`_Conjunction`.
# Literals are kept to those Python reads exactly as CEL does: quoted strings without escapes, decimal ints
# without leading zeros, decimals with digits on both sides of the point, true, false, null.
_CLAUSE = re.compile(
    rf"\s*(?P<var>{'|'.join(VARIABLES)})(?P<path>(?:\s*\.\s*{_IDENT})+)\s*(?P<op>==|!=|<=|>=|<|>)\s*"
    r"(?P<lit>'[^'\\\n]*'|\"[^\"\\\n]*\"|-?(?:0|[1-9][0-9]*)\.[0-9]+|-?(?:0|[1-9][0-9]*)|true|false|null)"
    r"\s*(?:(?P<and>&&)|\Z)"
)
_OPS: Final = frozenset({"==", "!=", "<", "<=", ">", ">="})
_I64: Final = 1 << 63
_EXACT: Final = 1 << 53  # integers up to this magnitude are exact as doubles: CEL's int/double comparison too


class _Conjunction:
    """``path op literal && …`` as one Python function; :meth:`evaluate` answers ``None`` where CEL must.

    The function is generated (as ``dataclasses`` generates ``__init__``) so that a clause costs a few
    bytecodes instead of calls: the member names in its source are identifiers (checked by ``_CLAUSE``) and
    the literals are passed in as values, never written into it."""

    __slots__ = ("evaluate", "source")

    def __init__(self, source: str, evaluate: Callable[[Mapping[str, Any]], bool | None]) -> None:
        self.source = source
        #: False when a clause is false (CEL's ``&&`` is false when either side is, even when the other
        #: fails); True when every clause is true; None when a clause needs CEL and none was false, or when a
        #: value may fail CEL's conversion (which fails the condition before any clause is evaluated).
        self.evaluate = evaluate

    @classmethod
    def parse(cls, source: str) -> _Conjunction | None:
        lines = ["def evaluate(variables):", "    answer = True"]
        namespace: dict[str, Any] = {"_M": _MISSING, "_I64": _I64, "_EXACT": _EXACT}
        namespace.update(_convertible=_convertible, _utf8=_utf8)
        at = 0
        more = True  # a clause must come next: at the start, and after each ``&&``
        while more:
            match = _CLAUSE.match(source, at)
            if match is None:
                return None
            literal = f"_L{len(namespace)}"
            known = _known(match["op"], match["lit"], literal, namespace)
            if known is None:
                return None
            lines.append(f"    node = variables.get({match['var']!r}, _M)")
            for key in _SEGMENT.findall(match["path"]):
                lines.append(f"    node = node.get({key!r}, _M) if type(node) is dict else _M")
            lines += [
                "    if node is _M:",
                "        if answer is True:",
                "            answer = None",
                "    else:",
                "        kind = type(node)",
                f"        if {known}:",
                f"            if not (node {match['op']} {literal}):",
                "                answer = False",
                "        elif not _convertible(node):",
                "            return None",
                "        elif answer is True:",
                "            answer = None",
            ]
            at, more = match.end(), match["and"] is not None
        lines.append("    return answer")
        exec("\n".join(lines), namespace)  # generated from checked identifiers; literals are values
        return cls(source, namespace["evaluate"])


def _known(op: str, text: str, name: str, namespace: dict[str, Any]) -> str | None:
    """The test (Python source over ``node`` and ``kind``) for values that ``node op literal`` compares as CEL
    does; the literal is put in ``namespace`` as ``name``. ``None``: not a clause Python can judge."""
    if op not in _OPS:
        return None
    if text[0] in "'\"":
        namespace[name] = text[1:-1]
        return "kind is str and (node.isascii() or _utf8(node))"
    if text in ("true", "false", "null"):
        if op not in ("==", "!="):
            return None
        namespace[name] = {"true": True, "false": False, "null": None}[text]
        return "node is None" if text == "null" else "kind is bool"
    if "." in text:
        namespace[name] = float(text)
        return "(kind is float and node == node) or (kind is int and -_EXACT <= node <= _EXACT)"  # NaN: CEL's
    integer = namespace[name] = int(text)
    if not -_I64 <= integer < _I64:
        return None
    test = "(kind is int and -_I64 <= node < _I64)"
    return test + " or (kind is float and node == node)" if -_EXACT <= integer <= _EXACT else test


def _convertible(value: Any) -> bool:
    """Whether CEL surely takes ``value`` (a scalar it can convert; a container is not looked into)."""
    kind = type(value)
    return value is None or kind is bool or kind is int or kind is float or (kind is str and _utf8(value))


def _utf8(value: str) -> bool:
    """Whether CEL can take ``value`` (a lone surrogate cannot be UTF-8)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
