"""Every example UDF in ``udfs/``, built and run through the runtime on sample inputs.

These check the raw value each UDF returns; what the executor makes of it (merge, drop, re-sort) is the
executor's tests' business. They run in source mode (no build per example); the two examples the benchmarks'
smoke tests build as components anyway run as those components too.
"""

from __future__ import annotations

from typing import Any

import pytest

from quidditch_pipeline.udf import UdfItemResult, UdfRuntime, check_source

from .udf_fixtures import EXAMPLES_DIR, UdfBuilds, UdfSources, line_of

EXAMPLES = sorted(path.stem for path in EXAMPLES_DIR.glob("*.py"))


@pytest.fixture
def examples(udf_sources: UdfSources) -> UdfSources:
    return udf_sources


@pytest.fixture(params=["component", "source"])
def both_modes(request: pytest.FixtureRequest) -> UdfBuilds | UdfSources:
    fixture = "udf_builds" if request.param == "component" else "udf_sources"
    udfs: UdfBuilds | UdfSources = request.getfixturevalue(fixture)
    return udfs


def run(
    builds: UdfBuilds | UdfSources,
    runtime: UdfRuntime,
    name: str,
    values: list[Any],
    params: dict[str, Any] | None = None,
) -> list[UdfItemResult]:
    udf = builds.get(name)
    metas = [{"id": f"doc-{i}", "index": "products", "pipeline": "p", "stage": name} for i in range(len(values))]
    return runtime.call_batch(udf.sha256, udf.path, values, params or {}, metas, timeout_s=10)


def values(results: list[UdfItemResult]) -> list[Any]:
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return [r.value for r in results]


def test_the_examples_are_the_ones_documented() -> None:
    assert EXAMPLES == [
        "price_band",
        "query_synonyms",
        "recency_boost",
        "spam_filter",
        "strict_parser",
        "title_normalizer",
    ]
    readme = (EXAMPLES_DIR / "README.md").read_text()
    for name in EXAMPLES:
        assert f"{name}.py" in readme
        check_source((EXAMPLES_DIR / f"{name}.py").read_text(), filename=f"{name}.py")


def test_recency_boost(both_modes: UdfBuilds | UdfSources, udf_runtime: UdfRuntime) -> None:
    hits = [
        {"_id": "new", "_score": 1.5, "_source": {"age_days": 3}},
        {"_id": "old", "_score": 2.0, "_source": {"age_days": 90}},
        {"_id": "dated", "_score": 1.0, "_source": {"published": "2024-05-30T10:00:00Z"}},
        {"_id": "ageless", "_score": 4.0, "_source": {}},
    ]
    params = {"days": 30, "boost": 3.0, "decay": 0.25, "now": "2024-06-01"}
    assert values(run(both_modes, udf_runtime, "recency_boost", hits, params)) == [4.5, 1.0, 3.0, None]


def test_recency_boost_defaults_to_today(examples: UdfSources, udf_runtime: UdfRuntime) -> None:
    hit = {"_id": "a", "_score": 1.0, "_source": {"published": "1999-01-01"}}
    assert values(run(examples, udf_runtime, "recency_boost", [hit])) == [1.0]


def test_spam_filter(examples: UdfSources, udf_runtime: UdfRuntime) -> None:
    docs = [
        {"title": "Stainless steel kettle", "body": "Boils 1.7 litres in three minutes."},
        {"title": "Kettle", "body": "BUY NOW while stocks last"},
        {"title": "Links", "body": "http://a.example https://b.example http://c.example http://d.example"},
        {"title": "AMAZING DEAL ON KETTLES TODAY", "body": "ONLY THE BEST"},
        {"title": "custom phrase inside", "body": ""},
    ]
    assert values(run(examples, udf_runtime, "spam_filter", docs)) == [True, False, False, False, True]
    custom = run(examples, udf_runtime, "spam_filter", docs[4:], {"banned": ["custom phrase"]})
    assert values(custom) == [False]


def test_title_normalizer(examples: UdfSources, udf_runtime: UdfRuntime) -> None:
    docs = [
        {"title": "  the  LORD of the   rings "},
        {"title": "ﬁne usb cable for an iphone", "sku": 1},
        {"name": "no title"},
    ]
    params = {"keep": ["USB", "iPhone"], "keep_original": True}
    assert values(run(examples, udf_runtime, "title_normalizer", docs, params)) == [
        {"title": "The Lord of the Rings", "title_raw": "  the  LORD of the   rings "},
        {"title": "Fine USB Cable for an iPhone", "title_raw": "ﬁne usb cable for an iphone"},
        None,
    ]


def test_query_synonyms(both_modes: UdfBuilds | UdfSources, udf_runtime: UdfRuntime) -> None:
    params = {"synonyms": {"laptop": ["notebook"], "cheap": ["budget", "affordable"]}}
    bodies = [
        {"query": {"match": {"title": "cheap laptop"}}, "size": 5},
        {"query": {"bool": {"must": [{"match": {"title": {"query": "laptop", "boost": 2}}}, {"term": {"x": 1}}]}}},
        {"query": {"match": {"title": "kettle"}}},
        {"query": {"match_all": {}}},
    ]
    assert values(run(both_modes, udf_runtime, "query_synonyms", bodies, params)) == [
        {"query": {"match": {"title": {"query": "cheap laptop budget affordable notebook", "operator": "or"}}}},
        {
            "query": {
                "bool": {
                    "must": [
                        {"match": {"title": {"query": "laptop notebook", "boost": 2, "operator": "or"}}},
                        {"term": {"x": 1}},
                    ]
                }
            }
        },
        None,
        None,
    ]


def test_price_band(examples: UdfSources, udf_runtime: UdfRuntime) -> None:
    docs = [{"price": 9.99}, {"price": 120}, {"price": 1500}, {"price": "12"}, {}, {"price": True}]
    assert values(run(examples, udf_runtime, "price_band", docs)) == [
        {"price_band": "budget"},
        {"price_band": "mid"},
        {"price_band": "premium"},
        None,
        None,
        None,
    ]
    tight = run(examples, udf_runtime, "price_band", [{"price": 120}], {"budget_below": 200, "premium_from": 1000})
    assert values(tight) == [{"price_band": "budget"}]


def test_strict_parser_raises_on_malformed_documents(examples: UdfSources, udf_runtime: UdfRuntime) -> None:
    docs = [
        {"title": "Kettle", "price": 25},
        {"title": "  Kettle  ", "price": 25.5},
        {"title": "Kettle"},
        {"title": "Kettle", "price": "25"},
        {"title": "Kettle", "price": True},
    ]
    results = run(examples, udf_runtime, "strict_parser", docs)
    assert [r.value for r in results[:2]] == [None, {"title": "Kettle"}]
    source = (EXAMPLES_DIR / "strict_parser.py").read_text()
    errors = [r.error for r in results[2:]]
    assert [(e.type, e.message) for e in errors if e] == [
        ("ValueError", "document doc-2: missing field 'price'"),
        ("ValueError", "document doc-3: field 'price' must be number, not str"),
        ("ValueError", "document doc-4: field 'price' must be number, not bool"),
    ]
    assert errors[0] is not None and errors[0].line == line_of(source, "missing field")


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_survives_an_empty_document(examples: UdfSources, udf_runtime: UdfRuntime, name: str) -> None:
    [result] = run(examples, udf_runtime, name, [{}])
    assert result.ok or (name == "strict_parser" and result.error is not None and result.error.type == "ValueError")
