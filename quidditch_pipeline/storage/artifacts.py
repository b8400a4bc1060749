"""The artifact folder a service uses: local only, or mirrored to a shared registry that keeps components.

With a :class:`~.base.ComponentStore` (PostgreSQL), a put uploads the component before its version is
recorded, and a node that resolves a version whose component it lacks fetches the bytes once into its own
folder (checked against their sha256); its runtime then compiles them into its own compiled cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .._files import write_atomically
from ..errors import StorageError
from ..udf.artifacts import ArtifactStore
from .base import ComponentStore, Storage

__all__ = ["SharedArtifactStore", "artifact_store"]


def artifact_store(storage: Storage, root: Path) -> ArtifactStore:
    """The artifact folder at ``root``, mirrored to ``storage`` when it keeps components."""
    if isinstance(storage, ComponentStore):
        return SharedArtifactStore(root, storage)
    return ArtifactStore(root)


class SharedArtifactStore(ArtifactStore):
    """``.wasm`` files under ``root``, uploaded to and fetched from the shared registry."""

    def __init__(self, root: Path, components: ComponentStore) -> None:
        super().__init__(root)
        self._components = components
        self._lock = threading.Lock()
        self._putting: Counter[str] = Counter()  # shas this node is writing: nothing to fetch for them

    def put(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        self._components.put_component(sha256, data)  # first: another node may resolve the version at once
        with self._local_only(sha256):
            return super().put(data)

    def path(self, sha256: str) -> Path:
        """Where the artifact lives here; fetched from the shared registry first when this node lacks it."""
        target = super().path(sha256)
        if not target.is_file():
            with self._lock:
                putting = self._putting[sha256] > 0
            if not putting:
                self._fetch(sha256, target)
        return target

    def _fetch(self, sha256: str, target: Path) -> None:
        data = self._components.component(sha256)
        if data is None:
            return  # not stored: loading it fails as for a missing file, and the stage fails closed
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StorageError(f"the registry's copy of component {sha256} does not match its sha256")
        try:
            write_atomically(target, data)
        except OSError as exc:
            raise StorageError(f"cannot write artifact {sha256}: {exc}") from exc

    def delete(self, sha256: str) -> None:
        """Remove the local copy only: other nodes' versions may still use the shared one."""
        with self._local_only(sha256):  # nothing to fetch before deleting
            super().delete(sha256)

    @contextlib.contextmanager
    def _local_only(self, sha256: str) -> Iterator[None]:
        """While this node writes or deletes ``sha256`` itself, :meth:`path` does not fetch it."""
        with self._lock:
            self._putting[sha256] += 1
        try:
            yield
        finally:
            with self._lock:
                self._putting[sha256] -= 1
                if not self._putting[sha256]:
                    del self._putting[sha256]
