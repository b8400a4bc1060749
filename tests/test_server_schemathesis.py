"""schemathesis against ``/openapi.json`` of a live server: generated requests for every operation get no
5xx, and every answer conforms to the schema (documented status code, content type, body schema)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.control import SkipTest

from quidditch_pipeline import PipelineService
from quidditch_pipeline.server import TantivyBackend, create_app

from .server_harness import put_probe, serve_app

# How the non-JSON bodies go on the wire: NDJSON and Python source are text, a component is bytes.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")
schemathesis.serializer.alias("text/x-python", "text/plain")
schemathesis.serializer.alias("application/wasm", "application/octet-stream")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data: Path = tmp_path_factory.mktemp("schemathesis")
    with (
        PipelineService.open(data) as service,
        TantivyBackend(data) as backend,
        serve_app(create_app(service, backend)) as url,
    ):
        # Something for the generated requests to find: a UDF, pipelines of each type, an index using them.
        with httpx.Client(base_url=url, timeout=120) as client:
            put_probe(client)
            for kind in ("document", "query", "result"):
                stage = {"name": "s", "type": "python", "config": {"udf_name": "probe", "parameters": {}}}
                client.put(f"/_pipeline/{kind}", json={"version": "1.0.0", "type": kind, "stages": [stage]})
            settings_ = {f"index.{kind}.default_pipeline": kind for kind in ("document", "query", "result")}
            client.put("/products", json={"settings": settings_})
            client.put("/products/_doc/1", json={"title": "red notebook"}, params={"refresh": "true"})
        yield url


# Invalid variants of a pipeline definition (a recursive schema) take schemathesis 1-3 s each to generate, against
# ~0.1 s for any other body: these operations get fewer in negative mode. What the parser does with arbitrary
# JSON is held by the property tests of tests/test_definitions.py; here it is the HTTP answer's shape.
DEFINITION_BODIES = {"PUT /_pipeline/{name}", "POST /_pipeline/{name}", "POST /_pipeline/_execute"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_generated_requests(live_url: str, mode: GenerationMode) -> None:
    # Each operation runs as its own Hypothesis test here (schemathesis's pytest plugin does not run under
    # pytest 9); failures are collected so one report names every operation that broke.
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    # Only this mode: an operation with nothing to make invalid then stops at once (SkipTest) instead of
    # Hypothesis rejecting a thousand positive draws before it gives up (seconds per such operation).
    schema.config.generation.update(modes=[mode])
    failures: dict[str, str] = {}
    labels: set[str] = set()
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.add(operation.label)
        slow = operation.label in DEFINITION_BODIES

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=5 if slow else 10,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=live_url, checks=CHECKS, timeout=120)

        try:
            run()
        except (SkipTest, Unsatisfiable):
            # Negative mode: the operation has nothing that could be made invalid.
            assert mode is GenerationMode.NEGATIVE
        except Exception as exc:  # every operation's failure goes into one report
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:2000]
    assert len(labels) >= 40
    assert not DEFINITION_BODIES - labels  # the operations named above still exist
    assert calls >= 5 * len(labels)
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
