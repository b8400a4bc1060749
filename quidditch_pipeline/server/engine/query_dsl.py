"""The Elasticsearch query DSL translated into tantivy queries, and the checks of a search body.

``QueryBuilder(index, schema).build(clause, "query")`` answers a ``tantivy.Query``; every refusal is a
``DefinitionError`` whose path names the clause (``query.bool.must[1].match.title``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import tantivy

from ...errors import DefinitionError

__all__ = ["QueryBuilder", "non_negative_int", "refuse_unknown_keys", "search_error", "total"]


def search_error(path: str, message: str) -> DefinitionError:
    return DefinitionError([(path, message)], subject="search request")


def total(result: tantivy.SearchResult) -> int:
    # tantivy's type stubs lack ``count``, which ``search(count=True)`` fills in.
    return int(result.count)  # type: ignore[attr-defined]


def refuse_unknown_keys(body: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise search_error(unknown[0], f"unknown key; supported: {', '.join(sorted(known))}")


def non_negative_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise search_error(path, f"must be a non-negative integer, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------- queries

# tantivy's default tokenizer, which the ``_source`` and ``_all`` fields use: match text is analysed alike.
_ANALYZER: Final = (
    tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
    .filter(tantivy.Filter.remove_long(40))
    .filter(tantivy.Filter.lowercase())
    .build()
)
_NUMBER: Final = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
# A field name written before ':' in a query string (not inside quotes: those are split off first).
_QS_FIELD: Final = re.compile(r'(^|[\s(+\-!])([^\s:"()\[\]{}+\-!\\^~*?][^\s:"()\[\]{}\\^~*?]*):([\[{<>]?)')
_QS_QUOTED: Final = re.compile(r'"(?:[^"\\]|\\.)*"')


class QueryBuilder:
    """Translates the Elasticsearch query DSL into tantivy queries. ``path`` names the clause in errors."""

    def __init__(self, index: tantivy.Index, schema: tantivy.Schema) -> None:
        self._index = index
        self._schema = schema

    def build(self, clause: Any, path: str) -> tantivy.Query:
        if not isinstance(clause, Mapping) or len(clause) != 1:
            raise search_error(path, "a query is an object with exactly one key, its type")
        ((kind, spec),) = clause.items()
        method = getattr(self, f"_q_{kind}", None)
        if method is None:
            raise search_error(path, f"unknown query [{kind}]; supported: {', '.join(sorted(_QUERY_TYPES))}")
        query: tantivy.Query = method(spec, f"{path}.{kind}")
        return query

    # -- fields

    @staticmethod
    def _field(name: Any, path: str) -> str:
        """The tantivy field (or JSON path) behind a document field name."""
        if not isinstance(name, str) or not name:
            raise search_error(path, "a field name must be a non-empty string")
        if name in {"_id", "_all"}:
            return name
        if name == "*":
            return "_all"
        if name.endswith(".keyword"):
            return f"_keyword.{name[: -len('.keyword')]}"
        return f"_source.{name}"

    @staticmethod
    def _single_field(spec: Any, path: str) -> tuple[str, Any, dict[str, Any]]:
        """``{field: value}`` or ``{field: {...options}}`` -> (field, value-or-options, extra top-level keys)."""
        if not isinstance(spec, Mapping):
            raise search_error(path, "must be an object naming one field")
        fields = {k: v for k, v in spec.items() if k not in {"boost", "_name"}}
        if len(fields) != 1:
            raise search_error(path, "must name exactly one field")
        ((name, value),) = fields.items()
        return name, value, {k: v for k, v in spec.items() if k not in fields}

    def _term(self, field: str, value: Any, path: str) -> tantivy.Query:
        if field == "_id" or field == "_all" or field.startswith("_keyword."):
            if not isinstance(value, str):
                raise search_error(path, f"[{field}] takes a string value")
        elif isinstance(value, (Mapping, list)) or value is None:
            raise search_error(path, "a term value is a string, number or boolean")
        if isinstance(value, float) and not math.isfinite(value):
            raise search_error(path, "a number must be finite")
        try:
            return tantivy.Query.term_query(self._schema, field, value)
        except ValueError as exc:
            raise search_error(path, str(exc)) from exc

    @staticmethod
    def _boosted(query: tantivy.Query, boost: Any, path: str) -> tantivy.Query:
        if boost is None:
            return query
        if isinstance(boost, bool) or not isinstance(boost, int | float) or not math.isfinite(boost) or boost < 0:
            raise search_error(f"{path}.boost", "must be a non-negative number")
        return tantivy.Query.boost_query(query, float(boost))

    # -- leaf queries

    def _q_match_all(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"boost"})
        return self._boosted(tantivy.Query.all_query(), options.get("boost"), path)

    def _q_match_none(self, spec: Any, path: str) -> tantivy.Query:
        _options(spec, path, set())
        return tantivy.Query.empty_query()

    def _analysed(self, field: str, text: Any, path: str) -> list[tantivy.Query]:
        """One term query per token of ``text`` (a number also matches numeric values)."""
        if isinstance(text, (bool, int | float)):
            return [self._term(field, text, path)]
        if not isinstance(text, str):
            raise search_error(path, "the query is a string, number or boolean")
        if field == "_id" or field.startswith("_keyword."):
            return [self._term(field, text, path)]
        queries = [self._term(field, token, path) for token in _ANALYZER.analyze(text)]
        if field != "_all" and _NUMBER.match(text.strip()):
            number = float(text)
            queries.append(self._term(field, int(number) if number.is_integer() else number, path))
        return queries

    def _q_match(self, spec: Any, path: str) -> tantivy.Query:
        name, value, extra = self._single_field(spec, path)
        options = (
            _options(value, f"{path}.{name}", {"query", "operator", "minimum_should_match", "boost"})
            if isinstance(value, Mapping)
            else {"query": value}
        )
        if "query" not in options:
            raise search_error(f"{path}.{name}.query", "is required")
        operator = str(options.get("operator", "or")).lower()
        if operator not in {"or", "and"}:
            raise search_error(f"{path}.{name}.operator", "must be 'or' or 'and'")
        terms = self._analysed(self._field(name, path), options["query"], f"{path}.{name}.query")
        query = self._combine(terms, operator, options.get("minimum_should_match"), f"{path}.{name}")
        return self._boosted(query, options.get("boost", extra.get("boost")), path)

    def _combine(self, terms: list[tantivy.Query], operator: str, minimum: Any, path: str) -> tantivy.Query:
        if not terms:
            return tantivy.Query.empty_query()
        if len(terms) == 1:
            return terms[0]
        occur = tantivy.Occur.Must if operator == "and" else tantivy.Occur.Should
        required = None if minimum is None else _minimum_should_match(minimum, len(terms), path)
        return tantivy.Query.boolean_query([(occur, t) for t in terms], required)

    def _q_match_phrase(self, spec: Any, path: str) -> tantivy.Query:
        name, value, extra = self._single_field(spec, path)
        options = (
            _options(value, f"{path}.{name}", {"query", "slop", "boost"})
            if isinstance(value, Mapping)
            else {"query": value}
        )
        text = options.get("query")
        if not isinstance(text, str):
            raise search_error(f"{path}.{name}.query", "must be a string")
        slop = options.get("slop", 0)
        if isinstance(slop, bool) or not isinstance(slop, int) or slop < 0:
            raise search_error(f"{path}.{name}.slop", "must be a non-negative integer")
        field = self._field(name, path)
        tokens: list[str | tuple[int, str]] = list(_ANALYZER.analyze(text))
        if not tokens:
            query = tantivy.Query.empty_query()
        elif len(tokens) == 1:
            query = self._term(field, tokens[0], path)
        else:
            try:
                query = tantivy.Query.phrase_query(self._schema, field, tokens, slop)
            except ValueError as exc:
                raise search_error(path, str(exc)) from exc
        return self._boosted(query, options.get("boost", extra.get("boost")), path)

    def _q_multi_match(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"query", "fields", "operator", "boost", "type"})
        fields = options.get("fields", ["*"])
        if not isinstance(fields, list) or not fields:
            raise search_error(f"{path}.fields", "must be a non-empty list of field names")
        if options.get("type", "best_fields") != "best_fields":
            raise search_error(f"{path}.type", "only best_fields is supported")
        per_field = [
            self._q_match({name: {k: v for k, v in options.items() if k in {"query", "operator"}}}, path)
            for name in fields
        ]
        query = per_field[0] if len(per_field) == 1 else tantivy.Query.disjunction_max_query(per_field)
        return self._boosted(query, options.get("boost"), path)

    def _q_term(self, spec: Any, path: str) -> tantivy.Query:
        name, value, extra = self._single_field(spec, path)
        if isinstance(value, Mapping):
            options = _options(value, f"{path}.{name}", {"value", "boost"})
            if "value" not in options:
                raise search_error(f"{path}.{name}.value", "is required")
            value, boost = options["value"], options.get("boost")
        else:
            boost = extra.get("boost")
        return self._boosted(self._term(self._field(name, path), value, f"{path}.{name}"), boost, path)

    def _q_terms(self, spec: Any, path: str) -> tantivy.Query:
        name, values, extra = self._single_field(spec, path)
        if not isinstance(values, list):
            raise search_error(f"{path}.{name}", "must be a list of values")
        field = self._field(name, path)
        terms = [self._term(field, value, f"{path}.{name}[{i}]") for i, value in enumerate(values)]
        # Elasticsearch scores a terms query as a filter: every match scores the boost.
        query = tantivy.Query.const_score_query(self._combine(terms, "or", None, path), 1.0)
        return self._boosted(query, extra.get("boost"), path)

    def _q_ids(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"values", "boost"})
        values = options.get("values")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise search_error(f"{path}.values", "must be a list of ids")
        query = tantivy.Query.term_set_query(self._schema, "_id", values)
        return self._boosted(tantivy.Query.const_score_query(query, 1.0), options.get("boost"), path)

    def _q_range(self, spec: Any, path: str) -> tantivy.Query:
        name, bounds, _extra = self._single_field(spec, path)
        options = _options(bounds, f"{path}.{name}", {"gt", "gte", "lt", "lte", "boost"})
        field = self._field(name, path)
        if not field.startswith("_source."):
            raise search_error(f"{path}.{name}", "range works on numeric document fields")
        field = _numbers_field(field)
        low, high = "*", "*"
        low_open, high_open = "[", "]"
        for key in ("gt", "gte", "lt", "lte"):
            if key not in options:
                continue
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise search_error(f"{path}.{name}.{key}", "must be a finite number")
            if key.startswith("g"):
                low, low_open = repr(value), "{" if key == "gt" else "["
            else:
                high, high_open = repr(value), "}" if key == "lt" else "]"
        if low == "*" and high == "*":
            raise search_error(f"{path}.{name}", "needs at least one of gt, gte, lt, lte")
        text = f"{_escape_field(field)}:{low_open}{low} TO {high}{high_open}"
        try:
            query = self._index.parse_query(text)
        except ValueError as exc:
            raise search_error(f"{path}.{name}", str(exc)) from exc
        return self._boosted(tantivy.Query.const_score_query(query, 1.0), options.get("boost"), path)

    def _q_exists(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"field", "boost"})
        name = options.get("field")
        if not isinstance(name, str) or not self._field(name, f"{path}.field").startswith("_source."):
            raise search_error(f"{path}.field", "exists works on document fields")
        query = tantivy.Query.term_query(self._schema, "_field_names", name)
        return self._boosted(tantivy.Query.const_score_query(query, 1.0), options.get("boost"), path)

    def _q_query_string(self, spec: Any, path: str) -> tantivy.Query:
        if isinstance(spec, str):
            spec = {"query": spec}
        options = _options(spec, path, {"query", "default_field", "fields", "default_operator", "boost"})
        text = options.get("query")
        if not isinstance(text, str):
            raise search_error(f"{path}.query", "must be a string")
        operator = str(options.get("default_operator", "or")).lower()
        if operator not in {"or", "and"}:
            raise search_error(f"{path}.default_operator", "must be 'OR' or 'AND'")
        fields = options.get("fields", [options.get("default_field", "*")])
        if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
            raise search_error(f"{path}.fields", "must be a non-empty list of field names")
        rewritten = _rewrite_query_string(text, lambda name: self._field(name, f"{path}.query"))
        if text.strip() and fields != ["*"] and fields != ["_all"]:
            # A bare term searches the named fields: ``title:(...)`` applies a field to a group.
            groups = [f"{_escape_field(self._field(f, f'{path}.fields'))}:({rewritten})" for f in fields]
            rewritten = " OR ".join(f"({group})" for group in groups)
        if not rewritten.strip():
            query = tantivy.Query.all_query()
        else:
            try:
                query = self._index.parse_query(
                    rewritten, ["_all", "_source"], conjunction_by_default=operator == "and"
                )
            except ValueError as exc:
                raise search_error(f"{path}.query", f"failed to parse query [{text}]: {exc}") from exc
        return self._boosted(query, options.get("boost"), path)

    # -- compound queries

    def _q_bool(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"must", "should", "filter", "must_not", "minimum_should_match", "boost"})
        clauses: list[tuple[tantivy.Occur, tantivy.Query]] = []
        positive = False
        counts = {}
        for key, occur in (
            ("must", tantivy.Occur.Must),
            ("filter", tantivy.Occur.Must),
            ("should", tantivy.Occur.Should),
            ("must_not", tantivy.Occur.MustNot),
        ):
            value = options.get(key, [])
            items = value if isinstance(value, list) else [value]
            counts[key] = len(items)
            for i, item in enumerate(items):
                query = self.build(item, f"{path}.{key}[{i}]" if isinstance(value, list) else f"{path}.{key}")
                if key == "filter":
                    # A filter decides whether a document matches, not how well.
                    query = tantivy.Query.const_score_query(query, 0.0)
                clauses.append((occur, query))
                positive = positive or key != "must_not"
        if not positive:
            # Like Elasticsearch: a bool with only must_not clauses (or none) matches everything else.
            clauses.append((tantivy.Occur.Must, tantivy.Query.all_query()))
        minimum = options.get("minimum_should_match")
        required = None
        if minimum is not None:
            required = _minimum_should_match(minimum, counts["should"], f"{path}.minimum_should_match")
        elif counts["should"] and not (counts["must"] or counts["filter"]):
            required = 1
        if required == 0 and counts["should"]:
            required = None
        try:
            query = tantivy.Query.boolean_query(clauses, required)
        except ValueError as exc:
            raise search_error(path, str(exc)) from exc
        return self._boosted(query, options.get("boost"), path)

    def _q_constant_score(self, spec: Any, path: str) -> tantivy.Query:
        options = _options(spec, path, {"filter", "boost"})
        if "filter" not in options:
            raise search_error(f"{path}.filter", "is required")
        boost = options.get("boost", 1.0)
        if isinstance(boost, bool) or not isinstance(boost, int | float) or not math.isfinite(boost):
            raise search_error(f"{path}.boost", "must be a number")
        return tantivy.Query.const_score_query(self.build(options["filter"], f"{path}.filter"), float(boost))


_QUERY_TYPES: Final = frozenset(name[len("_q_") :] for name in vars(QueryBuilder) if name.startswith("_q_"))


def _options(spec: Any, path: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise search_error(path, "must be an object")
    unknown = sorted(set(spec) - allowed - {"_name"})
    if unknown:
        raise search_error(f"{path}.{unknown[0]}", f"unknown option; supported: {', '.join(sorted(allowed))}")
    return dict(spec)


def _minimum_should_match(value: Any, clauses: int, path: str) -> int:
    """Elasticsearch's ``minimum_should_match``: an integer (negative: all but) or a percentage."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            raise search_error(path, f"cannot parse [{value}]") from None
        count = int(clauses * abs(percent) / 100)
        required = count if percent >= 0 else clauses - count
    else:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise search_error(path, f"cannot parse [{value}]") from None
        required = number if number >= 0 else clauses + number
    return max(0, min(required, clauses))


def _numbers_field(field: str) -> str:
    """The fast copy of a document field's numbers, which range queries run on."""
    return "_numbers." + field[len("_source.") :]


def _escape_field(field: str) -> str:
    """A field name as tantivy's query language writes it (its special characters escaped)."""
    return re.sub(r'([\s:"()\[\]{}^~*?\\+\-!])', r"\\\1", field)


def _rewrite_query_string(text: str, resolve: Callable[[str], str]) -> str:
    """Prefix each ``field:`` of a query string with its tantivy field, leaving quoted phrases alone."""

    def rewrite(match: re.Match[str]) -> str:
        field = resolve(match.group(2))
        if field.startswith("_source.") and match.group(3):
            # A range (``price:[1 TO 5]``, ``price:>3``) runs on the fast numeric copy.
            field = _numbers_field(field)
        return f"{match.group(1)}{_escape_field(field)}:{match.group(3)}"

    def fields(segment: str) -> str:
        return _QS_FIELD.sub(rewrite, segment)

    out, last = [], 0
    for quoted in _QS_QUOTED.finditer(text):
        out.append(fields(text[last : quoted.start()]))
        out.append(quoted.group(0))
        last = quoted.end()
    out.append(fields(text[last:]))
    return "".join(out)
