"""Pipeline worker processes (DESIGN §10, issue 11): real processes, real WebAssembly, real faults.

One service with two workers serves the module (starting a pool costs seconds); each test uses pipelines and
indexes of its own. Faults are injected the way disruption tests do: a worker is killed (SIGKILL) or stopped
(SIGSTOP) in the middle of real work, then an invariant is checked over every item.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from quidditch_pipeline import (
    InputError,
    JsonDocumentOutcome,
    PipelineService,
    StageError,
    WorkerError,
)
from quidditch_pipeline.storage import MemoryStorage
from quidditch_pipeline.udf import UdfRuntime
from quidditch_pipeline.workers import _wire
from quidditch_pipeline.workers.worker import _Worker
from tests.server_harness import ServerProcess
from tests.udf_fixtures import UdfBuilds, UdfSources


def pipeline(name: str, *stages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "type": "document", "stages": list(stages), **extra}


def native(name: str, processor: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "type": "native", "config": {"processor": processor, **config}}


def python(udf: str, **config: Any) -> dict[str, Any]:
    extra = {k: config.pop(k) for k in ("on_failure", "timeout_ms") if k in config}
    return {"name": udf, "type": "python", **extra, "config": {"udf_name": udf, **config}}


@pytest.fixture(scope="module")
def pooled(
    tmp_path_factory: pytest.TempPathFactory, udf_builds: UdfBuilds, udf_runtime: UdfRuntime
) -> Iterator[PipelineService]:
    # The session's runtime: its compiled cache (which the workers map too) already holds the test UDFs.
    data = tmp_path_factory.mktemp("workers") / "data"
    with PipelineService.open(data, workers=2, runtime=udf_runtime) as svc:
        svc.put_udf("hostile", "1.0.0", udf_builds.get("hostile").wasm)
        yield svc


@pytest.fixture(scope="module")
def local(
    tmp_path_factory: pytest.TempPathFactory, udf_builds: UdfBuilds, udf_runtime: UdfRuntime
) -> Iterator[PipelineService]:
    with PipelineService.open(tmp_path_factory.mktemp("local") / "data", runtime=udf_runtime) as svc:
        svc.put_udf("hostile", "1.0.0", udf_builds.get("hostile").wasm)
        yield svc


@pytest.fixture(params=["in-process", "workers"])
def either(request: pytest.FixtureRequest, local: PipelineService, pooled: PipelineService) -> PipelineService:
    return pooled if request.param == "workers" else local


def test_json_documents_answer_bytes_per_item_in_order(either: PipelineService) -> None:
    either.put_pipeline(
        pipeline(
            "json-docs",
            native("lower", "lowercase", field="title", ignore_missing=True),
            native("spam", "drop", field="title", value="spam"),
        )
    )
    either.associate("json-idx", "document", "json-docs")
    untouched = b'{ "other" :  1 }'  # spacing kept: an unchanged document answers the very bytes it came with
    items = [
        ("1", b'{"title": "Shoe"}'),
        ("2", untouched),
        ("3", b'{"title": "SPAM"}'),
        ("4", b"[1, 2]"),
        ("5", b'{"title": '),
        ("6", b'{"title": 7}'),
    ]
    outs = either.process_documents_json("json-idx", items)
    assert all(isinstance(o, JsonDocumentOutcome) for o in outs)
    assert [(o.id, o.status) for o in outs] == [
        ("1", "success"),
        ("2", "success"),
        ("3", "dropped"),
        ("4", "failed"),
        ("5", "failed"),
        ("6", "failed"),
    ]
    assert outs[0].source_json is not None and orjson.loads(outs[0].source_json) == {"title": "shoe"}
    assert outs[1].source_json == untouched
    assert outs[2].source_json is None and outs[2].error is None
    assert isinstance(outs[3].error, InputError) and "document [4]" in outs[3].error.message
    assert "takes a JSON object, got a list" in outs[3].error.message
    assert isinstance(outs[4].error, InputError) and "document [5]: not valid JSON" in outs[4].error.message
    assert isinstance(outs[5].error, StageError)
    assert (outs[5].error.pipeline, outs[5].error.stage, outs[5].error.input_id) == ("json-docs", "lower", "6")
    # Without a pipeline the bytes pass through, and a non-object still fails alone.
    bare = either.process_documents_json("no-pipeline", [("a", b'{"x":1}'), ("b", b'"str"')])
    assert [(o.status, o.source_json) for o in bare] == [("success", b'{"x":1}'), ("failed", None)]


def test_a_large_batch_is_cut_over_the_workers_and_comes_back_in_order(pooled: PipelineService) -> None:
    pooled.put_pipeline(
        pipeline("big", native("n", "set", field="n", value=1), python("hostile", parameters={"do": "none"}))
    )
    pooled.associate("big-idx", "document", "big")
    pooled.reset_stats("big")
    before = {w["pid"]: w["items"] for w in pooled.workers()}
    items = [(str(i), orjson.dumps({"i": i})) for i in range(5000)]
    outs = pooled.process_documents_json("big-idx", items)
    assert [o.id for o in outs] == [str(i) for i in range(5000)]
    assert all(o.status == "success" for o in outs)
    assert all(orjson.loads(o.source_json or b"") == {"i": i, "n": 1} for i, o in enumerate(outs))
    workers = pooled.workers()
    shares = [w["items"] - before.get(w["pid"], 0) for w in workers]
    assert sum(shares) == 5000 and all(share > 0 for share in shares)  # both cores worked on one request
    stats = pooled.stats("big")
    assert (stats["count"], stats["succeeded"], stats["current"]) == (5000, 5000, 0)
    assert [(s["name"], s["count"]) for s in stats["stages"]] == [("n", 5000), ("hostile", 5000)]
    assert stats["duration_us"]["p99"] >= stats["duration_us"]["p50"] > 0
    assert pooled.stats()["workers"] == pooled.workers()
    assert {"pid", "batches", "items", "busy_ms", "restarts", "alive"} <= workers[0].keys()


def test_a_worker_gets_its_next_chunk_before_its_answer_is_decoded(
    pooled: PipelineService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two chunks per worker, and the parent's decoding overlaps the workers' work: a worker that answers is
    sent the request's next chunk before the parent decodes that answer."""
    pooled.put_pipeline(pipeline("fed", native("n", "set", field="n", value=1)))
    pooled.associate("fed-idx", "document", "fed")
    pool = pooled._pool
    assert pool is not None
    events: list[tuple[str, int, int | None]] = []
    send, decode = pool._send, pool._decode

    def logged_send(slot: Any, *args: Any) -> Any:
        chunk = send(slot, *args)
        if chunk is not None:
            events.append(("send", chunk.start, slot.index))
        return chunk

    def logged_decode(chunk: Any, *args: Any) -> None:
        events.append(("decode", chunk.start, chunk.slot.index))
        decode(chunk, *args)

    monkeypatch.setattr(pool, "_send", logged_send)
    monkeypatch.setattr(pool, "_decode", logged_decode)
    items = [(str(i), orjson.dumps({"i": i})) for i in range(400)]
    outs = pooled.process_documents_json("fed-idx", items)
    assert [orjson.loads(o.source_json or b"") for o in outs] == [{"i": i, "n": 1} for i in range(400)]
    sends = [start for kind, start, _ in events if kind == "send"]
    assert sorted(sends) == [0, 100, 200, 300]  # 2 workers, 2 chunks each
    assert sorted(start for kind, start, _ in events if kind == "decode") == sends
    overlapped = 0
    for at, (kind, start, slot) in enumerate(events):
        if kind != "decode":
            continue
        sent_at = events.index(("send", start, slot))
        later = [i for i, event in enumerate(events) if event[0] == "send" and event[2] == slot and i > sent_at]
        if later:  # the worker got another chunk of this request: it went out before this answer was decoded
            assert later[0] < at, events
            overlapped += 1
    assert overlapped >= 2, events  # at least two of the four answers were decoded while their worker worked

def test_retries_and_deadlines_run_in_the_worker_and_count_in_the_parent(pooled: PipelineService) -> None:
    stage = python("hostile", parameters={"do": "loop"}, on_failure="retry", timeout_ms=50)
    pooled.put_pipeline(pipeline("retrying", stage, retry={"max_attempts": 3, "initial_backoff_ms": 5}))
    pooled.associate("retry-idx", "document", "retrying")
    start = time.monotonic()
    [out] = pooled.process_documents_json("retry-idx", [("1", b"{}")])
    assert time.monotonic() - start < 3 * 0.05 + 1.0  # preempted at each attempt's budget, in the worker
    assert out.status == "failed" and isinstance(out.error, StageError) and out.error.kind == "timeout"
    assert (out.error.pipeline, out.error.stage, out.error.input_id) == ("retrying", "hostile", "1")
    [stage_stats] = pooled.stats("retrying")["stages"]
    # While a batch is out in a worker, the parent's ``current`` counts it.
    thread = threading.Thread(target=pooled.process_documents_json, args=("retry-idx", [("2", b"{}"), ("3", b"{}")]))
    thread.start()
    time.sleep(0.1)
    in_flight = pooled.stats("retrying")["current"]
    thread.join()
    assert (in_flight, pooled.stats("retrying")["current"]) == (2, 0)
    assert (stage_stats["count"], stage_stats["retries"], stage_stats["timeouts"]) == (1, 2, 3)


def test_dict_documents_go_through_the_workers_too(pooled: PipelineService) -> None:
    pooled.put_pipeline(pipeline("dicts", native("up", "uppercase", field="t")))
    pooled.associate("dict-idx", "document", "dicts")
    same = {"t": "A"}
    outs = pooled.process_documents("dict-idx", [("1", {"t": "x"}), ("2", same), ("3", [1]), ("4", {})])  # type: ignore[list-item]
    assert [o.status for o in outs] == ["success", "success", "failed", "failed"]
    assert outs[0].source == {"t": "X"} and outs[1].source == {"t": "A"}
    assert isinstance(outs[2].error, InputError) and isinstance(outs[3].error, StageError)


def test_puts_of_pipelines_and_udfs_are_seen_by_every_worker(
    pooled: PipelineService, udf_builds: UdfBuilds, udf_sources: UdfSources
) -> None:
    batch = [(str(i), b"{}") for i in range(100)]  # two chunks: one per worker

    def values(field: str) -> set[Any]:
        outs = pooled.process_documents_json("put-idx", batch)
        return {orjson.loads(o.source_json or b"{}").get(field) for o in outs}

    pooled.put_pipeline(pipeline("inner", native("v", "set", field="v", value=1)))
    pooled.put_pipeline(pipeline("outer", {"name": "call", "type": "pipeline", "config": {"pipeline": "inner"}}))
    pooled.associate("put-idx", "document", "outer")
    assert values("v") == {1}
    pooled.put_pipeline(pipeline("inner", native("v", "set", field="v", value=2)))  # a nested pipeline's revision
    assert values("v") == {2}
    pooled.put_pipeline(pipeline("outer", native("v", "set", field="v", value=3)))
    assert values("v") == {3}
    pooled.disassociate("put-idx", "document")
    pooled.delete_pipeline("outer")
    pooled.put_pipeline(pipeline("outer", native("v", "set", field="v", value=4)))  # revision 1 again
    pooled.associate("put-idx", "document", "outer")
    assert values("v") == {4}
    # An unpinned UDF stage runs the highest version, put after the workers started.
    pooled.put_udf("flex", "1.0.0", udf_builds.get("hostile").wasm)
    pooled.put_pipeline(pipeline("outer", python("flex", parameters={"do": "params", "v": 5})))
    assert values("v") == {5}
    selector = udf_sources.build("sel", 'def process(value, params):\n    return {"v": 6}\n')
    pooled.put_udf("flex", "2.0.0", selector.source, mode="source")
    assert values("v") == {6}


def test_killed_workers_fail_only_their_items_and_are_replaced(pooled: PipelineService) -> None:
    """SIGKILL workers at random during a long run: every item is processed or reported failed, exactly once."""
    pooled.put_pipeline(pipeline("slow", python("hostile", parameters={"do": "spin", "seconds": 0.0005})))
    pooled.associate("slow-idx", "document", "slow")
    pooled.reset_stats("slow")
    restarts = sum(w["restarts"] for w in pooled.workers())
    results: list[list[JsonDocumentOutcome]] = []
    sent: list[list[tuple[str, bytes]]] = []
    stop = threading.Event()
    kills: list[int] = []

    def killer() -> None:
        rng = random.Random(11)
        while not stop.wait(rng.uniform(0.3, 0.8)):
            alive = [w["pid"] for w in pooled.workers() if w["alive"]]
            if alive and len(kills) < 4:
                pid = rng.choice(alive)
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        deadline = time.monotonic() + 3.0
        batch_no = 0
        while time.monotonic() < deadline or len(kills) < 2:
            batch = [(f"{batch_no}-{i}", orjson.dumps({"b": batch_no, "i": i})) for i in range(200)]
            sent.append(batch)
            results.append(pooled.process_documents_json("slow-idx", batch))
            batch_no += 1
    finally:
        stop.set()
        thread.join()
    died = 0
    for batch, outs in zip(sent, results, strict=True):
        assert [o.id for o in outs] == [doc_id for doc_id, _ in batch]  # none lost, none out of order
        for (_, raw), out in zip(batch, outs, strict=True):
            if out.status == "success":
                assert out.error is None and orjson.loads(out.source_json or b"") == orjson.loads(raw)
            else:
                assert out.status == "failed" and out.source_json is None
                assert isinstance(out.error, WorkerError) and out.error.pid in kills
                assert f"pipeline worker {out.error.pid} died (signal 9, SIGKILL) while running this batch" in str(
                    out.error
                )
                died += 1
    assert died > 0
    total = sum(len(b) for b in sent)
    stats = pooled.stats("slow")
    assert (stats["count"], stats["succeeded"] + stats["failed"], stats["failed"]) == (total, total, died)
    assert stats["current"] == 0
    # The pool goes on (a worker killed while idle is found when next picked) and refills itself.
    outs = pooled.process_documents_json("slow-idx", [(str(i), b"{}") for i in range(100)])
    assert all(o.status == "success" for o in outs)
    wait_until = time.monotonic() + 60
    while not all(w["alive"] for w in pooled.workers()) and time.monotonic() < wait_until:
        time.sleep(0.1)
    workers = pooled.workers()
    assert all(w["alive"] for w in workers) and sum(w["restarts"] for w in workers) == restarts + len(kills)
    assert not set(kills) & {w["pid"] for w in workers}


def test_a_hung_worker_is_killed_after_the_deadline_plus_grace(tmp_path: Path) -> None:
    with PipelineService.open(tmp_path / "data", workers=1, worker_batch_timeout_s=0.5, worker_grace_s=0.5) as svc:
        svc.put_pipeline(pipeline("h", native("v", "set", field="v", value=1)))
        svc.associate("h-idx", "document", "h")
        [worker] = svc.workers()
        os.kill(worker["pid"], signal.SIGSTOP)
        start = time.monotonic()
        outs = svc.process_documents_json("h-idx", [("1", b"{}"), ("2", b"{}")])
        waited = time.monotonic() - start
        assert 1.0 <= waited < 5.0
        assert [o.status for o in outs] == ["failed", "failed"]
        assert isinstance(outs[0].error, WorkerError) and outs[0].error.status == 503
        assert f"pipeline worker {worker['pid']} did not answer" in outs[0].error.message
        # The replacement starts in the background; the next request waits for it and succeeds.
        assert [o.source_json for o in svc.process_documents_json("h-idx", [("3", b"{}")])] == [b'{"v":1}']
        [after] = svc.workers()
        assert after["pid"] != worker["pid"] and after["restarts"] == 1 and "killed" in after["last_exit"]


def test_workers_need_a_registry_on_disk(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data directory"):
        PipelineService(MemoryStorage(), tmp_path / "udfs", workers=1)
    with PipelineService.in_memory(workers=1) as svc:  # in_memory keeps its registry in a temporary folder
        svc.put_pipeline(pipeline("m", native("v", "set", field="v", value=1)))
        assert svc.process_document("i", "1", {}, pipeline="m") == {"v": 1}


def test_serve_runs_one_worker_per_usable_core_by_default_and_workers_n_when_asked(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    with ServerProcess(tmp_path / "default") as server:
        workers = httpx.get(f"{server.url}/_pipeline/_stats", timeout=30).json()["workers"]
        assert len(workers) == cores and all(w["alive"] for w in workers)
        pids = [w["pid"] for w in workers]
        assert server.terminate() == 0
    for pid in pids:  # the workers went with the server
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with ServerProcess(tmp_path / "one", extra=("--workers", "1")) as server, httpx.Client(
        base_url=server.url, timeout=30
    ) as client:
        definition = pipeline("tag", native("t", "set", field="tagged", value=True))
        assert client.put("/_pipeline/tag", json=definition).status_code == 200
        assert client.put("/logs").status_code == 200
        lines = b"".join(b'{"index":{"_id":"%d"}}\n{"n":%d}\n' % (i, i) for i in range(300))
        bulk = client.post("/logs/_bulk", content=lines, params={"pipeline": "tag", "refresh": "true"}).json()
        assert bulk["errors"] is False
        assert client.get("/logs/_doc/299").json()["_source"] == {"n": 299, "tagged": True}
        [worker] = client.get("/_pipeline/_stats").json()["workers"]
        assert worker["items"] == 300 and client.get("/_pipeline/tag/_stats").json()["count"] == 300


def test_final_pipeline_runs_after_the_default_in_both_paths_and_none_cannot_skip_it(either: PipelineService) -> None:
    either.put_pipeline(pipeline("fin-default", native("d", "set", field="by_default", value=True)))
    either.put_pipeline(
        pipeline(
            "fin-final",
            native("pii", "remove", field="ssn", ignore_missing=True),
            {**native("flag", "set", field="flagged", value="{{kind}}"), "if": "has(ctx.kind) && ctx.kind == 'spam'"},
        )
    )
    either.associate("fin-idx", "document", "fin-default")
    either.associate("fin-idx", "document_final", "fin-final")
    outs = either.process_documents("fin-idx", [("1", {"ssn": "1", "kind": "spam"}), ("2", {"ssn": "2"})])
    assert [o.source for o in outs] == [
        {"kind": "spam", "by_default": True, "flagged": "spam"},
        {"by_default": True},
    ]
    raw = either.process_documents_json("fin-idx", [("1", b'{"ssn": "1"}'), ("2", b'"x"')], pipeline="_none")
    assert [o.status for o in raw] == ["success", "failed"]
    assert raw[0].source_json is not None and orjson.loads(raw[0].source_json) == {}


def test_the_cyclic_collector_does_not_run_during_a_workers_batch(pooled: PipelineService) -> None:
    # A worker's handle() run in this process on a real batch (the frame the parent would send): a batch's
    # objects live until its end, so collections during it would traverse them again and again for nothing.
    pooled.put_pipeline(pipeline("gc-batch", native("n", "set", field="n", value=1)))
    pooled.associate("gc-idx", "document", "gc-batch")
    assert pooled._pool is not None
    worker = _Worker(pooled._pool._config)
    root = pooled.compiled("gc-batch")
    pins, udfs = pooled._worker_plan(root)
    docs = [orjson.dumps({"i": i, "tags": ["a", {"b": i}]}) for i in range(5000)]
    header = {"pipeline": root.name, "pins": pins, "udfs": udfs, "index": "gc-idx", "params": {}}
    frame = _wire.encode({**header, "ids": [str(i) for i in range(len(docs))], "sizes": [len(d) for d in docs]}, docs)
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    worker.handle(frame)  # builds the pipeline once, outside what is counted
    gc.collect()  # the allocation counts start from zero: nothing left over sets one off before handle() begins
    gc.callbacks.append(count)
    try:
        answer = worker.handle(frame)
    finally:  # before the answer is decoded: that runs with the collector on again, and may set one off
        gc.callbacks.remove(count)
        worker.close()
    answer_header, _ = _wire.decode(answer)
    assert answer_header["codes"] == [_wire.CHANGED] * len(docs)
    assert collections == []  # 5,000 documents of several objects each set off many collections before
    assert gc.isenabled()  # and the collector runs again once the batch is answered
