"""The OpenAPI schema: FastAPI's, plus the pipeline definition's JSON schema and ES-shaped 400s."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..definitions import PipelineDefinition
from ._responses import REASONS


def openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the pipeline definition's JSON schema (from the one pydantic model)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    definition = PipelineDefinition.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(definition.pop("$defs", {}))
    # The name may be left out of the body: the URL names the pipeline.
    definition["required"] = [f for f in definition.get("required", []) if f != "name"]
    components["PipelineDefinition"] = definition
    for operations in schema["paths"].values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            # Parameter validation answers 400 in Elasticsearch's error shape, never FastAPI's 422.
            responses.pop("422", None)
            if method != "head":
                responses.setdefault(
                    "400",
                    {
                        "description": REASONS[400],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                    },
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema
