"""Shared fixtures. UDF builds (slow: componentize-py + wasmtime compile) are session-scoped in udf_fixtures.

The suite runs on two pytest-xdist workers (``-n 2 --dist loadgroup`` in pyproject's addopts; ``-n 0`` or
``-p no:xdist`` runs it in one process): each module's tests go to one worker, as if the module ran alone, so
its module-scoped servers and databases are set up once; every test that touches the machine's PostgreSQL
goes to one worker, because one of them stops and restarts it.
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        touches_postgres = "postgres" in item.nodeid.lower() or any(
            name.startswith("postgres") for name in getattr(item, "fixturenames", ())
        )
        item.add_marker(pytest.mark.xdist_group("postgres" if touches_postgres else item.nodeid.split("::")[0]))


@pytest.fixture
def options() -> dict[str, Any]:
    """Extra ``PipelineService`` options for the ``service`` fixture (see ``IN_PROCESS_AND_WORKERS``)."""
    return {}


@pytest.fixture
def service(tmp_path: Path, options: dict[str, Any]) -> Iterator[PipelineService]:
    """A durable service in a fresh data directory."""
    with PipelineService.open(tmp_path / "data", **options) as svc:
        yield svc
