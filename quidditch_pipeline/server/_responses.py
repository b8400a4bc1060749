"""The JSON response class (orjson) and the response models and helpers that document routes in OpenAPI."""

from __future__ import annotations

from typing import Any, Final

import orjson
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


class JsonResponse(JSONResponse):
    """JSON rendered by orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class _Error(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    reason: str


class ErrorBody(BaseModel):
    """Every error answer."""

    error: _Error
    status: int


class OpenBody(BaseModel):
    model_config = ConfigDict(extra="allow")


class Acknowledged(OpenBody):
    acknowledged: bool


class PipelinePut(Acknowledged):
    name: str
    version: str
    revision: int
    created: bool


class PipelineList(OpenBody):
    total: int
    pipelines: list[dict[str, Any]]


class ExecuteResult(OpenBody):
    status: str


class UdfPut(Acknowledged):
    name: str
    version: str
    sha256: str
    size: int


class UdfVersions(OpenBody):
    name: str
    versions: list[dict[str, Any]]


class WriteBody(OpenBody):
    index: str = Field(alias="_index")
    id: str = Field(alias="_id")
    result: str


class BulkBody(OpenBody):
    took: int
    errors: bool
    items: list[dict[str, dict[str, Any]]]


class SearchBody(OpenBody):
    took: int
    timed_out: bool
    hits: dict[str, Any]


class CountBody(OpenBody):
    count: int


class DocBody(OpenBody):
    """A document get: ``found`` says whether it exists (404 when it does not)."""

    index: str = Field(alias="_index")
    id: str = Field(alias="_id")
    found: bool


EXISTS: Final[dict[int | str, Any]] = {
    200: {"description": "It exists (no body)"},
    404: {"description": "It does not exist (no body)"},
    400: {"description": "The index name or id is invalid (no body)"},
}


REASONS: Final = {
    400: "Invalid request (Elasticsearch-style error body)",
    401: "Admin token missing or wrong",
    404: "Not found",
    409: "Conflict with what is stored",
    413: "Request too large",
}


def responses(ok: type[BaseModel] | None, *errors: int, ok_status: int = 200) -> dict[int | str, Any]:
    docs: dict[int | str, Any] = {code: {"model": ErrorBody, "description": REASONS[code]} for code in errors}
    if ok is not None:
        docs[ok_status] = {"model": ok, "description": "Success"}
    return docs


def json_body_doc(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


OBJECT: Final[dict[str, Any]] = {"type": "object"}
