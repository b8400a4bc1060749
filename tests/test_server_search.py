"""The tantivy search backend on a temporary directory: indexes, settings, documents, refresh, the query
DSL, the translog across a crash, and concurrent writers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quidditch_pipeline.errors import DefinitionError, InputError, StorageError
from quidditch_pipeline.server.engine import (
    DeleteOp,
    DocumentExistsError,
    IndexExistsError,
    IndexNotFoundError,
    IndexOp,
    InvalidIndexNameError,
    TantivyBackend,
    nest_settings,
    normalize_settings,
    validate_index_name,
)

PRODUCTS: list[tuple[str, dict[str, Any]]] = [
    (
        "1",
        {
            "title": "Red Notebook",
            "price": 5,
            "status": "In Stock",
            "tags": ["paper", "office"],
            "brand": {"name": "Acme"},
        },
    ),
    ("2", {"title": "Blue pen", "price": 12.5, "status": "Sold Out", "tags": ["office"], "brand": {"name": "Bic"}}),
    ("3", {"title": "Notebook notebook notebook", "price": 7, "status": "In Stock", "on_sale": True}),
    ("4", {"title": "Laptop stand", "price": 45, "user-name": "bob", "body": "holds a laptop or a notebook"}),
]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[TantivyBackend]:
    with TantivyBackend(tmp_path) as backend:
        yield backend


@pytest.fixture
def products(backend: TantivyBackend) -> TantivyBackend:
    backend.create_index("products")
    backend.bulk("products", [IndexOp(doc_id, source) for doc_id, source in PRODUCTS], refresh=True)
    return backend


def ids(backend: TantivyBackend, query: dict[str, Any], **body: Any) -> list[str]:
    response = backend.search("products", {"query": query, **body})
    return [hit["_id"] for hit in response["hits"]["hits"]]


# --------------------------------------------------------------------------------------------- names, settings


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Products", "lowercase"),
        ("_hidden", "must not start"),
        ("-x", "must not start"),
        ("+x", "must not start"),
        (".", "must not be"),
        ("..", "must not be"),
        ("a/b", "characters"),
        ("a b", "characters"),
        ("a,b", "characters"),
        ("a:b", "characters"),
        ("a*", "characters"),
        ("a\x00b", "characters"),
        ("", "empty"),
        ("x" * 256, "too long"),
    ],
)
def test_invalid_index_names_are_refused_with_the_rule(name: str, why: str) -> None:
    with pytest.raises(InvalidIndexNameError, match=why) as info:
        validate_index_name(name)
    assert info.value.status == 400
    assert info.value.error_type == "invalid_index_name_exception"


@pytest.mark.parametrize("name", ["products", "logs-2024.01", ".hidden", "a_b", "ünïcode", "x" * 255])
def test_valid_index_names(name: str) -> None:
    validate_index_name(name)


def test_settings_nested_flat_and_wrapped_normalise_alike() -> None:
    nested = {"index": {"document": {"default_pipeline": "p"}, "query": {"default_pipeline": "q"}}}
    flat = {"index.document.default_pipeline": "p", "index.query.default_pipeline": "q"}
    expected = {"index.document.default_pipeline": "p", "index.query.default_pipeline": "q"}
    assert normalize_settings(nested) == expected
    assert normalize_settings(flat) == expected
    assert normalize_settings({"settings": nested}) == expected
    assert normalize_settings({"document.default_pipeline": "p", "query": {"default_pipeline": "q"}}) == expected
    assert normalize_settings({"index.result.default_pipeline": None}) == {"index.result.default_pipeline": None}
    assert nest_settings(expected) == nested


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"index.foo": 1}, r"unknown setting \[index.foo\]"),
        ({"index.document.default_pipeline": 3}, "pipeline name"),
        ({"index.number_of_shards": 2}, "must be 1"),
        ({"index.number_of_replicas": -1}, "non-negative"),
        ({"index.refresh_interval": "soon"}, "time value"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        normalize_settings(settings)


# --------------------------------------------------------------------------------------------- indexes


def test_create_list_get_delete_index(backend: TantivyBackend, tmp_path: Path) -> None:
    info = backend.create_index("products", {"index": {"document": {"default_pipeline": "enrich"}}})
    assert info.pipeline("document") == "enrich"
    assert info.pipeline("query") is None
    assert [i.name for i in backend.list_indexes()] == ["products"]
    assert (tmp_path / "indexes" / "products" / "settings.json").is_file()
    with pytest.raises(IndexExistsError) as exists:
        backend.create_index("products")
    assert exists.value.status == 400
    backend.delete_index("products")
    assert backend.list_indexes() == []
    assert not (tmp_path / "indexes" / "products").exists()
    with pytest.raises(IndexNotFoundError) as missing:
        backend.get_index("products")
    assert missing.value.status == 404
    assert missing.value.message == "no such index [products]"


def test_a_recreated_index_starts_empty(products: TantivyBackend) -> None:
    products.delete_index("products")
    products.create_index("products")
    assert products.count("products", {}) == 0
    assert products.get_doc("products", "1") is None


def test_settings_update_null_removes_and_survives_a_restart(tmp_path: Path) -> None:
    with TantivyBackend(tmp_path) as backend:
        backend.create_index("products", {"index.document.default_pipeline": "a", "index.query.default_pipeline": "q"})
        backend.update_settings("products", normalize_settings({"index": {"document": {"default_pipeline": "b"}}}))
        backend.update_settings("products", normalize_settings({"index.query.default_pipeline": None}))
        with pytest.raises(InputError, match="not updateable"):
            backend.update_settings("products", {"index.number_of_shards": "1"})
    with TantivyBackend(tmp_path) as backend:
        assert backend.get_index("products").settings == {"index.document.default_pipeline": "b"}


def test_operations_on_a_missing_index_raise_not_found(backend: TantivyBackend) -> None:
    for call in (
        lambda: backend.bulk("nope", [IndexOp("1", {})]),
        lambda: backend.get_doc("nope", "1"),
        lambda: backend.search("nope", {}),
        lambda: backend.count("nope", {}),
        lambda: backend.delete_index("nope"),
        lambda: backend.refresh("nope"),
    ):
        with pytest.raises(IndexNotFoundError):
            call()


# --------------------------------------------------------------------------------------------- documents


def test_versions_results_and_real_time_get(backend: TantivyBackend) -> None:
    backend.create_index("products", {"index.refresh_interval": "-1"})
    first = backend.index_doc("products", "1", {"title": "one"})
    assert (first.result, first.version, first.status) == ("created", 1, 201)
    second = backend.index_doc("products", "1", {"title": "uno"})
    assert (second.result, second.version, second.status) == ("updated", 2, 200)
    # Real-time: the get sees the write, the search does not until a refresh.
    doc = backend.get_doc("products", "1")
    assert doc is not None
    assert (doc.version, doc.source) == (2, {"title": "uno"})
    assert backend.search("products", {})["hits"]["total"]["value"] == 0
    backend.refresh("products")
    assert backend.search("products", {})["hits"]["hits"][0]["_source"] == {"title": "uno"}
    third = backend.index_doc("products", "1", {"title": "eins"})
    assert third.version == 3
    deleted = backend.delete_doc("products", "1")
    assert (deleted.result, deleted.status) == ("deleted", 200)
    assert backend.get_doc("products", "1") is None
    assert backend.delete_doc("products", "1").result == "not_found"
    backend.refresh("products")
    assert backend.count("products", {}) == 0


def test_create_refuses_an_existing_id(backend: TantivyBackend) -> None:
    backend.create_index("products")
    backend.index_doc("products", "1", {"a": 1}, create=True)
    with pytest.raises(DocumentExistsError) as info:
        backend.index_doc("products", "1", {"a": 2}, create=True)
    assert info.value.status == 409
    assert info.value.error_type == "version_conflict_engine_exception"
    backend.refresh("products")
    with pytest.raises(DocumentExistsError):
        backend.index_doc("products", "1", {"a": 3}, create=True)


def test_bulk_applies_in_order_with_one_result_per_op(backend: TantivyBackend) -> None:
    backend.create_index("products")
    results = backend.bulk(
        "products",
        [
            IndexOp("a", {"n": 1}),
            IndexOp("a", {"n": 2}),
            DeleteOp("a"),
            IndexOp("b", {"n": 3}, create=True),
            IndexOp("b", {"n": 4}, create=True),
            IndexOp("", {"n": 5}),
            IndexOp("x" * 513, {"n": 6}),
            DeleteOp("never"),
        ],
        refresh=True,
    )
    kinds = [r.result if not isinstance(r, Exception) else type(r).__name__ for r in results]
    assert kinds == [
        "created",
        "updated",
        "deleted",
        "created",
        "DocumentExistsError",
        "InputError",
        "InputError",
        "not_found",
    ]
    assert backend.count("products", {}) == 1
    doc = backend.get_doc("products", "b")
    assert doc is not None and doc.source == {"n": 3}


def test_source_round_trips_exactly(backend: TantivyBackend) -> None:
    backend.create_index("products")
    source = {"z": None, "a": [1, 2.5, "x", {"deep": [True, False]}], "big": 2**63 + 5, "uni": "ünï ✓", "": "empty"}
    backend.index_doc("products", "weird id/with slash", source, refresh=True)
    doc = backend.get_doc("products", "weird id/with slash")
    assert doc is not None and doc.source == source
    assert backend.search("products", {})["hits"]["hits"][0]["_source"] == source


def test_periodic_refresh_makes_writes_searchable(tmp_path: Path) -> None:
    with TantivyBackend(tmp_path, refresh_tick=0.02) as backend:
        backend.create_index("products", {"index.refresh_interval": "100ms"})
        backend.index_doc("products", "1", {"title": "soon"})
        deadline = time.monotonic() + 5
        while backend.count("products", {}) == 0:
            assert time.monotonic() < deadline, "the periodic refresh never happened"
            time.sleep(0.02)


def test_refresh_interval_minus_one_waits_for_an_explicit_refresh(tmp_path: Path) -> None:
    with TantivyBackend(tmp_path, refresh_tick=0.02) as backend:
        backend.create_index("products", {"index.refresh_interval": "-1"})
        backend.index_doc("products", "1", {"title": "later"})
        time.sleep(0.3)
        assert backend.count("products", {}) == 0
        backend.refresh()
        assert backend.count("products", {}) == 1


def test_close_commits_and_a_reopen_keeps_everything(tmp_path: Path) -> None:
    with TantivyBackend(tmp_path) as backend:
        backend.create_index("products", {"index.refresh_interval": "-1"})
        backend.bulk("products", [IndexOp(doc_id, source) for doc_id, source in PRODUCTS])
    with TantivyBackend(tmp_path) as backend:
        assert backend.count("products", {}) == len(PRODUCTS)
        doc = backend.get_doc("products", "2")
        assert doc is not None and doc.source == PRODUCTS[1][1]


_CRASH = textwrap.dedent(
    """
    import os, sys
    from quidditch_pipeline.server.engine import TantivyBackend, IndexOp
    backend = TantivyBackend(sys.argv[1])
    backend.create_index("products", {"index.refresh_interval": "-1"})
    backend.bulk("products", [IndexOp(str(i), {"n": i}) for i in range(50)])
    backend.index_doc("products", "7", {"n": "seven"})
    backend.delete_doc("products", "3")
    os._exit(0)  # no close, no commit: only the translog knows these writes
    """
)


def test_acknowledged_writes_survive_a_crash_through_the_translog(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path)], check=True, env=env, timeout=60)
    translog = tmp_path / "indexes" / "products" / "translog.ndjson"
    assert translog.stat().st_size > 0
    # A write torn by the crash (never acknowledged) is ignored.
    with open(translog, "ab") as fh:
        fh.write(b'{"op":"index","id":"torn","vers')
    with TantivyBackend(tmp_path) as backend:
        assert backend.count("products", {}) == 49
        seven = backend.get_doc("products", "7")
        assert seven is not None and (seven.version, seven.source) == (2, {"n": "seven"})
        assert backend.get_doc("products", "3") is None
        assert backend.get_doc("products", "torn") is None
    assert translog.stat().st_size == 0


def test_a_corrupt_translog_in_the_middle_is_refused(tmp_path: Path) -> None:
    with TantivyBackend(tmp_path) as backend:
        backend.create_index("products")
    (tmp_path / "indexes" / "products" / "translog.ndjson").write_bytes(b"garbage\n{}\n")
    with pytest.raises(StorageError, match="corrupt at line 1"):
        TantivyBackend(tmp_path)


def test_concurrent_writers_and_readers(backend: TantivyBackend) -> None:
    backend.create_index("products", {"index.refresh_interval": "100ms"})
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for batch in range(10):
                ops = [IndexOp(f"{worker}-{batch}-{i}", {"worker": worker, "i": i}) for i in range(20)]
                assert all(not isinstance(r, Exception) for r in backend.bulk("products", ops))
                backend.search("products", {"query": {"term": {"worker": worker}}})
        except BaseException as exc:  # collected for the main thread's assert
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    backend.refresh("products")
    assert backend.count("products", {}) == 8 * 10 * 20


# --------------------------------------------------------------------------------------------- queries


def test_match_scores_with_bm25_and_sorts(products: TantivyBackend) -> None:
    response = products.search("products", {"query": {"match": {"title": "notebook"}}})
    hits = response["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["3", "1"]
    assert hits[0]["_score"] > hits[1]["_score"] > 0
    assert response["hits"]["max_score"] == hits[0]["_score"]
    assert response["hits"]["total"] == {"value": 2, "relation": "eq"}
    assert hits[0]["_index"] == "products" and hits[0]["_source"] == PRODUCTS[2][1]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"match_all": {}}, {"1", "2", "3", "4"}),
        ({"match_none": {}}, set()),
        ({"match": {"title": "NOTEBOOK pen"}}, {"1", "2", "3"}),
        ({"match": {"title": {"query": "red notebook", "operator": "and"}}}, {"1"}),
        ({"match": {"title": {"query": "red blue notebook", "minimum_should_match": 2}}}, {"1"}),
        ({"match": {"price": "7"}}, {"3"}),
        ({"match": {"brand.name": "acme"}}, {"1"}),
        ({"match": {"*": "laptop"}}, {"4"}),
        ({"match": {"title": "!!!"}}, set()),
        ({"match_phrase": {"title": "red notebook"}}, {"1"}),
        ({"match_phrase": {"title": "notebook red"}}, set()),
        ({"multi_match": {"query": "notebook", "fields": ["title", "body"]}}, {"1", "3", "4"}),
        ({"term": {"status": "stock"}}, {"1", "3"}),
        ({"term": {"status": "In Stock"}}, set()),
        ({"term": {"status.keyword": "In Stock"}}, {"1", "3"}),
        ({"term": {"price": 12.5}}, {"2"}),
        ({"term": {"price": {"value": 5}}}, {"1"}),
        ({"term": {"on_sale": True}}, {"3"}),
        ({"term": {"tags": "office"}}, {"1", "2"}),
        ({"term": {"_id": "4"}}, {"4"}),
        ({"terms": {"tags": ["paper", "missing"]}}, {"1"}),
        ({"ids": {"values": ["1", "2", "zz"]}}, {"1", "2"}),
        ({"range": {"price": {"gte": 7, "lt": 45}}}, {"2", "3"}),
        ({"range": {"price": {"gt": 7}}}, {"2", "4"}),
        ({"exists": {"field": "on_sale"}}, {"3"}),
        ({"exists": {"field": "brand"}}, {"1", "2"}),
        ({"query_string": {"query": "notebook"}}, {"1", "3", "4"}),
        ({"query_string": {"query": "title:notebook AND price:5"}}, {"1"}),
        ({"query_string": {"query": "price:[6 TO 20]"}}, {"2", "3"}),
        ({"query_string": {"query": "user-name:bob"}}, {"4"}),
        ({"query_string": {"query": '"red notebook"'}}, {"1"}),
        ({"query_string": {"query": 'status.keyword:"Sold Out"'}}, {"2"}),
        ({"query_string": {"query": "notebook -title:red"}}, {"3", "4"}),
        ({"query_string": {"query": "notebook", "fields": ["body"]}}, {"4"}),
        ({"query_string": {"query": "red notebook", "default_operator": "AND"}}, {"1"}),
        ({"query_string": {"query": ""}}, {"1", "2", "3", "4"}),
        ({"bool": {"must": [{"match": {"title": "notebook"}}], "must_not": [{"term": {"price": 5}}]}}, {"3"}),
        ({"bool": {"should": [{"term": {"price": 5}}, {"term": {"price": 45}}]}}, {"1", "4"}),
        ({"bool": {"filter": {"term": {"status": "stock"}}, "should": [{"match": {"title": "red"}}]}}, {"1", "3"}),
        ({"bool": {"must_not": [{"term": {"tags": "office"}}]}}, {"3", "4"}),
        ({"bool": {}}, {"1", "2", "3", "4"}),
        (
            {
                "bool": {
                    "should": [{"match": {"title": "red"}}, {"match": {"title": "notebook"}}],
                    "minimum_should_match": 2,
                }
            },
            {"1"},
        ),
        ({"constant_score": {"filter": {"term": {"tags": "office"}}, "boost": 3}}, {"1", "2"}),
    ],
)
def test_query_dsl(products: TantivyBackend, query: dict[str, Any], expected: set[str]) -> None:
    assert set(ids(products, query)) == expected
    assert products.count("products", {"query": query}) == len(expected)


def test_filter_does_not_score_and_should_does(products: TantivyBackend) -> None:
    query = {"bool": {"filter": [{"term": {"status": "stock"}}], "should": [{"match": {"title": "red"}}]}}
    hits = products.search("products", {"query": query})["hits"]["hits"]
    assert hits[0]["_id"] == "1" and hits[0]["_score"] > 0
    assert hits[1]["_id"] == "3" and hits[1]["_score"] == 0


def test_boost_and_constant_score(products: TantivyBackend) -> None:
    hits = products.search("products", {"query": {"constant_score": {"filter": {"match_all": {}}, "boost": 2.5}}})
    assert {h["_score"] for h in hits["hits"]["hits"]} == {2.5}
    plain = products.search("products", {"query": {"match": {"title": "red"}}})["hits"]["max_score"]
    boosted = products.search("products", {"query": {"match": {"title": {"query": "red", "boost": 2}}}})
    assert boosted["hits"]["max_score"] == pytest.approx(plain * 2)


def test_size_from_and_source(products: TantivyBackend) -> None:
    everything = ids(products, {"match_all": {}})
    assert ids(products, {"match_all": {}}, size=2) == everything[:2]
    assert ids(products, {"match_all": {}}, size=2, **{"from": 1}) == everything[1:3]
    empty = products.search("products", {"size": 0})
    assert empty["hits"]["hits"] == [] and empty["hits"]["total"]["value"] == 4
    assert empty["hits"]["max_score"] is None
    bare = products.search("products", {"_source": False})["hits"]["hits"][0]
    assert "_source" not in bare


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"query": {"fuzzy": {"title": "x"}}}, "query: unknown query [fuzzy]"),
        ({"query": {"match": {"title": "x"}, "term": {"a": 1}}}, "query: a query is an object with exactly one key"),
        (
            {"query": {"bool": {"must": [{"match": {"title": {"query": "x", "fuzziness": 1}}}]}}},
            "query.bool.must[0].match.title.fuzziness: unknown option",
        ),
        ({"query": {"match": {"title": {"operator": "and"}}}}, "query.match.title.query: is required"),
        ({"query": {"term": {"title": ["a"]}}}, "query.term.title: a term value"),
        ({"query": {"range": {"price": {"gte": "cheap"}}}}, "query.range.price.gte: must be a finite number"),
        ({"query": {"query_string": {"query": "title:(x"}}}, "query.query_string.query: failed to parse"),
        (
            {"query": {"bool": {"minimum_should_match": "many", "should": [{"match_all": {}}]}}},
            "query.bool.minimum_should_match: cannot parse",
        ),
        ({"size": -1}, "size: must be a non-negative integer"),
        ({"size": 9_000, "from": 2_000}, "Result window is too large"),
        ({"sort": ["price"]}, "sort: unknown key"),
        ({"_source": ["title"]}, "_source: only true or false"),
    ],
)
def test_bad_search_bodies_name_the_path(products: TantivyBackend, body: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        products.search("products", body)
    assert info.value.status == 400
    assert path in info.value.message


def test_count_refuses_search_only_keys(products: TantivyBackend) -> None:
    assert products.count("products", {}) == 4
    with pytest.raises(DefinitionError, match="size: unknown key"):
        products.count("products", {"size": 1})


def test_keyword_ignores_long_strings_and_exists_ignores_null_and_empty(backend: TantivyBackend) -> None:
    backend.create_index("products")
    long_text = "word " * 60
    backend.bulk(
        "products",
        [IndexOp("1", {"long": long_text, "note": None, "empty": [], "obj": {}}), IndexOp("2", {"note": "x"})],
        refresh=True,
    )
    assert backend.count("products", {"query": {"term": {"long.keyword": long_text}}}) == 0
    assert backend.count("products", {"query": {"match": {"long": "word"}}}) == 1
    for field, expected in (("note", 1), ("empty", 0), ("obj", 0), ("long", 1)):
        assert backend.count("products", {"query": {"exists": {"field": field}}}) == expected, field
