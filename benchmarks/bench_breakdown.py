"""Where a document's time goes in a one-stage WASM document pipeline, and what a worker and the parent cost.

Run from the repository root: ``python -m benchmarks.bench_breakdown [--batch 1000] [--rounds 9]``.

The work is compare's d and w (``recency_boost`` with ``input_fields`` and ``target_field``, ~1 KB documents,
JSON bytes in and out through ``process_documents_json``). Every figure is **CPU time per document**
(``time.process_time``; the minimum over rounds that time every piece in turn), which a shared machine's load
moves far less than throughput: the pieces of the in-process path one by one (host parse, projection, the
guest's request, the guest call, its answer, the mapping, the output), the rest being the executor's and
service's own work; then native Python (compare's a), a worker's ``handle`` of the same documents (frames
included) in this process, and the parent's share with two real workers (the calling thread's CPU).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import orjson
from rich.console import Console

from quidditch_pipeline import _paths
from quidditch_pipeline.definitions import PipelineType
from quidditch_pipeline.mapping import ResultMapping
from quidditch_pipeline.udf import runtime as udf_runtime
from quidditch_pipeline.workers import _wire
from quidditch_pipeline.workers.worker import _Worker, parse_input

from . import compare


def best_of(pieces: dict[str, Callable[[], Any]], documents: int, rounds: int) -> dict[str, float]:
    """The least CPU per document of each piece over ``rounds`` rounds that run every piece in turn."""
    for run in pieces.values():
        run()
    gc.collect()
    gc.freeze()
    best = dict.fromkeys(pieces, float("inf"))
    for _ in range(rounds):
        for name, run in pieces.items():
            start = time.process_time()
            run()
            best[name] = min(best[name], (time.process_time() - start) / documents * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--docs", type=int, default=10_000)
    args = parser.parse_args()
    log = Console()
    components = compare.build_components(log)
    docs = compare.make_docs(args.docs)
    batches = compare.chunk(docs, args.batch)
    ids = [[str(i) for i in range(len(batch))] for batch in batches]

    # Open until the end: the worker measured in this process reads its UDF from the pooled service's data
    # directory, which closing deletes (then every item failed as unavailable, and that was what was timed).
    pooled = compare.open_service(components, query=False, workers=2)
    try:
        worker = _Worker(pooled._pool._config) if pooled._pool is not None else None
        root = pooled.compiled("enrich-products")
        pins, udfs = pooled._worker_plan(root)
        header = {"pipeline": root.name, "pins": pins, "udfs": udfs, "index": compare.INDEX, "params": {}}
        frames = [
            _wire.encode({**header, "ids": names, "sizes": [len(doc) for doc in batch]}, batch)
            for names, batch in zip(ids, batches, strict=True)
        ]
        if worker is not None:
            answer, _ = _wire.decode(worker.handle(frames[0]))
            if answer.get("errors") or answer.get("error"):
                raise SystemExit(f"the worker's items failed, so its time would not be the pipeline's: {answer}")

        def parent() -> None:
            for names, batch in zip(ids, batches, strict=True):
                pooled.process_documents_json(compare.INDEX, list(zip(names, batch, strict=True)))

        parent()
        parent_cpu = float("inf")
        for _ in range(max(3, args.rounds // 3)):
            start = time.thread_time()
            parent()
            parent_cpu = min(parent_cpu, (time.thread_time() - start) / len(docs) * 1e6)

        with compare.open_service(components, query=False) as service:
            runtime = service.runtime
            runtime.load(components.recency_sha256, components.recency)
            component = runtime._component(components.recency_sha256, components.recency)
            keep = _paths.projection(compare.INPUT_FIELDS)
            mapping = ResultMapping(PipelineType.DOCUMENT, hit_scope=False, target_field=compare.TARGET_FIELD)
            parsed = [[orjson.loads(doc) for doc in batch] for batch in batches]
            projected = [[_paths.project(value, keep) for value in batch] for batch in parsed]
            limit = runtime.max_output_bytes
            requests = [udf_runtime._encode_request(compare.PARAMS, batch, None, limit) for batch in projected]
            instance = component.pool.acquire(runtime.memory_limit_bytes, 10.0)
            answers = [instance.call(apart, batch, 1 << 30) for apart, batch in requests]
            component.pool.release(instance)
            results = [
                udf_runtime._decode_response(raw, len(batch), 1 << 30)
                for raw, batch in zip(answers, projected, strict=True)
            ]
            mapped = [
                [mapping.apply(result.value, value) for result, value in zip(rs, values, strict=True)]
                for rs, values in zip(results, parsed, strict=True)
            ]

            def guest() -> None:
                held = component.pool.acquire(runtime.memory_limit_bytes, 10.0)
                for apart, batch in requests:
                    held.call(apart, batch, 1 << 30)
                component.pool.release(held)

            def whole() -> None:
                for names, batch in zip(ids, batches, strict=True):
                    service.process_documents_json(compare.INDEX, list(zip(names, batch, strict=True)))

            process = compare.load_udf("recency_boost").process
            document = PipelineType.DOCUMENT
            pieces: dict[str, Callable[[], Any]] = {
                "whole": whole,
                "host parse (orjson.loads, the object check)": lambda: [
                    [parse_input(document, "1", doc) for doc in batch] for batch in batches
                ],
                "projection to input_fields": lambda: [[_paths.project(v, keep) for v in batch] for batch in parsed],
                "the guest's request (marshal)": lambda: [
                    udf_runtime._encode_request(compare.PARAMS, batch, None, limit) for batch in projected
                ],
                "guest call (decode, UDF, encode, wasmtime)": guest,
                "host decode of the guest's answer": lambda: [
                    udf_runtime._decode_response(raw, len(batch), 1 << 30)
                    for raw, batch in zip(answers, projected, strict=True)
                ],
                "mapping (target_field)": lambda: [
                    [mapping.apply(r.value, v) for r, v in zip(rs, values, strict=True)]
                    for rs, values in zip(results, parsed, strict=True)
                ],
                "output (orjson.dumps)": lambda: [[orjson.dumps(v) for v in batch] for batch in mapped],
                "a: native Python (orjson in, process, orjson out)": lambda: [
                    compare.native_batch(process, batch) for batch in batches
                ],
            }
            if worker is not None:
                pieces["a worker's handle(), frames included"] = lambda: [worker.handle(frame) for frame in frames]
            best = best_of(pieces, len(docs), args.rounds)
            if worker is not None:
                worker.close()
    finally:
        pooled.close()

    total = best.pop("whole")
    native = best.pop("a: native Python (orjson in, process, orjson out)")
    handle = best.pop("a worker's handle(), frames included", float("nan"))
    log.print(f"in-process process_documents_json, batch {args.batch}: {total:.2f} us CPU per document")
    for name, cost in best.items():
        log.print(f"  {name:<45} {cost:6.2f} us  {cost / total:6.1%}")
    rest = total - sum(best.values())
    log.print(f"  {'executor, stage, service (the rest)':<45} {rest:6.2f} us  {rest / total:6.1%}")
    log.print(f"a, native Python: {native:.2f} us; a worker's handle(): {handle:.2f} us; the parent with 2 workers: "
              f"{parent_cpu:.2f} us CPU per document")
    bound = 2 * native / (handle + parent_cpu)
    log.print(f"w/a on two cores cannot pass 2 x a / (worker + parent) = {bound:.2f}")


if __name__ == "__main__":
    main()
