"""Pipeline definitions (DESIGN §3): parsing, every validation rule with its field path, JSON and YAML."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quidditch_pipeline.definitions import (
    MAX_DEFINITION_DEPTH,
    MAX_DEFINITION_NODES,
    MAX_DEPTH,
    MAX_STAGES,
    CompositeStage,
    FailurePolicy,
    NativeStage,
    PipelineDefinition,
    PipelineStage,
    PipelineType,
    PythonStage,
    RetryPolicy,
    StageType,
    dump_definition,
    is_valid_name,
    iter_stages,
    latest_version,
    load_definition,
    parse_definition,
    parse_semver,
)
from quidditch_pipeline.errors import DefinitionError, QuidditchError
from tests.hostile_inputs import BILLION_LAUGHS


def base(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "p", "version": "1.0.0", "type": "document", "stages": []}
    data.update(overrides)
    return data


def native(name: str, processor: str = "drop", **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


def problems_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(data)
    assert info.value.problems, "a DefinitionError must list its problems"
    return info.value.problems


def paths_of(data: Any) -> list[str]:
    return [path for path, _ in problems_of(data)]


def nested(depth: int) -> dict[str, Any]:
    """A chain of composites whose innermost (native) stage sits at nesting depth ``depth``."""
    stage = native("leaf")
    for level in range(depth - 1):
        stage = {"name": f"c{level}", "type": "composite", "config": {"stages": [stage]}}
    return stage


FULL: dict[str, Any] = {
    "name": "enrich-products",
    "version": "1.2.0",
    "type": "document",
    "description": "adds things",
    "metadata": {"owner": "search-team", "tags": ["a", "b"], "nested": {"n": 1}},
    "enabled": True,
    "on_failure": "continue",
    "retry": {
        "max_attempts": 5,
        "initial_backoff_ms": 20,
        "multiplier": 3.0,
        "max_backoff_ms": 500,
        "then": "continue",
    },
    "timeout_ms": 500,
    "parameters": {"days": 7},
    "stages": [
        {
            "name": "boost",
            "type": "python",
            "enabled": True,
            "on_failure": "retry",
            "timeout_ms": 50,
            "config": {
                "udf_name": "boost_recent",
                "udf_version": "1.0.0",
                "parameters": {"days": 7},
                "target_field": "_score",
                "scope": "hit",
                "memory_limit_mb": 64,
            },
        },
        {"name": "lower", "type": "native", "config": {"processor": "lowercase", "field": "title"}},
        {
            "name": "group",
            "type": "composite",
            "on_failure": "abort",
            "config": {
                "stages": [
                    {"name": "trim", "type": "native", "config": {"processor": "trim", "field": "user.name"}},
                    {"name": "inner", "type": "composite", "config": {"stages": [native("d", "drop")]}},
                ]
            },
        },
        {"name": "common", "type": "pipeline", "description": "shared", "config": {"pipeline": "shared-cleanup"}},
    ],
}


# --- valid definitions ---------------------------------------------------------------------------------------


def test_parse_full_definition() -> None:
    d = parse_definition(copy.deepcopy(FULL))
    assert isinstance(d, PipelineDefinition)
    assert d.name == "enrich-products"
    assert d.version == "1.2.0"
    assert d.type is PipelineType.DOCUMENT
    assert d.description == "adds things"
    assert d.metadata == FULL["metadata"]
    assert d.on_failure is FailurePolicy.CONTINUE
    assert d.retry == RetryPolicy(
        max_attempts=5, initial_backoff_ms=20, multiplier=3.0, max_backoff_ms=500, then="continue"
    )
    assert d.timeout_ms == 500
    assert d.parameters == {"days": 7}

    boost, lower, group, common = d.stages
    assert isinstance(boost, PythonStage)
    assert boost.type is StageType.PYTHON
    assert boost.on_failure is FailurePolicy.RETRY
    assert boost.timeout_ms == 50
    assert boost.config.udf_name == "boost_recent"
    assert boost.config.udf_version == "1.0.0"
    assert boost.config.parameters == {"days": 7}
    assert boost.config.target_field == "_score"
    assert boost.config.scope == "hit"
    assert boost.config.memory_limit_mb == 64

    assert isinstance(lower, NativeStage)
    assert lower.config.processor == "lowercase"
    assert lower.config.options == {"field": "title"}

    assert isinstance(group, CompositeStage)
    assert [s.name for s in group.config.stages] == ["trim", "inner"]
    assert isinstance(group.config.stages[1], CompositeStage)

    assert isinstance(common, PipelineStage)
    assert common.config.pipeline == "shared-cleanup"
    assert common.description == "shared"


def test_defaults() -> None:
    d = parse_definition(base(stages=[native("a")]))
    assert d.enabled is True
    assert d.on_failure is FailurePolicy.ABORT
    assert d.retry == RetryPolicy()
    assert d.retry.max_attempts == 3
    assert d.retry.initial_backoff_ms == 10
    assert d.retry.multiplier == 2.0
    assert d.retry.max_backoff_ms == 1000
    assert d.retry.then == "abort"
    assert d.timeout_ms is None
    assert d.description is None
    assert d.metadata == {}
    assert d.parameters == {}
    stage = d.stages[0]
    assert stage.enabled is True
    assert stage.on_failure is None  # falls back to the pipeline's policy at build time
    assert stage.timeout_ms is None


def test_python_stage_defaults() -> None:
    d = parse_definition(base(stages=[{"name": "u", "type": "python", "config": {"udf_name": "f"}}]))
    stage = d.stages[0]
    assert isinstance(stage, PythonStage)
    assert stage.config.udf_version is None
    assert stage.config.parameters == {}
    assert stage.config.target_field is None
    assert stage.config.scope == "hit"
    assert stage.config.memory_limit_mb is None


@pytest.mark.parametrize("kind", ["query", "document", "result"])
def test_every_pipeline_type(kind: str) -> None:
    assert parse_definition(base(type=kind)).type is PipelineType(kind)


def test_an_empty_pipeline_is_valid() -> None:
    assert parse_definition(base()).stages == []


@pytest.mark.parametrize("version", [None, "latest"])
def test_udf_version_latest_or_omitted_is_none(version: str | None) -> None:
    config: dict[str, Any] = {"udf_name": "f"}
    if version is not None:
        config["udf_version"] = version
    d = parse_definition(base(stages=[{"name": "u", "type": "python", "config": config}]))
    stage = d.stages[0]
    assert isinstance(stage, PythonStage)
    assert stage.config.udf_version is None
    assert "udf_version" not in d.to_dict()["stages"][0]["config"]


@pytest.mark.parametrize(
    "version", ["0.0.0", "1.2.3", "10.20.30", "1.0.0-alpha.1", "1.0.0+build.5", "2.0.0-rc.1+sha.abc"]
)
def test_semver_versions_accepted(version: str) -> None:
    assert parse_definition(base(version=version)).version == version
    stage = {"name": "u", "type": "python", "config": {"udf_name": "f", "udf_version": version}}
    if "+" in version:  # a UDF version cannot carry build metadata: it would not tell two versions apart
        with pytest.raises(DefinitionError, match=r"carries build metadata"):
            parse_definition(base(stages=[stage]))
        return
    parsed = parse_definition(base(stages=[stage])).stages[0]
    assert isinstance(parsed, PythonStage)
    assert parsed.config.udf_version == version


def test_parse_semver() -> None:
    assert parse_semver("1.10.0") > parse_semver("1.9.0")
    with pytest.raises(ValueError, match=r"\[1\.0\] is not a semantic version"):
        parse_semver("1.0")


@pytest.mark.parametrize("name", ["p", "0", "a" * 128, "my-pipe_1.v2", "9lives"])
def test_valid_pipeline_names(name: str) -> None:
    assert parse_definition(base(name=name)).name == name


def test_stage_names_are_free_text_within_limits() -> None:
    d = parse_definition(base(stages=[native("Any Name / ü!"), native("x" * 128)]))
    assert [s.name for s in d.stages] == ["Any Name / ü!", "x" * 128]


def test_same_stage_name_in_different_composites_is_allowed() -> None:
    group = {"name": "g", "type": "composite", "config": {"stages": [native("a")]}}
    other = {"name": "h", "type": "composite", "config": {"stages": [native("a")]}}
    d = parse_definition(base(stages=[native("a"), group, other]))
    assert [path for path, _, _ in iter_stages(d.stages)] == [
        "stages[0]",
        "stages[1]",
        "stages[1].config.stages[0]",
        "stages[2]",
        "stages[2].config.stages[0]",
    ]


def test_iter_stages_paths_and_depths() -> None:
    d = parse_definition(copy.deepcopy(FULL))
    assert [(path, depth, stage.name) for path, depth, stage in iter_stages(d.stages)] == [
        ("stages[0]", 1, "boost"),
        ("stages[1]", 1, "lower"),
        ("stages[2]", 1, "group"),
        ("stages[2].config.stages[0]", 2, "trim"),
        ("stages[2].config.stages[1]", 2, "inner"),
        ("stages[2].config.stages[1].config.stages[0]", 3, "d"),
        ("stages[3]", 1, "common"),
    ]


def test_pipeline_targets_and_udf_references() -> None:
    data = copy.deepcopy(FULL)
    data["stages"][2]["config"]["stages"].append({"name": "call", "type": "pipeline", "config": {"pipeline": "deep"}})
    data["stages"][2]["config"]["stages"].append(
        {"name": "py", "type": "python", "config": {"udf_name": "other", "udf_version": "latest"}}
    )
    d = parse_definition(data)
    assert d.pipeline_targets() == [
        ("stages[2].config.stages[2].config.pipeline", "deep"),
        ("stages[3].config.pipeline", "shared-cleanup"),
    ]
    assert d.udf_references() == [
        ("stages[0].config", "boost_recent", "1.0.0"),
        ("stages[2].config.stages[3].config", "other", None),
    ]


def test_definitions_are_frozen() -> None:
    d = parse_definition(base())
    with pytest.raises(Exception, match="frozen"):
        d.name = "other"  # type: ignore[misc]


def test_parse_does_not_change_its_input() -> None:
    data = copy.deepcopy(FULL)
    parse_definition(data)
    assert data == FULL


# --- refused definitions: every rule names its field path --------------------------------------------------


@pytest.mark.parametrize("field", ["name", "version", "type", "stages"])
def test_missing_top_level_field(field: str) -> None:
    data = base()
    del data[field]
    assert problems_of(data) == [(field, "field required")]


def test_several_problems_are_reported_together() -> None:
    data = {"name": "Bad Name", "type": "sideways", "stages": [], "colour": "red"}
    paths = paths_of(data)
    assert sorted(paths) == ["colour", "name", "type", "version"]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (base(bogus=1), "bogus"),
        (base(retry={"max_attempts": 2, "jitter": True}), "retry.jitter"),
        (base(stages=[{**native("a"), "colour": "red"}]), "stages[0].colour"),
        (base(stages=[native("a", "set", field="x", value=1, bogus=2)]), "stages[0].config.bogus"),
        (
            base(stages=[{"name": "u", "type": "python", "config": {"udf_name": "f", "udf": "x"}}]),
            "stages[0].config.udf",
        ),
        (
            base(stages=[{"name": "c", "type": "pipeline", "config": {"pipeline": "x", "params": {}}}]),
            "stages[0].config.params",
        ),
        (
            base(stages=[{"name": "g", "type": "composite", "config": {"stages": [native("a")], "policy": "x"}}]),
            "stages[0].config.policy",
        ),
        (
            base(
                stages=[
                    native("first"),
                    {"name": "g", "type": "composite", "config": {"stages": [{**native("a"), "oops": 1}]}},
                ]
            ),
            "stages[1].config.stages[0].oops",
        ),
    ],
)
def test_unknown_fields_are_refused(data: dict[str, Any], path: str) -> None:
    assert problems_of(data) == [(path, "unknown field")]


def test_message_names_path_and_problem() -> None:
    stages = [native("a"), native("b"), {"name": "c", "type": "python", "config": {}}]
    with pytest.raises(DefinitionError) as info:
        parse_definition(base(stages=stages))
    err = info.value
    assert err.problems == [("stages[2].config.udf_name", "field required")]
    assert str(err) == "invalid pipeline definition: stages[2].config.udf_name: field required"
    assert err.status == 400
    assert "stages[2].config.udf_name" in repr(err)


def test_python_stage_without_udf_name() -> None:
    stages = [native("a"), native("b"), {"name": "c", "type": "python", "config": {"parameters": {}}}]
    assert problems_of(base(stages=stages)) == [("stages[2].config.udf_name", "field required")]


@pytest.mark.parametrize("index", [0, 3])
def test_unknown_native_processor(index: int) -> None:
    stages = [native(f"s{i}") for i in range(4)]
    stages[index] = native(f"s{index}", "frobnicate")
    [(path, message)] = problems_of(base(stages=stages))
    assert path == f"stages[{index}].config.processor"
    assert "unknown native processor [frobnicate]" in message
    assert "lowercase" in message  # lists what is known


def test_native_stage_without_processor() -> None:
    stage = {"name": "a", "type": "native", "config": {"field": "x"}}
    assert problems_of(base(stages=[stage])) == [("stages[0].config.processor", "field required")]


@pytest.mark.parametrize(
    ("config", "path", "fragment"),
    [
        ({"processor": "set", "value": 1}, "stages[0].config.field", "field required"),
        ({"processor": "set", "field": "x"}, "stages[0].config.value", "field required"),
        ({"processor": "set", "field": "a..b", "value": 1}, "stages[0].config.field", "is not a field path"),
        ({"processor": "set", "field": "", "value": 1}, "stages[0].config.field", "is not a field path"),
        ({"processor": "rename", "field": "a"}, "stages[0].config.target_field", "field required"),
        ({"processor": "lowercase", "field": "a", "ignore_missing": "maybe"}, "stages[0].config.ignore_missing", ""),
        ({"processor": "convert", "field": "a", "type": "date"}, "stages[0].config.type", "'int'"),
        ({"processor": "convert", "field": "a"}, "stages[0].config.type", "field required"),
        ({"processor": "split", "field": "a", "separator": "("}, "stages[0].config.separator", "regular expression"),
        ({"processor": "split", "field": "a", "separator": ""}, "stages[0].config.separator", ""),
        ({"processor": "join", "field": "a"}, "stages[0].config.separator", "field required"),
        ({"processor": "remove", "field": []}, "stages[0].config.field", ""),
        ({"processor": "remove", "field": ["ok", "a..b"]}, "stages[0].config.field", "is not a field path"),
        ({"processor": "fail"}, "stages[0].config.message", "field required"),
        ({"processor": "fail", "message": ""}, "stages[0].config.message", ""),
        ({"processor": "drop", "field": "x", "values": [1]}, "stages[0].config.values", "unknown field"),
        ({"processor": "append", "field": "tags"}, "stages[0].config.value", "field required"),
        ({"processor": "uppercase", "field": "a", "target": "b"}, "stages[0].config.target", "unknown field"),
    ],
)
def test_bad_native_config(config: dict[str, Any], path: str, fragment: str) -> None:
    problems = problems_of(base(stages=[{"name": "n", "type": "native", "config": config}]))
    assert [p for p, _ in problems] == [path]
    assert fragment in problems[0][1]


def test_bad_native_config_inside_a_composite() -> None:
    inner = {"name": "g", "type": "composite", "config": {"stages": [native("ok"), native("bad", "set", value=1)]}}
    assert paths_of(base(stages=[native("a"), inner])) == ["stages[1].config.stages[1].config.field"]


def test_duplicate_stage_names() -> None:
    problems = problems_of(base(stages=[native("a"), native("b"), native("a")]))
    assert problems == [("stages[2].name", "duplicate stage name [a]")]


def test_duplicate_stage_names_inside_a_composite() -> None:
    group = {"name": "g", "type": "composite", "config": {"stages": [native("x"), native("x")]}}
    assert problems_of(base(stages=[group])) == [("stages[0].config.stages[1].name", "duplicate stage name [x]")]


def test_empty_composite() -> None:
    group = {"name": "g", "type": "composite", "config": {"stages": []}}
    assert paths_of(base(stages=[native("a"), group])) == ["stages[1].config.stages"]


def test_composite_without_stages() -> None:
    group = {"name": "g", "type": "composite", "config": {}}
    assert problems_of(base(stages=[group])) == [("stages[0].config.stages", "field required")]


@pytest.mark.parametrize(
    ("stage", "path", "fragment"),
    [
        ({"name": "a", "type": "wasm", "config": {}}, "stages[0].type", "unknown stage type [wasm]"),
        ({"name": "a", "type": 5, "config": {}}, "stages[0].type", "unknown stage type"),
        ({"name": "a", "config": {}}, "stages[0].type", "field required"),
        ({"name": "a", "type": "native"}, "stages[0].config", "field required"),
        ({"type": "native", "config": {"processor": "drop"}}, "stages[0].name", "field required"),
        ({"name": "", "type": "native", "config": {"processor": "drop"}}, "stages[0].name", ""),
        ({"name": "a" * 129, "type": "native", "config": {"processor": "drop"}}, "stages[0].name", ""),
        ({**native("a"), "enabled": "sometimes"}, "stages[0].enabled", ""),
        ({**native("a"), "on_failure": "explode"}, "stages[0].on_failure", ""),
        ({**native("a"), "timeout_ms": 0}, "stages[0].timeout_ms", ""),
        ({**native("a"), "timeout_ms": -5}, "stages[0].timeout_ms", ""),
        ({"name": "a", "type": "native", "config": "lowercase"}, "stages[0].config", ""),
        ({"name": "a", "type": "pipeline", "config": {}}, "stages[0].config.pipeline", "field required"),
        ({"name": "a", "type": "pipeline", "config": {"pipeline": "Bad"}}, "stages[0].config.pipeline", "valid name"),
        ({"name": "a", "type": "python", "config": {"udf_name": "Bad!"}}, "stages[0].config.udf_name", "valid name"),
        (
            {"name": "a", "type": "python", "config": {"udf_name": "f", "scope": "page"}},
            "stages[0].config.scope",
            "",
        ),
        (
            {"name": "a", "type": "python", "config": {"udf_name": "f", "memory_limit_mb": 0}},
            "stages[0].config.memory_limit_mb",
            "",
        ),
        (
            {"name": "a", "type": "python", "config": {"udf_name": "f", "target_field": ""}},
            "stages[0].config.target_field",
            "",
        ),
        (
            {"name": "a", "type": "python", "config": {"udf_name": "f", "target_field": "a..b"}},
            "stages[0].config.target_field",
            "[a..b] is not a field path",
        ),
        (
            {"name": "a", "type": "python", "config": {"udf_name": "f", "input_fields": ["_score", "_source."]}},
            "stages[0].config.input_fields[1]",
            "[_source.] is not a field path",
        ),
        (
            {"name": "a", "type": "python", "config": {"udf_name": "f", "input_fields": []}},
            "stages[0].config.input_fields",
            "at least 1",
        ),
        (
            {"name": "a", "type": "python", "config": {"udf_name": "f", "parameters": []}},
            "stages[0].config.parameters",
            "",
        ),
    ],
)
def test_malformed_stage(stage: dict[str, Any], path: str, fragment: str) -> None:
    problems = problems_of(base(stages=[stage]))
    assert [p for p, _ in problems] == [path]
    assert fragment in problems[0][1]


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"name": "Bad"}, "name"),
        ({"name": "-lead"}, "name"),
        ({"name": "a" * 129}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"version": 1}, "version"),
        ({"type": "index"}, "type"),
        ({"description": 3}, "description"),
        ({"metadata": []}, "metadata"),
        ({"enabled": "yes please"}, "enabled"),
        ({"on_failure": "explode"}, "on_failure"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"timeout_ms": "soon"}, "timeout_ms"),
        ({"parameters": "x"}, "parameters"),
        ({"stages": "x"}, "stages"),
        ({"stages": {"a": 1}}, "stages"),
        ({"stages": ["x"]}, "stages[0]"),
        ({"stages": [native("a"), 7]}, "stages[1]"),
        ({"retry": 3}, "retry"),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
        ({"retry": {"max_attempts": 101}}, "retry.max_attempts"),
        ({"retry": {"multiplier": 0.5}}, "retry.multiplier"),
        ({"retry": {"initial_backoff_ms": -1}}, "retry.initial_backoff_ms"),
        ({"retry": {"max_backoff_ms": -1}}, "retry.max_backoff_ms"),
        ({"retry": {"then": "retry"}}, "retry.then"),
    ],
)
def test_malformed_top_level_fields(overrides: dict[str, Any], path: str) -> None:
    assert paths_of(base(**overrides)) == [path]


def test_bad_name_message_shows_the_pattern() -> None:
    [(path, message)] = problems_of(base(name="Bad"))
    assert path == "name"
    assert "'Bad'" in message
    assert "[a-z0-9][a-z0-9_.-]{0,127}" in message


@pytest.mark.parametrize("version", ["1.0", "1", "v1.0.0", "01.0.0", "1.0.0.0", "latest", "", "1.x.0"])
def test_bad_semver(version: str) -> None:
    [(path, message)] = problems_of(base(version=version))
    assert path == "version"
    assert "is not a semantic version" in message


@pytest.mark.parametrize("version", ["1.0", "v2", "1.x"])
def test_bad_udf_version(version: str) -> None:
    stage = {"name": "u", "type": "python", "config": {"udf_name": "f", "udf_version": version}}
    [(path, message)] = problems_of(base(stages=[native("a"), stage]))
    assert path == "stages[1].config.udf_version"
    assert f"[{version}] is not a semantic version" in message


@pytest.mark.parametrize("data", [[], "pipeline", 3, None, 1.5, True])
def test_non_object_definition(data: Any) -> None:
    [(path, message)] = problems_of(data)
    assert path == ""
    assert "a pipeline definition is an object" in message


def test_nesting_at_max_depth_is_allowed() -> None:
    d = parse_definition(base(stages=[nested(MAX_DEPTH)]))
    assert max(depth for _, depth, _ in iter_stages(d.stages)) == MAX_DEPTH


def test_nesting_deeper_than_max_depth() -> None:
    assert MAX_DEPTH == 16
    [(path, message)] = problems_of(base(stages=[native("a"), nested(MAX_DEPTH + 1)]))
    assert path == "stages[1]" + ".config.stages[0]" * MAX_DEPTH
    assert message == "stages nest deeper than 16 levels"


def test_deep_nesting_names_the_first_stage_too_deep() -> None:
    problems = problems_of(base(stages=[nested(40)]))
    assert problems[0] == ("stages[0]" + ".config.stages[0]" * MAX_DEPTH, "stages nest deeper than 16 levels")


@pytest.mark.parametrize("depth", [300, 1000, 3000])
def test_very_deep_nesting_is_a_definition_error(depth: int) -> None:
    # Past pydantic's own recursion guard the message changes, but it is still a DefinitionError.
    problems_of(base(stages=[nested(depth)]))


def test_max_stages_is_allowed() -> None:
    assert MAX_STAGES == 256
    d = parse_definition(base(stages=[native(f"s{i}") for i in range(MAX_STAGES)]))
    assert len(d.stages) == MAX_STAGES


def test_more_than_max_stages() -> None:
    problems = problems_of(base(stages=[native(f"s{i}") for i in range(MAX_STAGES + 1)]))
    assert problems == [("stages", "257 stages in all; at most 256 are allowed")]


def test_nested_stages_count_towards_the_limit() -> None:
    # One composite plus 255 children is 256 stages in all; one more child is too many.
    ok = {"name": "g", "type": "composite", "config": {"stages": [native(f"s{i}") for i in range(MAX_STAGES - 1)]}}
    parse_definition(base(stages=[ok]))
    too_many = copy.deepcopy(ok)
    too_many["config"]["stages"].append(native("one-more"))
    assert problems_of(base(stages=[too_many])) == [("stages", "257 stages in all; at most 256 are allowed")]


def test_definition_error_is_a_quidditch_error() -> None:
    with pytest.raises(QuidditchError):
        parse_definition(base(name="Bad"))


# --- JSON and YAML -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_dump_and_load_round_trip(fmt: str) -> None:
    d = parse_definition(copy.deepcopy(FULL))
    text = dump_definition(d, fmt)  # type: ignore[arg-type]
    assert load_definition(text, fmt) == d  # type: ignore[arg-type]
    assert load_definition(text) == d  # format sniffed
    assert load_definition(text.encode()) == d


def test_dump_json_is_json_and_leaves_out_unset_optionals() -> None:
    d = parse_definition(base(stages=[native("a")]))
    data = orjson.loads(dump_definition(d))
    assert data["name"] == "p"
    assert "description" not in data
    assert "timeout_ms" not in data
    assert "on_failure" not in data["stages"][0]
    assert data["stages"][0]["config"] == {"processor": "drop"}


def test_dump_yaml_is_yaml() -> None:
    d = parse_definition(copy.deepcopy(FULL))
    data = yaml.safe_load(dump_definition(d, "yaml"))
    assert data == orjson.loads(dump_definition(d, "json"))
    assert data == d.to_dict()


def test_to_dict_parses_back_equal() -> None:
    d = parse_definition(copy.deepcopy(FULL))
    assert parse_definition(d.to_dict()) == d


def test_load_yaml_definition() -> None:
    text = """
name: lower-titles
version: 0.1.0
type: document
stages:
  - name: lower
    type: native
    config: {processor: lowercase, field: title}
  - name: boost
    type: python
    config:
      udf_name: boost_recent
      udf_version: latest
"""
    d = load_definition(text)
    assert d.name == "lower-titles"
    assert [s.name for s in d.stages] == ["lower", "boost"]
    boost = d.stages[1]
    assert isinstance(boost, PythonStage)
    assert boost.config.udf_version is None
    assert load_definition(text, "yaml") == d


def test_load_invalid_json_when_json_is_asked_for() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition("{not json", "json")
    [(path, message)] = info.value.problems
    assert path == ""
    assert message.startswith("not valid JSON")


@pytest.mark.parametrize("text", ["{not: [valid", "a: b: c", "key: [unclosed"])
def test_load_invalid_yaml(text: str) -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(text)
    assert info.value.problems[0][1].startswith("not valid JSON or YAML")


@pytest.mark.parametrize("text", ["", "just a string", "- a\n- b\n", "42"])
def test_load_non_object_documents(text: str) -> None:
    with pytest.raises(DefinitionError, match="a pipeline definition is an object"):
        load_definition(text)


def test_load_reports_field_paths() -> None:
    text = orjson.dumps(base(stages=[native("a"), native("b", "nope")]))
    with pytest.raises(DefinitionError) as info:
        load_definition(text)
    assert [p for p, _ in info.value.problems] == ["stages[1].config.processor"]


@pytest.mark.parametrize(
    "text",
    [
        # YAML can say things JSON cannot; whatever parses must dump and load back equal (or be refused).
        "name: p\nversion: 1.0.0\ntype: query\ntimeout_ms: .inf\nstages: []\n",
        "name: p\nversion: 1.0.0\ntype: query\nmetadata: {n: .nan}\nstages: []\n",
        "name: p\nversion: 1.0.0\ntype: query\nmetadata: {n: 123456789012345678901234567890}\nstages: []\n",
    ],
    ids=["infinite-timeout", "nan-in-metadata", "int-beyond-64-bits"],
)
def test_whatever_parses_round_trips_through_json(text: str) -> None:
    try:
        d = load_definition(text, "yaml")
    except DefinitionError:
        return  # refusing such a value is fine too
    assert load_definition(dump_definition(d, "json"), "json") == d


@pytest.mark.parametrize("processor", ["set", "append"])
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_null_processor_option_survives_a_dump(processor: str, fmt: str) -> None:
    # {"processor": "set", "value": null} sets a field to null; the dump must keep the null.
    d = parse_definition(base(stages=[native("n", processor, field="x", value=None)]))
    text = dump_definition(d, fmt)  # type: ignore[arg-type]
    assert load_definition(text, fmt) == d  # type: ignore[arg-type]
    stage = d.to_dict()["stages"][0]
    assert stage["config"] == {"processor": processor, "field": "x", "value": None}


@pytest.mark.parametrize("text", ["\x85", "a\x85b", "line\u2028sep", "caf\u00e9"])
def test_yaml_dump_keeps_every_character(text: str) -> None:
    d = parse_definition(base(description=text, metadata={text: text}))
    assert load_definition(dump_definition(d, "yaml"), "yaml") == d


# --- retry policy --------------------------------------------------------------------------------------------


def test_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff_ms=10, multiplier=2.0, max_backoff_ms=100)
    assert [policy.backoff_s(a) for a in range(1, 7)] == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.1, 0.1])


def test_backoff_default_and_constant() -> None:
    assert RetryPolicy().backoff_s(1) == pytest.approx(0.01)
    assert RetryPolicy().backoff_s(3) == pytest.approx(0.04)
    constant = RetryPolicy(initial_backoff_ms=5, multiplier=1.0)
    assert [constant.backoff_s(a) for a in (1, 2, 10)] == pytest.approx([0.005] * 3)
    assert RetryPolicy(initial_backoff_ms=0).backoff_s(4) == 0.0


def test_backoff_never_overflows() -> None:
    policy = RetryPolicy(max_attempts=100, initial_backoff_ms=1000, multiplier=10.0, max_backoff_ms=2000)
    assert policy.backoff_s(100) == pytest.approx(2.0)


# --- property tests ------------------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)
field_paths = st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=3).map(
    ".".join
)
semvers = st.builds(
    lambda major, minor, patch, pre: f"{major}.{minor}.{patch}{pre}",
    st.integers(0, 999),
    st.integers(0, 999),
    st.integers(0, 999),
    st.sampled_from(["", "-alpha", "-rc.1", "+build.7", "-beta.2+exp.sha.5114f85"]),
)
# A UDF version has no build metadata (see parse_udf_version).
udf_semvers = semvers.filter(lambda version: "+" not in version)
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
positive_ms = st.floats(min_value=0.001, max_value=1e7, allow_nan=False, allow_infinity=False)


def optional(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


def merged(*parts: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    def combine(dicts: tuple[dict[str, Any], ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in dicts:
            out.update(d)
        return out

    return st.tuples(*parts).map(combine)


def _processor_configs() -> st.SearchStrategy[dict[str, Any]]:
    fixed = st.fixed_dictionaries
    bools = st.booleans()
    targeted = merged(
        fixed({"field": field_paths}), optional("target_field", field_paths), optional("ignore_missing", bools)
    )
    return st.one_of(
        merged(
            fixed({"processor": st.just("set"), "field": field_paths, "value": json_values}),
            optional("override", bools),
        ),
        merged(
            fixed(
                {"processor": st.just("remove"), "field": field_paths | st.lists(field_paths, min_size=1, max_size=3)}
            ),
            optional("ignore_missing", bools),
        ),
        merged(
            fixed(
                {"processor": st.sampled_from(["rename", "copy"]), "field": field_paths, "target_field": field_paths}
            ),
            optional("ignore_missing", bools),
            optional("override", bools),
        ),
        merged(fixed({"processor": st.sampled_from(["lowercase", "uppercase", "trim"])}), targeted),
        merged(
            fixed({"processor": st.just("split"), "separator": st.sampled_from([",", r"\s+", "-", r"\|"])}),
            targeted,
            optional("preserve_trailing", bools),
        ),
        merged(fixed({"processor": st.just("join"), "separator": st.text(max_size=3)}), targeted),
        merged(
            fixed(
                {
                    "processor": st.just("convert"),
                    "type": st.sampled_from(["int", "float", "bool", "string", "integer", "long", "double", "boolean"]),
                }
            ),
            targeted,
        ),
        merged(
            fixed({"processor": st.just("append"), "field": field_paths, "value": json_values}),
            optional("allow_duplicates", bools),
        ),
        merged(fixed({"processor": st.just("drop")}), optional("field", field_paths), optional("value", json_values)),
        fixed({"processor": st.just("fail"), "message": st.text(min_size=1, max_size=20)}),
    )


def _stage_common(name: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return merged(
        st.fixed_dictionaries({"name": name}),
        optional("description", st.text(max_size=20)),
        optional("enabled", st.booleans()),
        optional("on_failure", st.sampled_from(["abort", "continue", "retry"])),
        optional("timeout_ms", positive_ms),
    )


stage_names = st.text(min_size=1, max_size=12)
native_stages = st.tuples(_stage_common(stage_names), _processor_configs()).map(
    lambda t: {**t[0], "type": "native", "config": t[1]}
)
python_configs = merged(
    st.fixed_dictionaries({"udf_name": names}),
    optional("udf_version", udf_semvers | st.just("latest")),
    optional("parameters", json_objects),
    optional("target_field", field_paths),
    optional("scope", st.sampled_from(["hit", "response"])),
    optional("memory_limit_mb", st.integers(1, 4096)),
    optional("input_fields", st.lists(field_paths, min_size=1, max_size=4)),
)
python_stages = st.tuples(_stage_common(stage_names), python_configs).map(
    lambda t: {**t[0], "type": "python", "config": t[1]}
)
pipeline_stages = st.tuples(_stage_common(stage_names), names).map(
    lambda t: {**t[0], "type": "pipeline", "config": {"pipeline": t[1]}}
)


def _stage_lists(stage: st.SearchStrategy[dict[str, Any]], min_size: int) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(stage, min_size=min_size, max_size=3, unique_by=lambda s: s["name"])


leaf_stages = native_stages | python_stages | pipeline_stages
stages = st.recursive(
    leaf_stages,
    lambda children: st.tuples(_stage_common(stage_names), _stage_lists(children, 1)).map(
        lambda t: {**t[0], "type": "composite", "config": {"stages": t[1]}}
    ),
    max_leaves=6,
)
retry_policies = merged(
    optional("max_attempts", st.integers(1, 100)),
    optional("initial_backoff_ms", st.floats(0, 1e6)),
    optional("multiplier", st.floats(1.0, 100.0)),
    optional("max_backoff_ms", st.floats(0, 1e6)),
    optional("then", st.sampled_from(["abort", "continue"])),
)
definitions = merged(
    st.fixed_dictionaries(
        {
            "name": names,
            "version": semvers,
            "type": st.sampled_from(["query", "document", "result"]),
            "stages": _stage_lists(stages, 0),
        }
    ),
    optional("description", st.text(max_size=30)),
    optional("metadata", json_objects),
    optional("enabled", st.booleans()),
    optional("on_failure", st.sampled_from(["abort", "continue", "retry"])),
    optional("retry", retry_policies),
    optional("timeout_ms", positive_ms),
    optional("parameters", json_objects),
)


@settings(PROPERTY_SETTINGS, max_examples=50)  # each example dumps and parses YAML twice: ~50 ms
@given(definitions)
def test_property_valid_definitions_round_trip(data: dict[str, Any]) -> None:
    parsed = parse_definition(data)
    as_json = dump_definition(parsed, "json")
    as_yaml = dump_definition(parsed, "yaml")
    assert load_definition(as_json, "json") == parsed
    assert load_definition(as_yaml, "yaml") == parsed
    assert load_definition(as_json) == parsed
    assert load_definition(as_yaml) == parsed
    assert parse_definition(parsed.to_dict()) == parsed
    # And dumping what was loaded gives the same text: the dump is a fixed point.
    assert dump_definition(load_definition(as_json, "json"), "json") == as_json


def _mutations(data: dict[str, Any]) -> st.SearchStrategy[Any]:
    """``data`` with one thing somewhere in it removed, replaced by arbitrary JSON, or added."""

    def mutate(choice: int, action: str, key: str, value: Any) -> Any:
        out = copy.deepcopy(data)
        found: list[Any] = []

        def collect(node: Any) -> None:
            if isinstance(node, dict):
                found.append(node)
                for v in node.values():
                    collect(v)
            elif isinstance(node, list):
                found.append(node)
                for v in node:
                    collect(v)

        collect(out)
        target = found[choice % len(found)]
        if isinstance(target, dict):
            keys = sorted(target)
            if action == "add" or not keys:
                target[key] = value
            else:
                picked = keys[choice % len(keys)]
                if action == "remove":
                    del target[picked]
                else:
                    target[picked] = value
        else:
            if action == "add" or not target:
                target.append(value)
            elif action == "remove":
                target.pop(choice % len(target))
            else:
                target[choice % len(target)] = value
        return out

    return st.builds(
        mutate,
        st.integers(0, 10_000),
        st.sampled_from(["add", "remove", "replace"]),
        st.sampled_from(["name", "type", "config", "stages", "processor", "udf_name", "x"]) | st.text(max_size=6),
        json_values | st.integers() | st.sampled_from(["native", "composite", "python", "pipeline", "latest", ""]),
    )


any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
almost_definitions = definitions.flatmap(_mutations)
definition_like = st.fixed_dictionaries(
    {},
    optional={
        "name": any_json | names,
        "version": any_json | semvers,
        "type": any_json | st.sampled_from(["query", "document", "result"]),
        "stages": st.lists(any_json | leaf_stages, max_size=3) | any_json,
        "retry": any_json | retry_policies,
        "metadata": any_json,
    },
)


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(any_json | almost_definitions | definition_like)
def test_property_arbitrary_json_parses_or_raises_definition_error(data: Any) -> None:
    try:
        parsed = parse_definition(data)
    except DefinitionError as exc:
        assert exc.problems
        for path, message in exc.problems:
            assert isinstance(path, str)
            assert isinstance(message, str) and message
        return
    assert isinstance(parsed, PipelineDefinition)


@PROPERTY_SETTINGS
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_property_arbitrary_text_loads_or_raises_definition_error(text: str | bytes) -> None:
    with contextlib.suppress(DefinitionError):
        load_definition(text)


# --- issue 10: bounded parsing, names matched whole ------------------------------------------------------------



@pytest.mark.timeout(10)
def test_a_yaml_bomb_is_refused_at_its_first_alias() -> None:
    with pytest.raises(DefinitionError, match=r"line 7: YAML aliases \(\*a\) are not allowed"):
        load_definition(BILLION_LAUGHS, "yaml")
    with pytest.raises(DefinitionError, match="YAML aliases"):
        load_definition(BILLION_LAUGHS)  # not JSON, so read as YAML: the same refusal


def test_yaml_anchors_without_aliases_still_load() -> None:
    text = "name: p\nversion: 1.0.0\ntype: document\nparameters: &params {a: 1}\nstages: []\n"
    assert load_definition(text, "yaml").parameters == {"a": 1}


def test_a_definition_nested_too_deep_is_refused_naming_where() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_DEFINITION_DEPTH + 5):
        deep = {"k": deep}
    [(path, message)] = problems_of(base(parameters=deep))
    assert path.startswith("parameters.k.k") and message == f"values nest deeper than {MAX_DEFINITION_DEPTH} levels"


def test_a_definition_with_too_many_values_is_refused() -> None:
    [(_, message)] = problems_of(base(parameters={"table": list(range(MAX_DEFINITION_NODES))}))
    assert message == f"the definition holds more than {MAX_DEFINITION_NODES} values"
    # A large but sane table passes.
    assert len(parse_definition(base(parameters={"table": list(range(50_000))})).parameters["table"]) == 50_000


@pytest.mark.parametrize("name", ["p\n", "p\n\n", "p ", "\np"])
def test_names_are_matched_whole(name: str) -> None:
    assert not is_valid_name(name)
    problems_of(base(name=name))
    stage = {"name": "c", "type": "pipeline", "config": {"pipeline": name}}
    problems_of(base(stages=[stage]))


def test_latest_is_the_highest_release_never_a_pre_release_beside_one() -> None:
    assert latest_version(["1.0.0", "1.1.0-rc.1", "2.0.0-alpha"]) == "1.0.0"
    assert latest_version(["1.0.0-rc.1", "1.0.0-rc.2"]) == "1.0.0-rc.2"
    assert latest_version([]) is None
