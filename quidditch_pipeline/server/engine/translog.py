"""The translog of one index: writes acknowledged but not yet committed to tantivy.

A write is acknowledged once its entry is in the translog (fsynced); a commit of the tantivy index empties it;
opening an index replays what it holds, so an acknowledged write survives a crash. One entry per line, NDJSON:
``{"op": "index", "id", "version", "source"}`` or ``{"op": "delete", "id"}``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ...errors import StorageError

__all__ = ["Translog", "delete_entry", "index_entry"]


def index_entry(doc_id: str, version: int, raw: bytes) -> bytes:
    """The entry of an index write; ``raw`` is the source as JSON (not parsed again)."""
    return b'{"op":"index","id":%b,"version":%d,"source":%b}' % (orjson.dumps(doc_id), version, raw)


def delete_entry(doc_id: str) -> bytes:
    return orjson.dumps({"op": "delete", "id": doc_id})


class Translog:
    """An append-only file of entries of index ``name``; ``fsync`` makes each append durable before it returns."""

    def __init__(self, path: Path, name: str, *, fsync: bool = True) -> None:
        self.path = path
        self._name = name
        self._fsync = fsync
        self._fd = -1

    def replay(self) -> Iterator[dict[str, Any]]:
        """The entries written before the last close or crash, in order (a torn last line is skipped)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        lines = self.path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if number == len(lines):
                    # A torn last line: the write was never acknowledged.
                    break
                raise StorageError(f"translog of index [{self._name}] is corrupt at line {number}") from exc
            yield entry

    def open(self) -> None:
        """Open for appending (after ``replay``)."""
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def discard_replayed(self) -> None:
        """Empty the file once what ``replay`` gave is committed."""
        if self.path.exists():
            os.truncate(self.path, 0)

    def append(self, entries: list[bytes]) -> None:
        """Write ``entries`` and (with ``fsync``) make them durable."""
        try:
            os.write(self._fd, b"\n".join(entries) + b"\n")
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            raise StorageError(f"cannot write the translog of index [{self._name}]: {exc}") from exc

    def truncate(self) -> None:
        """Empty the translog (its writes are committed to tantivy)."""
        try:
            os.ftruncate(self._fd, 0)
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            raise StorageError(f"cannot truncate the translog of index [{self._name}]: {exc}") from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
