"""Shared fixtures. UDF builds (slow: componentize-py + wasmtime compile) are session-scoped in udf_fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quidditch_pipeline import PipelineService

pytest_plugins = ["tests.udf_fixtures", "tests.postgres_fixtures"]


#: Parametrize a test's ``service`` (or ``svc``) fixture with this to run it in-process and through worker
#: processes (DESIGN §10: the semantics of §4 hold either way); query and result pipelines go to workers too.
IN_PROCESS_AND_WORKERS = pytest.mark.parametrize(
    "options", [{}, {"workers": 2, "search_in_workers": True}], ids=["in-process", "workers"]
)


@pytest.fixture
def options() -> dict[str, Any]:
    """Extra ``PipelineService`` options for the ``service`` fixture (see ``IN_PROCESS_AND_WORKERS``)."""
    return {}


@pytest.fixture
def service(tmp_path: Path, options: dict[str, Any]) -> Iterator[PipelineService]:
    """A durable service in a fresh data directory."""
    with PipelineService.open(tmp_path / "data", **options) as svc:
        yield svc
