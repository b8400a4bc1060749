"""Reading request bodies within their size limit, and parsing JSON objects with a clear error."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from ..errors import (
    DefinitionError,
    PayloadTooLargeError,
)


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{what} of {declared} bytes is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"{what} is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_object(raw: bytes, *, required: bool, what: str = "request body") -> dict[str, Any]:
    if not raw.strip():
        if required:
            raise DefinitionError([("", "a JSON object is required")], subject=what)
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DefinitionError([("", f"not valid JSON: {exc}")], subject=what) from exc
    if not isinstance(value, dict):
        raise DefinitionError([("", f"must be a JSON object, got {type(value).__name__}")], subject=what)
    return value


async def json_object(request: Request, limit: int, *, required: bool) -> dict[str, Any]:
    return parse_object(await read_body(request, limit), required=required)
