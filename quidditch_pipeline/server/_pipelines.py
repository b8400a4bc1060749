"""Which pipeline guards a request, failing closed: the index's stored settings are the source of truth.

Each ``_doc``, ``_bulk`` and ``_search`` names its pipeline to the service explicitly: the request's override
(``?pipeline=``, ``?query_pipeline=``, ``?result_pipeline=``; ``_none`` skips), else the pipeline the index's
settings configure, else none. So an index whose pipeline is missing or cannot be built refuses what that
pipeline guards (``PipelineUnavailableError``, 400, naming index and pipeline), at start-up as at any time,
instead of passing documents or searches through unprocessed: the service raises that error itself.
"""

from __future__ import annotations

from typing import Final

from .engine import IndexInfo

#: The service's name for "no pipeline".
NO_PIPELINE: Final = "_none"


def final_pipeline_name(info: IndexInfo, kind: str) -> str:
    """The index's final pipeline of ``kind`` (``document`` or ``query``; ``_none``: none). A request cannot
    override or skip it: it is where an index enforces what every write or search must pass (e.g. PII)."""
    return info.pipeline(f"{kind}_final") or NO_PIPELINE


def pipeline_name(info: IndexInfo, kind: str, override: str | None) -> str:
    """The pipeline of ``kind`` that guards a request on the index (``_none``: none)."""
    if override is not None:
        return override
    return info.pipeline(kind) or NO_PIPELINE

