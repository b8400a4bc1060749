"""Request limits: sizes (``ServerLimits``, 413), bytes in flight across all requests (429) and the time a
request body may take to arrive (408).

``RequestGuard`` is an ASGI middleware in front of every route. It counts each request's body bytes as they
are read into one total shared by all requests (Elasticsearch's ``in_flight_requests`` breaker): a chunk that
would take the total past ``max_in_flight_bytes`` fails that request with 429 ``circuit_breaking_exception``;
a request's bytes are released when it ends, however it ends (answered, failed, or the client went away). It
also bounds the wait for each body: a body that has not fully arrived ``body_timeout_s`` after the request
began fails with 408, so slow or stalled clients (slowloris) hold neither memory nor a worker for long.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CircuitBreakingError, RequestTimeoutError

_MiB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Request limits (the defaults suit a small node; ``serve`` has an option for each)."""

    #: Any request body (Elasticsearch's ``http.max_content_length`` default); past it: 413.
    max_body_bytes: int = 100 * _MiB
    #: Actions in one ``_bulk`` request; past it: 413.
    max_bulk_items: int = 10_000
    #: A UDF upload (a built component is ~18 MB); past it: 413.
    max_udf_bytes: int = 64 * _MiB
    #: Body bytes of all requests in flight together; past it: 429 ``circuit_breaking_exception``.
    max_in_flight_bytes: int = 256 * _MiB
    #: Seconds a request body may take to arrive in full; past it: 408.
    body_timeout_s: float = 60.0


class InFlightBreaker:
    """The total of request body bytes in flight, bounded by ``limit`` (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._used = 0
        self._tripped = 0

    def acquire(self, size: int) -> None:
        with self._lock:
            if self._used + size > self.limit:
                self._tripped += 1
                raise CircuitBreakingError(
                    f"[in_flight_requests] Data too large: the request would take the bytes in flight to "
                    f"[{self._used + size}], which is larger than the limit of [{self.limit}]"
                )
            self._used += size

    def release(self, size: int) -> None:
        with self._lock:
            self._used -= size

    def stats(self) -> dict[str, Any]:
        """Elasticsearch's breaker stats shape."""
        with self._lock:
            return {
                "limit_size_in_bytes": self.limit,
                "estimated_size_in_bytes": self._used,
                "tripped": self._tripped,
            }


class RequestGuard:
    """Counts each HTTP request's body against ``breaker`` and bounds the time its body takes to arrive."""

    def __init__(self, app: ASGIApp, breaker: InFlightBreaker, body_timeout_s: float) -> None:
        self.app = app
        self.breaker = breaker
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.body_timeout_s
        held = 0
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal held, body_done
            if body_done:
                # After the body, receive only waits for a disconnect: no deadline, nothing to count.
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.body_timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if size:
                    self.breaker.acquire(size)
                    held += size
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        try:
            await self.app(scope, guarded_receive, send)
        finally:
            self.breaker.release(held)
