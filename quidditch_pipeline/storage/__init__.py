"""Durable storage behind the registry: the interface and records (:mod:`.base`), SQLite by default
(:mod:`.sqlite`), PostgreSQL for many nodes (:mod:`.postgres`), in-memory for tests (:mod:`.memory`)."""

from __future__ import annotations

from pathlib import Path

from .base import Change, ComponentStore, Revision, SharedStorage, Storage, StoredState, UdfRecord
from .memory import MemoryStorage
from .postgres import PostgresStorage
from .sqlite import SqliteStorage

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
        return PostgresStorage(registry)
    if registry is None:
        if data_dir is None:
            raise ValueError("registry: give a postgresql:// URL, a SQLite file or a data directory")
        return SqliteStorage(data_dir / "registry.sqlite")
    if "://" in registry:
        raise ValueError(f"registry: [{registry}] is not a postgresql:// URL (leave it unset for SQLite)")
    return SqliteStorage(registry)
