"""The UDF author's loop (issue 12): component mode and source mode side by side, for the example UDFs.

Run: ``python -m benchmarks.bench_udf_loop [--cold-component NAME] [--edits N]``. It prints one table row per
example UDF and mode, then the edit-to-first-result figures of ``POST /_udf/_execute`` with inline source on a
warm server (real HTTP on loopback).

* put→first result: ``PipelineService.put_udf`` then ``execute_udf`` on a fresh service. Component mode takes
  the components from the test fixtures' cache (tests/udf_fixtures.py) and a fresh compiled cache, so its
  figure is upload + wasmtime compile + first call; ``--cold-component NAME`` also runs one real server-side
  build (componentize-py), which the warm figure leaves out. Source mode: the checks, one interpreter instance
  (``load-source``) and the call; the shared interpreter is compiled already (once per release and machine).
* per call: the median of 200 calls of a one-item batch, through ``UdfRuntime.call_batch``.
* instance: the median time to create one instance (source mode: with ``load-source``), and the resident
  memory each added, from creating 8 and calling each once.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from quidditch_pipeline import PipelineService
from quidditch_pipeline.storage import MemoryStorage
from quidditch_pipeline.udf import UdfRuntime, build_component
from quidditch_pipeline.udf.runtime import _NO_DEADLINE, _encode_request, _Instance
from tests.server_harness import ServerProcess
from tests.udf_fixtures import EXAMPLES_DIR, UdfBuilds, _cache_root, interpreter_dir

DOC = {"title": "  the QUICK brown fox of usb-c  ", "body": "A kettle. " * 20, "price": 34.99, "age_days": 12}
# (input, params, type) per example.
SAMPLES: dict[str, tuple[Any, dict[str, Any], str]] = {
    "price_band": (DOC, {}, "document"),
    "query_synonyms": ({"query": {"match": {"title": "laptop bag"}}}, {"synonyms": {"laptop": ["notebook"]}}, "query"),
    "recency_boost": ({"_id": "1", "_score": 1.5, "_source": DOC}, {"days": 30}, "result"),
    "spam_filter": (DOC, {}, "document"),
    "strict_parser": (DOC, {}, "document"),
    "title_normalizer": (DOC, {"keep": ["USB-C"]}, "document"),
}
INSTANCES = 8


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(runtime: UdfRuntime, sha: str, path: Path, sample: tuple[Any, dict[str, Any], str]) -> dict[str, float]:
    value, params, kind = sample
    arity = runtime.load(sha, path)
    metas = [{"type": kind}] if arity == 3 else None
    calls = [timed(lambda: runtime.call_batch(sha, path, [value], params, metas, timeout_s=5)) for _ in range(200)]
    component = runtime._components[sha]
    process = psutil.Process()
    instances = []
    created = []
    rss = process.memory_info().rss
    for _ in range(INSTANCES):
        started = time.perf_counter()
        instance = _Instance(runtime, component, runtime.memory_limit_bytes)
        created.append(time.perf_counter() - started)
        instances.append(instance)
    apart, batch = _encode_request(params, [value], metas, runtime.max_output_bytes)
    for instance in instances:  # one call each: what an instance costs once used
        instance.call(apart, batch, _NO_DEADLINE)
    per_instance = (process.memory_info().rss - rss) / INSTANCES / (1 << 20)
    for instance in instances:
        instance.close()
    return {"call_us": median_ms(calls) * 1000, "instance_ms": median_ms(created), "instance_mib": per_instance}


def put_to_first_result(
    runtime: UdfRuntime, name: str, payload: str | bytes, mode: str, sample: tuple[Any, dict[str, Any], str]
) -> float:
    value, params, kind = sample
    with (
        tempfile.TemporaryDirectory() as tmp,
        PipelineService(MemoryStorage(), Path(tmp) / "udfs", runtime=runtime) as svc,
    ):
        started = time.perf_counter()
        svc.put_udf(name, "1.0.0", payload, mode=mode)
        out = svc.execute_udf(name, value, params=params, type=kind, scope="hit", target_field="out")
        took = time.perf_counter() - started
        assert out["error"] is None or out["error"]["type"] == "ValueError", out  # strict_parser may refuse
        return took


def table(args: argparse.Namespace) -> None:
    builds = UdfBuilds(_cache_root() / "components")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("component", "source"):
            # A fresh compiled cache per mode: component mode compiles each example, as a first put does.
            with UdfRuntime(Path(tmp) / mode, interpreter_dir=interpreter_dir()) as runtime:
                runtime.interpreter()
                for example in sorted(SAMPLES):
                    source = (EXAMPLES_DIR / f"{example}.py").read_text(encoding="utf-8")
                    sample = SAMPLES[example]
                    if mode == "component":
                        built = builds.get(example)
                        put = put_to_first_result(runtime, example, built.wasm, mode, sample)
                        sha, path = built.sha256, built.path
                    else:
                        put = put_to_first_result(runtime, example, source, mode, sample)
                        sha, path = runtime.load_source(source, filename=f"{example}.py")
                    rows.append((example, mode, put, measure(runtime, sha, path, sample)))
    builds.close()
    print(f"{'UDF':18} {'mode':10} {'put→first result':>17} {'per call':>10} {'new instance':>13} {'RSS/instance':>13}")
    for example, mode, put, figures in rows:
        print(
            f"{example:18} {mode:10} {put * 1000:>14.0f} ms {figures['call_us']:>7.0f} µs "
            f"{figures['instance_ms']:>10.1f} ms {figures['instance_mib']:>9.1f} MiB"
        )
    if args.cold_component:
        source = (EXAMPLES_DIR / f"{args.cold_component}.py").read_text(encoding="utf-8")
        took = timed(lambda: build_component(source, filename=f"{args.cold_component}.py"))
        print(f"\ncomponent build of {args.cold_component} (componentize-py, server side): {took:.1f} s")


def edit_loop(edits: int) -> None:
    """Edit-to-first-result over HTTP: each edit is new source (a new sha256), run once through _execute.

    The server is ``quidditch-pipeline serve`` in a process of its own, as an author runs it: a server in a
    thread of this process would share the GIL with the client and add ~40 ms to every request. It keeps the
    shared interpreter in the user's cache (built there on first use)."""
    source = (EXAMPLES_DIR / "title_normalizer.py").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "data", extra=("--workers", "0")) as server:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            body = {"source": source, "input": DOC, "params": {"keep": ["USB-C"]}}
            client.post("/_udf/_execute", json=body).raise_for_status()  # warm: the interpreter compiled, mapped
            firsts, repeats = [], []
            for edit in range(edits):
                body["source"] = f"{source}\n# edit {edit}\n"
                firsts.append(timed(lambda: client.post("/_udf/_execute", json=body).raise_for_status()))
                repeats.append(timed(lambda: client.post("/_udf/_execute", json=body).raise_for_status()))
        server.terminate()
    quantiles = statistics.quantiles(firsts, n=20)
    print(
        f"\nPOST /_udf/_execute with inline source, warm server, {edits} edits: edit→first result "
        f"p50 {median_ms(firsts):.1f} ms, p95 {quantiles[18] * 1000:.1f} ms; the same source again "
        f"p50 {median_ms(repeats):.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold-component", metavar="NAME", help="also time one componentize-py build of NAME")
    parser.add_argument("--edits", type=int, default=40, help="edits in the HTTP loop (40)")
    parser.add_argument("--loop-only", action="store_true", help="only the HTTP edit loop, not the table")
    args = parser.parse_args()
    if not args.loop_only:
        table(args)
    edit_loop(args.edits)


if __name__ == "__main__":
    main()
