"""``PipelineService.open(dir, registry="postgresql://…")``: two services (nodes) with their own data
directories on one PostgreSQL registry. A UDF registered through one is fetched once, by content, into the
other's artifact folder and runs there; a listener that lost its connection re-reads what it missed. The UDF is
put in source mode: its artifact (the source) travels and is fetched the way a component's bytes are."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from quidditch_pipeline import PipelineService
from quidditch_pipeline.registry import Registry
from quidditch_pipeline.storage import PostgresStorage
from quidditch_pipeline.storage import postgres as postgres_storage
from quidditch_pipeline.udf.runtime import UdfRuntime
from tests.test_nodes import definition
from tests.udf_fixtures import UdfSources


def test_a_udf_put_on_one_node_runs_on_another(
    tmp_path: Path, postgres_dsn: str, udf_sources: UdfSources, udf_runtime: UdfRuntime
) -> None:
    component = udf_sources.get("price_band")
    with (
        PipelineService.open(tmp_path / "a", registry=postgres_dsn, runtime=udf_runtime) as a,
        PipelineService.open(tmp_path / "b", registry=postgres_dsn, runtime=udf_runtime) as b,
    ):
        put = a.put_udf("price_band", "1.0.0", component.source, mode="source")
        stage = {"name": "band", "type": "python", "config": {"udf_name": "price_band"}}
        answer = a.put_pipeline({"name": "bands", "version": "1.0.0", "type": "document", "stages": [stage]})
        a.associate("products", "document", "bands")
        change = a.registry.status()["change"]
        assert b.registry.wait_for_change(change, timeout_s=5)
        assert not (tmp_path / "b" / "udfs" / f"{put['sha256']}.wasm").exists()
        assert b.process_document("products", "1", {"price": 10}) == {"price": 10, "price_band": "budget"}
        fetched = tmp_path / "b" / "udfs" / f"{put['sha256']}.wasm"
        assert fetched.read_bytes() == component.wasm
        assert answer["revision"] == 1


def test_a_listener_that_lost_its_connection_catches_up_on_what_it_missed(postgres_dsn: str) -> None:
    a = Registry(PostgresStorage(postgres_dsn))
    b = Registry(PostgresStorage(postgres_dsn))
    try:
        a.put(definition("before"))
        assert b.wait_for_change(a.status()["change"], timeout_s=5)
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            # Cut node b's listener, then change the registry while it reconnects: the NOTIFY is lost to it.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN quidditch_registry%' "
                "AND datname = current_database() AND pid <> pg_backend_pid()"
            )
        missed = a.put(definition("meanwhile"))
        assert missed.change is not None
        assert b.wait_for_change(missed.change, timeout_s=10)
        assert b.exists("meanwhile")
        assert b.status()["reconnects"] >= 1
    finally:
        a.close()
        b.close()


def test_worker_processes_read_the_shared_registry_and_fetch_the_components(
    tmp_path: Path, postgres_dsn: str, udf_sources: UdfSources, udf_runtime: UdfRuntime
) -> None:
    component = udf_sources.get("price_band")
    with PipelineService.open(tmp_path / "a", registry=postgres_dsn, runtime=udf_runtime) as a:
        a.put_udf("price_band", "1.0.0", component.source, mode="source")
        stage = {"name": "band", "type": "python", "config": {"udf_name": "price_band"}}
        a.put_pipeline({"name": "bands", "version": "1.0.0", "type": "document", "stages": [stage]})
        a.associate("products", "document", "bands")
        # The session's compiled cache: the worker maps the compiled component instead of compiling it again.
        with PipelineService(
            PostgresStorage(postgres_dsn), tmp_path / "b" / "udfs", compiled_cache_dir=udf_runtime.cache_dir, workers=1
        ) as b:
            outcomes = b.process_documents("products", [("1", {"price": 10}), ("2", {"price": 900})])
            assert [(o.status, o.source) for o in outcomes] == [
                ("success", {"price": 10, "price_band": "budget"}),
                ("success", {"price": 900, "price_band": "premium"}),
            ]
            assert b.workers()[0]["batches"] >= 1
            assert (tmp_path / "b" / "udfs" / f"{component.sha256}.wasm").read_bytes() == component.wasm


def test_closing_a_watched_storage_wakes_its_listener_instead_of_waiting_out_its_poll(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A listener that only looked at the closing flag between waits would hold close() for this minute.
    monkeypatch.setattr(postgres_storage, "_LISTEN_WAIT_S", 60.0)
    storage = PostgresStorage(postgres_dsn)
    changes: list[int | None] = []
    storage.watch(changes.append)
    deadline = time.monotonic() + 10
    while not storage.connected:
        assert time.monotonic() < deadline, storage.status()
        time.sleep(0.01)
    listener = storage._listener
    assert listener is not None
    started = time.monotonic()
    storage.close()
    assert not listener.is_alive()
    assert time.monotonic() - started < 5  # the join's own bound; without the wake-up it would time out
    assert changes == [None]  # woken, not told of a change
