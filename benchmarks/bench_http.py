"""What the pipelines cost over HTTP, measured in one run against the real server (a subprocess).

* ``_bulk`` ingest, docs/s: the same documents into an index with a two-stage document pipeline (a native
  ``lowercase`` and the WASM ``price_band`` UDF) and into an index with none;
* ``_search`` latency p50/p99 (client-side): the same queries with the query pipeline (WASM
  ``query_synonyms``) and the result pipeline (WASM ``recency_boost``, one batch per result set) and with
  ``?search_pipeline=_none``.

Runs alternate between the two sides so drift hits both alike; the ratios are the point.

Run: ``python benchmarks/bench_http.py [--docs 20000] [--batch 500] [--searches 1000] [--workers N] [--json]``
(``--workers``: the server's pipeline worker processes, as ``serve --workers``; default: the usable cores)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
UDF_DIR = ROOT / "udfs"
WORDS = [
    "laptop", "notebook", "phone", "smartphone", "tv", "television", "cable", "charger", "keyboard", "mouse",
    "screen", "battery", "camera", "light", "fast", "quiet", "wireless", "travel", "office", "gaming", "budget",
    "premium", "red", "blue", "black", "silver",
]  # fmt: skip


@dataclass
class Figures:
    workers: int | None
    docs: int
    bulk_size: int
    bulk_docs_per_s_none: float
    bulk_docs_per_s_pipeline: float
    bulk_ratio: float
    searches: int
    search_p50_ms_none: float
    search_p99_ms_none: float
    search_p50_ms_pipelines: float
    search_p99_ms_pipelines: float
    search_p50_ratio: float
    search_p99_ratio: float


def document(rng: random.Random, today: datetime.date) -> dict[str, Any]:
    """A ~1 KB product."""
    return {
        "title": " ".join(rng.choices(WORDS, k=5)).upper(),
        "body": " ".join(rng.choices(WORDS, k=120)),
        "price": round(rng.uniform(5, 900), 2),
        "tags": rng.choices(WORDS, k=3),
        "published": (today - datetime.timedelta(days=rng.randint(0, 365))).isoformat(),
        "stock": rng.randint(0, 500),
    }


def bulk_lines(docs: Sequence[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(orjson.dumps({"index": {"_id": i}}) + b"\n" + orjson.dumps(d) + b"\n" for i, d in docs)


@contextlib.contextmanager
def server(data_dir: Path, workers: int | None = None, extra: Sequence[str] = ()) -> Iterator[str]:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QUIDDITCH_ADMIN_TOKEN", None)
    command = [sys.executable, "-m", "quidditch_pipeline.server.serve", "--port", str(port),
               "--data-dir", str(data_dir), "--log-level", "warning"]  # fmt: skip
    if workers is not None:
        command += ["--workers", str(workers)]
    command += extra
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


def check(response: httpx.Response) -> Any:
    if response.status_code >= 300:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json()


def set_up(client: httpx.Client, console: Console) -> None:
    for name in ("price_band", "query_synonyms", "recency_boost"):
        started = time.monotonic()
        source = (UDF_DIR / f"{name}.py").read_bytes()
        check(client.put(f"/_udf/{name}/1.0.0", content=source, headers={"content-type": "text/x-python"}))
        console.print(f"built and compiled UDF {name} in {time.monotonic() - started:.1f} s")
    pipelines = {
        "ingest": ("document", [
            {"name": "lower", "type": "native", "config": {"processor": "lowercase", "field": "title"}},
            {"name": "band", "type": "python", "config": {"udf_name": "price_band"}},
        ]),
        "synonyms": ("query", [
            {"name": "synonyms", "type": "python", "config": {"udf_name": "query_synonyms", "parameters": {
                "synonyms": {"laptop": ["notebook"], "phone": ["smartphone"], "tv": ["television"]}}}},
        ]),
        "recency": ("result", [
            {"name": "recency", "type": "python", "config": {"udf_name": "recency_boost", "parameters": {"days": 30}}},
        ]),
    }  # fmt: skip
    for name, (kind, stages) in pipelines.items():
        check(client.put(f"/_pipeline/{name}", json={"version": "1.0.0", "type": kind, "stages": stages}))
    check(client.put("/plain"))
    check(client.put("/piped", json={"settings": {"index.document.default_pipeline": "ingest"}}))
    check(client.put("/catalog", json={"settings": {"index.query.default_pipeline": "synonyms",
                                                    "index.result.default_pipeline": "recency"}}))  # fmt: skip


def bench_bulk(client: httpx.Client, docs: list[tuple[str, dict[str, Any]]], batch: int) -> tuple[float, float]:
    """docs/s into the index without and with the document pipeline (batches alternate)."""
    elapsed = {"plain": 0.0, "piped": 0.0}
    for start in range(0, len(docs), batch):
        payload = bulk_lines(docs[start : start + batch])
        for index in ("plain", "piped") if (start // batch) % 2 == 0 else ("piped", "plain"):
            began = time.perf_counter()
            body = check(client.post(f"/{index}/_bulk", content=payload,
                                     headers={"content-type": "application/x-ndjson"}))  # fmt: skip
            elapsed[index] += time.perf_counter() - began
            if body["errors"]:
                raise RuntimeError(f"bulk into {index} had errors")
    return len(docs) / elapsed["plain"], len(docs) / elapsed["piped"]


def bench_search(client: httpx.Client, searches: int, rng: random.Random) -> tuple[HdrHistogram, HdrHistogram]:
    """Latency (µs) of the same queries without and with the query and result pipelines."""
    plain, piped = HdrHistogram(1, 60_000_000, 3), HdrHistogram(1, 60_000_000, 3)
    for i in range(searches):
        body = {"query": {"match": {"title": " ".join(rng.choices(WORDS, k=2))}}, "size": 10}
        sides = [(plain, {"search_pipeline": "_none"}), (piped, {})]
        for histogram, params in sides if i % 2 == 0 else reversed(sides):
            began = time.perf_counter()
            check(client.post("/catalog/_search", json=body, params=params))
            histogram.record_value(max(1, int((time.perf_counter() - began) * 1e6)))
    return plain, piped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--searches", type=int, default=1_000)
    parser.add_argument("--catalog", type=int, default=10_000, help="documents in the searched index")
    parser.add_argument("--workers", type=int, default=None, help="serve --workers (default: the usable cores)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    rng = random.Random(42)
    today = datetime.date.today()
    docs = [(f"d{i}", document(rng, today)) for i in range(args.docs)]
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp, server(Path(tmp) / "data", args.workers) as url, \
            httpx.Client(base_url=url, timeout=600) as client:  # fmt: skip
        set_up(client, console)
        catalog = [(f"c{i}", document(rng, today)) for i in range(args.catalog)]
        for start in range(0, len(catalog), 1000):
            check(client.post("/catalog/_bulk", content=bulk_lines(catalog[start : start + 1000])))
        check(client.post("/catalog/_refresh"))
        # Warm-up: the first calls instantiate the WASM components.
        bench_bulk(client, [(f"w{i}", d) for i, (_, d) in enumerate(docs[: args.batch])], args.batch)
        bench_search(client, 20, rng)
        console.print(f"bulk: {args.docs} docs in batches of {args.batch} …")
        plain_rate, piped_rate = bench_bulk(client, docs, args.batch)
        console.print(f"search: {args.searches} queries on {args.catalog} documents …")
        plain, piped = bench_search(client, args.searches, rng)
    figures = Figures(
        workers=args.workers,
        docs=args.docs,
        bulk_size=args.batch,
        bulk_docs_per_s_none=round(plain_rate),
        bulk_docs_per_s_pipeline=round(piped_rate),
        bulk_ratio=round(piped_rate / plain_rate, 3),
        searches=args.searches,
        search_p50_ms_none=plain.get_value_at_percentile(50) / 1000,
        search_p99_ms_none=plain.get_value_at_percentile(99) / 1000,
        search_p50_ms_pipelines=piped.get_value_at_percentile(50) / 1000,
        search_p99_ms_pipelines=piped.get_value_at_percentile(99) / 1000,
        search_p50_ratio=round(piped.get_value_at_percentile(50) / plain.get_value_at_percentile(50), 3),
        search_p99_ratio=round(piped.get_value_at_percentile(99) / plain.get_value_at_percentile(99), 3),
    )
    workers = "the usable cores" if args.workers is None else args.workers
    table = Table(title=f"HTTP: pipelines against none (one run, serve --workers {workers})")
    for column in ("measure", "no pipeline", "with pipelines", "ratio"):
        table.add_column(column, justify="right")
    table.add_row("_bulk docs/s (native + WASM stage)", f"{figures.bulk_docs_per_s_none:,.0f}",
                  f"{figures.bulk_docs_per_s_pipeline:,.0f}", f"{figures.bulk_ratio:.2f}x")  # fmt: skip
    table.add_row("_search p50 ms (query + result)", f"{figures.search_p50_ms_none:.2f}",
                  f"{figures.search_p50_ms_pipelines:.2f}", f"{figures.search_p50_ratio:.2f}x")  # fmt: skip
    table.add_row("_search p99 ms (query + result)", f"{figures.search_p99_ms_none:.2f}",
                  f"{figures.search_p99_ms_pipelines:.2f}", f"{figures.search_p99_ratio:.2f}x")  # fmt: skip
    Console().print(table)
    if args.json:
        sys.stdout.write(orjson.dumps(asdict(figures), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
