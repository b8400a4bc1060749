"""Two nodes on one PostgreSQL registry: how long a change takes to be in force on the other node, and a
pipeline put's latency on PostgreSQL against SQLite (same run).

    .venv/bin/python -m benchmarks.bench_nodes [--changes 300]

Propagation is timed from the moment the put returns on node A (acknowledged) to the moment node B's view
includes that change (its listener heard the NOTIFY and re-read the registry). Each node is a Registry over
its own PostgresStorage (own pool, own listener connection), in one process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from quidditch_pipeline.definitions import PipelineDefinition, parse_definition
from quidditch_pipeline.registry import Registry
from quidditch_pipeline.storage import PostgresStorage, SqliteStorage
from tests import postgres_fixtures


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def definition(i: int) -> PipelineDefinition:
    return parse_definition(
        {
            "name": f"p{i % 20}",
            "version": "1.0.0",
            "type": "document",
            "stages": [{"name": "set", "type": "native", "config": {"processor": "set", "field": "n", "value": i}}],
        }
    )


def put_latencies(registry: Registry, changes: int) -> list[float]:
    out = []
    for i in range(changes):
        start = time.perf_counter()
        registry.put(definition(i))
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=300)
    args = parser.parse_args()
    dsn = postgres_fixtures.create_database()
    try:
        a = Registry(PostgresStorage(dsn))
        b = Registry(PostgresStorage(dsn))
        try:
            propagation = []
            pg_puts = []
            for i in range(args.changes):
                start = time.perf_counter()
                result = a.put(definition(i))
                acked = time.perf_counter()
                assert result.change is not None
                if not b.wait_for_change(result.change, timeout_s=5):
                    raise SystemExit(f"change {result.change} not in force on node B within 5 s")
                propagation.append((time.perf_counter() - acked) * 1000)
                pg_puts.append((acked - start) * 1000)
        finally:
            a.close()
            b.close()
    finally:
        postgres_fixtures.drop_database(dsn)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = Registry(SqliteStorage(Path(tmp) / "registry.sqlite"))
        try:
            sqlite_puts = put_latencies(sqlite, args.changes)
        finally:
            sqlite.close()
    print(f"changes: {args.changes}")
    for label, values in (
        ("propagation A->B (ms)", propagation),
        ("put on PostgreSQL (ms)", pg_puts),
        ("put on SQLite (ms)", sqlite_puts),
    ):
        print(
            f"{label:26} p50 {percentile(values, 0.5):7.2f}  p99 {percentile(values, 0.99):7.2f}  "
            f"max {max(values):7.2f}"
        )
    ratio = percentile(pg_puts, 0.5) / percentile(sqlite_puts, 0.5)
    print(f"put latency PostgreSQL/SQLite (p50): {ratio:.2f}x")


if __name__ == "__main__":
    main()
