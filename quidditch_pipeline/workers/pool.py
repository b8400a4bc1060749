"""The supervisor of the pipeline worker processes: it starts them, hands them batches, watches them, replaces
the dead and the hung, and is the only one that kills them.

A request's inputs are cut into chunks, one per worker (``min_chunk`` inputs at least) or, for a big request,
two per worker: each free worker gets one at once, and a worker that answers gets the request's next chunk
before its answer is decoded, so that the parent's decoding overlaps the workers' work; answers come back in
request order. A worker that dies
(killed, segfault, out of memory) fails only the items of the chunk it held, each with a
:class:`~quidditch_pipeline.errors.WorkerError` naming the process and the cause; one that has not answered by
its chunk's deadline plus ``grace_s`` is killed and its items fail the same way. Either way a fresh process
takes its slot, started in the background while the other workers go on.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import orjson

from ..errors import QuidditchError, RejectedExecutionError, WorkerError
from . import _wire
from .worker import WorkerConfig

__all__ = ["BatchAnswer", "WorkerPool"]

# A request big enough to give each worker two chunks of this many inputs is cut into two chunks per worker,
# so that each worker has its next chunk while the parent decodes the answer to its last one. Smaller ones go
# one chunk per worker: a chunk costs the parent ~100 us whatever its size (measured at batch 1), more than
# the overlap saves on a chunk of a few dozen documents (~3 us each to decode).
_FED_CHUNK = 100


@dataclass(slots=True)
class BatchAnswer:
    """The answers for a batch's inputs, by position: a ``_wire`` code each, the new JSON bytes of the
    ``CHANGED`` ones (None elsewhere) and the error of the ``FAILED`` ones (parallel lists: no object per
    input, which the parent would pay for on every document)."""

    codes: list[int]
    data: list[bytes | None]
    errors: dict[int, QuidditchError]

    def fail(self, start: int, stop: int, error: QuidditchError) -> None:
        self.codes[start:stop] = [_wire.FAILED] * (stop - start)
        self.errors.update(dict.fromkeys(range(start, stop), error))


@dataclass(eq=False)
class _Slot:
    """One worker's place in the pool; it outlives the processes that fill it."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    conn: Connection | None = None
    pid: int | None = None
    batches: int = 0
    items: int = 0
    busy_s: float = 0.0
    restarts: int = 0
    last_exit: str | None = None
    #: The worker's UDF runtime as of its last change (``UdfRuntime.snapshot``): pools, load times.
    runtime: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class _Chunk:
    start: int
    stop: int
    slot: _Slot
    sent: float
    deadline: float


class WorkerPool:
    """``size`` worker processes over one data directory. Thread-safe: many requests may run at once."""

    def __init__(
        self,
        size: int,
        config: WorkerConfig,
        *,
        merge_stats: Callable[[dict[str, Any]], None],
        grace_s: float = 5.0,
        start_timeout_s: float = 120.0,
        acquire_timeout_s: float = 60.0,
        min_chunk: int = 32,
    ) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.size = size
        self.grace_s = grace_s
        self.min_chunk = min_chunk
        self._config = config
        self._merge_stats = merge_stats
        self._start_timeout_s = start_timeout_s
        self._acquire_timeout_s = acquire_timeout_s
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._idle: deque[_Slot] = deque()
        self._slots = [_Slot(i) for i in range(size)]
        self._replacing: list[threading.Thread] = []
        self._closed = False
        # Start every process first, then wait for each: start-up runs in parallel.
        started = [(slot, *self._spawn()) for slot in self._slots]
        try:
            for slot, process, conn in started:
                self._adopt(slot, process, conn)
        except BaseException:
            for _, process, conn in started:
                conn.close()
                process.kill()
                process.wait()
            raise
        self._idle.extend(self._slots)

    # --- processes ------------------------------------------------------------------------------------------

    def _spawn(self) -> tuple[subprocess.Popen[bytes], Connection]:
        # A fresh interpreter running the worker module: not a fork (this process runs threads and wasmtime
        # engines), and not multiprocessing's spawn, which re-imports the embedder's __main__ and pickles.
        # The socket pair is the batch channel; the worker exits when the parent's end closes.
        ours, theirs = socket.socketpair()
        config = orjson.dumps(dataclasses.asdict(self._config)).decode()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "quidditch_pipeline.workers", str(theirs.fileno()), config],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        return process, Connection(ours.detach())

    def _adopt(self, slot: _Slot, process: subprocess.Popen[bytes], conn: Connection) -> None:
        """Wait for a started process's ready message, then let it fill ``slot``."""
        if not conn.poll(self._start_timeout_s):
            raise WorkerError(f"pipeline worker {process.pid} did not start within {self._start_timeout_s:.0f} s")
        try:
            header, _ = _wire.decode(conn.recv_bytes())
        except EOFError:
            _reap(process, 5.0)
            raise WorkerError(
                f"pipeline worker {process.pid} exited while starting ({_exit_cause(process)})", pid=process.pid
            ) from None
        if not header.get("ready"):
            raise WorkerError(f"pipeline worker {process.pid} could not start: {header.get('error')}", pid=process.pid)
        slot.process, slot.conn, slot.pid = process, conn, process.pid
        slot.started_at = time.time()

    def _retire(self, slot: _Slot, cause: str) -> None:
        """Kill what is left of ``slot``'s process and start its replacement in the background."""
        process, conn = slot.process, slot.conn
        slot.process = slot.conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            process.kill()  # the pool is the only one that kills; a dead process ignores it
            process.wait()
        slot.last_exit = cause
        slot.restarts += 1
        slot.runtime = {}  # its replacement starts with no UDF loaded
        with self._lock:
            if self._closed:
                return
            thread = threading.Thread(target=self._replace, args=(slot,), name="worker-replace", daemon=True)
            self._replacing.append(thread)
        thread.start()

    def _replace(self, slot: _Slot) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            process, conn = self._spawn()
            try:
                self._adopt(slot, process, conn)
            except QuidditchError as exc:
                conn.close()
                process.kill()
                process.wait()
                slot.last_exit = exc.message
                time.sleep(1.0)  # a worker that cannot start now may start once the cause is gone
                continue
            with self._lock:
                if not self._closed:
                    self._idle.append(slot)
                    self._freed.notify()
                    self._replacing.remove(threading.current_thread())
                    return
            conn.close()
            if not _reap(process, 5.0):
                process.kill()
                process.wait()
            return

    def close(self) -> None:
        """Stop every worker: close its pipe (it exits on end of file), kill it if it does not."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            replacing = list(self._replacing)
            self._freed.notify_all()
        for thread in replacing:
            thread.join()
        for slot in self._slots:
            if slot.conn is not None:
                slot.conn.close()
        for slot in self._slots:
            if slot.process is not None and not _reap(slot.process, 5.0):
                slot.process.kill()
                slot.process.wait()

    # --- running --------------------------------------------------------------------------------------------

    def run(
        self,
        header: dict[str, Any],
        ids: Sequence[str | None],
        payloads: Sequence[bytes],
        budget_s: Callable[[int], float],
    ) -> BatchAnswer:
        """Run one batch: ``header`` (pipeline, pins, index, params) with the inputs' JSON ``payloads``.

        ``budget_s(n)`` is how long a chunk of ``n`` inputs may take in a worker; the wait for its answer is
        bounded by that plus ``grace_s``. One answer per input, in order.
        """
        n = len(payloads)
        answers = BatchAnswer([_wire.FAILED] * n, [None] * n, {})
        pipeline = str(header["pipeline"])
        per_worker = 2 if n >= 2 * self.size * _FED_CHUNK else 1
        chunks = max(1, min(self.size * per_worker, math.ceil(n / self.min_chunk)))
        bounds = [(n * i // chunks, n * (i + 1) // chunks) for i in range(chunks)]
        inflight: dict[Connection, _Chunk] = {}
        waited_since = time.monotonic()

        def dispatch(slot: _Slot) -> None:
            """Send the next chunk to ``slot``; when its pipe broke (the process had died: the slot is being
            replaced) the chunk goes back to the front of the line."""
            start, stop = bounds.pop(0)
            chunk = self._send(slot, header, ids, payloads, start, stop, budget_s)
            if chunk is None:
                bounds.insert(0, (start, stop))
                return
            assert slot.conn is not None
            inflight[slot.conn] = chunk

        while bounds or inflight:
            while bounds:
                slot = self._acquire(block=not inflight, since=waited_since)
                if slot is None:
                    if inflight:
                        break
                    error = RejectedExecutionError(
                        f"no pipeline worker became free within {self._acquire_timeout_s:.0f} s"
                    )
                    for start, stop in bounds:
                        answers.fail(start, stop, error)
                    bounds.clear()
                    break
                dispatch(slot)
            if not inflight:
                break
            now = time.monotonic()
            timeout = max(0.0, min(c.deadline for c in inflight.values()) - now)
            for conn in wait(list(inflight), timeout):
                assert isinstance(conn, Connection)
                chunk = inflight.pop(conn)
                frame = self._receive(chunk, pipeline, answers)
                if frame is None:
                    continue
                # Keep the worker fed: its next chunk goes out before this answer is decoded, so that the
                # decoding here overlaps the worker's work instead of leaving it idle.
                if bounds:
                    dispatch(chunk.slot)
                else:
                    self._release(chunk.slot)
                self._decode(chunk, frame, pipeline, answers)
            now = time.monotonic()
            for conn, chunk in list(inflight.items()):
                if now >= chunk.deadline:
                    del inflight[conn]
                    self._hung(chunk, pipeline, answers)
            waited_since = time.monotonic()
        return answers

    def _acquire(self, *, block: bool, since: float) -> _Slot | None:
        """An idle worker whose process is alive (one found dead while idle is replaced), or None."""
        while True:
            with self._lock:
                while not self._idle:
                    if not block or self._closed:
                        return None
                    left = since + self._acquire_timeout_s - time.monotonic()
                    if left <= 0:
                        return None
                    self._freed.wait(left)
                slot = self._idle.popleft()
            if slot.process is not None and slot.process.poll() is None:
                return slot
            self._retire(slot, self._death(slot) + ", while idle")

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            self._idle.append(slot)
            self._freed.notify()

    def _send(
        self,
        slot: _Slot,
        header: dict[str, Any],
        ids: Sequence[str | None],
        payloads: Sequence[bytes],
        start: int,
        stop: int,
        budget_s: Callable[[int], float],
    ) -> _Chunk | None:
        assert slot.conn is not None
        part = payloads[start:stop]
        frame = _wire.encode({**header, "ids": ids[start:stop], "sizes": list(map(len, part))}, part)
        now = time.monotonic()
        try:
            slot.conn.send_bytes(frame)
        except OSError:
            self._retire(slot, self._death(slot))
            return None
        return _Chunk(start, stop, slot, now, now + budget_s(stop - start) + self.grace_s)

    def _receive(self, chunk: _Chunk, pipeline: str, answers: BatchAnswer) -> bytes | None:
        """The answer frame of ``chunk`` (its slot is still the caller's), or None when the worker died: its
        items are failed and the slot is being replaced."""
        slot = chunk.slot
        assert slot.conn is not None
        try:
            frame = slot.conn.recv_bytes()
        except (EOFError, OSError):
            cause = self._death(slot)
            answers.fail(
                chunk.start,
                chunk.stop,
                WorkerError(
                    f"pipeline worker {slot.pid} died ({cause}) while running this batch",
                    pid=slot.pid,
                    pipeline=pipeline,
                ),
            )
            self._retire(slot, cause)
            return None
        slot.batches += 1
        slot.items += chunk.stop - chunk.start
        slot.busy_s += time.monotonic() - chunk.sent
        return frame

    def _decode(self, chunk: _Chunk, frame: bytes, pipeline: str, answers: BatchAnswer) -> None:
        """Write a worker's answer for ``chunk`` into ``answers`` and merge its statistics."""
        header, body = _wire.decode(frame)
        self._merge_stats(header["stats"])
        if "runtime" in header:  # sent when it changed
            chunk.slot.runtime = header["runtime"]
        if "error" in header:
            answers.fail(chunk.start, chunk.stop, _wire.error_from_wire(header["error"], pipeline))
            return
        start = chunk.start
        codes = header["codes"]
        answers.codes[start : chunk.stop] = codes
        changed = _wire.cut(body, header["sizes"])
        if changed:
            positions = [start + i for i, code in enumerate(codes) if code == _wire.CHANGED]
            data = answers.data
            for position, piece in zip(positions, changed, strict=True):
                data[position] = piece
        for offset, error in header["errors"].items():
            answers.errors[start + int(offset)] = _wire.error_from_wire(error, pipeline)

    def _hung(self, chunk: _Chunk, pipeline: str, answers: BatchAnswer) -> None:
        slot = chunk.slot
        waited = time.monotonic() - chunk.sent
        cause = f"no answer within {waited:.1f} s, killed"
        answers.fail(
            chunk.start,
            chunk.stop,
            WorkerError(
                f"pipeline worker {slot.pid} did not answer within the batch's deadline plus {self.grace_s:g} s "
                f"({waited:.1f} s) and was killed; this batch was not processed",
                pid=slot.pid,
                pipeline=pipeline,
            ),
        )
        self._retire(slot, cause)

    @staticmethod
    def _death(slot: _Slot) -> str:
        process = slot.process
        if process is None:
            return "gone"
        _reap(process, 5.0)
        return _exit_cause(process)

    # --- observability --------------------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """One entry per worker slot: its process, what it ran, how busy it was, how often it was replaced."""
        return [
            {
                "slot": slot.index,
                "pid": slot.pid,
                "alive": slot.process is not None and slot.process.poll() is None,
                "batches": slot.batches,
                "items": slot.items,
                "busy_ms": round(slot.busy_s * 1000, 1),
                "restarts": slot.restarts,
                "last_exit": slot.last_exit,
                "udf_runtime": slot.runtime,
            }
            for slot in self._slots
        ]


def _reap(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``process`` to exit; whether it did."""
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _exit_cause(process: subprocess.Popen[bytes]) -> str:
    code = process.returncode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
