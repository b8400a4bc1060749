"""Real ``serve`` processes sharing one PostgreSQL registry: a pipeline put through node A runs in node B's
``_bulk``; with PostgreSQL stopped, documents keep flowing through cached pipelines while pipeline puts answer
503, and after it restarts a put on one node reaches the other."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests import postgres_fixtures
from tests.server_harness import ServerProcess


def pipeline(value: str) -> dict[str, Any]:
    stages = [{"name": "mark", "type": "native", "config": {"processor": "set", "field": "by", "value": value}}]
    return {"version": "1.0.0", "type": "document", "stages": stages}


def eventually(check: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


def bulk(url: str, doc_id: str) -> dict[str, Any]:
    body = f'{{"index": {{"_id": "{doc_id}"}}}}\n{{"title": "x"}}\n'
    answer = httpx.post(
        f"{url}/products/_bulk?pipeline=p&refresh=true",
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert not answer.json()["errors"], answer.text
    source: dict[str, Any] = httpx.get(f"{url}/products/_doc/{doc_id}", timeout=10).json()["_source"]
    return source


def registry_status(url: str) -> dict[str, Any]:
    nodes = httpx.get(f"{url}/_nodes/stats", timeout=10).json()["nodes"]
    status: dict[str, Any] = next(iter(nodes.values()))["registry"]
    return status


def test_nodes_share_pipelines_and_survive_a_database_restart(
    tmp_path: Path, private_postgres: postgres_fixtures.PrivateCluster
) -> None:
    extra = ("--registry", private_postgres.dsn, "--workers", "0")
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    with (
        ServerProcess(tmp_path / "a" / "data", extra=extra) as a,
        ServerProcess(tmp_path / "b" / "data", extra=extra) as b,
    ):
        put = httpx.put(f"{a.url}/_pipeline/p", json=pipeline("one"), timeout=10)
        assert put.status_code == 200, put.text
        httpx.put(f"{b.url}/products", json={}, timeout=10).raise_for_status()
        health = httpx.get(f"{b.url}/_cluster/health", params={"wait_for_change": put.json()["change"]}, timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "green", health.text
        not_yet = put.json()["change"] + 1000
        late = httpx.get(f"{b.url}/_cluster/health?wait_for_change={not_yet}&timeout=100ms", timeout=10)
        assert late.status_code == 408 and late.json()["timed_out"] is True
        assert bulk(b.url, "1")["by"] == "one"
        assert registry_status(b.url)["connected"] is True

        private_postgres.stop()
        try:
            eventually(lambda: registry_status(a.url)["connected"] is False)
            assert httpx.get(f"{a.url}/_cluster/health", timeout=10).json()["status"] == "yellow"
            assert bulk(b.url, "2")["by"] == "one"  # documents keep flowing with the cached pipeline
            refused = httpx.put(f"{a.url}/_pipeline/p", json=pipeline("two"), timeout=30)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["type"] == "storage_unavailable_exception"
        finally:
            private_postgres.start()
        eventually(lambda: registry_status(a.url)["connected"] and registry_status(b.url)["connected"], 30)
        eventually(
            lambda: httpx.put(f"{a.url}/_pipeline/p", json=pipeline("two"), timeout=30).status_code == 200, 15
        )
        eventually(lambda: httpx.get(f"{b.url}/_pipeline/p", timeout=5).json()["stages"][0]["config"]["value"] == "two")
        assert bulk(b.url, "3")["by"] == "two"
