"""Durable storage behind the registry: the interface and records (:mod:`.base`), SQLite by default
(:mod:`.sqlite`), PostgreSQL for many nodes (:mod:`.postgres`), in-memory for tests (:mod:`.memory`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Change, ComponentStore, Revision, SharedStorage, Storage, StoredState, UdfRecord
from .memory import MemoryStorage
from .sqlite import SqliteStorage

if TYPE_CHECKING:
    from .postgres import PostgresStorage

__all__ = [
    "Change",
    "ComponentStore",
    "MemoryStorage",
    "PostgresStorage",
    "Revision",
    "SharedStorage",
    "SqliteStorage",
    "Storage",
    "StoredState",
    "UdfRecord",
    "open_storage",
]


def open_storage(registry: str | None, data_dir: Path | None) -> Storage:
    """The store a service opens: the PostgreSQL database a ``postgresql://`` (or ``postgres://``) URL names;
    else ``registry.sqlite`` under ``data_dir`` (``registry`` None), or the SQLite file ``registry`` names."""
    if registry is not None and registry.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStorage  # imported here: see __getattr__

        return PostgresStorage(registry)
    if registry is None:
        if data_dir is None:
            raise ValueError("registry: give a postgresql:// URL, a SQLite file or a data directory")
        return SqliteStorage(data_dir / "registry.sqlite")
    if "://" in registry:
        raise ValueError(f"registry: [{registry}] is not a postgresql:// URL (leave it unset for SQLite)")
    return SqliteStorage(registry)


def __getattr__(name: str) -> Any:
    """``PostgresStorage`` is imported on first use: psycopg and its pool are ~0.13 s of every process's start-up
    (the server's and each worker's), and most nodes keep their registry in SQLite."""
    if name == "PostgresStorage":
        from .postgres import PostgresStorage

        return PostgresStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
