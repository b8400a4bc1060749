"""The project against its peers on the same work, side by side in one run (issue 3, "Benchmark").

Run from the repository root: ``python -m benchmarks.compare [--json] [--quick] [--rounds N]``.

The work, for every contender: ~1 KB JSON documents (deterministic product documents, shaped as hits
``{"_id", "_score", "_source": {...}}`` because that is what ``udfs/recency_boost.py`` reads: ``_score``
and ``_source.age_days``) through the recency-boost UDF's ``process``; its number is stored at
``recency_score`` the way the mapping does (``target_field``). Every contender starts from each document's
JSON bytes and ends with each resulting document's JSON bytes: JSON decode and encode are counted in all
of them. Batches of 1, 100 and 1000 documents.

* **a** native in-process Python: ``orjson.loads``, ``process``, ``map_udf_result``, ``orjson.dumps``;
* **b** a ``multiprocessing`` pool of 2 processes doing (a), one task per batch (at batch size 1 that is
  one task per document), fed with ``imap`` so both processes stay busy;
* **c** naive wasmtime-py: one component call per document through ``wasmtime.component.Func.__call__``
  on a component of a minimal plain WIT (``process: func(doc: string, params: string) -> string``, the
  guest ``json.loads`` both and returns ``json.dumps`` of the UDF's result), merged on the host;
* **d** this project: a one-stage document pipeline (python stage, ``recency_boost``, ``target_field``, and
  ``input_fields``: the three fields the UDF reads, so only they cross into the sandbox) through
  ``PipelineService.process_documents`` on one thread;
* **e** the same on two threads, each calling ``process_documents`` on its own half of the batches;
* **d0** (for reference, no target) as d, without ``input_fields``: every whole document crosses.
* **w** this project with ``workers=2``: the same pipeline through ``PipelineService.process_documents_json``,
  raw JSON bytes in and JSON bytes out, each batch cut over two worker processes. Beside its docs/s the
  run reports the CPU time the calling (parent) thread spends per document: what caps a parent feeding
  many workers.
* **w2** w with two callers at once (each its own half of the batches), as a server with two ``_bulk``
  requests in flight: one call's answers are decoded in the parent while the other's chunks keep the
  workers busy.

docs/s is the median of the timed rounds; every round times all five contenders (the project's service is
opened only around d and e, so its epoch-ticker thread does not run while a, b and c are timed), so that a
shared machine's drift falls on all of them alike. Every contender's output is checked to be the same.

Plus: p50/p99 of one ``process_query`` call with a one-stage query pipeline (``udfs/query_synonyms.py``)
against the p50 of the same UDF function called natively (the UDF's own work), and the same call sent to a
worker process (``search_in_workers``, for reference); cold load from the compiled
cache (a fresh ``UdfRuntime``: ``load`` + first call); first compile (a fresh runtime, empty cache); resident
memory per warm instance (RSS delta, measured in a fresh process).

Components are built once and cached on disk: the project's UDFs through the test suite's cache
(``tests/udf_fixtures.py``: ``$QP_TEST_CACHE``, default ``~/.cache/quidditch-pipeline/test-udfs``, compiled
forms beside them), the naive component under ``$QP_BENCH_CACHE`` (default ``$QP_TEST_CACHE/bench`` when
that is set, else ``bench`` in the package's cache folder: ``$QUIDDITCH_CACHE_DIR``, default
``~/.cache/quidditch-pipeline``), keyed by a hash of its sources and toolchain.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import importlib.metadata
import importlib.util
import multiprocessing
import multiprocessing.pool
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import orjson
from rich.console import Console
from rich.table import Table
from wasmtime import Engine, Store, WasiConfig
from wasmtime.component import Component, Func, Linker

from quidditch_pipeline import PipelineService
from quidditch_pipeline._files import file_lock, write_atomically
from quidditch_pipeline.definitions import PipelineType
from quidditch_pipeline.mapping import map_udf_result
from quidditch_pipeline.udf import UdfRuntime
from quidditch_pipeline.udf.build import componentize
from quidditch_pipeline.udf.interpreter import cache_root
from tests.udf_fixtures import UdfBuilds, _cache_root

REPO = Path(__file__).resolve().parents[1]
UDFS_DIR = REPO / "udfs"
BATCH_SIZES = (1, 100, 1000)
WORKER_TARGET_SIZES = (100, 1000)  # issue 11's targets for w; at batch 1 a round trip per document is not the use
INDEX = "products"
INDEX_WHOLE = "products-whole"  # the same pipeline without input_fields: whole documents cross
#: What recency_boost reads: the hit's score, its age, and the date it falls back on (params date_field).
INPUT_FIELDS = ["_score", "_source.age_days", "_source.published"]
TARGET_FIELD = "recency_score"
PARAMS: dict[str, Any] = {"days": 30, "boost": 2.0, "decay": 0.25, "floor": 0.1}
SYNONYMS: dict[str, list[str]] = {"laptop": ["notebook"], "cheap": ["budget", "affordable"], "bag": ["sleeve"]}
QUERY_BODY: dict[str, Any] = {"query": {"match": {"title": "cheap laptop bag"}}, "size": 10}
UDF_VERSION = "1.0.0"
_MIB = 1 << 20
_WASMTIME_VERSION = importlib.metadata.version("wasmtime")


@dataclass(frozen=True, slots=True)
class Settings:
    quick: bool
    rounds: int
    docs: dict[int, int]  # batch size -> documents per timed round
    query_calls: int
    cold_loads: int
    memory_calls: int  # calls per thread per warming round of the memory probe


def settings(quick: bool, rounds: int | None) -> Settings:
    if quick:
        return Settings(True, rounds or 1, {1: 300, 100: 2000, 1000: 2000}, 300, 3, 3)
    return Settings(False, rounds or 5, {1: 4000, 100: 20000, 1000: 20000}, 5000, 10, 10)


# --- the documents --------------------------------------------------------------------------------------------

_BRANDS = ["Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne"]
_CATEGORIES = {
    "computers": ["laptop", "notebook", "monitor", "keyboard", "docking station"],
    "kitchen": ["kettle", "toaster", "blender", "coffee grinder", "rice cooker"],
    "outdoor": ["tent", "backpack", "sleeping bag", "headlamp", "trekking pole"],
    "audio": ["headphones", "speaker", "soundbar", "turntable", "microphone"],
}
_ADJECTIVES = ["compact", "lightweight", "stainless", "wireless", "ergonomic", "durable", "premium", "cheap"]
_COLORS = ["black", "white", "silver", "red", "navy", "forest green", "graphite"]
_MATERIALS = ["aluminium", "steel", "recycled plastic", "nylon", "oak", "glass"]
_COUNTRIES = ["DE", "FR", "NL", "ES", "IT", "PL", "SE"]
_PROSE = (
    "designed for everyday use with a long lasting finish easy to clean and backed by a two year warranty "
    "ships in recyclable packaging includes quick start guide tested for safety energy efficient quiet "
    "operation fits most standard setups customers praise the build quality and value for money"
)
_WORDS = _PROSE.split()
_TODAY = datetime.date(2025, 6, 1)


def make_docs(count: int, seed: int = 20250601) -> list[bytes]:
    """``count`` distinct ~1 KB product documents as JSON bytes, the same ones on every run."""
    rng = random.Random(seed)
    docs: list[bytes] = []
    for i in range(count):
        category = rng.choice(sorted(_CATEGORIES))
        kind = rng.choice(_CATEGORIES[category])
        brand = rng.choice(_BRANDS)
        age = rng.randint(0, 400)
        source: dict[str, Any] = {
            "sku": f"SKU-{i:07d}",
            "title": f"{brand} {rng.choice(_ADJECTIVES)} {kind} {rng.randint(100, 999)}",
            "brand": brand,
            "category": [category, kind],
            "description": "",
            "price": round(rng.uniform(4.99, 1499.0), 2),
            "currency": "EUR",
            "in_stock": rng.random() < 0.8,
            "stock": rng.randint(0, 500),
            "rating": round(rng.uniform(1.0, 5.0), 1),
            "reviews": rng.randint(0, 12000),
            "tags": rng.sample(_WORDS, 4),
            "attributes": {
                "color": rng.choice(_COLORS),
                "material": rng.choice(_MATERIALS),
                "weight_g": rng.randint(80, 9000),
                "dimensions_cm": [rng.randint(5, 80), rng.randint(5, 60), rng.randint(1, 40)],
            },
            "seller": {"id": f"S{rng.randint(1, 400):04d}", "country": rng.choice(_COUNTRIES)},
            "published": (_TODAY - datetime.timedelta(days=age)).isoformat(),
            "age_days": age,
        }
        doc = {"_id": f"p{i}", "_score": round(rng.uniform(0.5, 12.0), 4), "_source": source}
        room = 1024 - len(orjson.dumps(doc))
        words: list[str] = []
        while len(" ".join(words)) < room:
            words.append(rng.choice(_WORDS))
        source["description"] = " ".join(words)[:room].rstrip()
        docs.append(orjson.dumps(doc))
    return docs


def chunk(docs: Sequence[bytes], size: int) -> list[list[bytes]]:
    return [list(docs[i : i + size]) for i in range(0, len(docs), size)]


# --- (a) native, and (b) the multiprocessing pool's workers -------------------------------------------------

Process = Callable[..., Any]


def load_udf(name: str) -> ModuleType:
    """``udfs/<name>.py`` imported natively, under a private module name."""
    spec = importlib.util.spec_from_file_location(f"_bench_udf_{name}", UDFS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def native_batch(process: Process, batch: Sequence[bytes]) -> list[bytes]:
    """(a)'s work on one batch: JSON in, ``process``, the result applied as the mapping does, JSON out."""
    out: list[bytes] = []
    for raw in batch:
        doc = orjson.loads(raw)
        mapped = map_udf_result(
            process(doc, PARAMS), doc, pipeline_type=PipelineType.DOCUMENT, hit_scope=False, target_field=TARGET_FIELD
        )
        if isinstance(mapped, dict):  # else dropped (recency_boost never drops)
            out.append(orjson.dumps(mapped))
    return out


_WORKER_PROCESS: Process | None = None


def _pool_init() -> None:
    global _WORKER_PROCESS
    _WORKER_PROCESS = load_udf("recency_boost").process
    _freeze_heap()


def _freeze_heap() -> None:
    """What every contender's process does once set up, as ``serve`` does before it takes requests: move the
    objects alive now (modules, the documents) out of the collector's way, so that a full collection walks
    only what the work allocates. Without it, the collections caused by the work walk the whole heap."""
    gc.collect()
    gc.freeze()


def _pool_task(batch: list[bytes]) -> list[bytes]:
    assert _WORKER_PROCESS is not None
    return native_batch(_WORKER_PROCESS, batch)


# --- the contenders -------------------------------------------------------------------------------------------


class Contender(Protocol):
    key: str
    label: str

    def run(self, batches: list[list[bytes]]) -> list[list[bytes]]:
        """Every batch's output documents, batch by batch."""
        ...


class Native:
    key = "a"
    label = "a  native in-process Python"

    def __init__(self, process: Process) -> None:
        self.process = process

    def run(self, batches: list[list[bytes]]) -> list[list[bytes]]:
        return [native_batch(self.process, batch) for batch in batches]


class MpPool:
    key = "b"
    label = "b  multiprocessing pool x2, task per batch (per doc at 1)"

    def __init__(self, processes: int = 2) -> None:
        # spawn: workers that share nothing with this process (no wasmtime engine, no threads forked).
        self.pool = multiprocessing.get_context("spawn").Pool(processes, initializer=_pool_init)
        self.pool.map(_pool_task, [[]] * (processes * 2), chunksize=1)  # every worker up and initialised

    def run(self, batches: list[list[bytes]]) -> list[list[bytes]]:
        return list(self.pool.imap(_pool_task, batches, chunksize=1))

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class NaiveWasm:
    key = "c"
    label = "c  naive wasmtime-py, one call per doc"

    def __init__(self, engine: Engine, component: Component) -> None:
        linker = Linker(engine)
        linker.add_wasip2()
        self.store = Store(engine)
        self.store.set_wasi(WasiConfig())
        instance = linker.instantiate(self.store, component)
        func = instance.get_func(self.store, "process")
        assert isinstance(func, Func)
        self.func = func
        self.params = orjson.dumps(PARAMS).decode()

    def run(self, batches: list[list[bytes]]) -> list[list[bytes]]:
        func, store, params = self.func, self.store, self.params
        out: list[list[bytes]] = []
        for batch in batches:
            docs: list[bytes] = []
            for raw in batch:
                result = orjson.loads(func(store, raw.decode(), params))
                doc = orjson.loads(raw)
                mapped = map_udf_result(
                    result, doc, pipeline_type=PipelineType.DOCUMENT, hit_scope=False, target_field=TARGET_FIELD
                )
                if isinstance(mapped, dict):
                    docs.append(orjson.dumps(mapped))
            out.append(docs)
        return out


class Project:
    key = "d"
    label = "d  project process_documents, 1 thread"

    def __init__(self, service: PipelineService, index: str = INDEX) -> None:
        self.service = service
        self.index = index

    def run_batch(self, batch: list[bytes]) -> list[bytes]:
        items: list[tuple[str | None, dict[str, Any]]] = []
        for raw in batch:
            doc = orjson.loads(raw)
            items.append((doc["_id"], doc))
        out: list[bytes] = []
        for outcome in self.service.process_documents(self.index, items):
            if outcome.status != "success":
                raise RuntimeError(f"document {outcome.id}: {outcome.status}: {outcome.error}")
            out.append(orjson.dumps(outcome.source))
        return out

    def run(self, batches: list[list[bytes]]) -> list[list[bytes]]:
        return [self.run_batch(batch) for batch in batches]


class ProjectWhole(Project):
    key = "d0"
    label = "d0 project, whole docs cross (no input_fields), 1 thread"

    def __init__(self, service: PipelineService) -> None:
        super().__init__(service, INDEX_WHOLE)


class _RunsBatches(Protocol):
    def run_batch(self, batch: list[bytes]) -> list[bytes]: ...


class ProjectThreads:
    key = "e"
    label = "e  project process_documents, 2 threads"

    def __init__(self, single: _RunsBatches, threads: int = 2) -> None:
        self.single = single
        self.threads = threads

    def run(self, batches: list[list[bytes]]) -> list[list[bytes]]:
        shares = [batches[i :: self.threads] for i in range(self.threads)]
        results: list[list[list[bytes]]] = [[] for _ in shares]
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                results[i] = [self.single.run_batch(batch) for batch in shares[i]]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(self.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        out: list[list[bytes]] = []
        for i in range(len(batches)):  # back in the original order
            out.append(results[i % self.threads][i // self.threads])
        return out


class ProjectWorkers:
    key = "w"
    label = "w  project process_documents_json, workers=2"

    def __init__(self, service: PipelineService) -> None:
        self.service = service

    def run_batch(self, batch: list[bytes]) -> list[bytes]:
        # Ids come beside the bytes (in a _bulk, from the action line): the parent parses no document.
        outcomes = self.service.process_documents_json(INDEX, [(str(i), raw) for i, raw in enumerate(batch)])
        docs: list[bytes] = []
        for outcome in outcomes:
            if outcome.status != "success" or outcome.source_json is None:
                raise RuntimeError(f"document {outcome.id}: {outcome.status}: {outcome.error}")
            docs.append(outcome.source_json)
        return docs

    def run(self, batches: list[list[bytes]]) -> list[list[bytes]]:
        return [self.run_batch(batch) for batch in batches]


class ProjectWorkersCallers(ProjectThreads):
    """w with two callers at once, as a server with two ``_bulk`` requests in flight: while one call's answers
    are decoded in the parent, the other call's chunks keep the workers busy."""

    key = "w2"
    label = "w2 project process_documents_json, workers=2, 2 callers"


#: A group of contenders measured together: entering it sets up what they need (and leaving tears it down).
Group = Callable[[], AbstractContextManager[Sequence[Contender]]]


def measure_throughput(
    groups: Sequence[Group],
    docs: Sequence[bytes],
    cfg: Settings,
    log: Console,
    parent_cpu: dict[int, list[float]] | None = None,
) -> dict[str, dict[int, float]]:
    """docs/s per contender and batch size: the median of ``cfg.rounds`` timed rounds.

    Every round times every contender (after an untimed warm-up of ~2,000 documents), so that a change in the machine's
    speed during the run (a shared machine drifts) falls on all of them alike rather than on one phase.
    """
    samples: dict[str, dict[int, list[float]]] = {}
    labels: dict[str, str] = {}
    for size in BATCH_SIZES:
        count = cfg.docs[size]
        batches = chunk(docs[:count], size)
        # ~2,000 documents, and at least two batches for each pool process and thread: a fresh WASM instance
        # runs its first batches slower (the guest's heap grows into new pages), and each round opens a
        # fresh service, so a shorter warm-up would time the project's second thread (e) mostly cold.
        warm = batches[: max(4, 2000 // size)]
        for _ in range(cfg.rounds):
            for group in groups:
                with group() as contenders:
                    for contender in contenders:
                        contender.run(warm)
                        gc.collect()
                        cpu = time.thread_time()
                        start = time.perf_counter()
                        contender.run(batches)
                        rate = count / (time.perf_counter() - start)
                        if parent_cpu is not None and isinstance(contender, ProjectWorkers):
                            # The calling thread's CPU time per document: the parent's share with workers.
                            parent_cpu.setdefault(size, []).append((time.thread_time() - cpu) / count * 1e6)
                        samples.setdefault(contender.key, {}).setdefault(size, []).append(rate)
                        labels[contender.key] = contender.label
        for key in samples:
            median = statistics.median(samples[key][size])
            log.print(f"  batch {size:>4}  {labels[key]:<58} {median:>10,.0f} docs/s")
    return {
        key: {size: statistics.median(rates) for size, rates in by_size.items()} for key, by_size in samples.items()
    }


def check_same_output(contenders: Sequence[Contender], docs: Sequence[bytes]) -> None:
    """Every contender does the same work: the same documents out for the same documents in."""
    batches = chunk(docs[:200], 100)
    expected = contenders[0].run(batches)
    assert any(TARGET_FIELD in orjson.loads(doc) for doc in expected[0]), "recency_boost mapped nothing"
    for contender in contenders[1:]:
        if contender.run(batches) != expected:
            raise AssertionError(f"{contender.label} does not give the same documents as {contenders[0].label}")


# --- components -----------------------------------------------------------------------------------------------

NAIVE_WIT = """\
package bench:naive@0.1.0;

world naive {
    export process: func(doc: string, params: string) -> string;
}
"""

NAIVE_GUEST = """\
import json

import udf_source
import wit_world


class WitWorld(wit_world.WitWorld):
    def process(self, doc: str, params: str) -> str:
        return json.dumps(udf_source.process(json.loads(doc), json.loads(params)))
"""


def bench_cache_dir() -> Path:
    explicit = os.environ.get("QP_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    test_cache = os.environ.get("QP_TEST_CACHE")
    if test_cache:
        return Path(test_cache) / "bench"
    return cache_root() / "bench"


def build_naive(udf_source: str, cache: Path) -> Path:
    """The naive component (plain WIT, JSON strings in and out) around ``udf_source``, built once."""
    key = hashlib.sha256(
        b"\0".join(
            [
                NAIVE_WIT.encode(),
                NAIVE_GUEST.encode(),
                udf_source.encode(),
                importlib.metadata.version("componentize-py").encode(),
            ]
        )
    ).hexdigest()[:20]
    path = cache / f"naive-recency_boost-{key}.wasm"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qp-bench-naive-") as tmp:
        root = Path(tmp)
        (root / "wit").mkdir()
        (root / "wit" / "naive.wit").write_text(NAIVE_WIT)
        app = root / "app"
        app.mkdir()
        (app / "naive_guest.py").write_text(NAIVE_GUEST)
        (app / "udf_source.py").write_text(udf_source)
        output = root / "naive.wasm"
        done = componentize(root, root / "wit", "naive", app, "naive_guest", output, timeout_s=600)
        if done.returncode != 0 or not output.exists():
            raise RuntimeError(f"componentize-py failed for the naive component:\n{done.stdout}{done.stderr}")
        write_atomically(path, output.read_bytes())
    return path


def compile_naive(engine: Engine, wasm: Path) -> Component:
    """The naive component compiled, through a serialised artifact cached beside it."""
    compiled = wasm.with_name(f"{wasm.stem}-{_WASMTIME_VERSION}.cwasm")
    if compiled.exists():
        try:
            return Component.deserialize_file(engine, str(compiled))
        except Exception:
            compiled.unlink(missing_ok=True)
    component = Component(engine, wasm.read_bytes())
    write_atomically(compiled, component.serialize())
    return component


@dataclass(frozen=True, slots=True)
class Components:
    recency: Path
    recency_sha256: str
    synonyms: Path
    naive: Path
    compiled_dir: Path  # the project's compiled-component cache (shared with the test suite)


def build_components(log: Console) -> Components:
    root = _cache_root()
    builds = UdfBuilds(root / "components")
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            recency = pool.submit(builds.build, "recency_boost", (UDFS_DIR / "recency_boost.py").read_text())
            synonyms = pool.submit(builds.build, "query_synonyms", (UDFS_DIR / "query_synonyms.py").read_text())
            naive = pool.submit(build_naive, (UDFS_DIR / "recency_boost.py").read_text(), bench_cache_dir())
            built = recency.result(), synonyms.result(), naive.result()
    finally:
        builds.close()
    log.print(f"  components: {built[0].path.name}, {built[1].path.name}, {built[2].name} (cached on disk)")
    return Components(built[0].path, built[0].sha256, built[1].path, built[2], root / "compiled")


# --- the project's service ----------------------------------------------------------------------------------


def open_service(components: Components, *, query: bool = True, **options: Any) -> PipelineService:
    """An in-memory service with the document pipelines (and the query pipeline) of the benchmark."""
    service = PipelineService.in_memory(compiled_cache_dir=components.compiled_dir, pool_size=4, **options)
    service.put_udf("recency_boost", UDF_VERSION, components.recency.read_bytes())
    for name, index, inputs in (("enrich-products", INDEX, INPUT_FIELDS), ("enrich-whole", INDEX_WHOLE, None)):
        config: dict[str, Any] = {
            "udf_name": "recency_boost",
            "udf_version": UDF_VERSION,
            "parameters": PARAMS,
            "target_field": TARGET_FIELD,
        }
        if inputs is not None:
            config["input_fields"] = inputs
        service.put_pipeline(
            {
                "name": name,
                "version": "1.0.0",
                "type": "document",
                "stages": [{"name": "recency", "type": "python", "config": config}],
            }
        )
        service.associate(index, "document", name)
    if not query:
        return service
    service.put_udf("query_synonyms", UDF_VERSION, components.synonyms.read_bytes())
    service.put_pipeline(
        {
            "name": "expand-query",
            "version": "1.0.0",
            "type": "query",
            "stages": [
                {
                    "name": "synonyms",
                    "type": "python",
                    "config": {
                        "udf_name": "query_synonyms",
                        "udf_version": UDF_VERSION,
                        "parameters": {"synonyms": SYNONYMS},
                    },
                }
            ],
        }
    )
    service.associate(INDEX, "query", "expand-query")
    return service


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_calls(call: Callable[[], Any], count: int, warmup: int = 100) -> list[float]:
    """Microseconds taken by each of ``count`` calls (after ``warmup`` untimed ones)."""
    for _ in range(warmup):
        call()
    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        call()
        samples.append((clock() - start) / 1000)
    return samples


def measure_query(service: PipelineService, native: Process, calls: int) -> dict[str, float]:
    """One query-pipeline call (one WASM stage) against the UDF's own work done natively."""
    params = {"synonyms": SYNONYMS}
    rewritten = service.process_query(INDEX, QUERY_BODY)
    assert rewritten["query"] == {**QUERY_BODY, **native(QUERY_BODY, params)}["query"], rewritten
    assert "notebook" in rewritten["query"]["match"]["title"]["query"], rewritten
    project = timed_calls(lambda: service.process_query(INDEX, QUERY_BODY), calls)
    gc.collect()
    own = timed_calls(lambda: native(QUERY_BODY, params), calls)
    p50, own_p50 = percentile(project, 0.5), percentile(own, 0.5)
    return {
        "calls": calls,
        "p50_us": p50,
        "p99_us": percentile(project, 0.99),
        "native_udf_p50_us": own_p50,
        "overhead_p50_us": p50 - own_p50,
    }


def measure_cold_load(components: Components, doc: bytes, repeats: int) -> dict[str, float]:
    """A fresh runtime on the warm compiled cache: ``load`` (map the artifact back, first instance) + first call."""
    value = orjson.loads(doc)
    loads: list[float] = []
    totals: list[float] = []
    for _ in range(repeats):
        gc.collect()
        runtime = UdfRuntime(components.compiled_dir)
        try:
            start = time.perf_counter()
            runtime.load(components.recency_sha256, components.recency)
            loaded = time.perf_counter()
            result = runtime.call_batch(
                components.recency_sha256, components.recency, [value], PARAMS, [{}], timeout_s=10.0
            )
            done = time.perf_counter()
            assert result[0].ok and isinstance(result[0].value, float), result
            stats = runtime.stats()
            assert stats.compiles == 0 and stats.cache_loads == 1, stats
        finally:
            runtime.close()
        loads.append((loaded - start) * 1000)
        totals.append((done - start) * 1000)
    return {
        "repeats": repeats,
        "load_ms": statistics.median(loads),
        "load_and_first_call_ms": statistics.median(totals),
    }


def measure_first_compile(components: Components, doc: bytes) -> dict[str, float]:
    """A fresh runtime with an empty cache: compile, serialise to the cache, first instance, first call.

    What it compiled then seeds the project's compiled cache if that lacks the component (a cold cache), so
    that the services opened later map it back instead of compiling the same component a second time. Until
    then it holds that cache folder's lock, the one a runtime takes to compile into it: another process about
    to compile the same component there (the floors benchmark, beside this one in the test suite) waits, then
    maps what this seeded."""
    value = orjson.loads(doc)
    components.compiled_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="qp-bench-compile-"))
        runtime = stack.enter_context(UdfRuntime(Path(tmp)))
        compiled = runtime.compiled_path(components.recency_sha256)
        assert compiled is not None  # the runtime has a cache folder
        seeded = components.compiled_dir / compiled.name
        if not seeded.exists():
            stack.enter_context(file_lock(components.compiled_dir))
        start = time.perf_counter()
        runtime.load(components.recency_sha256, components.recency)
        loaded = time.perf_counter()
        runtime.call_batch(components.recency_sha256, components.recency, [value], PARAMS, [{}], timeout_s=10.0)
        done = time.perf_counter()
        assert runtime.stats().compiles == 1, runtime.stats()
        if not seeded.exists():
            write_atomically(seeded, compiled.read_bytes())
    return {"load_s": loaded - start, "load_and_first_call_s": done - start}


# --- resident memory per warm instance (in a fresh process) --------------------------------------------------


def _memory_probe(
    wasm: str, sha256: str, cache_dir: str, batch: list[bytes], instances: int, calls: int
) -> dict[str, Any]:
    """RSS added per warm instance: one warm instance first (code mapped, one instance used), then
    ``instances`` threads call at once until the pool holds ``instances``; (RSS after - RSS before) divided
    by the instances added."""
    import psutil  # type: ignore[import-untyped]  # a dev dependency, without stubs

    me = psutil.Process()
    values = [orjson.loads(raw) for raw in batch]
    metas: list[dict[str, Any]] = [{} for _ in values]
    path = Path(wasm)
    rss_start = me.memory_info().rss
    with UdfRuntime(Path(cache_dir), pool_size=instances) as runtime:

        def call() -> None:
            results = runtime.call_batch(sha256, path, values, PARAMS, metas, timeout_s=30.0)
            assert all(r.ok for r in results)

        runtime.load(sha256, path)
        for _ in range(3):
            call()
        gc.collect()
        rss_one = me.memory_info().rss
        barrier = threading.Barrier(instances)

        def hammer() -> None:
            barrier.wait()
            for _ in range(calls):
                call()

        for _ in range(20):
            threads = [threading.Thread(target=hammer) for _ in range(instances)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if runtime.stats().instances_created >= instances:
                break
        created = runtime.stats().instances_created
        gc.collect()
        rss_all = me.memory_info().rss
    added = created - 1
    return {
        "batch_docs": len(batch),
        "instances": created,
        "rss_first_instance_mib": (rss_one - rss_start) / _MIB,
        "rss_added_mib": (rss_all - rss_one) / _MIB,
        "per_instance_mib": (rss_all - rss_one) / _MIB / added if added > 0 else float("nan"),
    }


def measure_memory(components: Components, docs: Sequence[bytes], batch: int, calls: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        args = (
            str(components.recency),
            components.recency_sha256,
            str(components.compiled_dir),
            list(docs[:batch]),
            4,
            calls,
        )
        result: dict[str, Any] = pool.apply(_memory_probe, args)
    return result


# --- the report -----------------------------------------------------------------------------------------------


def _target(name: str, value: float, op: str, bound: float, unit: str) -> dict[str, Any]:
    met = value >= bound if op == ">=" else value <= bound
    return {"name": name, "value": value, "target": f"{op} {bound:g}{unit}", "met": bool(met)}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for size in BATCH_SIZES:
        ratios = report["ratios"][str(size)]
        out.append(_target(f"d/a at batch {size}", ratios["d/a"], ">=", 0.8, "x"))
        out.append(_target(f"e/a at batch {size}", ratios["e/a"], ">=", 1.4, "x"))
        out.append(_target(f"e/b at batch {size}", ratios["e/b"], ">=", 1.0, "x"))
    for size in WORKER_TARGET_SIZES:
        ratios = report["ratios"][str(size)]
        out.append(_target(f"w/a at batch {size}", ratios["w/a"], ">=", 1.0 if size >= 1000 else 0.9, "x"))
        out.append(_target(f"w/b at batch {size}", ratios["w/b"], ">=", 1.3, "x"))
        out.append(_target(f"w/d at batch {size}", ratios["w/d"], ">=", 1.7, "x"))
    out.append(_target("query call overhead p50 (us)", report["query"]["overhead_p50_us"], "<=", 25, " us"))
    out.append(_target("cold load + first call (ms)", report["cold_load"]["load_and_first_call_ms"], "<=", 50, " ms"))
    out.append(_target("RSS per warm instance (MiB)", report["memory"]["per_instance_mib"], "<=", 12, " MiB"))
    return out


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(
        title="docs/s: ~1 KB JSON docs through recency_boost (JSON decode + encode counted in every contender)"
    )
    table.add_column("contender")
    for size in BATCH_SIZES:
        table.add_column(f"batch {size}", justify="right")
    table.caption = (
        "docs are hits {_id, _score, _source} (what recency_boost reads), "
        f"mean {report['work']['doc_bytes_mean']:.0f} bytes; its number is stored at {TARGET_FIELD}; "
        "median of the timed rounds"
    )
    for entry in report["contenders"].values():
        table.add_row(entry["label"], *(f"{entry['docs_per_s'][str(size)]:,.0f}" for size in BATCH_SIZES))
    console.print(table)

    ratios = Table(title="ratios (target)")
    ratios.add_column("ratio")
    for size in BATCH_SIZES:
        ratios.add_column(f"batch {size}", justify="right")
    bounds = {"d/a": 0.8, "e/a": 1.4, "e/b": 1.0, "w/a": 1.0, "w/b": 1.3, "w/d": 1.7, "w2/a": 1.0, "w2/b": 1.3}
    for name, bound in bounds.items():
        cells = []
        for size in BATCH_SIZES:
            value = report["ratios"][str(size)][name]
            if name.startswith("w") and size not in WORKER_TARGET_SIZES:
                cells.append(f"{value:.2f}")
                continue
            floor = 0.9 if name in {"w/a", "w2/a"} and size < 1000 else bound
            cells.append(f"{value:.2f} {'met' if value >= floor else 'MISSED'}")
        at_100 = ", 0.9 at 100" if name in {"w/a", "w2/a"} else ""
        ratios.add_row(f"{name} (>= {bound:g}{at_100})", *cells)
    console.print(ratios)

    q, cold, first, mem = report["query"], report["cold_load"], report["first_compile"], report["memory"]
    figures = Table(title="other figures")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    figures.add_column("target", justify="right")
    figures.add_column("", justify="left")

    def row(name: str, value: str, target: dict[str, Any] | None = None) -> None:
        if target is None:
            figures.add_row(name, value, "", "")
        else:
            figures.add_row(name, value, target["target"], "met" if target["met"] else "MISSED")

    by_name = {t["name"]: t for t in report["targets"]}
    row(f"query pipeline call p50 ({q['calls']} calls, 1 WASM stage)", f"{q['p50_us']:.1f} us")
    row("query pipeline call p99", f"{q['p99_us']:.1f} us")
    row("query_synonyms called natively p50 (the UDF's own work)", f"{q['native_udf_p50_us']:.1f} us")
    qw = report["query_in_worker"]
    row("query pipeline call sent to a worker p50 (search_in_workers)", f"{qw['p50_us']:.1f} us")
    row("query pipeline call sent to a worker p99", f"{qw['p99_us']:.1f} us")
    for size, cost in report["parent_cpu_us_per_doc"].items():
        row(f"w: parent thread CPU per document, batch {size}", f"{cost:.2f} us")
    row(
        "query call overhead p50 (project p50 - native p50)",
        f"{q['overhead_p50_us']:.1f} us",
        by_name["query call overhead p50 (us)"],
    )
    row("cold load from compiled cache: load", f"{cold['load_ms']:.1f} ms")
    row(
        "cold load from compiled cache: load + first call",
        f"{cold['load_and_first_call_ms']:.1f} ms",
        by_name["cold load + first call (ms)"],
    )
    row("first compile (empty cache): load", f"{first['load_s']:.2f} s")
    row("first compile (empty cache): load + first call", f"{first['load_and_first_call_s']:.2f} s")
    row(
        f"RSS per warm instance ({mem['instances']} instances, batches of {mem['batch_docs']})",
        f"{mem['per_instance_mib']:.1f} MiB",
        by_name["RSS per warm instance (MiB)"],
    )
    row("  RSS of the runtime, its mapped code and the first warm instance", f"{mem['rss_first_instance_mib']:.1f} MiB")
    big = report.get("memory_large_batches")
    if big is not None:
        row(f"RSS per warm instance (batches of {big['batch_docs']}, info)", f"{big['per_instance_mib']:.1f} MiB")
    console.print(figures)
    met = sum(t["met"] for t in report["targets"])
    load = report["load_average_1m"]
    console.print(
        f"targets met: {met}/{len(report['targets'])}; took {report['took_s']:.0f} s; settings {report['settings']}; "
        f"1-min load average {load['before']:.2f} before, {load['after']:.2f} after, on {load['cpus']} CPUs"
    )


# --- main -----------------------------------------------------------------------------------------------------


def run(cfg: Settings, log: Console) -> dict[str, Any]:
    began = time.perf_counter()
    load_before = os.getloadavg()
    docs = make_docs(max(cfg.docs.values()))
    sizes = [len(d) for d in docs]
    log.print(f"{len(docs)} documents, {min(sizes)}-{max(sizes)} bytes (mean {statistics.mean(sizes):.0f})")
    log.print("building components (cached on disk after the first run)")
    components = build_components(log)
    log.print("first compile (empty cache)")
    first = measure_first_compile(components, docs[0])
    recency = load_udf("recency_boost").process
    synonyms = load_udf("query_synonyms").process

    pool = MpPool(2)
    engine = Engine()
    naive = NaiveWasm(engine, compile_naive(engine, components.naive))
    peers: list[Contender] = [Native(recency), pool, naive]

    @contextmanager
    def peer_group() -> Iterator[Sequence[Contender]]:
        yield peers

    @contextmanager
    def project_group() -> Iterator[Sequence[Contender]]:
        # Opened for d and e only: the service's UDF runtime runs an epoch ticker thread (it takes the GIL
        # every millisecond), which the peers do not have and should not pay for. A reopen maps the compiled
        # component back from the cache in milliseconds.
        with open_service(components, query=False) as service:
            single = Project(service)
            yield [single, ProjectThreads(single), ProjectWhole(service)]

    @contextmanager
    def worker_group() -> Iterator[Sequence[Contender]]:
        # Its own service: the two worker processes start (untimed) as the group opens and stop as it closes,
        # so they do not compete with a, b, c, d and e for the two cores.
        with open_service(components, query=False, workers=2) as service:
            single = ProjectWorkers(service)
            yield [single, ProjectWorkersCallers(single)]

    try:
        log.print("checking that every contender gives the same documents")
        check_same_output(peers, docs)
        with project_group() as project:
            check_same_output([peers[0], *project], docs)
        with worker_group() as project:
            check_same_output([peers[0], *project], docs)
        log.print("throughput (every round times a, b, c, then d, e, then w)")
        _freeze_heap()
        parent_cpu: dict[int, list[float]] = {}
        throughput = measure_throughput([peer_group, project_group, worker_group], docs, cfg, log, parent_cpu)
    finally:
        pool.close()
    del naive, engine

    log.print("query pipeline latency")
    with open_service(components) as service:
        query = measure_query(service, synonyms, cfg.query_calls)
    with open_service(components, workers=1, search_in_workers=True) as service:
        in_worker = measure_query(service, synonyms, cfg.query_calls)

    log.print("cold load from the compiled cache")
    cold = measure_cold_load(components, docs[0], cfg.cold_loads)
    log.print("resident memory per warm instance (fresh process)")
    memory = measure_memory(components, docs, 100, cfg.memory_calls)
    memory_large = None if cfg.quick else measure_memory(components, docs, 1000, max(2, cfg.memory_calls // 3))

    contender_labels = {
        "a": Native.label,
        "b": MpPool.label,
        "c": NaiveWasm.label,
        "d": Project.label,
        "e": ProjectThreads.label,
        "d0": ProjectWhole.label,
        "w": ProjectWorkers.label,
        "w2": ProjectWorkersCallers.label,
    }
    report: dict[str, Any] = {
        "work": {
            "udf": "udfs/recency_boost.py",
            "doc_bytes_mean": statistics.mean(sizes),
            "json_decode_and_encode": "counted in every contender",
            "params": PARAMS,
            "target_field": TARGET_FIELD,
        },
        "settings": {
            "quick": cfg.quick,
            "rounds": cfg.rounds,
            "docs_per_round": {str(k): v for k, v in cfg.docs.items()},
        },
        "contenders": {
            key: {"label": label, "docs_per_s": {str(size): throughput[key][size] for size in BATCH_SIZES}}
            for key, label in contender_labels.items()
        },
        "ratios": {
            str(size): {
                "d/a": throughput["d"][size] / throughput["a"][size],
                "e/a": throughput["e"][size] / throughput["a"][size],
                "e/b": throughput["e"][size] / throughput["b"][size],
                "w/a": throughput["w"][size] / throughput["a"][size],
                "w/b": throughput["w"][size] / throughput["b"][size],
                "w/d": throughput["w"][size] / throughput["d"][size],
                "w2/a": throughput["w2"][size] / throughput["a"][size],
                "w2/b": throughput["w2"][size] / throughput["b"][size],
                "w2/e": throughput["w2"][size] / throughput["e"][size],
            }
            for size in BATCH_SIZES
        },
        "parent_cpu_us_per_doc": {str(size): statistics.median(parent_cpu[size]) for size in BATCH_SIZES},
        "query": query,
        "query_in_worker": {"p50_us": in_worker["p50_us"], "p99_us": in_worker["p99_us"]},
        "cold_load": cold,
        "first_compile": first,
        "memory": memory,
    }
    if memory_large is not None:
        report["memory_large_batches"] = memory_large
    report["targets"] = targets(report)
    report["took_s"] = time.perf_counter() - began
    # Other work on the machine skews every figure: the 1-minute load average before and after, for the reader.
    report["load_average_1m"] = {"before": load_before[0], "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per contender and batch size")
    args = parser.parse_args(argv)
    log = Console(stderr=True, soft_wrap=True, highlight=False)
    report = run(settings(args.quick, args.rounds), log)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        # Wide enough for the tables when stdout is a file or a pipe (rich falls back to 80 columns there).
        print_report(report, Console() if sys.stdout.isatty() else Console(width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
