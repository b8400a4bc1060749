"""Native processors (DESIGN §3): each built-in's behaviour, dotted paths, missing fields, copy-on-write,
strict config, and the registration API for an embedding host."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from quidditch_pipeline import DROP, PipelineService, register_processor
from quidditch_pipeline.definitions import parse_definition
from quidditch_pipeline.errors import DefinitionError
from quidditch_pipeline.processors import PROCESSORS, ProcessorError, ProcessorRegistry

BUILTINS = [
    "append",
    "convert",
    "copy",
    "drop",
    "fail",
    "join",
    "lowercase",
    "remove",
    "rename",
    "set",
    "split",
    "trim",
    "uppercase",
]


def run(processor: str, doc: dict[str, Any], /, **config: Any) -> Any:
    """Run a processor the way a native stage does: config parsed once, then called on the value.

    Every call also checks copy-on-write: the value handed in is never changed.
    """
    found = PROCESSORS.get(processor)
    assert found is not None, processor
    fn = found.bind(config)
    before = copy.deepcopy(doc)
    try:
        return fn(doc)
    finally:
        assert doc == before, f"{processor} changed its input"


def fails(processor: str, doc: dict[str, Any], /, **config: Any) -> str:
    with pytest.raises(ProcessorError) as info:
        run(processor, doc, **config)
    return str(info.value)


def test_every_builtin_is_registered() -> None:
    assert set(BUILTINS) <= set(PROCESSORS.names())


# --- set -----------------------------------------------------------------------------------------------------


def test_set() -> None:
    assert run("set", {"a": 1}, field="b", value="x") == {"a": 1, "b": "x"}
    assert run("set", {"a": 1}, field="a", value=[1, 2]) == {"a": [1, 2]}
    assert run("set", {}, field="a", value=None) == {"a": None}


def test_set_dotted_path_creates_objects() -> None:
    doc = {"user": {"id": 1}}
    assert run("set", doc, field="user.name", value="ann") == {"user": {"id": 1, "name": "ann"}}
    assert run("set", {}, field="a.b.c", value=1) == {"a": {"b": {"c": 1}}}


def test_set_override_false_keeps_an_existing_value() -> None:
    assert run("set", {"a": 1}, field="a", value=2, override=False) == {"a": 1}
    assert run("set", {"a": 1}, field="b", value=2, override=False) == {"a": 1, "b": 2}
    # A null counts as absent, as in Elasticsearch.
    assert run("set", {"a": None}, field="a", value=2, override=False) == {"a": 2}


def test_set_through_a_non_object_is_a_processor_error() -> None:
    assert "cannot set [a.b]" in fails("set", {"a": 5}, field="a.b", value=1)


def test_set_value_is_not_shared_between_outputs() -> None:
    fn = PROCESSORS.get("set").bind({"field": "tags", "value": {"list": [1]}})  # type: ignore[union-attr]
    first = fn({})
    second = fn({})
    assert isinstance(first, dict) and isinstance(second, dict)
    first["tags"]["list"].append(2)
    assert second == {"tags": {"list": [1]}}
    assert fn({}) == {"tags": {"list": [1]}}


# --- remove --------------------------------------------------------------------------------------------------


def test_remove_one_and_many() -> None:
    doc = {"a": 1, "b": 2, "user": {"name": "ann", "age": 3}}
    assert run("remove", doc, field="a") == {"b": 2, "user": {"name": "ann", "age": 3}}
    assert run("remove", doc, field=["a", "user.name"]) == {"b": 2, "user": {"age": 3}}


def test_remove_missing() -> None:
    assert fails("remove", {"a": 1}, field="b") == "field [b] not present"
    assert fails("remove", {"a": 1}, field=["a", "user.name"]) == "field [user.name] not present"
    assert run("remove", {"a": 1}, field=["a", "b"], ignore_missing=True) == {}
    assert run("remove", {"a": 1}, field="x.y", ignore_missing=True) == {"a": 1}


def test_remove_a_null_field() -> None:
    assert run("remove", {"a": None, "b": 1}, field="a") == {"b": 1}


# --- rename / copy -------------------------------------------------------------------------------------------


def test_rename() -> None:
    assert run("rename", {"a": 1, "b": 2}, field="a", target_field="c") == {"b": 2, "c": 1}
    assert run("rename", {"user": {"name": "ann"}}, field="user.name", target_field="author.name") == {
        "user": {},
        "author": {"name": "ann"},
    }


def test_rename_missing() -> None:
    assert fails("rename", {"b": 1}, field="a", target_field="c") == "field [a] not present"
    assert run("rename", {"b": 1}, field="a", target_field="c", ignore_missing=True) == {"b": 1}


def test_rename_onto_an_existing_field() -> None:
    assert fails("rename", {"a": 1, "c": 2}, field="a", target_field="c") == "field [c] already exists"
    assert run("rename", {"a": 1, "c": 2}, field="a", target_field="c", override=True) == {"c": 1}


def test_copy() -> None:
    doc = {"user": {"name": "ann", "tags": ["x"]}}
    out = run("copy", doc, field="user", target_field="author")
    assert out == {"user": {"name": "ann", "tags": ["x"]}, "author": {"name": "ann", "tags": ["x"]}}
    # A real copy: changing one side later does not change the other.
    assert out["author"] is not out["user"]
    assert out["author"]["tags"] is not out["user"]["tags"]


def test_copy_missing_and_existing() -> None:
    assert fails("copy", {"b": 1}, field="a", target_field="c") == "field [a] not present"
    assert run("copy", {"b": 1}, field="a", target_field="c", ignore_missing=True) == {"b": 1}
    assert fails("copy", {"a": 1, "c": 2}, field="a", target_field="c") == "field [c] already exists"
    assert run("copy", {"a": 1, "c": 2}, field="a.x", target_field="c", ignore_missing=True) == {"a": 1, "c": 2}


# --- lowercase / uppercase / trim ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("processor", "before", "after"),
    [
        ("lowercase", "Red SHOES", "red shoes"),
        ("uppercase", "Red shoes", "RED SHOES"),
        ("trim", "  padded \t\n", "padded"),
        ("lowercase", "ÄÖÜ", "äöü"),
    ],
)
def test_string_processors(processor: str, before: str, after: str) -> None:
    assert run(processor, {"t": before}, field="t") == {"t": after}
    assert run(processor, {"u": {"t": before}}, field="u.t") == {"u": {"t": after}}
    assert run(processor, {"t": before}, field="t", target_field="out.t") == {"t": before, "out": {"t": after}}
    assert run(processor, {"t": [before, before]}, field="t") == {"t": [after, after]}


@pytest.mark.parametrize("processor", ["lowercase", "uppercase", "trim"])
def test_string_processors_missing_and_wrong_type(processor: str) -> None:
    assert fails(processor, {"a": "x"}, field="t") == "field [t] not present"
    assert fails(processor, {"u": {}}, field="u.t") == "field [u.t] not present"
    assert run(processor, {"a": "x"}, field="t", ignore_missing=True) == {"a": "x"}
    assert fails(processor, {"t": 5}, field="t") == "field [t] is a number, not a string"
    assert fails(processor, {"t": None}, field="t") == "field [t] is a null, not a string"
    assert fails(processor, {"t": {"a": "b"}}, field="t") == "field [t] is a object, not a string"
    assert fails(processor, {"t": ["a", 1]}, field="t") == "field [t] is a list, not a string"


# --- split / join --------------------------------------------------------------------------------------------


def test_split() -> None:
    assert run("split", {"t": "a,b,c"}, field="t", separator=",") == {"t": ["a", "b", "c"]}
    assert run("split", {"t": "a  b\tc"}, field="t", separator=r"\s+") == {"t": ["a", "b", "c"]}
    assert run("split", {"t": "a|b"}, field="t", separator=r"\|", target_field="parts") == {
        "t": "a|b",
        "parts": ["a", "b"],
    }
    assert run("split", {"u": {"t": "x-y"}}, field="u.t", separator="-") == {"u": {"t": ["x", "y"]}}


def test_split_trailing_empties() -> None:
    assert run("split", {"t": "a,b,,"}, field="t", separator=",") == {"t": ["a", "b"]}
    assert run("split", {"t": "a,b,,"}, field="t", separator=",", preserve_trailing=True) == {"t": ["a", "b", "", ""]}
    assert run("split", {"t": ",a"}, field="t", separator=",") == {"t": ["", "a"]}


def test_split_missing_and_wrong_type() -> None:
    assert fails("split", {}, field="t", separator=",") == "field [t] not present"
    assert run("split", {}, field="t", separator=",", ignore_missing=True) == {}
    assert fails("split", {"t": ["a"]}, field="t", separator=",") == "field [t] is a list, not a string"


def test_join() -> None:
    assert run("join", {"t": ["a", "b", "c"]}, field="t", separator="-") == {"t": "a-b-c"}
    assert run("join", {"t": [1, 2.5, True, False, "x"]}, field="t", separator=",") == {"t": "1,2.5,true,false,x"}
    assert run("join", {"t": []}, field="t", separator=",") == {"t": ""}
    assert run("join", {"t": ["a", "b"]}, field="t", separator="", target_field="j") == {"t": ["a", "b"], "j": "ab"}


def test_join_missing_and_wrong_type() -> None:
    assert fails("join", {}, field="t", separator=",") == "field [t] not present"
    assert run("join", {}, field="t", separator=",", ignore_missing=True) == {}
    assert fails("join", {"t": "abc"}, field="t", separator=",") == "field [t] is a string, not a list"


def test_join_renders_null_as_json_not_python() -> None:
    # Documents are JSON: a null element joins as "null", never as Python's "None".
    assert run("join", {"t": ["a", None]}, field="t", separator=",") == {"t": "a,null"}


def test_split_then_join_round_trip() -> None:
    parts = run("split", {"t": "a b c"}, field="t", separator=" ")
    assert run("join", parts, field="t", separator=" ") == {"t": "a b c"}


# --- convert -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "to", "expected"),
    [
        ("42", "int", 42),
        (" 42 ", "int", 42),
        ("-7", "int", -7),
        ("0x1A", "int", 26),
        (3.0, "int", 3),
        (5, "int", 5),
        ("42", "integer", 42),
        ("42", "long", 42),
        ("1.5", "float", 1.5),
        ("2", "float", 2.0),
        (3, "float", 3.0),
        ("1.5", "double", 1.5),
        ("true", "bool", True),
        ("FALSE", "bool", False),
        (" True ", "boolean", True),
        (True, "bool", True),
        (12, "string", "12"),
        (1.5, "string", "1.5"),
        (True, "string", "true"),
        (False, "string", "false"),
        ("s", "string", "s"),
    ],
)
def test_convert(raw: Any, to: str, expected: Any) -> None:
    out = run("convert", {"v": raw}, field="v", type=to)
    assert out == {"v": expected}
    assert type(out["v"]) is type(expected)


@pytest.mark.parametrize(
    ("raw", "to"),
    [
        ("abc", "int"),
        ("1.5", "int"),
        (1.5, "int"),
        (True, "int"),
        (None, "int"),
        ([[1]], "long"),
        ({"a": 1}, "int"),
        ("", "int"),
        ("x", "float"),
        ("nan", "float"),
        ("inf", "double"),
        (False, "float"),
        (None, "float"),
        ("yes", "bool"),
        (1, "bool"),
        (None, "boolean"),
        (float("inf"), "int"),
    ],
)
def test_convert_refuses_what_cannot_be_converted(raw: Any, to: str) -> None:
    message = fails("convert", {"v": raw}, field="v", type=to)
    assert message.startswith("field [v]: cannot convert")


def test_convert_null_to_string_is_an_error() -> None:
    # Elasticsearch refuses to convert a null; Python's "None" must never leak into a document.
    assert fails("convert", {"v": None}, field="v", type="string").startswith("field [v]")


def test_convert_to_long_stays_within_64_bits() -> None:
    # 1e20 does not fit a long; an int that big also cannot be serialised back to JSON (orjson refuses).
    assert fails("convert", {"v": 1e20}, field="v", type="long").startswith("field [v]")


def test_convert_lists_element_by_element() -> None:
    assert run("convert", {"v": ["1", "2"]}, field="v", type="int") == {"v": [1, 2]}
    assert run("convert", {"v": ["1", "2"]}, field="v", type="int", target_field="w") == {"v": ["1", "2"], "w": [1, 2]}
    assert fails("convert", {"v": ["1", "x"]}, field="v", type="int") == "field [v]: cannot convert 'x' to int"


def test_convert_dotted_and_missing() -> None:
    assert run("convert", {"u": {"n": "5"}}, field="u.n", type="int") == {"u": {"n": 5}}
    assert fails("convert", {"u": {}}, field="u.n", type="int") == "field [u.n] not present"
    assert run("convert", {"u": {}}, field="u.n", type="int", ignore_missing=True) == {"u": {}}


# --- append --------------------------------------------------------------------------------------------------


def test_append() -> None:
    assert run("append", {"t": ["a"]}, field="t", value="b") == {"t": ["a", "b"]}
    assert run("append", {"t": ["a"]}, field="t", value=["b", "c"]) == {"t": ["a", "b", "c"]}
    assert run("append", {}, field="t", value="a") == {"t": ["a"]}
    assert run("append", {"t": None}, field="t", value="a") == {"t": ["a"]}
    assert run("append", {"t": "a"}, field="t", value="b") == {"t": ["a", "b"]}
    assert run("append", {"u": {}}, field="u.tags", value=1) == {"u": {"tags": [1]}}


def test_append_duplicates() -> None:
    assert run("append", {"t": ["a"]}, field="t", value=["a", "b"]) == {"t": ["a", "a", "b"]}
    assert run("append", {"t": ["a"]}, field="t", value=["a", "b", "b"], allow_duplicates=False) == {"t": ["a", "b"]}


def test_append_does_not_share_the_input_list() -> None:
    doc = {"t": ["a"]}
    out = run("append", doc, field="t", value="b")
    assert out["t"] is not doc["t"]
    assert doc == {"t": ["a"]}


# --- drop / fail ---------------------------------------------------------------------------------------------


def test_drop() -> None:
    assert run("drop", {"status": "spam"}, field="status", value="spam") is DROP
    assert run("drop", {"u": {"s": 1}}, field="u.s", value=1) is DROP
    assert run("drop", {"status": "ok"}, field="status", value="spam") == {"status": "ok"}
    assert run("drop", {}, field="status", value="spam") == {}
    assert run("drop", {"anything": 1}) is DROP  # no field: always drops


def test_drop_compares_json_values() -> None:
    assert run("drop", {"t": ["a", "b"]}, field="t", value=["a", "b"]) is DROP
    assert run("drop", {"n": None}, field="n", value=None) is DROP
    # A missing field does not equal null.
    assert run("drop", {}, field="n", value=None) == {}
    assert run("drop", {"t": ["a"]}, field="t", value="a") == {"t": ["a"]}


def test_fail() -> None:
    assert fails("fail", {"a": 1}, message="not allowed here") == "not allowed here"


# --- strict config -------------------------------------------------------------------------------------------

MINIMAL_CONFIG: dict[str, dict[str, Any]] = {
    "set": {"field": "a", "value": 1},
    "remove": {"field": "a"},
    "rename": {"field": "a", "target_field": "b"},
    "copy": {"field": "a", "target_field": "b"},
    "lowercase": {"field": "a"},
    "uppercase": {"field": "a"},
    "trim": {"field": "a"},
    "split": {"field": "a", "separator": ","},
    "join": {"field": "a", "separator": ","},
    "convert": {"field": "a", "type": "int"},
    "append": {"field": "a", "value": 1},
    "drop": {},
    "fail": {"message": "no"},
}


def _pipeline(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "p",
        "version": "1.0.0",
        "type": "document",
        "stages": [{"name": "s", "type": "native", "config": config}],
    }


@pytest.mark.parametrize("processor", BUILTINS)
def test_minimal_config_parses(processor: str) -> None:
    parse_definition(_pipeline({"processor": processor, **MINIMAL_CONFIG[processor]}))


@pytest.mark.parametrize("processor", BUILTINS)
@pytest.mark.parametrize("key", ["bogus", "if", "tag", "targetField"])
def test_unknown_config_keys_are_refused(processor: str, key: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition(_pipeline({"processor": processor, **MINIMAL_CONFIG[processor], key: True}))
    assert info.value.problems == [(f"stages[0].config.{key}", "unknown field")]


@pytest.mark.parametrize("processor", BUILTINS)
def test_bind_refuses_unknown_keys_too(processor: str) -> None:
    found = PROCESSORS.get(processor)
    assert found is not None
    with pytest.raises(ValueError, match="bogus"):
        found.bind({**MINIMAL_CONFIG[processor], "bogus": 1})


@pytest.mark.parametrize(
    "processor", ["set", "remove", "rename", "copy", "lowercase", "uppercase", "trim", "split", "join", "convert"]
)
@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a."])
def test_bad_field_paths_are_refused(processor: str, bad: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition(_pipeline({"processor": processor, **MINIMAL_CONFIG[processor], "field": bad}))
    assert [p for p, _ in info.value.problems] == ["stages[0].config.field"]


# --- host processors -----------------------------------------------------------------------------------------


class StampConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str = "ingested_by"
    value: str = "quidditch"


SEEN: list[dict[str, Any]] = []


@pytest.fixture
def stamp() -> Iterator[str]:
    SEEN.clear()

    @register_processor("test_processors_stamp", config=StampConfig)
    def _stamp(doc: dict[str, Any], config: StampConfig) -> dict[str, Any]:
        SEEN.append(doc)
        doc[config.field] = config.value  # changes its argument in place: it is a deep copy
        doc.setdefault("nested", {})["touched"] = True
        return doc

    yield "test_processors_stamp"
    PROCESSORS.unregister("test_processors_stamp")


def test_host_processor_runs_in_a_pipeline(stamp: str) -> None:
    definition = {
        "name": "stamped",
        "version": "1.0.0",
        "type": "document",
        "stages": [
            {"name": "stamp", "type": "native", "config": {"processor": stamp, "value": "host"}},
            {"name": "lower", "type": "native", "config": {"processor": "lowercase", "field": "title"}},
        ],
    }
    with PipelineService.in_memory() as svc:
        svc.put_pipeline(definition)
        svc.associate("products", "document", "stamped")
        source = {"title": "Red", "nested": {"keep": 1}}
        out = svc.process_document("products", "1", source)
        assert out == {"title": "red", "ingested_by": "host", "nested": {"keep": 1, "touched": True}}
        # The host processor got a deep copy: the caller's document is untouched.
        assert source == {"title": "Red", "nested": {"keep": 1}}
        assert SEEN[0] is not source
        assert SEEN[0]["nested"] is not source["nested"]


def test_host_processor_config_is_strict(stamp: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition(_pipeline({"processor": stamp, "colour": "red"}))
    assert info.value.problems == [("stages[0].config.colour", "unknown field")]
    with pytest.raises(DefinitionError) as info:
        parse_definition(_pipeline({"processor": stamp, "value": 5}))
    assert [p for p, _ in info.value.problems] == ["stages[0].config.value"]


def test_host_processor_failure_fails_its_stage(stamp: str) -> None:
    class Boom(BaseModel):
        model_config = ConfigDict(extra="forbid")

    @register_processor("test_processors_boom", config=Boom)
    def _boom(doc: dict[str, Any], config: Boom) -> dict[str, Any]:
        raise KeyError("oops")

    try:
        with PipelineService.in_memory() as svc:
            result = svc.execute(
                {
                    "type": "document",
                    "stages": [{"name": "b", "type": "native", "config": {"processor": "test_processors_boom"}}],
                },
                {"a": 1},
            )
        assert result["status"] == "failed"
        assert "KeyError" in result["error"]["reason"]
    finally:
        PROCESSORS.unregister("test_processors_boom")


def test_duplicate_registration_is_refused(stamp: str) -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_processor(stamp, config=StampConfig)
        def _again(doc: dict[str, Any], config: StampConfig) -> dict[str, Any]:
            return doc

    with pytest.raises(ValueError, match="already registered"):
        register_processor("set", config=StampConfig)(lambda doc, config: doc)


@pytest.mark.parametrize("name", ["", "Upper", "has-dash", "9lives", "a" * 65])
def test_invalid_processor_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid processor name"):
        register_processor(name, config=StampConfig)(lambda doc, config: doc)
    assert PROCESSORS.get(name) is None


def test_unregistered_processor_is_unknown_again() -> None:
    @register_processor("test_processors_temp", config=StampConfig)
    def _temp(doc: dict[str, Any], config: StampConfig) -> dict[str, Any]:
        return doc

    parse_definition(_pipeline({"processor": "test_processors_temp"}))
    PROCESSORS.unregister("test_processors_temp")
    with pytest.raises(DefinitionError) as info:
        parse_definition(_pipeline({"processor": "test_processors_temp"}))
    assert [p for p, _ in info.value.problems] == ["stages[0].config.processor"]


def test_registry_is_independent_per_instance() -> None:
    reg = ProcessorRegistry()
    reg.register("mine", StampConfig, lambda doc, config: doc)
    assert list(reg.names()) == ["mine"]
    assert reg.get("mine") is not None
    assert PROCESSORS.get("mine") is None
    reg.unregister("mine")
    reg.unregister("mine")  # unregistering twice is harmless
    assert reg.get("mine") is None
