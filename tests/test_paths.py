"""Dotted field paths on JSON objects: reads, and copy-on-write writes."""

from __future__ import annotations

import copy

import pytest

from quidditch_pipeline import _paths


def test_split_path() -> None:
    assert _paths.split_path("user.name") == ("user", "name")
    assert _paths.split_path("title") == ("title",)


def test_get_top_level_and_nested() -> None:
    doc = {"title": "T", "user": {"name": "ann", "address": {"city": "Oslo"}}}
    assert _paths.get(doc, ("title",)) == "T"
    assert _paths.get(doc, ("user", "name")) == "ann"
    assert _paths.get(doc, ("user", "address", "city")) == "Oslo"
    assert _paths.get(doc, ("user",)) == {"name": "ann", "address": {"city": "Oslo"}}


def test_get_missing_returns_sentinel_or_default() -> None:
    doc = {"user": {"name": "ann"}, "tags": ["a"], "n": None}
    assert _paths.get(doc, ("nope",)) is _paths.MISSING
    assert _paths.get(doc, ("user", "age")) is _paths.MISSING
    assert _paths.get(doc, ("user", "name", "first")) is _paths.MISSING  # through a string
    assert _paths.get(doc, ("tags", "0")) is _paths.MISSING  # lists are not indexed by paths
    assert _paths.get(doc, ("nope",), None) is None
    assert _paths.get(doc, ("nope",), 7) == 7
    # A present null is a value, not a missing field.
    assert _paths.get(doc, ("n",)) is None


def test_has() -> None:
    doc = {"user": {"name": "ann"}, "n": None, "zero": 0, "empty": ""}
    assert _paths.has(doc, ("user", "name"))
    assert _paths.has(doc, ("n",))
    assert _paths.has(doc, ("zero",))
    assert _paths.has(doc, ("empty",))
    assert not _paths.has(doc, ("user", "age"))
    assert not _paths.has(doc, ("missing", "deeper"))


def test_set_returns_a_copy_and_leaves_the_input_alone() -> None:
    doc = {"a": 1, "user": {"name": "ann", "tags": ["x"]}, "other": {"k": "v"}}
    before = copy.deepcopy(doc)
    out = _paths.set_(doc, ("user", "name"), "bob")
    assert out == {"a": 1, "user": {"name": "bob", "tags": ["x"]}, "other": {"k": "v"}}
    assert doc == before
    assert out is not doc
    assert out["user"] is not doc["user"]
    # Copy-on-write: branches that are not on the path are shared, not copied.
    assert out["other"] is doc["other"]
    assert out["user"]["tags"] is doc["user"]["tags"]


def test_set_creates_missing_objects_along_the_path() -> None:
    doc: dict[str, object] = {"a": 1}
    out = _paths.set_(doc, ("x", "y", "z"), True)
    assert out == {"a": 1, "x": {"y": {"z": True}}}
    assert doc == {"a": 1}


def test_set_through_null_creates_an_object() -> None:
    out = _paths.set_({"user": None}, ("user", "name"), "ann")
    assert out == {"user": {"name": "ann"}}


def test_set_top_level_replaces_value() -> None:
    doc = {"a": {"deep": 1}}
    out = _paths.set_(doc, ("a",), [1, 2])
    assert out == {"a": [1, 2]}
    assert doc == {"a": {"deep": 1}}


@pytest.mark.parametrize("blocker", ["text", 5, [1, 2], True])
def test_set_through_a_non_object_is_refused(blocker: object) -> None:
    doc = {"user": blocker}
    with pytest.raises(ValueError, match=r"cannot set \[user\.name\]: \[user\] is a"):
        _paths.set_(doc, ("user", "name"), "ann")
    assert doc == {"user": blocker}


def test_remove_returns_a_copy() -> None:
    doc = {"a": 1, "user": {"name": "ann", "age": 3}, "other": {"k": "v"}}
    before = copy.deepcopy(doc)
    out = _paths.remove(doc, ("user", "name"))
    assert out == {"a": 1, "user": {"age": 3}, "other": {"k": "v"}}
    assert doc == before
    assert out["other"] is doc["other"]

    top = _paths.remove(doc, ("a",))
    assert top == {"user": {"name": "ann", "age": 3}, "other": {"k": "v"}}
    assert doc == before


def test_remove_leaves_an_empty_parent() -> None:
    assert _paths.remove({"user": {"name": "ann"}}, ("user", "name")) == {"user": {}}


def test_check_path_names_what_is_wrong() -> None:
    assert _paths.check_path("a.b") == ("a", "b")
    for bad in ("", ".", "a.", ".a", "a..b"):
        with pytest.raises(ValueError, match=r"is not a field path"):
            _paths.check_path(bad)


def test_project_keeps_only_the_given_paths_and_shares_their_values() -> None:
    doc = {"_id": "1", "_score": 2.0, "_source": {"title": "T", "age": 3, "tags": ["a"], "deep": {"x": 1, "y": 2}}}
    keep = _paths.projection(["_score", "_source.age", "_source.tags", "_source.deep.y"])
    projected = _paths.project(doc, keep)
    assert projected == {"_score": 2.0, "_source": {"age": 3, "tags": ["a"], "deep": {"y": 2}}}
    assert projected["_source"]["tags"] is doc["_source"]["tags"]  # values are shared, objects rebuilt
    assert doc["_source"]["deep"] == {"x": 1, "y": 2}  # the input is untouched


def test_project_an_outer_path_keeps_the_whole_object_whichever_comes_first() -> None:
    doc = {"a": {"b": 1, "c": 2}, "d": 3}
    for paths in (["a.b", "a"], ["a", "a.b"]):
        assert _paths.project(doc, _paths.projection(paths)) == {"a": {"b": 1, "c": 2}}


def test_project_leaves_out_absent_paths_and_paths_through_non_objects() -> None:
    doc = {"a": "text", "b": [{"c": 1}], "n": None}
    keep = _paths.projection(["a.x", "b.c", "n", "missing", "m.x"])
    assert _paths.project(doc, keep) == {"n": None}


def test_projection_refuses_a_bad_path() -> None:
    with pytest.raises(ValueError, match=r"\[a\.\.b\]"):
        _paths.projection(["ok", "a..b"])
