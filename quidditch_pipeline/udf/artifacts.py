"""The content-addressed folder of UDF components: ``<root>/<sha256>.wasm``.

A file's name is the sha256 of its bytes, so writing the same component twice is a no-op and a name never
points at other bytes. Writes go to a temporary file in the same folder, then ``os.replace`` it into place:
a reader (or a crash) never sees half a component.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .._files import write_atomically
from ..errors import NotFoundError, StorageError

__all__ = ["ArtifactStore"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class ArtifactStore:
    """``.wasm`` files under ``root``, named by the sha256 of their content."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the artifact folder {self.root}: {exc}") from exc

    def put(self, data: bytes) -> str:
        """Store ``data``; return its sha256 (hex). Idempotent."""
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.path(sha256)
        if target.exists():
            return sha256
        try:
            write_atomically(target, data)
        except OSError as exc:
            raise StorageError(f"cannot write artifact {sha256}: {exc}") from exc
        return sha256

    def path(self, sha256: str) -> Path:
        """Where the artifact ``sha256`` lives (whether or not it exists)."""
        if not _SHA256_RE.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / f"{sha256}.wasm"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def read(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError("UDF artifact", sha256) from exc
        except OSError as exc:
            raise StorageError(f"cannot read artifact {sha256}: {exc}") from exc

    def delete(self, sha256: str) -> None:
        """Remove the artifact; a missing one is not an error (deleting is idempotent)."""
        try:
            self.path(sha256).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete artifact {sha256}: {exc}") from exc
