"""Request limits (``ServerLimits``): body sizes and bulk actions; a request past one is answered 413."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

_MiB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Request limits; a request past one is answered 413."""

    #: Any request body (Elasticsearch's ``http.max_content_length`` default).
    max_body_bytes: int = 100 * _MiB
    #: Actions in one ``_bulk`` request.
    max_bulk_items: int = 10_000
    #: A UDF upload (a built component is ~18 MB).
    max_udf_bytes: int = 64 * _MiB
