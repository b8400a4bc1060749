"""Shared fixtures. UDF builds (slow: componentize-py + wasmtime compile) are session-scoped in udf_fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from quidditch_pipeline import PipelineService

pytest_plugins = ["tests.udf_fixtures"]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[PipelineService]:
    """A durable service in a fresh data directory."""
    with PipelineService.open(tmp_path / "data") as svc:
        yield svc
