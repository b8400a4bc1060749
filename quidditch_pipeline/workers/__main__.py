"""The worker process's command line (started by :class:`~quidditch_pipeline.workers.pool.WorkerPool` only)."""

import sys

from .worker import run_from_argv

run_from_argv(sys.argv)
