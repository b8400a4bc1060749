"""16 concurrent clients against the real server for 5 s (and at least 250 requests): indexing (single
documents and bulk, through a document pipeline with a WASM stage), searching, and re-putting that pipeline
meanwhile. No 5xx, no lost write: the final count is exactly the number of acknowledged documents. The server
keeps its worker processes: the pipeline is re-put while they run its batches."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from .server_harness import ServerProcess, put_probe

DURATION_S = 5.0
#: ...and until this many requests were answered, however loaded the machine (at most ``DURATION_S + 60``).
MIN_REQUESTS = 250
CLIENTS = 16
INDEX = "load"


def pipeline(version: int) -> dict[str, Any]:
    return {
        "version": f"1.0.{version}",
        "type": "document",
        "stages": [
            {"name": "lower", "type": "native", "config": {"processor": "lowercase", "field": "title"}},
            {"name": "flag", "type": "python",
             "config": {"udf_name": "probe", "parameters": {"mode": "flag", "field": f"v{version % 2}"}}},
        ],
    }  # fmt: skip


class Load:
    """What the clients did: acknowledged ids, status codes, and any failure."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acknowledged: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.ids = itertools.count()

    def record(self, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[response.status_code] += 1
            if response.status_code >= 500:
                self.failures.append(f"{response.request.method} {response.request.url}: {response.text[:300]}")

    def acknowledge(self, *ids: str) -> None:
        with self.lock:
            self.acknowledged.update(ids)


def indexer(client: httpx.Client, load: Load, worker: int) -> None:
    if worker % 2:
        doc_id = f"single-{next(load.ids)}"
        response = client.put(f"/{INDEX}/_doc/{doc_id}", json={"title": f"Doc {doc_id}", "worker": worker})
        load.record(response)
        if response.status_code == 201:
            load.acknowledge(doc_id)
        return
    ids = [f"bulk-{next(load.ids)}" for _ in range(25)]
    lines = b"".join(
        orjson.dumps({"index": {"_id": doc_id}}) + b"\n" + orjson.dumps({"title": f"Bulk {doc_id}"}) + b"\n"
        for doc_id in ids
    )
    response = client.post(f"/{INDEX}/_bulk", content=lines, headers={"content-type": "application/x-ndjson"})
    load.record(response)
    if response.status_code == 200:
        items = [item["index"] for item in response.json()["items"]]
        load.acknowledge(*(item["_id"] for item in items if item.get("result") == "created"))
        if any("error" in item for item in items):
            with load.lock:
                load.failures.append(f"bulk item error: {next(i for i in items if 'error' in i)}")


def searcher(client: httpx.Client, load: Load, worker: int) -> None:
    load.record(client.post(f"/{INDEX}/_search", json={"query": {"match": {"title": "doc bulk"}}, "size": 5}))
    load.record(client.get(f"/{INDEX}/_count"))
    load.record(client.get(f"/{INDEX}/_doc/single-{worker}"))


def re_putter(client: httpx.Client, load: Load, worker: int) -> None:
    response = client.put("/_pipeline/ingest", json=pipeline(next(load.ids)))
    load.record(response)
    if response.status_code != 200:
        with load.lock:
            load.failures.append(f"pipeline put: {response.status_code} {response.text[:300]}")
    time.sleep(0.2)


def test_sixteen_clients_for_five_seconds(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server, httpx.Client(base_url=server.url, timeout=120) as setup:
        assert put_probe(setup).status_code == 201
        assert setup.put("/_pipeline/ingest", json=pipeline(0)).status_code == 200
        assert (
            setup.put(f"/{INDEX}", json={"settings": {"index.document.default_pipeline": "ingest"}}).status_code == 200
        )
        # Warm the WASM stage (its first use instantiates the component).
        assert setup.put(f"/{INDEX}/_doc/warm", json={"title": "warm"}).status_code == 201

        load = Load()
        load.acknowledge("warm")
        roles: list[Callable[[httpx.Client, Load, int], None]] = [indexer] * 8 + [searcher] * 6 + [re_putter] * 2
        assert len(roles) == CLIENTS
        started = time.monotonic()

        def going() -> bool:
            elapsed = time.monotonic() - started
            with load.lock:
                answered = sum(load.statuses.values())
            return elapsed < DURATION_S or (answered < MIN_REQUESTS and elapsed < DURATION_S + 60)

        def client_loop(role: Callable[[httpx.Client, Load, int], None], worker: int) -> None:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                while going():
                    try:
                        role(client, load, worker)
                    except httpx.HTTPError as exc:
                        with load.lock:
                            load.failures.append(f"{role.__name__}: {type(exc).__name__}: {exc}")
                        return

        threads = [threading.Thread(target=client_loop, args=(role, i)) for i, role in enumerate(roles)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DURATION_S + 180)
        assert not any(thread.is_alive() for thread in threads)

        assert not load.failures, "\n".join(load.failures[:20])
        assert not [code for code in load.statuses if code >= 500]
        assert sum(load.statuses.values()) >= MIN_REQUESTS, load.statuses
        assert setup.post(f"/{INDEX}/_refresh").status_code == 200
        assert setup.get(f"/{INDEX}/_count").json()["count"] == len(load.acknowledged)
        flagged = setup.post(f"/{INDEX}/_count", json={"query": {"bool": {"should": [
            {"exists": {"field": "v0"}}, {"exists": {"field": "v1"}}]}}}).json()["count"]  # fmt: skip
        assert flagged == len(load.acknowledged), "every document went through the pipeline's WASM stage"
        assert server.terminate() == 0
