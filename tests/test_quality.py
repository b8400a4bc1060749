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
