"""Conditions and failure handlers around real WebAssembly stages (the hostile test UDF, built once per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quidditch_pipeline import PipelineService
from quidditch_pipeline.storage import SqliteStorage
from quidditch_pipeline.udf import UdfRuntime
from tests.udf_fixtures import BuiltUdf


@pytest.fixture
def svc(tmp_path: Path, udf_runtime: UdfRuntime, hostile_udf: BuiltUdf) -> Iterator[PipelineService]:
    with PipelineService(
        SqliteStorage(tmp_path / "registry.sqlite"), tmp_path / "udfs", runtime=udf_runtime
    ) as service:
        service.put_udf("hostile", "1.0.0", hostile_udf.wasm)
        yield service


def hostile(name: str, do: str, **stage: Any) -> dict[str, Any]:
    return {"name": name, "type": "python", **stage, "config": {"udf_name": "hostile", "parameters": {"do": do}}}


def test_only_inputs_whose_condition_holds_enter_the_udf(svc: PipelineService) -> None:
    svc.put_pipeline(
        {
            "name": "p",
            "version": "1.0.0",
            "type": "document",
            # params.do is the stage's own parameter: a condition on a python stage reads what its UDF gets
            "stages": [hostile("meta", "meta", **{"if": "ctx.kind == 'udf' && params.do == 'meta'"})],
        }
    )
    svc.associate("idx", "document", "p")
    outs = svc.process_documents("idx", [("1", {"kind": "udf"}), ("2", {"kind": "plain"})])
    assert outs[0].source is not None and outs[0].source["stage"] == "meta"  # the guest's meta, merged in
    assert outs[1].source == {"kind": "plain"}
    stage = svc.stats("p")["stages"][0]
    assert (stage["count"], stage["succeeded"], stage["skipped"]) == (2, 1, 1)


def test_a_guest_exception_goes_to_the_stage_handlers(svc: PipelineService) -> None:
    svc.put_pipeline(
        {
            "name": "p",
            "version": "1.0.0",
            "type": "document",
            "stages": [
                hostile(
                    "raiser",
                    "raise",
                    tag="guest",
                    on_failure=[
                        {
                            "name": "why",
                            "type": "native",
                            "config": {"processor": "set", "field": "why", "value": "{{_ingest.on_failure_message}}"},
                        }
                    ],
                )
            ],
        }
    )
    svc.associate("idx", "document", "p")
    out = svc.process_document("idx", "1", {"n": 1})
    assert out is not None and "raised ValueError: bad value" in out["why"]
