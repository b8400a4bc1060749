"""The two answers a stage can give for an item besides a new value: drop it, or (query) reject it."""

from __future__ import annotations

from typing import Final


class Drop:
    """Returned by a stage for an item that must go: a dropped document, a removed hit, a rejected query."""

    _instance: Drop | None = None

    def __new__(cls) -> Drop:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DROP"


DROP: Final = Drop()
