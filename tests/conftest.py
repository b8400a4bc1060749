"""Shared fixtures. UDF builds (slow: componentize-py + wasmtime compile) are session-scoped in udf_fixtures.

The suite runs on pytest-xdist workers (``-n auto --maxprocesses=4`` in pyproject's addopts; ``-n 0`` or
``-p no:xdist`` runs it in one process), test by test: a module-scoped server or database is set up on each
worker that runs one of the module's tests. Tests share the machine's PostgreSQL (one database per module);
the one that stops and restarts a server does so on a private cluster (``postgres_fixtures.private_postgres``).
"""

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
