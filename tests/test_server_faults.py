"""Faults injected in the middle of real writes (Elasticsearch's disruption tests, scaled down): a full disk
and I/O errors in the translog (``os.write``/``os.fsync`` failing under the tantivy host), a document that
cannot be serialized, and SIGKILL at random points of running ``_bulk`` requests against the real server.

The invariant, every time: what was acknowledged is there after a restart; what failed is absent, now and
after a restart; what was in flight when the process died is absent or whole, never torn."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from quidditch_pipeline.errors import InputError, StorageError
from quidditch_pipeline.server import TantivyBackend
from quidditch_pipeline.server.engine import IndexOp, WriteResult, translog

from .server_harness import ServerProcess, kill_during_bulks, served_data_dir

NDJSON = {"content-type": "application/x-ndjson"}
NO_WORKERS = ("--workers", "0")


def failing(
    real: Callable[..., Any], code: int, *, after_bytes: int | None = None, times: int | None = None
) -> Callable[..., Any]:
    """``os.write``/``os.fsync``/... failing with ``code``: ``after_bytes`` written first; only the first
    ``times`` failures (then the real call again), or every call."""
    state = {"written": 0, "failed": 0}

    def call(fd: int, *args: Any) -> Any:
        if after_bytes is not None and args and state["written"] < after_bytes:
            data = args[0][: after_bytes - state["written"]]
            state["written"] += len(data)
            return real(fd, data)
        if times is not None and state["failed"] >= times:
            return real(fd, *args)
        state["failed"] += 1
        raise OSError(code, os.strerror(code))

    return call


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[TantivyBackend]:
    with TantivyBackend(tmp_path, refresh_tick=0.05) as backend:
        backend.create_index("docs", {"index.refresh_interval": "-1"})
        yield backend


def reopen(backend: TantivyBackend, data_dir: Path) -> TantivyBackend:
    backend.close()
    return TantivyBackend(data_dir)


@pytest.mark.parametrize(
    ("target", "code", "after_bytes", "times"),
    [
        ("write", errno.ENOSPC, None, None),  # disk full before a byte
        ("write", errno.ENOSPC, 40, None),  # disk full half-way through the batch's record
        ("write", errno.EIO, None, None),
        ("fsync", errno.EIO, None, 1),  # written, but not durable: must not count
    ],
)
def test_a_translog_failure_fails_the_whole_batch_and_leaves_nothing_of_it(
    backend: TantivyBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    code: int,
    after_bytes: int | None,
    times: int | None,
) -> None:
    acknowledged = backend.bulk("docs", [IndexOp(str(i), {"n": i}) for i in range(5)])
    assert all(isinstance(r, WriteResult) for r in acknowledged)
    size_before = (tmp_path / "indexes" / "docs" / "translog.ndjson").stat().st_size

    with monkeypatch.context() as patch:
        patch.setattr(translog.os, target, failing(getattr(os, target), code, after_bytes=after_bytes, times=times))
        results = backend.bulk("docs", [IndexOp("1", {"n": "changed"}), IndexOp("new", {"n": 99})])
    assert all(isinstance(r, StorageError) for r in results), results
    assert os.strerror(code) in str(results[0])
    # Nothing of the failed batch: not in the real-time get, not in the translog, not after a refresh.
    assert (tmp_path / "indexes" / "docs" / "translog.ndjson").stat().st_size == size_before
    assert backend.get_doc("docs", "new") is None
    doc = backend.get_doc("docs", "1")
    assert doc is not None and doc.source == {"n": 1}
    backend.refresh("docs")
    assert backend.count("docs", {}) == 5
    # The index goes on: the next write is acknowledged and kept.
    (later,) = backend.bulk("docs", [IndexOp("later", {"n": 7})])
    assert isinstance(later, WriteResult) and later.result == "created"

    again = reopen(backend, tmp_path)
    with again:
        assert again.count("docs", {}) == 6
        assert again.get_doc("docs", "new") is None
        for doc_id, source in [("1", {"n": 1}), ("later", {"n": 7})]:
            stored = again.get_doc("docs", doc_id)
            assert stored is not None and stored.source == source


def test_a_failure_that_cannot_be_repaired_refuses_later_writes_until_reopened(
    backend: TantivyBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.bulk("docs", [IndexOp("kept", {"n": 1})])
    with monkeypatch.context() as patch:
        patch.setattr(translog.os, "write", failing(os.write, errno.ENOSPC, after_bytes=10))
        patch.setattr(translog.os, "ftruncate", failing(os.ftruncate, errno.EIO))
        (first,) = backend.bulk("docs", [IndexOp("torn", {"n": 2})])
    assert isinstance(first, StorageError)
    (second,) = backend.bulk("docs", [IndexOp("refused", {"n": 3})])
    assert isinstance(second, StorageError) and "reopen" in str(second)
    again = reopen(backend, tmp_path)
    with again:
        # The torn record is the tail, which replay skips.
        assert again.get_doc("docs", "torn") is None and again.get_doc("docs", "refused") is None
        kept = again.get_doc("docs", "kept")
        assert kept is not None and kept.source == {"n": 1}
        (ok,) = again.bulk("docs", [IndexOp("after", {"n": 4})])
        assert isinstance(ok, WriteResult)


def test_a_document_that_cannot_be_serialized_fails_alone(backend: TantivyBackend, tmp_path: Path) -> None:
    # orjson refuses integers past 64 bits; such a value can come from a pipeline, not from JSON.
    results = backend.bulk("docs", [IndexOp("a", {"n": 1}), IndexOp("big", {"n": 2**70}), IndexOp("b", {"n": 2})])
    assert isinstance(results[0], WriteResult) and isinstance(results[2], WriteResult)
    assert isinstance(results[1], InputError) and "[big]" in str(results[1])
    again = reopen(backend, tmp_path)
    with again:
        assert again.get_doc("docs", "big") is None
        assert again.count("docs", {}) == 2


def test_over_http_a_disk_full_write_is_an_es_error_and_is_never_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        served_data_dir(tmp_path) as (_, _, url),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        assert client.put("/docs", json={}).status_code == 200
        assert client.put("/docs/_doc/ok", json={"n": 1}).status_code == 201
        with monkeypatch.context() as patch:
            patch.setattr(translog.os, "write", failing(os.write, errno.ENOSPC))
            response = client.put("/docs/_doc/full", json={"n": 2}, params={"refresh": "true"})
            assert response.status_code == 500, response.text
            body = response.json()
            assert body["error"]["type"] == "storage_exception" and "No space left" in body["error"]["reason"]
            lines = (
                b'{"index": {"_index": "docs", "_id": "b1"}}\n{"n": 3}\n{"delete": {"_index": "docs", "_id": "ok"}}\n'
            )
            result = client.post("/_bulk", content=lines, headers=NDJSON).json()
            assert result["errors"] is True
            assert [item[key]["status"] for item, key in zip(result["items"], ["index", "delete"], strict=True)] == [
                500,
                500,
            ]
        assert client.get("/docs/_doc/full").status_code == 404
        assert client.get("/docs/_doc/b1").status_code == 404
        assert client.get("/docs/_doc/ok").json()["_source"] == {"n": 1}
        client.post("/docs/_refresh")
        assert client.get("/docs/_count").json()["count"] == 1
    with TantivyBackend(tmp_path) as again:
        assert again.get_doc("docs", "full") is None and again.get_doc("docs", "b1") is None
        assert again.count("docs", {}) == 1


# --------------------------------------------------------------------------------------------- SIGKILL


def _bulk_body(start: int, count: int) -> bytes:
    lines = []
    for i in range(start, start + count):
        lines.append(orjson.dumps({"index": {"_index": "log", "_id": str(i)}}))
        lines.append(orjson.dumps(_source(i)))
    return b"\n".join(lines) + b"\n"


def _source(i: int) -> dict[str, Any]:
    return {"n": i, "text": f"document {i} " + "x" * (i % 97), "tags": [i % 3, i % 5]}


def test_sigkill_during_bulk_keeps_every_acknowledged_item_and_tears_none(tmp_path: Path) -> None:
    # No pipeline runs on these writes, so the server runs without worker processes: what is tested is the
    # translog's durability in the server process.
    data = tmp_path / "data"
    rng = random.Random(10)
    acknowledged: set[int] = set()
    sent: set[int] = set()
    cut: list[bool] = []
    next_id = 0
    for rounds in (1, 2):  # a kill, a restart that replays, a kill again: the replayed index keeps as much
        with ServerProcess(data, extra=NO_WORKERS) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            if rounds == 1:
                assert client.put("/log", json={"settings": {"index.refresh_interval": "200ms"}}).status_code == 200

            def body(at: int, count: int) -> bytes:
                sent.update(range(at, at + count))
                return _bulk_body(at, count)

            def answered(at: int, items: list[dict[str, Any]]) -> None:
                for item in items:
                    if item["index"]["status"] in {200, 201}:
                        acknowledged.add(int(item["index"]["_id"]))

            cut.append(kill_during_bulks(server, client, next_id, body, answered, rng))
            next_id = max(sent) + 1
    assert acknowledged, "no bulk was acknowledged before the kills"
    assert any(cut), "no kill landed in the middle of a bulk"
    with ServerProcess(data, extra=NO_WORKERS) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for i in sorted(acknowledged):
            response = client.get(f"/log/_doc/{i}")
            assert response.status_code == 200, f"acknowledged document {i} is lost"
            assert response.json()["_source"] == _source(i)
        for i in sorted(sent - acknowledged):
            response = client.get(f"/log/_doc/{i}")
            assert response.status_code in {200, 404}
            if response.status_code == 200:
                assert response.json()["_source"] == _source(i), f"document {i} is torn"
        client.post("/log/_refresh")
        count = client.get("/log/_count").json()["count"]
        assert len(acknowledged) <= count <= len(sent)
    print(f"\nSIGKILL cut a bulk: {cut}, acknowledged: {len(acknowledged)}, sent: {len(sent)}, after restart: {count}")
