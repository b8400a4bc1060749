"""The command line: ``validate`` and ``execute`` (``udf build`` and ``serve`` are tested with their modules)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quidditch_pipeline.cli import main

PIPELINE = {
    "name": "clean",
    "version": "1.0.0",
    "type": "document",
    "stages": [
        {"name": "lower", "type": "native", "config": {"processor": "lowercase", "field": "title"}},
        {"name": "tags", "type": "native", "config": {"processor": "split", "field": "tags", "separator": ","}},
    ],
}


def write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if name.endswith((".yaml", ".yml")) else json.dumps(data))
    return path


def test_validate_accepts_json_and_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(write(tmp_path, "p.json", PIPELINE))]) == 0
    assert main(["validate", str(write(tmp_path, "p.yaml", PIPELINE))]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_prints_field_paths_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = {**PIPELINE, "stages": [*PIPELINE["stages"], {"name": "u", "type": "python", "config": {}}]}  # type: ignore[list-item]
    assert main(["validate", str(write(tmp_path, "bad.yaml", bad))]) == 1
    err = capsys.readouterr().err
    assert "stages[2].config.udf_name" in err and "field required" in err


def test_validate_reports_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "missing.json")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_execute_json_prints_the_execute_response(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "p.json", PIPELINE)
    code = main(["execute", str(path), "--input", '{"title": "Big SHOE", "tags": "a,b"}', "--json"])
    assert code == 0
    response = json.loads(capsys.readouterr().out)
    assert response["status"] == "success"
    assert response["output"] == {"title": "big shoe", "tags": ["a", "b"]}
    assert [s["name"] for s in response["stages"]] == ["lower", "tags"]
    assert set(response) == {"status", "output", "error", "took_us", "stages"}


def test_execute_table_shows_a_failed_stage_and_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", PIPELINE)
    doc = write(tmp_path, "doc.json", {"tags": "x"})
    result = subprocess.run(
        [sys.executable, "-m", "quidditch_pipeline.cli", "execute", str(path), "--input", f"@{doc}"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": ""},
    )
    assert result.returncode == 1
    assert "lower" in result.stdout and "error" in result.stdout and "failed" in result.stdout
    assert "field [title] not present" in result.stdout


def test_execute_rejects_bad_input_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "p.json", PIPELINE)
    assert main(["execute", str(path), "--input", "{not json"]) == 1
    assert "--input: not valid JSON" in capsys.readouterr().err
