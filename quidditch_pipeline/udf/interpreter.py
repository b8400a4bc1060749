"""The shared interpreter component: one component that runs any UDF's source, given as data.

Built with componentize-py from ``guest/udf_interpreter.py``, the per-UDF shim and, pre-imported at build
time, the sandbox's standard library (:data:`PRELOADED`), so a UDF in source mode can import what the
pre-build check allows without files in the sandbox. It is not shipped (~20 MB): it is built on first use,
once per content of what goes into it (the guest files, the WIT world, the preload list, componentize-py's
version), and cached under the runtime's cache folder beside the compiled components; processes sharing
that folder build it once (a file lock). The runtime then compiles it once, like any component.

Inline sources (``_execute`` with ``source``, ``udf test``) are kept beside it, in ``sources/<sha256>.py``, so
that a runtime can load one again after it unloaded it; that folder is bounded (:func:`keep_source`): the
least recently used sources go first, by modification time, which every use renews.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .._files import file_lock, write_atomically
from ..errors import UdfLoadError
from .build import _UNAVAILABLE_MODULES, componentize
from .guest_stdlib import GUEST_STDLIB

__all__ = [
    "CACHE_DIR_ENV",
    "PRELOADED",
    "SOURCES_MAX_BYTES",
    "SOURCES_MAX_FILES",
    "cache_root",
    "default_cache_dir",
    "interpreter_built",
    "interpreter_component",
    "keep_source",
]

_HERE = Path(__file__).resolve().parent
_WIT_DIR = _HERE / "wit_source"
_GUEST_FILES = ("udf_interpreter.py", "udf_guest.py", "udf_source.py")
_WORLD = "udf-source"
# Submodules that ``import pkg`` does not load and UDFs commonly import.
_SUBMODULES = (
    "collections.abc",
    "os.path",
    "urllib.parse",
    "json.decoder",
    "json.encoder",
    "email.utils",
    "email.message",
    "html.parser",
    "xml.etree.ElementTree",
    "xml.dom.minidom",
    "importlib.resources",
    "importlib.metadata",
    "logging.handlers",
    "unittest.mock",
    "zoneinfo._common",
    "encodings.idna",
)
# What the interpreter imports at build time: every module the pre-build check lets a UDF import. Those
# the sandbox withholds (sockets, processes) are left out: the check refuses them anyway.
PRELOADED: tuple[str, ...] = tuple(
    sorted(
        name
        for name in GUEST_STDLIB | set(_SUBMODULES)
        if not any(name == banned or name.startswith(banned + ".") for banned in _UNAVAILABLE_MODULES)
        and name.partition(".")[0] not in _UNAVAILABLE_MODULES
    )
)
_BUILD_TIMEOUT_S = 600.0
#: Bounds of the inline sources kept under ``sources/`` (see :func:`keep_source`): an author saving a file
#: every few seconds for a day stays within them, and a server fed sources by clients does not fill its disk.
SOURCES_MAX_FILES = 1000
SOURCES_MAX_BYTES = 64 << 20


def _key() -> str:
    digest = hashlib.sha256()
    for name in _GUEST_FILES:
        digest.update((_HERE / "guest" / name).read_bytes())
    for wit in sorted(_WIT_DIR.glob("*.wit")):
        digest.update(wit.read_bytes())
    digest.update(json.dumps(PRELOADED).encode())
    digest.update(importlib.metadata.version("componentize-py").encode())
    return digest.hexdigest()


#: Names the folder of quidditch-pipeline's user caches (default ``$XDG_CACHE_HOME/quidditch-pipeline``, else
#: ``~/.cache/quidditch-pipeline``): the interpreter goes under it, and the test suite's caches too.
CACHE_DIR_ENV = "QUIDDITCH_CACHE_DIR"


def cache_root() -> Path:
    """The folder of quidditch-pipeline's user caches (see :data:`CACHE_DIR_ENV`)."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "quidditch-pipeline"


def default_cache_dir() -> Path:
    """Where the interpreter is kept when the runtime has no cache folder of its own."""
    return cache_root() / "interpreter"


def interpreter_built(cache_dir: Path) -> bool:
    """Whether this release's interpreter is in ``cache_dir`` already (else the first use builds it)."""
    return _path(cache_dir).is_file()


def _path(cache_dir: Path) -> Path:
    return cache_dir / f"interpreter-{_key()[:32]}.wasm"


def interpreter_component(cache_dir: Path) -> tuple[str, Path]:
    """The shared interpreter's sha256 and path under ``cache_dir``, built there first if missing."""
    path = _path(cache_dir)
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(cache_dir):
            if not path.is_file():
                write_atomically(path, _build())
    return hashlib.sha256(path.read_bytes()).hexdigest(), path


def keep_source(
    cache_dir: Path,
    sha256: str,
    data: bytes,
    *,
    max_files: int = SOURCES_MAX_FILES,
    max_bytes: int = SOURCES_MAX_BYTES,
) -> Path:
    """``data`` (a source whose sha256 is ``sha256``) as ``cache_dir/sources/<sha256>.py``: marked used when
    it is there already (its mtime set to now), else written, after which the least recently used other
    sources are deleted until at most ``max_files`` files of at most ``max_bytes`` in all are left.

    The one just kept is never deleted: a source larger than ``max_bytes`` stays alone. Processes sharing
    the folder may delete the same file: a source already gone is skipped. Raises ``OSError``.
    """
    folder = cache_dir / "sources"
    path = folder / f"{sha256}.py"
    try:
        os.utime(path)
        return path
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
    _prune_sources(folder, path, max_files, max_bytes)
    return path


def _prune_sources(folder: Path, kept: Path, max_files: int, max_bytes: int) -> None:
    entries: list[tuple[float, int, Path]] = []
    for candidate in folder.glob("*.py"):
        try:
            stat = candidate.stat()
        except FileNotFoundError:  # deleted by another process meanwhile
            continue
        entries.append((stat.st_mtime, stat.st_size, candidate))
    files = len(entries)
    total = sum(size for _, size, _ in entries)
    for _, size, candidate in sorted(entries):  # least recently used first
        if files <= max_files and total <= max_bytes:
            break
        if candidate == kept:
            continue
        candidate.unlink(missing_ok=True)
        files -= 1
        total -= size


def _build() -> bytes:
    with tempfile.TemporaryDirectory(prefix="qp-udf-interpreter-") as tmp:
        root = Path(tmp)
        app = root / "app"
        app.mkdir()
        for name in _GUEST_FILES:
            shutil.copyfile(_HERE / "guest" / name, app / name)
        preload = [[name, True] for name in PRELOADED]  # optional: a module that fails to import is skipped
        (app / "udf_preload.json").write_text(json.dumps(preload), encoding="utf-8")
        output = root / "interpreter.wasm"
        try:
            done = componentize(root, _WIT_DIR, _WORLD, app, "udf_interpreter", output, timeout_s=_BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise UdfLoadError(f"building the shared UDF interpreter took over {_BUILD_TIMEOUT_S:g} s") from exc
        if done.returncode != 0 or not output.is_file():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            raise UdfLoadError(f"building the shared UDF interpreter failed:\n{tail}")
        return output.read_bytes()
