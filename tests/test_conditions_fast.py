"""The Python form of conditions that are conjunctions of comparisons with literals (``conditions._Conjunction``):
property tests hold it to CEL's own answers, clause by clause and whole, on values of every JSON kind."""

from __future__ import annotations

import copy
from typing import Any

import cel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quidditch_pipeline.conditions import Condition, _Conjunction

FIELDS = ("a", "b", "c")
OPS = ("==", "!=", "<", "<=", ">", ">=")
EDGES = [0, 1, -1, 10, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63), 2**63, 2**64 + 1]

int_literals = st.one_of(st.sampled_from(EDGES[:-2]), st.integers(-1000, 1000))
float_literals = st.builds(
    lambda whole, frac: f"{whole}.{frac}", st.integers(-(2**60), 2**60), st.sampled_from(["0", "5", "25", "001"])
)
string_literals = st.text(st.characters(exclude_characters="'\"\\\n", exclude_categories=["Cs"]), max_size=3)
literals = st.one_of(
    int_literals.map(str),
    float_literals,
    string_literals.map(lambda s: f"'{s}'"),
    string_literals.map(lambda s: f'"{s}"'),
    st.sampled_from(["true", "false", "null"]),
)


def _near(literal: str) -> st.SearchStrategy[Any]:
    """Values that compare interestingly with ``literal``: it, its neighbours, its other type."""
    if literal[0] in "'\"":
        text = literal[1:-1]
        return st.sampled_from([text, text + "a", text[:-1], "\ud800", text.upper()])
    if literal in ("true", "false", "null"):
        return st.sampled_from([True, False, None, 0, 1, "true"])
    number = float(literal) if "." in literal else int(literal)
    return st.sampled_from([number, float(number), int(float(number)), number + 1, number - 0.5, float("nan")])


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(EDGES),
    st.integers(),
    st.floats(),
    st.text(max_size=3),
    st.sampled_from(["é", "z"]),
)
# No lone surrogates here: CEL cannot convert them, and the whole document is converted for the reference run
# (a condition converts only the values it reads; ``_near`` puts surrogates there).
values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.sampled_from(FIELDS), inner))
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A conjunction of 1-3 comparisons and a document whose fields are near its literals (or anything)."""
    clauses = []
    doc: dict[str, Any] = {}
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2))
        literal = draw(literals)
        ops = OPS[:2] if literal in ("true", "false", "null") else OPS  # CEL orders booleans; not the fast path
        clauses.append(f"ctx.{'.'.join(path)} {draw(st.sampled_from(ops))} {literal}")
        if draw(st.booleans()):  # else the path may be missing, or hold whatever another clause put there
            node = doc
            for key in path[:-1]:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = node[key] = {}
                node = child
            node[path[-1]] = draw(st.one_of(_near(literal), values))
    extra = draw(st.dictionaries(st.sampled_from(FIELDS), values, max_size=2))
    return " && ".join(clauses), {**extra, **doc}


def cel_answer(source: str, doc: dict[str, Any]) -> bool | type[Exception]:
    try:
        program = cel.compile(source)
    except Exception:
        return ValueError
    try:
        result = program.execute({"ctx": doc})
    except Exception:
        return Exception
    assert result is True or result is False
    return bool(result)


@settings(max_examples=500, deadline=None)
@given(cases())
def test_the_python_form_answers_what_cel_answers(case: tuple[str, dict[str, Any]]) -> None:
    source, doc = case
    expected = cel_answer(source, doc)
    if expected is ValueError:  # not CEL (a literal CEL refuses, e.g. an int past int64): no condition at all
        with pytest.raises(ValueError):
            Condition(source)
        return
    fast = _Conjunction.parse(source)
    assert fast is not None, source
    before = copy.deepcopy(doc)
    verdict = fast.evaluate({"ctx": doc})
    if verdict is not None:
        assert verdict is expected, (source, doc)
    condition = Condition(source)
    if expected is Exception:
        with pytest.raises(ValueError):
            condition.evaluate({"ctx": doc, "params": {}})
    else:
        assert condition.evaluate({"ctx": doc, "params": {}}) is expected
    assert doc == before or doc != doc  # never changed (a NaN is unequal to itself)


@pytest.mark.parametrize(
    "source",
    [
        "ctx.category == 'spam' && ctx.price > 10",
        "ctx.a.b != null",
        "meta.index == 'products' && params.limit >= 2.5",
        "ctx.x < -3",
    ],
)
def test_conjunctions_of_comparisons_with_literals_take_the_python_form(source: str) -> None:
    assert _Conjunction.parse(source) is not None


@pytest.mark.parametrize(
    "source",
    [
        "ctx.a == 1 || ctx.b == 2",  # not a conjunction
        "(ctx.a == 1) && ctx.b == 2",  # parentheses
        "1 == ctx.a",  # the literal first
        "ctx.a == 'it\\'s'",  # an escape
        "ctx.a == 1e3",  # an exponent
        "ctx.a == 10u",  # an unsigned literal
        "ctx.a < true",  # booleans are only equal or not
        "ctx.a == ctx.b",  # no literal
        "ctx.tags.size() > 1",  # a call
        "ctx.a == 1 &&",  # not CEL at all
    ],
)
def test_anything_else_is_left_to_cel(source: str) -> None:
    assert _Conjunction.parse(source) is None


def test_a_clause_that_needs_cel_defers_unless_another_is_false() -> None:
    fast = _Conjunction.parse("ctx.price > 10 && ctx.category == 'spam'")
    assert fast is not None
    assert fast.evaluate({"ctx": {"price": 12, "category": "spam"}}) is True
    assert fast.evaluate({"ctx": {"category": "spam"}}) is None  # a missing key: CEL's error
    assert fast.evaluate({"ctx": {"price": "12", "category": "spam"}}) is None  # no such overload
    assert fast.evaluate({"ctx": {"price": "12", "category": "ham"}}) is False  # false && error is false
    assert fast.evaluate({"ctx": {"price": float("nan"), "category": "spam"}}) is None
