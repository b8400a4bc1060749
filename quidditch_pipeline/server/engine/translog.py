"""The translog of one index: writes acknowledged but not yet committed to tantivy.

A write is acknowledged once its entry is in the translog, written and fsynced; only then is it applied to the
tantivy writer (see ``TantivyBackend.bulk``). A commit of the tantivy index empties the translog; opening an
index replays what it holds, so an acknowledged write survives a crash. One entry per line, NDJSON:
``{"op": "index", "id", "version", "source"}`` or ``{"op": "delete", "id"}``.

Failures: an append that fails (disk full, an I/O error on write or fsync) is cut off again (``ftruncate`` to
where the batch began, then fsynced), so it can never be replayed; if even that fails, the translog refuses
every later append until the index is reopened (a torn tail stays the tail, which replay skips). A crash in
the middle of an append leaves a torn last line: replay skips it (that write was never acknowledged).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..._files import fsync_dir
from ...errors import StorageError

__all__ = ["Translog", "delete_entry", "index_entry"]


def index_entry(doc_id: str, version: int, raw: bytes) -> bytes:
    """The entry of an index write; ``raw`` is the source as JSON (not parsed again)."""
    return b'{"op":"index","id":%b,"version":%d,"source":%b}' % (orjson.dumps(doc_id), version, raw)


def delete_entry(doc_id: str) -> bytes:
    return orjson.dumps({"op": "delete", "id": doc_id})


def _is_entry(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        return False
    if value.get("op") == "delete":
        return True
    version, source = value.get("version"), value.get("source")
    return value.get("op") == "index" and isinstance(version, int) and isinstance(source, dict)


class Translog:
    """An append-only file of entries of index ``name``; ``fsync`` makes each append durable before it returns."""

    def __init__(self, path: Path, name: str, *, fsync: bool = True) -> None:
        self.path = path
        self._name = name
        self._fsync = fsync
        self._fd = -1
        self._size = 0
        self._failed: StorageError | None = None

    @property
    def size(self) -> int:
        """Bytes written so far: a mark that ``rollback`` returns to."""
        return self._size

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
            except orjson.JSONDecodeError:
                entry = None
            if not _is_entry(entry):
                if number == len(lines):
                    # A torn last line (no newline after it): the write was never acknowledged.
                    break
                raise StorageError(f"translog of index [{self._name}] is corrupt at line {number}")
            yield entry

    def open(self) -> None:
        """Open for appending (after ``replay`` and ``discard_replayed``)."""
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size
        if created and self._fsync:
            # The new file's directory entry: without it a crash could lose the whole translog.
            fsync_dir(self.path.parent)

    def discard_replayed(self) -> None:
        """Empty the file once what ``replay`` gave is committed."""
        if self.path.exists():
            os.truncate(self.path, 0)

    def append(self, entries: list[bytes]) -> None:
        """Write ``entries`` and (with ``fsync``) make them durable; on failure none of them stays."""
        if self._failed is not None:
            raise self._failed
        data = b"\n".join(entries) + b"\n"
        mark = self._size
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            error = StorageError(f"cannot write the translog of index [{self._name}]: {exc}")
            self.rollback(mark)
            raise error from exc
        self._size = mark + len(data)

    def rollback(self, mark: int) -> None:
        """Cut the file back to ``mark`` (the batch after it was not acknowledged) and make that durable."""
        try:
            os.ftruncate(self._fd, mark)
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self.fail(StorageError(f"the translog of index [{self._name}] cannot be repaired: {exc}; reopen it"))
            return
        self._size = mark

    def fail(self, error: StorageError) -> None:
        """Refuse every later append with ``error`` (the index must be reopened)."""
        self._failed = error

    def truncate(self) -> None:
        """Empty the translog (its writes are committed to tantivy); an empty translog is whole again."""
        try:
            os.ftruncate(self._fd, 0)
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            raise StorageError(f"cannot truncate the translog of index [{self._name}]: {exc}") from exc
        self._size = 0
        self._failed = None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
