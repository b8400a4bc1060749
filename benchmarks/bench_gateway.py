"""What gateway mode costs, measured in one run: ``serve --upstream`` in front of an upstream against the same
upstream called directly (both real ``serve`` processes on loopback; the upstream is this project's embedded
server, the only Elasticsearch-speaking cluster on this machine).

* ``_bulk`` docs/s: the same ~1 KB documents, in the same batches, into an index without a pipeline, straight
  to the upstream and through the gateway (which parses each batch, maps each item and sends one upstream
  ``_bulk``);
* ``_search`` latency p50/p99 (client-side): the same queries straight and through the gateway.

The gateway's own overhead is the difference: per request (search p50 through it less straight) and per
document (``1/rate`` through it less straight). Sides alternate so drift hits both alike; the ratios are the
point, since the upstream here is itself Python and slower than an Elasticsearch node would be.

Run: ``python benchmarks/bench_gateway.py [--docs 20000] [--batch 500] [--searches 1000] [--json]``
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table

from benchmarks.bench_http import WORDS, bulk_lines, check, document, server


@dataclass
class Figures:
    docs: int
    bulk_size: int
    bulk_docs_per_s_direct: float
    bulk_docs_per_s_gateway: float
    bulk_ratio: float
    overhead_us_per_doc: float
    searches: int
    search_p50_ms_direct: float
    search_p99_ms_direct: float
    search_p50_ms_gateway: float
    search_p99_ms_gateway: float
    search_p50_ratio: float
    search_p99_ratio: float
    overhead_ms_per_search: float


def bench_bulk(
    direct: httpx.Client, gateway: httpx.Client, docs: list[tuple[str, dict[str, Any]]], batch: int
) -> tuple[float, float]:
    """docs/s straight to the upstream and through the gateway (each into its own index; batches alternate)."""
    sides = [(direct, "/direct/_bulk"), (gateway, "/gated/_bulk")]
    elapsed = {id(direct): 0.0, id(gateway): 0.0}
    for start in range(0, len(docs), batch):
        payload = bulk_lines(docs[start : start + batch])
        for client, path in sides if (start // batch) % 2 == 0 else reversed(sides):
            began = time.perf_counter()
            body = check(client.post(path, content=payload, headers={"content-type": "application/x-ndjson"}))
            elapsed[id(client)] += time.perf_counter() - began
            if body["errors"]:
                raise RuntimeError(f"bulk {path} had errors")
    return len(docs) / elapsed[id(direct)], len(docs) / elapsed[id(gateway)]


def bench_search(
    direct: httpx.Client, gateway: httpx.Client, searches: int, rng: random.Random
) -> tuple[HdrHistogram, HdrHistogram]:
    """Latency (µs) of the same queries straight to the upstream and through the gateway."""
    straight, gated = HdrHistogram(1, 60_000_000, 3), HdrHistogram(1, 60_000_000, 3)
    for i in range(searches):
        body = {"query": {"match": {"title": " ".join(rng.choices(WORDS, k=2))}}, "size": 10}
        sides = [(straight, direct), (gated, gateway)]
        for histogram, client in sides if i % 2 == 0 else reversed(sides):
            began = time.perf_counter()
            check(client.post("/catalog/_search", json=body))
            histogram.record_value(max(1, int((time.perf_counter() - began) * 1e6)))
    return straight, gated


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--searches", type=int, default=1_000)
    parser.add_argument("--catalog", type=int, default=10_000, help="documents in the searched index")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    rng = random.Random(42)
    today = datetime.date.today()
    docs = [(f"d{i}", document(rng, today)) for i in range(args.docs)]
    # No pipelines run here (none is configured): what is measured is the gateway itself, so both servers run
    # without pipeline worker processes.
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        root = Path(tmp)
        with server(root / "upstream", 0) as upstream_url, \
                server(root / "gateway", 0, ("--upstream", upstream_url)) as gateway_url, \
                httpx.Client(base_url=upstream_url, timeout=600) as direct, \
                httpx.Client(base_url=gateway_url, timeout=600) as gateway:  # fmt: skip
            check(direct.put("/direct"))
            check(gateway.put("/gated"))
            check(gateway.put("/catalog"))
            catalog = [(f"c{i}", document(rng, today)) for i in range(args.catalog)]
            for start in range(0, len(catalog), 1000):
                check(direct.post("/catalog/_bulk", content=bulk_lines(catalog[start : start + 1000])))
            check(direct.post("/catalog/_refresh"))
            warm = [(f"w{i}", d) for i, (_, d) in enumerate(docs[: args.batch])]
            bench_bulk(direct, gateway, warm, args.batch)
            bench_search(direct, gateway, 20, rng)
            console.print(f"bulk: {args.docs} docs in batches of {args.batch}, straight and through the gateway …")
            direct_rate, gateway_rate = bench_bulk(direct, gateway, docs, args.batch)
            console.print(f"search: {args.searches} queries on {args.catalog} documents, straight and through …")
            straight, gated = bench_search(direct, gateway, args.searches, rng)
    p50 = (straight.get_value_at_percentile(50), gated.get_value_at_percentile(50))
    p99 = (straight.get_value_at_percentile(99), gated.get_value_at_percentile(99))
    figures = Figures(
        docs=args.docs,
        bulk_size=args.batch,
        bulk_docs_per_s_direct=round(direct_rate),
        bulk_docs_per_s_gateway=round(gateway_rate),
        bulk_ratio=round(gateway_rate / direct_rate, 3),
        overhead_us_per_doc=round((1 / gateway_rate - 1 / direct_rate) * 1e6, 1),
        searches=args.searches,
        search_p50_ms_direct=p50[0] / 1000,
        search_p99_ms_direct=p99[0] / 1000,
        search_p50_ms_gateway=p50[1] / 1000,
        search_p99_ms_gateway=p99[1] / 1000,
        search_p50_ratio=round(p50[1] / p50[0], 3),
        search_p99_ratio=round(p99[1] / p99[0], 3),
        overhead_ms_per_search=(p50[1] - p50[0]) / 1000,
    )
    table = Table(title="Gateway mode: through the gateway against straight to the same upstream (one run)")
    for column in ("measure", "straight", "through the gateway", "ratio", "gateway's own"):
        table.add_column(column, justify="right")
    table.add_row("_bulk docs/s (no pipeline)", f"{figures.bulk_docs_per_s_direct:,.0f}",
                  f"{figures.bulk_docs_per_s_gateway:,.0f}", f"{figures.bulk_ratio:.2f}x",
                  f"{figures.overhead_us_per_doc:.1f} µs/doc")  # fmt: skip
    table.add_row("_search p50 ms", f"{figures.search_p50_ms_direct:.2f}", f"{figures.search_p50_ms_gateway:.2f}",
                  f"{figures.search_p50_ratio:.2f}x", f"{figures.overhead_ms_per_search:.2f} ms/request")  # fmt: skip
    table.add_row("_search p99 ms", f"{figures.search_p99_ms_direct:.2f}", f"{figures.search_p99_ms_gateway:.2f}",
                  f"{figures.search_p99_ratio:.2f}x", "")  # fmt: skip
    Console().print(table)
    if args.json:
        sys.stdout.write(orjson.dumps(asdict(figures), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
