"""The package is ruff- and mypy-clean, and its public surface is what ``__all__`` says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import quidditch_pipeline

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "quidditch_pipeline", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_names_match_all() -> None:
    public = {name for name in vars(quidditch_pipeline) if not name.startswith("_")} - {"annotations"}
    modules = {name for name, value in vars(quidditch_pipeline).items() if type(value).__name__ == "module"}
    assert set(quidditch_pipeline.__all__) == public - modules
    for name in quidditch_pipeline.__all__:
        assert getattr(quidditch_pipeline, name) is not None


def test_starting_the_server_or_a_worker_imports_no_optional_back_end() -> None:
    """psycopg (a PostgreSQL registry) and cel (a condition) load when first used, not at every process start."""
    probe = (
        "import sys, quidditch_pipeline.server.serve, quidditch_pipeline.workers.worker; "
        "print(sorted(m for m in ('psycopg', 'psycopg_pool', 'cel') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    from quidditch_pipeline.storage import PostgresStorage  # the documented import path still works

    assert PostgresStorage.__module__ == "quidditch_pipeline.storage.postgres"
