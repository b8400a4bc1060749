"""The floors under issue 3's targets: what the sandbox itself costs, before any of the pipeline's host code.

Run from the repository root: ``python -m benchmarks.floors [--json] [--quick]``.

Every figure is one call of the UDF's ``run-batch`` export through the runtime's own call path
(``_Instance.call``: wasmtime's C API, the request already encoded, the answer not yet decoded), timed back
to back. The runtime must compile its components with epoch interruption (that is how a runaway UDF is
preempted), so each figure is measured twice in the same run: on an engine with epoch interruption, as
the runtime uses it, and on one without, which cannot preempt anything and serves only to show what the
interruption checks cost.

* **query:** a one-item call, the value the compare benchmark's query body; for a UDF that returns
  ``None`` at once (``trivial``), and for ``udfs/query_synonyms.py``. Also the trivial UDF with the value
  ``None``: the least a call can carry. The trivial UDF is the probe's component (below) called without
  ``params["n"]``: its ``process`` returns ``None`` on its first line, so one build and one compile serve both.
* **documents:** per item of a 1000-item batch of the compare benchmark's hits, projected onto the fields
  ``recency_boost`` reads (``input_fields``); trivial and ``udfs/recency_boost.py``.
* **inside the guest:** nanoseconds per operation measured by a probe UDF with the guest's own clock:
  ``dict.get``, ``marshal.loads`` of a one-item query request, ``json.dumps`` of the query body.

``--quick`` (the test suite's smoke run) times few iterations and runs the engine without epoch interruption
on the probe's component alone: the other two figures show only the runtime's engine then, since each would
cost one more compile (seconds) to tell nothing the smoke run needs.

The project's targets these bound (``python -m benchmarks.compare``): at most 25 us of overhead on a one-stage
query call, and documents at 0.8x native Python. The trivial UDF's one-item call is the least any query stage
can cost; the per-item figures are what the guest adds to each document on top of the JSON that native Python
spends its time on.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from wasmtime import Config, Engine, WasmtimeError
from wasmtime.component import Component, Linker

from benchmarks.compare import INPUT_FIELDS, PARAMS, QUERY_BODY, SYNONYMS, UDFS_DIR, bench_cache_dir, make_docs
from quidditch_pipeline import _paths
from quidditch_pipeline._files import write_atomically
from quidditch_pipeline.udf import UdfRuntime
from quidditch_pipeline.udf import runtime as udf_runtime
from tests.udf_fixtures import UdfBuilds, _cache_root

PROBE_SOURCE = '''\
"""Times a few operations with the guest's own clock; params["request"] is a marshalled request, latin-1.
Without params["n"] it is the trivial UDF: it returns None at once."""
import json
import marshal
import time


def _per_op(fn, n):
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(n):
        pass
    empty = clock() - start
    start = clock()
    for _ in range(n):
        fn()
    return (clock() - start - empty) / n


def process(value, params):
    if "n" not in params:
        return None
    n = params["n"]
    request = params["request"].encode("latin-1")
    body = marshal.loads(request)[1][0]
    table = {"a": 1}
    return {
        "dict_get_ns": _per_op(lambda: table.get("a"), n),
        "marshal_loads_request_ns": _per_op(lambda: marshal.loads(request), n),
        "json_dumps_body_ns": _per_op(lambda: json.dumps(body), n),
    }
'''

BATCH = 1000
_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Settings:
    quick: bool
    rounds: int
    calls: int  # one-item calls per round
    batches: int  # 1000-item batches per round
    probe_ops: int
    #: The components also timed on the engine without epoch interruption (None: all).
    epochs_off: tuple[str, ...] | None


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(True, 1, 200, 2, 200, ("probe",))
    return Settings(False, 5, 2000, 10, 5000, None)


# --- components on two engines --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Udf:
    name: str
    path: Path
    sha256: str


def build_udfs() -> dict[str, Udf]:
    """The three components, built two at a time (a build is one componentize-py process, mostly on one core)."""
    builds = UdfBuilds(_cache_root() / "components")
    try:
        sources = {
            "probe": PROBE_SOURCE,
            "query_synonyms": (UDFS_DIR / "query_synonyms.py").read_text(),
            "recency_boost": (UDFS_DIR / "recency_boost.py").read_text(),
        }
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(builds.build, name, source) for name, source in sources.items()}
            built = {name: future.result() for name, future in futures.items()}
    finally:
        builds.close()
    return {name: Udf(name, udf.path, udf.sha256) for name, udf in built.items()}


def compiled_for_runtime(udfs: dict[str, Udf]) -> dict[str, Path]:
    """Each component's compiled form in the runtime's own compiled cache (the test suite's, beside its
    components), compiled there by a :class:`UdfRuntime` if it is not yet: the epochs-on engine is configured
    as the runtime's (epoch interruption, nothing else), so its compiled code is the runtime's, and the
    components the rest of the suite and ``benchmarks.compare`` run are compiled once for all of them."""
    paths: dict[str, Path] = {}
    with UdfRuntime(_cache_root() / "compiled") as runtime:
        for name, udf in udfs.items():
            runtime.load(udf.sha256, udf.path)
            compiled = runtime.compiled_path(udf.sha256)
            assert compiled is not None  # the runtime has a cache folder
            paths[name] = compiled
    return paths


class Sandbox:
    """An engine (epoch interruption on or off) and one warm instance per UDF, called the runtime's way."""

    def __init__(self, udfs: dict[str, Udf], *, epochs: bool, compiled: dict[str, Path] | None = None) -> None:
        """``compiled``: each UDF's compiled form for this engine's configuration (else compiled here, cached
        under the benchmark cache)."""
        config = Config()
        config.epoch_interruption = epochs
        self.epochs = epochs
        self.engine = Engine(config)
        linker = Linker(self.engine)
        linker.add_wasip2()
        # What _Instance reads of its runtime: no ticker runs, and every call gets a deadline it never reaches.
        runtime = SimpleNamespace(engine=self.engine, linker=linker, tick_s=0.001)
        self.instances: dict[str, Any] = {}
        for name, udf in udfs.items():
            if compiled is None:
                component = self._compile(udf)
            else:
                component = Component.deserialize_file(self.engine, str(compiled[name]))
            index = component.get_export_index("run-batch")
            if index is None:
                raise RuntimeError(f"{udf.path} exports no run-batch")
            holder = SimpleNamespace(component=component, sha256=udf.sha256, run_index=index, source=None)
            self.instances[name] = udf_runtime._Instance(runtime, holder, 128 * _MIB)  # type: ignore[arg-type]

    def _compile(self, udf: Udf) -> Component:
        flavour = "epochs" if self.epochs else "no-epochs"
        cached = bench_cache_dir() / "floors" / f"{udf.sha256}-{udf_runtime._WASMTIME_VERSION}-{flavour}.cwasm"
        if cached.is_file():
            try:
                return Component.deserialize_file(self.engine, str(cached))
            except WasmtimeError:
                cached.unlink(missing_ok=True)
        component = Component(self.engine, udf.path.read_bytes())
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cached, component.serialize())
        return component

    def call(self, name: str, request: tuple[bytes, bytes]) -> bytes:
        apart, batch = request
        return bytes(self.instances[name].call(apart, batch, udf_runtime._NO_DEADLINE))

    def close(self) -> None:
        for instance in self.instances.values():
            instance.close()


# --- measuring ------------------------------------------------------------------------------------------------


def request(params: dict[str, Any], values: Sequence[Any]) -> tuple[bytes, bytes]:
    return udf_runtime._encode_request(params, values, None, 1 << 24)


def p50_us(call: Callable[[], object], count: int) -> float:
    for _ in range(max(20, count // 10)):
        call()
    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        call()
        samples.append((clock() - start) / 1000)
    return statistics.median(samples)


def per_item_us(call: Callable[[], object], batches: int) -> float:
    call()
    gc.collect()
    start = time.perf_counter()
    for _ in range(batches):
        call()
    return (time.perf_counter() - start) / (batches * BATCH) * 1e6


@contextmanager
def sandboxes(udfs: dict[str, Udf], epochs_off: tuple[str, ...] | None) -> Iterator[dict[str, Sandbox]]:
    # The two engines' compiles are independent (and release the GIL): side by side, one compile's serial
    # phases (parsing, validating, linking) run while the other's code generation keeps the other core busy.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            "on": pool.submit(lambda: Sandbox(udfs, epochs=True, compiled=compiled_for_runtime(udfs))),
            "off": pool.submit(
                Sandbox, {n: u for n, u in udfs.items() if epochs_off is None or n in epochs_off}, epochs=False
            ),
        }
    opened = {flavour: future.result() for flavour, future in futures.items() if future.exception() is None}
    try:
        for future in futures.values():
            future.result()  # a failed compile raises here, once the other sandbox is in ``opened`` to close
        yield opened
    finally:
        for sandbox in opened.values():
            sandbox.close()


def run(cfg: Settings, log: Console) -> dict[str, Any]:
    began = time.perf_counter()
    log.print("building and compiling the components (cached on disk after the first run)")
    udfs = build_udfs()
    projection = _paths.projection(INPUT_FIELDS)
    hits = [_paths.project(orjson.loads(doc), projection) for doc in make_docs(BATCH)]
    query_params = {"synonyms": SYNONYMS}
    calls: dict[str, tuple[str, tuple[bytes, bytes]]] = {
        "query: trivial UDF, value None": ("probe", request({}, [None])),
        "query: trivial UDF, the query body": ("probe", request({}, [QUERY_BODY])),
        "query: query_synonyms, the query body": ("query_synonyms", request(query_params, [QUERY_BODY])),
    }
    batches: dict[str, tuple[str, tuple[bytes, bytes]]] = {
        "documents: trivial UDF, per item of 1000": ("probe", request({}, hits)),
        "documents: recency_boost, per item of 1000": ("recency_boost", request(PARAMS, hits)),
    }
    probe_request = request({}, [QUERY_BODY])[1].decode("utf-8")
    samples: dict[str, dict[str, list[float]]] = {}
    with sandboxes(udfs, cfg.epochs_off) as boxes:
        for name, (udf, req) in {**calls, **batches}.items():  # every answer checked once, outside the timing
            for box in boxes.values():
                if udf not in box.instances:
                    continue
                answer = orjson.loads(box.call(udf, req))
                if not isinstance(answer, list) or answer[1]:
                    raise RuntimeError(f"{name}: the UDF failed: {answer!r}")
        log.print(f"timing ({cfg.rounds} rounds, epoch interruption on and off in every round)")
        for _ in range(cfg.rounds):
            for flavour, box in boxes.items():
                for name, (udf, req) in calls.items():
                    if udf not in box.instances:
                        continue
                    figure = p50_us(functools.partial(box.call, udf, req), cfg.calls)
                    samples.setdefault(name, {}).setdefault(flavour, []).append(figure)
                for name, (udf, req) in batches.items():
                    if udf not in box.instances:
                        continue
                    figure = per_item_us(functools.partial(box.call, udf, req), cfg.batches)
                    samples.setdefault(name, {}).setdefault(flavour, []).append(figure)
                probe = request({"n": cfg.probe_ops, "request": probe_request}, [None])
                (ops,), _ = orjson.loads(box.call("probe", probe))
                for op, ns in ops.items():
                    samples.setdefault(f"guest: {op}", {}).setdefault(flavour, []).append(ns)
    figures = {name: _figure(name, by) for name, by in samples.items()}
    return {
        "settings": {
            "quick": cfg.quick,
            "rounds": cfg.rounds,
            "calls": cfg.calls,
            "batches": cfg.batches,
            "epochs_off": list(cfg.epochs_off or udfs),
        },
        "components": {name: udf.sha256 for name, udf in udfs.items()},
        "request_bytes": {name: len(req[0]) + len(req[1]) for name, (_, req) in {**calls, **batches}.items()},
        "figures": figures,
        "took_s": time.perf_counter() - began,
    }


def _figure(name: str, by_flavour: dict[str, list[float]]) -> dict[str, Any]:
    """The medians on each engine; ``epochs_off`` and ``on_over_off`` are None where only the runtime's ran."""
    on = statistics.median(by_flavour["on"])
    off = statistics.median(by_flavour["off"]) if "off" in by_flavour else None
    unit = "ns" if name.startswith("guest:") else "us"
    return {"epochs_on": on, "epochs_off": off, "on_over_off": None if off is None else on / off, "unit": unit}


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title="the sandbox's own cost (one run_batch call, host work excluded)")
    table.add_column("figure")
    table.add_column("epoch interruption on", justify="right")
    table.add_column("off (no preemption)", justify="right")
    table.add_column("on / off", justify="right")
    for name, figure in report["figures"].items():
        unit = figure["unit"]
        on = f"{figure['epochs_on']:,.1f} {unit}"
        if figure["epochs_off"] is None:
            table.add_row(name, on, "-", "-")
            continue
        table.add_row(name, on, f"{figure['epochs_off']:,.1f} {unit}", f"{figure['on_over_off']:.2f}x")
    console.print(table)
    console.print(f"took {report['took_s']:.0f} s; settings {report['settings']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    args = parser.parse_args(argv)
    log = Console(stderr=True, soft_wrap=True, highlight=False)
    report = run(settings(args.quick), log)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_report(report, Console() if sys.stdout.isatty() else Console(width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
