"""What a batch costs to cross to a pipeline worker and back (issue 11: "measure the transport's cost").

Run from the repository root: ``python -m benchmarks.bench_workers [--rounds N]``.

A child process echoes frames over a socket pair wrapped in ``multiprocessing.connection.Connection`` (as
the worker pool does). For batches of 100 and 1000 ~1 KB documents it times, per batch and per document:

* **frame**: the pool's transport: the documents' JSON bytes back to back behind an orjson header
  (ids and sizes), ``send_bytes``, the echo, ``recv_bytes``, and the answer cut back into per-document bytes;
* **pickle**: what a ``multiprocessing`` pool of Python workers does: the parsed documents (dicts) pickled
  over a ``Pipe`` and unpickled on return (the parent's JSON decode of the input is not counted).

Both include the child's receive and send, so they are round trips; the parent's CPU time is reported too.
"""

from __future__ import annotations

import argparse
import functools
import pickle
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection

import orjson

from benchmarks.compare import make_docs
from quidditch_pipeline.workers import _wire

_ECHO = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "while True:\n"
    "    try:\n"
    "        conn.send_bytes(conn.recv_bytes())\n"
    "    except EOFError:\n"
    "        break\n"
)


def _echo_child() -> tuple[subprocess.Popen[bytes], Connection]:
    ours, theirs = socket.socketpair()
    child = subprocess.Popen([sys.executable, "-c", _ECHO, str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    return child, Connection(ours.detach())


def frame_round_trip(conn: Connection, ids: list[str], docs: list[bytes]) -> list[bytes]:
    frame = _wire.encode({"pipeline": "p", "ids": ids, "sizes": [len(d) for d in docs]}, docs)
    conn.send_bytes(frame)
    header, body = _wire.decode(conn.recv_bytes())
    return [bytes(piece) for piece in _wire.split(body, header["sizes"])]


def pickle_round_trip(conn: Connection, values: list[object]) -> list[object]:
    conn.send_bytes(pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL))
    back: list[object] = pickle.loads(conn.recv_bytes())
    return back


def measure(rounds: int, sizes: Sequence[int] = (100, 1000)) -> dict[str, dict[str, float]]:
    docs = make_docs(max(sizes))
    child, conn = _echo_child()
    report: dict[str, dict[str, float]] = {}
    try:
        for size in sizes:
            batch = docs[:size]
            ids = [str(i) for i in range(size)]
            values: list[object] = [orjson.loads(d) for d in batch]
            assert frame_round_trip(conn, ids, batch) == batch
            calls: list[tuple[str, Callable[[], object]]] = [
                ("frame", functools.partial(frame_round_trip, conn, ids, batch)),
                ("pickle", functools.partial(pickle_round_trip, conn, values)),
            ]
            for name, call in calls:
                walls, cpus = [], []
                for _ in range(rounds):
                    cpu, wall = time.thread_time(), time.perf_counter()
                    call()
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.thread_time() - cpu)
                wall_us, cpu_us = statistics.median(walls) * 1e6, statistics.median(cpus) * 1e6
                report[f"{name} x{size}"] = {
                    "batch_us": wall_us,
                    "per_doc_us": wall_us / size,
                    "parent_cpu_per_doc_us": cpu_us / size,
                }
    finally:
        conn.close()
        child.wait(10)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    for name, figures in measure(args.rounds).items():
        print(
            f"{name:<12} {figures['batch_us']:>9.1f} us/batch {figures['per_doc_us']:>7.2f} us/doc "
            f"(parent CPU {figures['parent_cpu_per_doc_us']:.2f} us/doc)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
