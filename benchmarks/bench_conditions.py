"""Cost of one condition evaluation (issue 13): ``common-expression-language`` (compiled Rust bindings, the one
the package uses) against ``cel-python`` (pure Python), for the two-clause condition of the issue, in the same
run; the same condition in a form only CEL evaluates (the package compiles a conjunction of comparisons with
literals to Python too); and a plain Python lambda doing the same comparisons, to read the figures on a loaded
machine.

Run: ``pytest -n 0 benchmarks/bench_conditions.py --benchmark-only`` (target: < 2 us per evaluation for
:class:`~quidditch_pipeline.conditions.Condition` on an idle machine of this class).
"""

from __future__ import annotations

from typing import Any

import celpy
import pytest

from quidditch_pipeline.conditions import Condition

EXPRESSION = "ctx.category == 'spam' && ctx.price > 10"
DOC = {"category": "spam", "price": 12.5, "title": "Red Running Shoes", "tags": ["sport", "shoes"], "brand": "acme"}


def test_condition_common_expression_language(benchmark: Any) -> None:
    condition = Condition(EXPRESSION)
    variables = {"ctx": DOC, "params": {}}
    assert benchmark(condition.evaluate, variables) is True


def test_condition_through_cel_only(benchmark: Any) -> None:
    """The same condition parenthesised, a form the Python path of conjunctions does not take: what every
    evaluation cost before it (member paths bound as variables, then CEL), measured in the same run."""
    condition = Condition(f"({EXPRESSION})")
    assert benchmark(condition.evaluate, {"ctx": DOC, "params": {}}) is True


def test_condition_cel_python(benchmark: Any) -> None:
    env = celpy.Environment()
    program = env.program(env.compile(EXPRESSION))

    def evaluate() -> Any:
        return program.evaluate({"ctx": celpy.json_to_cel(DOC)})

    assert bool(benchmark(evaluate)) is True


def test_python_lambda_baseline(benchmark: Any) -> None:
    def evaluate() -> bool:
        ctx = DOC
        return ctx["category"] == "spam" and ctx["price"] > 10

    assert benchmark(evaluate) is True


@pytest.mark.parametrize("keys", [5, 50])
def test_condition_cost_does_not_grow_with_the_document(benchmark: Any, keys: int) -> None:
    """Only the member paths the expression reads are handed to CEL: a bigger document costs the same."""
    condition = Condition(EXPRESSION)
    doc = {**DOC, **{f"extra{i}": f"value {i}" for i in range(keys)}}
    assert benchmark(condition.evaluate, {"ctx": doc, "params": {}}) is True
