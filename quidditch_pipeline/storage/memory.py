"""A store that keeps nothing past the process: for unit tests and throw-away services."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

from .base import Change, Revision, StoredState, UdfRecord

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """Keeps nothing past the process; for unit tests and throw-away services."""

    def __init__(self) -> None:
        self.locator: str | None = None  # nothing another process could open
        self._state = StoredState()

    def load(self) -> StoredState:
        return StoredState(
            {k: list(v) for k, v in self._state.revisions.items()},
            dict(self._state.associations),
            dict(self._state.udfs),
            dict(self._state.revision_marks),
            dict(self._state.index_settings),
        )

    def transaction(self) -> AbstractContextManager[Change]:
        """Only this process writes here: the registry's own lock orders its changes."""
        return contextlib.nullcontext(Change(None))

    def add_revision(self, revision: Revision) -> None:
        self._state.revisions.setdefault(revision.name, []).append(revision)
        marks = self._state.revision_marks
        marks[revision.name] = max(marks.get(revision.name, 0), revision.revision)

    def delete_pipeline(self, name: str) -> None:
        self._state.revisions.pop(name, None)

    def set_association(self, index: str, pipeline_type: str, name: str | None) -> None:
        if name is None:
            self._state.associations.pop((index, pipeline_type), None)
        else:
            self._state.associations[(index, pipeline_type)] = name

    def set_index_setting(self, index: str, key: str, value: str | None) -> None:
        if value is None:
            self._state.index_settings.pop((index, key), None)
        else:
            self._state.index_settings[(index, key)] = value

    def put_udf(self, record: UdfRecord) -> None:
        self._state.udfs[(record.name, record.version)] = record

    def delete_udf(self, name: str, version: str) -> None:
        self._state.udfs.pop((name, version), None)

    def close(self) -> None:
        """Nothing to release: the state lives and dies with this object."""
