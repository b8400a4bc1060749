"""Pipeline worker processes (DESIGN §10): batches of document pipelines run in parallel on every core.

:class:`~.pool.WorkerPool` (the supervisor) starts ``workers`` processes running :func:`.worker.main`, cuts a
request's inputs into chunks, sends each as one frame of raw JSON bytes (:mod:`._wire`), and merges the
answers and the workers' statistics back in request order. ``PipelineService.open(dir, workers=N)`` is the
way in.
"""

from __future__ import annotations

from .pool import BatchAnswer, WorkerPool
from .worker import WorkerConfig

__all__ = ["BatchAnswer", "WorkerConfig", "WorkerPool"]
