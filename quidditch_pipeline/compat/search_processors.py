"""The native processor OpenSearch search pipelines need that DESIGN §3 has not: ``filter_query``.

``filter_query`` (query pipelines) adds ``query`` as a bool filter around the request's query, as OpenSearch's
processor does (the original query, if any, becomes the bool's ``must``). Registered with
:func:`register_processor` when :mod:`quidditch_pipeline` is imported, so a stored pipeline using it always loads.
(``rename_field`` needs no processor of its own: a native stage of a result pipeline runs on each hit, so it is
``rename`` on ``_source.`` paths.)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..processors import register_processor


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilterQueryConfig(_Config):
    query: dict[str, Any] = Field(min_length=1)


@register_processor("filter_query", config=FilterQueryConfig)
def filter_query(body: dict[str, Any], config: FilterQueryConfig) -> dict[str, Any]:
    bool_query: dict[str, Any] = {"filter": [config.query]}
    if body.get("query") is not None:
        bool_query = {"must": [body["query"]], **bool_query}
    body["query"] = {"bool": bool_query}
    return body
