"""Imported Elasticsearch ingest processors behave as Elasticsearch's reference documents them.

Each case was written from the processor's reference page (cited above it): an ingest pipeline, a document,
and the documented outcome (the document after the pipeline, ``DROPPED``, or an error naming the cause). The
pipeline goes through the importer and runs on the real executor, exactly as an imported pipeline does.

Elasticsearch pages are under https://www.elastic.co/guide/en/elasticsearch/reference/8.15/ (``set-processor.html``
...), OpenSearch ones under https://docs.opensearch.org/docs/latest/search-plugins/search-pipelines/.
"""

from __future__ import annotations

from typing import Any, Final

import pytest

from quidditch_pipeline import PipelineService
from quidditch_pipeline.compat import from_elasticsearch, from_opensearch

DROPPED: Final = "dropped"


class Fails:
    """The documented outcome is an exception; ``cause`` is a part of its message."""

    def __init__(self, cause: str) -> None:
        self.cause = cause

    def __repr__(self) -> str:
        return f"Fails({self.cause!r})"


CASES: Final[list[tuple[str, dict[str, Any], dict[str, Any], Any]]] = [
    # set-processor.html: "Sets one field and associates it with the specified value. If the field already
    # exists, its value will be replaced with the provided one."
    ("set adds a field", {"set": {"field": "count", "value": 1}}, {}, {"count": 1}),
    ("set replaces a value", {"set": {"field": "count", "value": 1}}, {"count": 5}, {"count": 1}),
    (
        "set creates the objects of a dotted path",
        {"set": {"field": "host.os.name", "value": "Ubuntu"}},
        {"os": "x"},
        {"os": "x", "host": {"os": {"name": "Ubuntu"}}},
    ),
    # set-processor.html, override: "If processor will update fields with pre-existing non-null-valued field.
    # When set to false, such fields will not be touched."
    (
        "set override false keeps a non-null value",
        {"set": {"field": "a", "value": 2, "override": False}},
        {"a": 1},
        {"a": 1},
    ),
    (
        "set override false fills a null value",
        {"set": {"field": "a", "value": 2, "override": False}},
        {"a": None},
        {"a": 2},
    ),
    ("set override false fills a missing field", {"set": {"field": "a", "value": 2, "override": False}}, {}, {"a": 2}),
    # remove-processor.html: "Removes existing fields. If one field doesn't exist, an exception will be thrown."
    # field: "Fields to be removed. Supports template snippets." (a string or an array)
    ("remove one field", {"remove": {"field": "user_agent"}}, {"user_agent": "x", "a": 1}, {"a": 1}),
    (
        "remove a list of fields",
        {"remove": {"field": ["user_agent", "url"]}},
        {"user_agent": "x", "url": "u", "a": 1},
        {"a": 1},
    ),
    ("remove a missing field fails", {"remove": {"field": "nope"}}, {"a": 1}, Fails("field [nope] not present")),
    # remove-processor.html, ignore_missing: "If true and field does not exist or is null, the processor quietly
    # exits without modifying the document"
    ("remove ignore_missing", {"remove": {"field": ["a", "nope"], "ignore_missing": True}}, {"a": 1, "b": 2}, {"b": 2}),
    # rename-processor.html: "Renames an existing field. If the field doesn't exist or the new name is already
    # used, an exception will be thrown."
    (
        "rename moves the value",
        {"rename": {"field": "provider", "target_field": "cloud.provider"}},
        {"provider": "aws"},
        {"cloud": {"provider": "aws"}},
    ),
    (
        "rename a missing field fails",
        {"rename": {"field": "provider", "target_field": "p"}},
        {},
        Fails("field [provider] not present"),
    ),
    (
        "rename onto a used name fails",
        {"rename": {"field": "a", "target_field": "b"}},
        {"a": 1, "b": 2},
        Fails("field [b] already exists"),
    ),
    # rename-processor.html, ignore_missing: "If true and field does not exist, the processor quietly exits"
    (
        "rename ignore_missing",
        {"rename": {"field": "a", "target_field": "b", "ignore_missing": True}},
        {"c": 1},
        {"c": 1},
    ),
    # rename-processor.html, override: "If true, the processor will update pre-existing non-null-valued fields."
    ("rename override", {"rename": {"field": "a", "target_field": "b", "override": True}}, {"a": 1, "b": 2}, {"b": 1}),
    # lowercase-processor.html: "Converts a string to its lowercase equivalent. If the field is an array of
    # strings, all members of the array will be converted."
    ("lowercase a string", {"lowercase": {"field": "foo"}}, {"foo": "FoO"}, {"foo": "foo"}),
    ("lowercase an array", {"lowercase": {"field": "foo"}}, {"foo": ["A", "Bc"]}, {"foo": ["a", "bc"]}),
    # lowercase-processor.html, target_field: "The field to assign the converted value to, by default field is
    # updated in-place"
    (
        "lowercase into a target",
        {"lowercase": {"field": "foo", "target_field": "bar"}},
        {"foo": "X"},
        {"foo": "X", "bar": "x"},
    ),
    ("lowercase a missing field fails", {"lowercase": {"field": "foo"}}, {}, Fails("field [foo] not present")),
    # lowercase-processor.html, ignore_missing: "If true and field does not exist or is null, the processor
    # quietly exits without modifying the document"
    ("lowercase ignore_missing, missing", {"lowercase": {"field": "foo", "ignore_missing": True}}, {"a": 1}, {"a": 1}),
    (
        "lowercase ignore_missing, null",
        {"lowercase": {"field": "foo", "ignore_missing": True}},
        {"foo": None},
        {"foo": None},
    ),
    # uppercase-processor.html: "Converts a string to its uppercase equivalent. If the field is an array of
    # strings, all members of the array will be converted."
    ("uppercase a string", {"uppercase": {"field": "foo"}}, {"foo": "bar"}, {"foo": "BAR"}),
    ("uppercase an array", {"uppercase": {"field": "foo"}}, {"foo": ["a", "b"]}, {"foo": ["A", "B"]}),
    # trim-processor.html: "Trims whitespace from field. If the field is an array of strings, all members of the
    # array will be trimmed. NOTE: This only works on leading and trailing whitespace."
    ("trim a string", {"trim": {"field": "foo"}}, {"foo": "  a b  "}, {"foo": "a b"}),
    ("trim an array", {"trim": {"field": "foo"}}, {"foo": [" a", "b "]}, {"foo": ["a", "b"]}),
    # split-processor.html: "Splits a field into an array using a separator character. Only works on string
    # fields." separator: "A regex which matches the separator, eg , or \s+"
    (
        "split on a regex",
        {"split": {"field": "my_field", "separator": "\\s+"}},
        {"my_field": "a  b\tc"},
        {"my_field": ["a", "b", "c"]},
    ),
    # split-processor.html: "a value of A,,B,, ... If the preserve_trailing property were not enabled, the two
    # empty trailing fields would be discarded resulting in the three-element array ["A", "", "B"]."
    (
        "split drops trailing empties",
        {"split": {"field": "f", "separator": ","}},
        {"f": "A,,B,,"},
        {"f": ["A", "", "B"]},
    ),
    (
        "split preserve_trailing",
        {"split": {"field": "f", "separator": ",", "preserve_trailing": True}},
        {"f": "A,,B,,"},
        {"f": ["A", "", "B", "", ""]},
    ),
    ("split a non-string fails", {"split": {"field": "f", "separator": ","}}, {"f": 3}, Fails("not a string")),
    # split-processor.html, ignore_missing: "If true and field does not exist, the processor quietly exits"
    ("split ignore_missing", {"split": {"field": "f", "separator": ",", "ignore_missing": True}}, {}, {}),
    # join-processor.html: "Joins each element of an array into a single string using a separator character
    # between each element. Throws an error when the field is not an array."
    (
        "join an array",
        {"join": {"field": "joined_array_field", "separator": "-"}},
        {"joined_array_field": ["a", "b"]},
        {"joined_array_field": "a-b"},
    ),
    (
        "join into a target",
        {"join": {"field": "f", "separator": ",", "target_field": "t"}},
        {"f": ["x", "y"]},
        {"f": ["x", "y"], "t": "x,y"},
    ),
    ("join a non-array fails", {"join": {"field": "f", "separator": "-"}}, {"f": "ab"}, Fails("not a list")),
    # convert-processor.html: "Converts a field in the currently ingested document to a different type, such as
    # converting a string to an integer. If the field value is an array, all members will be converted."
    ("convert to integer", {"convert": {"field": "id", "type": "integer"}}, {"id": "42"}, {"id": 42}),
    ("convert an array", {"convert": {"field": "ids", "type": "long"}}, {"ids": ["1", "2"]}, {"ids": [1, 2]}),
    ("convert to float", {"convert": {"field": "p", "type": "float"}}, {"p": "242.15"}, {"p": 242.15}),
    ("convert to string", {"convert": {"field": "n", "type": "string"}}, {"n": 42}, {"n": "42"}),
    (
        "convert into a target",
        {"convert": {"field": "n", "type": "double", "target_field": "d"}},
        {"n": "1.5"},
        {"n": "1.5", "d": 1.5},
    ),
    # convert-processor.html: "Specifying boolean will set the field to true if its string value is equal to true
    # (ignore case), to false if its string value is equal to false (ignore case), or it will throw an exception
    # otherwise."
    ("convert boolean ignores case", {"convert": {"field": "b", "type": "boolean"}}, {"b": "TRUE"}, {"b": True}),
    ("convert boolean false", {"convert": {"field": "b", "type": "boolean"}}, {"b": "False"}, {"b": False}),
    (
        "convert boolean refuses others",
        {"convert": {"field": "b", "type": "boolean"}},
        {"b": "yes"},
        Fails("cannot convert 'yes' to bool"),
    ),
    (
        "convert integer refuses words",
        {"convert": {"field": "id", "type": "integer"}},
        {"id": "forty"},
        Fails("cannot convert 'forty' to int"),
    ),
    # convert-processor.html, ignore_missing: "If true and field does not exist or is null, the processor quietly
    # exits without modifying the document"
    (
        "convert ignore_missing, missing",
        {"convert": {"field": "id", "type": "integer", "ignore_missing": True}},
        {},
        {},
    ),
    (
        "convert ignore_missing, null",
        {"convert": {"field": "id", "type": "integer", "ignore_missing": True}},
        {"id": None},
        {"id": None},
    ),
    # append-processor.html: "Appends one or more values to an existing array if the field already exists and it
    # is an array. Converts a scalar to an array and appends one or more values to it if the field exists and it
    # is a scalar. Creates an array containing the provided values if the field doesn't exist. Accepts a single
    # value or an array of values."
    (
        "append to an array",
        {"append": {"field": "tags", "value": ["b", "c"]}},
        {"tags": ["a"]},
        {"tags": ["a", "b", "c"]},
    ),
    ("append to a scalar", {"append": {"field": "tags", "value": "b"}}, {"tags": "a"}, {"tags": ["a", "b"]}),
    ("append creates the array", {"append": {"field": "tags", "value": ["production"]}}, {}, {"tags": ["production"]}),
    # append-processor.html, allow_duplicates: "If false, the processor does not append values already present in
    # the field."
    (
        "append allow_duplicates false",
        {"append": {"field": "t", "value": ["a", "b"], "allow_duplicates": False}},
        {"t": ["a"]},
        {"t": ["a", "b"]},
    ),
    # drop-processor.html: "Drops the document without raising any errors. This is useful to prevent the document
    # from getting indexed based on some condition."
    ("drop drops the document", {"drop": {}}, {"a": 1}, DROPPED),
    # fail-processor.html: "Raises an exception. This is useful for when you expect a pipeline to fail and want
    # to relay a specific message to the requester."
    ("fail raises its message", {"fail": {"message": "custom error"}}, {"a": 1}, Fails("custom error")),
    # ingest.html "Handling pipeline failures", ignore_failure: "Ignore failures for the processor." The
    # document goes on unchanged by the failing processor.
    ("ignore_failure carries on", {"fail": {"message": "x", "ignore_failure": True}}, {"a": 1}, {"a": 1}),
]


def run(service: PipelineService, processors: list[dict[str, Any]], doc: dict[str, Any]) -> dict[str, Any]:
    translation = from_elasticsearch({"processors": processors}, "case")
    assert translation.findings == []
    (definition,) = translation.definitions
    result: dict[str, Any] = service.execute(definition, doc)
    return result


def _params() -> list[Any]:
    return [pytest.param(*case[1:], id=case[0]) for case in CASES]


@pytest.mark.parametrize(("processor", "doc", "expected"), _params())
def test_documented_outcome(
    service: PipelineService, processor: dict[str, Any], doc: dict[str, Any], expected: Any
) -> None:
    result = run(service, [processor], doc)
    if isinstance(expected, Fails):
        assert result["status"] == "failed", result
        assert expected.cause in result["error"]["reason"]
    elif expected == DROPPED:
        assert result["status"] == "dropped", result
    else:
        assert result["status"] == "success", result
        assert result["output"] == expected


def test_pipeline_processor_runs_the_named_pipeline(service: PipelineService) -> None:
    # pipeline-processor.html: "Executes another pipeline." The outer pipeline goes on with the document the
    # inner one returned.
    inner = from_elasticsearch({"processors": [{"set": {"field": "inner", "value": True}}]}, "inner")
    service.put_pipeline(inner.definitions[0])
    result = run(service, [{"pipeline": {"name": "inner"}}, {"set": {"field": "outer", "value": True}}], {})
    assert result["output"] == {"inner": True, "outer": True}


def run_search_side(service: PipelineService, body: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    translation = from_opensearch(body, "case")
    assert translation.findings == []
    (definition,) = translation.definitions
    result: dict[str, Any] = service.execute(definition, value)
    return result


def test_filter_query_adds_a_filter_to_the_request(service: PipelineService) -> None:
    # filter-query-processor/: "The filter_query search request processor intercepts a search request and applies
    # an additional query to the request, filtering the results." (only public documents match)
    body = {"request_processors": [{"filter_query": {"query": {"term": {"visibility": "public"}}}}]}
    result = run_search_side(service, body, {"query": {"match": {"message": "hello"}}})
    query = result["output"]["query"]["bool"]
    assert query == {"must": [{"match": {"message": "hello"}}], "filter": [{"term": {"visibility": "public"}}]}


def hits(*sources: dict[str, Any]) -> dict[str, Any]:
    return {"hits": [{"_id": str(i), "_score": 1.0, "_source": s} for i, s in enumerate(sources)]}


def test_rename_field_renames_in_each_hit(service: PipelineService) -> None:
    # rename-field-processor/: "The rename_field search response processor intercepts a search response and
    # renames the specified field."
    body = {"response_processors": [{"rename_field": {"field": "message", "target_field": "notification"}}]}
    result = run_search_side(service, body, hits({"message": "a"}, {"message": "b", "x": 1}))
    assert [h["_source"] for h in result["output"]["hits"]] == [{"notification": "a"}, {"notification": "b", "x": 1}]


def test_rename_field_missing_in_a_hit(service: PipelineService) -> None:
    # rename-field-processor/, ignore_missing: "Whether or not to ignore if field is missing in any of the hits.
    # Default false" (so a hit without it fails the response)
    body = {"response_processors": [{"rename_field": {"field": "message", "target_field": "n"}}]}
    assert run_search_side(service, body, hits({"message": "a"}, {"other": 1}))["status"] == "failed"
    body["response_processors"][0]["rename_field"]["ignore_missing"] = True
    result = run_search_side(service, body, hits({"message": "a"}, {"other": 1}))
    assert [h["_source"] for h in result["output"]["hits"]] == [{"n": "a"}, {"other": 1}]
