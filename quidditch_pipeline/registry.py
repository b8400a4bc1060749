"""The registry: pipelines with their revision history, index associations, UDF versions, and the index
settings a gateway keeps for its indexes besides their pipelines (``index.failure_store.*``).

Thread-safe: one lock orders every change, and each change is written to :mod:`storage` (one transaction)
before it becomes visible in memory. On a store that other nodes write too (PostgreSQL), each change is
checked and written inside the store's transaction, under its registry-wide lock, against the store's
current state: the view is re-read first when another node changed it. Their changes reach this view
through the store's notifications (:meth:`Registry.refresh`); :meth:`Registry.wait_for_change` waits until a
change id (the ``change`` of a :class:`PutResult`, or ``status()["change"]`` on the node that made it) is in
force here. Everything a definition refers to is resolved when it is stored:
``pipeline`` stage targets exist and are of the same type, no cycle is closed (the message prints it:
``a -> b -> a``), and every ``python`` stage names a registered UDF (and version, when pinned).

Revisions are never reused: a pipeline's next revision is one above the highest it has ever had, a deleted
and re-created pipeline included (the storage keeps that mark), so a cache keyed by ``(name, revision)``
cannot serve a deleted definition. ``latest`` of a UDF is its highest release (see
:func:`~quidditch_pipeline.definitions.latest_version`). The registry is the UDF store's
:class:`~quidditch_pipeline.udf.store.UdfCatalog`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .definitions import PipelineDefinition, PipelineType, latest_version, parse_definition, parse_semver
from .errors import ConflictError, DefinitionError, NotFoundError, StorageError
from .storage import Revision, SharedStorage, Storage, StoredState, UdfRecord

__all__ = ["PutResult", "Registry", "StoredPipeline", "final_kind"]


def final_kind(pipeline_type: PipelineType) -> str:
    """How a final association is stored: ``document_final``, ``query_final`` (none for results)."""
    if pipeline_type is PipelineType.RESULT:
        raise ValueError("result pipelines have no final pipeline")
    return f"{pipeline_type.value}_final"


@dataclass(frozen=True, slots=True)
class StoredPipeline:
    definition: PipelineDefinition
    revision: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class PutResult:
    name: str
    version: str
    revision: int
    created: bool
    #: The store's change id this put was committed as (None on a store only this process writes).
    change: int | None = None


class Registry:
    def __init__(self, storage: Storage, *, now: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._now = now
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        with self._lock:
            self._adopt(storage.load())
        if isinstance(storage, SharedStorage):
            storage.watch(self._on_change)

    def _adopt(self, state: StoredState) -> None:
        """Take ``state`` as this registry's view (at start-up, on :meth:`refresh`, and when a change finds
        that another node changed the store)."""
        #: The store's change id this view includes (None: a store only this process writes).
        self._change_id = state.change
        # Parsed definitions are keyed by (name, revision); re-read with the rest, so a refresh trusts nothing
        # it parsed before.
        self._parsed: dict[tuple[str, int], PipelineDefinition] = {}
        self._history: dict[str, list[Revision]] = state.revisions
        self._marks = state.revision_marks
        self._associations = state.associations
        self._index_settings = state.index_settings
        self._udfs = state.udfs
        # name -> versions in semantic-version order, and name -> what `latest` means, replaced whole on every
        # UDF change: :meth:`udf` reads them (and ``_udfs``) per call without the lock, and a read then is the
        # old value or the new one. Built aside and then assigned, so a refresh never shows them half-filled.
        grouped: dict[str, list[str]] = {}
        for udf_name, udf_version in state.udfs:
            grouped.setdefault(udf_name, []).append(udf_version)
        udf_versions: dict[str, tuple[str, ...]] = {}
        udf_latest: dict[str, UdfRecord] = {}
        for udf_name, versions in grouped.items():
            ordered, latest = _ordered(versions)
            if latest is not None:
                udf_versions[udf_name] = ordered
                udf_latest[udf_name] = state.udfs[(udf_name, latest)]
        self._udf_versions = udf_versions
        self._udf_latest = udf_latest
        self._changed.notify_all()

    def refresh(self) -> None:
        """Re-read the storage: what another process (the parent of a pipeline worker, another node) stored."""
        if self._change_id is None:
            with self._lock:
                self._adopt(self._storage.load())
            return
        state = self._storage.load()  # outside the lock: a slow read does not hold up this node's changes
        with self._lock:
            current = self._change_id
            if state.change is not None and current is not None and state.change <= current:
                return  # this view has it already (or is newer: a change of this node committed meanwhile)
            self._adopt(state)

    def _on_change(self, change: int | None) -> None:
        """The store says ``change`` was committed (``None``: something may have been missed)."""
        current = self._change_id
        if change is not None and current is not None and change <= current:
            return  # this node's own change, or one it has read already
        self.refresh()

    def wait_for_change(self, change: int, timeout_s: float) -> bool:
        """Wait until this view includes the store's change ``change``; False when ``timeout_s`` passed first.
        (Always True on a store only this process writes: every change is in force when it returns.)"""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._change_id is None or self._change_id >= change, timeout=timeout_s
            )

    def status(self) -> dict[str, Any]:
        """The health of this registry: its back-end, whether it is reachable, and the change id in force."""
        out: dict[str, Any] = {"backend": "embedded", "connected": True}
        if isinstance(self._storage, SharedStorage):
            out = self._storage.status()
        out["change"] = self._change_id
        return out

    @contextlib.contextmanager
    def _changing(self) -> Iterator[list[int | None]]:
        """Make one change: under this registry's lock and the store's transaction, checked against the
        store's current state. Yields a list that holds the committed change id once the block has left.

        If the store fails (the database went away, a write or the commit failed), the view is put back as
        it was: nothing the store did not commit stays visible.
        """
        with self._lock:
            saved = self._snapshot()
            committed: list[int | None] = []
            try:
                with self._storage.transaction() as change:
                    if change.seen is not None and change.seen != self._change_id:
                        self._adopt(self._storage.load())  # another node changed the store: check against it
                    yield committed
                self._change_id = change.committed
                committed.append(change.committed)
                self._changed.notify_all()
            except StorageError:
                self._restore(saved)
                raise

    def _snapshot(self) -> tuple[Any, ...]:
        return (
            self._change_id,
            dict(self._parsed),
            dict(self._history),
            dict(self._marks),
            dict(self._associations),
            dict(self._index_settings),
            dict(self._udfs),
            dict(self._udf_versions),
            dict(self._udf_latest),
        )

    def _restore(self, saved: tuple[Any, ...]) -> None:
        (
            self._change_id,
            self._parsed,
            self._history,
            self._marks,
            self._associations,
            self._index_settings,
            self._udfs,
            self._udf_versions,
            self._udf_latest,
        ) = saved

    # --- pipelines ------------------------------------------------------------------------------------------

    def put(self, definition: PipelineDefinition, *, if_revision: int | None = None) -> PutResult:
        """Store ``definition`` as the pipeline's next revision (creating the pipeline if it is new).

        ``if_revision``: store only if the pipeline's latest revision is that one, checked under what orders
        writes (this registry's lock and, on a shared registry, the database's advisory lock, after re-reading
        what other nodes changed), so no other put comes between; :class:`ConflictError` otherwise.
        """
        with self._changing() as committed:
            name = definition.name
            history = self._history.get(name, [])
            if if_revision is not None:
                current = history[-1].revision if history else None
                if current != if_revision:
                    found = f"its revision is [{current}]" if current is not None else "it does not exist"
                    raise ConflictError(f"pipeline [{name}]: required revision [{if_revision}], but {found}")
            self.check_references(definition)
            if history:
                self._check_retype(name, definition.type)
            number = max(history[-1].revision if history else 0, self._marks.get(name, 0)) + 1
            revision = Revision(name, number, definition.to_dict(), self._now())
            self._storage.add_revision(revision)
            self._marks[name] = number
            self._history[name] = [*history, revision]
            self._parsed[(name, revision.revision)] = definition
        return PutResult(name, definition.version, revision.revision, not history, committed[0])

    def check_references(self, definition: PipelineDefinition) -> None:
        """Refuse a definition whose ``pipeline`` targets or UDFs do not resolve, or that closes a cycle."""
        with self._lock:
            problems: list[tuple[str, str]] = []
            for path, target in definition.pipeline_targets():
                if target == definition.name:
                    problems.append((path, f"pipeline cycle: {target} -> {target}"))
                    continue
                stored = self._latest(target)
                if stored is None:
                    problems.append((path, f"pipeline [{target}] does not exist"))
                elif stored.type is not definition.type:
                    problems.append(
                        (
                            path,
                            f"pipeline [{target}] is a {stored.type} pipeline, not a {definition.type} pipeline",
                        )
                    )
            if not problems:
                cycle = self._cycle(definition)
                if cycle:
                    problems.append(("stages", "pipeline cycle: " + " -> ".join(cycle)))
            for path, udf, version in definition.udf_references():
                versions = self.udf_versions(udf)
                if not versions:
                    problems.append((f"{path}.udf_name", f"UDF [{udf}] is not registered"))
                elif version is not None and version not in versions:
                    problems.append((f"{path}.udf_version", f"UDF [{udf}] has no version [{version}]"))
            if problems:
                raise DefinitionError(problems)

    def _cycle(self, definition: PipelineDefinition) -> list[str] | None:
        start = definition.name

        def targets(name: str) -> list[str]:
            d = definition if name == start else self._latest(name)
            return [t for _, t in d.pipeline_targets()] if d is not None else []

        path = [start]
        on_path = {start}
        done: set[str] = set()

        def visit(name: str) -> list[str] | None:
            for nxt in targets(name):
                if nxt == start or nxt in on_path:
                    return [*path, nxt]
                if nxt in done:
                    continue
                path.append(nxt)
                on_path.add(nxt)
                found = visit(nxt)
                if found:
                    return found
                path.pop()
                on_path.discard(nxt)
                done.add(nxt)
            return None

        return visit(start)

    def _check_retype(self, name: str, new_type: PipelineType) -> None:
        old = self._latest(name)
        if old is None or old.type is new_type:
            return
        users = self._users(name)
        if users:
            raise ConflictError(
                f"pipeline [{name}] cannot change type from {old.type} to {new_type} while used by {', '.join(users)}"
            )

    def _definition(self, revision: Revision) -> PipelineDefinition:
        key = (revision.name, revision.revision)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = self._parsed[key] = parse_definition(revision.definition)
        return parsed

    def _latest(self, name: str) -> PipelineDefinition | None:
        history = self._history.get(name)
        return self._definition(history[-1]) if history else None

    def get(self, name: str, revision: int | None = None) -> StoredPipeline:
        with self._lock:
            history = self._history.get(name)
            if not history:
                raise NotFoundError("pipeline", name)
            if revision is None:
                chosen = history[-1]
            else:
                found = [r for r in history if r.revision == revision]
                if not found:
                    raise NotFoundError("pipeline", name, f"no revision {revision}")
                chosen = found[0]
            return StoredPipeline(self._definition(chosen), chosen.revision, history[0].created_at, chosen.created_at)

    def latest_revision(self, name: str) -> int:
        """The revision number of ``name``'s latest definition (cheaper than :meth:`get`)."""
        history = self._history.get(name)  # a dict read is atomic; history lists are replaced, never emptied
        if not history:
            raise NotFoundError("pipeline", name)
        return history[-1].revision

    def exists(self, name: str) -> bool:
        with self._lock:
            return name in self._history

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._history)

    def pipelines(self, pipeline_type: PipelineType | None = None) -> list[StoredPipeline]:
        with self._lock:
            out = [self.get(name) for name in sorted(self._history)]
        return [p for p in out if pipeline_type is None or p.definition.type is pipeline_type]

    def history(self, name: str) -> list[Revision]:
        with self._lock:
            history = self._history.get(name)
            if not history:
                raise NotFoundError("pipeline", name)
            return list(history)

    def delete(self, name: str) -> None:
        with self._changing():
            if name not in self._history:
                raise NotFoundError("pipeline", name)
            users = self._users(name)
            if users:
                raise ConflictError(f"pipeline [{name}] is in use by {', '.join(users)}")
            self._storage.delete_pipeline(name)
            for revision in self._history.pop(name):
                self._parsed.pop((name, revision.revision), None)

    def _users(self, name: str) -> list[str]:
        users = [f"index [{index}] ({kind})" for (index, kind), p in sorted(self._associations.items()) if p == name]
        for other in sorted(self._history):
            d = self._latest(other)
            if other != name and d is not None and any(t == name for _, t in d.pipeline_targets()):
                users.append(f"pipeline [{other}]")
        return users

    # --- index associations ---------------------------------------------------------------------------------

    def associate(self, index: str, pipeline_type: PipelineType, name: str, *, final: bool = False) -> None:
        """Make ``name`` the index's pipeline of its type (``final``: its final pipeline, which runs after the
        default or request pipeline and cannot be skipped; documents and queries only)."""
        kind = final_kind(pipeline_type) if final else pipeline_type.value
        with self._changing():
            stored = self._latest(name)
            if stored is None:
                raise NotFoundError("pipeline", name)
            if stored.type is not pipeline_type:
                raise ConflictError(
                    f"pipeline [{name}] is a {stored.type} pipeline; index [{index}] needs a {pipeline_type} pipeline"
                )
            if self._associations.get((index, kind)) == name:
                return
            self._storage.set_association(index, kind, name)
            self._associations[(index, kind)] = name

    def disassociate(self, index: str, pipeline_type: PipelineType, *, final: bool = False) -> None:
        kind = final_kind(pipeline_type) if final else pipeline_type.value
        with self._changing():
            if (index, kind) not in self._associations:
                return
            self._storage.set_association(index, kind, None)
            del self._associations[(index, kind)]

    def pipeline_for(self, index: str, pipeline_type: PipelineType) -> str | None:
        # Keyed by the type's string value; the StrEnum member hashes and compares as that string, and
        # reading ``.value`` (an enum property) would cost more than the lookup.
        return self._associations.get((index, pipeline_type))

    def final_pipeline_for(self, index: str, pipeline_type: PipelineType) -> str | None:
        return self._associations.get((index, final_kind(pipeline_type)))

    def associations(self, index: str) -> dict[str, str]:
        with self._lock:
            return {kind: name for (i, kind), name in sorted(self._associations.items()) if i == index}

    # --- index settings ------------------------------------------------------------------------------------

    def set_index_settings(self, index: str, changes: Mapping[str, str | None]) -> None:
        """Keep ``changes`` (flat keys; ``None`` removes) as ``index``'s settings, in one change: all or none."""
        if not changes:
            return
        with self._changing():
            for key, value in sorted(changes.items()):
                if self._index_settings.get((index, key)) == value:
                    continue
                self._storage.set_index_setting(index, key, value)
                if value is None:
                    del self._index_settings[(index, key)]
                else:
                    self._index_settings[(index, key)] = value

    def index_settings(self, index: str) -> dict[str, str]:
        """The settings kept for ``index`` (flat keys), besides its pipelines (:meth:`associations`)."""
        with self._lock:
            return {key: value for (i, key), value in sorted(self._index_settings.items()) if i == index}

    # --- UDF versions ---------------------------------------------------------------------------------------

    def put_udf(self, record: UdfRecord) -> bool:
        """Record a UDF version; ``False`` when the same bytes are already there. Versions are immutable."""
        with self._changing():
            existing = self._udfs.get((record.name, record.version))
            if existing is not None:
                if not existing.same_content(record):
                    raise existing.immutable_error()
                return False
            self._storage.put_udf(record)
            self._udfs[(record.name, record.version)] = record
            self._set_udf_versions(record.name, [*self._udf_versions.get(record.name, ()), record.version])
            return True

    def _set_udf_versions(self, name: str, versions: list[str]) -> None:
        """Replace ``name``'s version list and ``latest`` (under the lock, or before anyone reads)."""
        ordered, latest = _ordered(versions)
        if latest is None:
            # The versions first: a reader that still sees the old ones then still finds their record.
            self._udf_versions.pop(name, None)
            self._udf_latest.pop(name, None)
            return
        self._udf_versions[name] = ordered
        # The record itself, not its version: a reader then needs one lookup, which cannot fall between a
        # delete's two steps (the new latest set, the deleted record gone).
        self._udf_latest[name] = self._udfs[(name, latest)]

    def udf(self, name: str, version: str | None) -> UdfRecord:
        """``version`` of ``name``, or its ``latest`` (the highest release; the highest pre-release only while
        there is no release) when ``version`` is ``None``.

        Read once per UDF stage call, so without the lock: each read below is one dict lookup, which the
        writers (under the lock) change by whole assignments only.
        """
        if version is None:
            latest = self._udf_latest.get(name)
            if latest is None:
                raise NotFoundError("udf", name)
            return latest
        record = self._udfs.get((name, version))
        if record is None:
            if not self.udf_versions(name):
                raise NotFoundError("udf", name)
            raise NotFoundError("udf", f"{name}@{version}")
        return record

    def udf_versions(self, name: str) -> list[str]:
        """Versions of ``name``, lowest to highest by semantic version (1.9.0 < 1.10.0)."""
        with self._lock:
            return list(self._udf_versions.get(name, ()))

    def udf_record(self, name: str, version: str) -> UdfRecord | None:
        with self._lock:
            return self._udfs.get((name, version))

    def udf_names(self) -> list[str]:
        with self._lock:
            return sorted(self._udf_versions)

    def delete_udf(self, name: str, version: str) -> UdfRecord:
        with self._changing():
            record = self._udfs.get((name, version))
            if record is None:
                raise NotFoundError("udf", f"{name}@{version}")
            last = self.udf_versions(name) == [version]
            users = []
            for pname in sorted(self._history):
                d = self._latest(pname)
                if d is None:
                    continue
                for _, udf, pinned in d.udf_references():
                    if udf == name and (pinned == version or (pinned is None and last)):
                        users.append(pname)
                        break
            if users:
                raise ConflictError(
                    f"UDF [{name}] version [{version}] is used by pipeline(s) {', '.join(f'[{u}]' for u in users)}"
                )
            self._storage.delete_udf(name, version)
            # The versions first: a reader that still sees the old ones then still finds the record.
            self._set_udf_versions(name, [v for v in self._udf_versions[name] if v != version])
            del self._udfs[(name, version)]
            return record

    def sha_in_use(self, sha256: str) -> bool:
        with self._lock:
            return any(r.sha256 == sha256 for r in self._udfs.values())

    def close(self) -> None:
        self._storage.close()


def _ordered(versions: list[str]) -> tuple[tuple[str, ...], str | None]:
    """``versions`` in semantic-version order, and the one ``latest`` means (None when there is none)."""
    ordered = tuple(sorted(versions, key=parse_semver))
    return ordered, latest_version(ordered)
