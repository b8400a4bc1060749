"""``?pretty``: indented JSON answers, as Elasticsearch gives them."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class PrettyJsonMiddleware:
    """``?pretty`` indents a JSON answer, as Elasticsearch does (handy with curl)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if b"pretty" not in query or not any(p.split(b"=")[0] == b"pretty" for p in query.split(b"&")):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffered(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            if body and dict(headers).get(b"content-type", b"").startswith(b"application/json"):
                body = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) + b"\n"
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)
