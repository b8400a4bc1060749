"""What Elasticsearch's own clients check before they accept a server, answered on every response.

The official ``elasticsearch`` client (8.x and 9.x) refuses any 2xx answer that lacks the header
``X-Elastic-Product: Elasticsearch`` (``UnsupportedProductError``), and from 9.x it sends ``Accept`` and
``Content-Type`` as vendor media types, ``application/vnd.elasticsearch+json; compatible-with=9`` (``+x-ndjson``
for ``_bulk``). So every answer carries that header, and a JSON answer to a request that asked for the vendor
type comes back as that type, as Elasticsearch does. A ``compatible-with`` version this server does not speak is
refused with Elasticsearch's ``media_type_header_exception``. ``GET /`` still names the real distribution.
"""

from __future__ import annotations

import re
from typing import Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The REST API majors whose request and response shapes this server answers.
COMPATIBLE_WITH: Final = frozenset({7, 8, 9})
PRODUCT_HEADER: Final = (b"x-elastic-product", b"Elasticsearch")
_VENDOR: Final = re.compile(rb"application/vnd\.elasticsearch\+([a-z-]+)\s*;\s*compatible-with\s*=\s*(\d+)", re.I)


class ElasticProductMiddleware:
    """Adds the product header to every answer and answers vendor media types in kind."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        accept = _VENDOR.search(headers.get(b"accept", b""))
        for name in (b"accept", b"content-type"):
            found = _VENDOR.search(headers.get(name, b""))
            if found and int(found.group(2)) not in COMPATIBLE_WITH:
                await _refuse(send, name.decode(), found.group(0).decode())
                return
        answer_as = b"application/vnd.elasticsearch+json;compatible-with=" + accept.group(2) if accept else None

        async def send_with_product(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = [(k, v) for k, v in message["headers"] if k.lower() != PRODUCT_HEADER[0]]
                if answer_as is not None:
                    out = [(k, answer_as if _is_json(k, v) else v) for k, v in out]
                message = {**message, "headers": [*out, PRODUCT_HEADER]}
            await send(message)

        await self.app(scope, receive, send_with_product)


def _is_json(name: bytes, value: bytes) -> bool:
    return name.lower() == b"content-type" and value.startswith(b"application/json")


async def _refuse(send: Send, header: str, value: str) -> None:
    versions = ", ".join(str(v) for v in sorted(COMPATIBLE_WITH))
    status = 400
    body = orjson.dumps(
        {
            "error": {
                "type": "media_type_header_exception",
                "reason": f"Invalid media-type value on header [{header}]: [{value}] (compatible-with {versions})",
            },
            "status": status,
        }
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), PRODUCT_HEADER]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
