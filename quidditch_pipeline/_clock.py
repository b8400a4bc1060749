"""The clock the executor reads deadlines from and sleeps retry backoffs on (swappable in tests)."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    now = staticmethod(time.perf_counter)
    sleep = staticmethod(time.sleep)


SYSTEM_CLOCK: Clock = SystemClock()
