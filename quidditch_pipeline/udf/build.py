"""Build a UDF's Python source into a WebAssembly component with componentize-py.

The source is checked on the host first (syntax, a top-level ``process`` taking ``(value, params)`` or
``(value, params, meta)``, no imports the sandbox cannot serve: only the guest's standard library, see
:mod:`.guest_stdlib`), so the common mistakes fail in milliseconds with a file and a line, before the
seconds-long build. A source nested too deeply for the host's parser to check safely is refused too.
componentize-py then imports the shim and the UDF inside its own sandbox (pre-initialisation) and
snapshots them; an import that fails there fails the build,
and its traceback is translated into a :class:`UdfBuildError` naming the UDF's file and line.

componentize-py runs in a child process: it gets a fresh temporary directory, an environment that holds
nothing of the host's (no variables, and an empty ``VIRTUAL_ENV`` so no host site-packages are bundled into
the component: a UDF gets the guest's standard library and nothing else), and the limits of
:class:`BuildLimits`, since the UDF's module-level code runs during the build: a wall-clock limit (the whole
process group is killed), a memory limit (``RLIMIT_DATA``, set in the child before componentize-py starts)
and a limit on the component's size. That also makes concurrent builds from several threads safe; how many
run at once is the UDF store's business (:class:`~quidditch_pipeline.udf.store.UdfStore`).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UdfBuildError
from .guest_stdlib import GUEST_PYTHON, GUEST_STDLIB

__all__ = ["BuildLimits", "CheckedSource", "build_component", "check_source", "is_wasm"]

_HERE = Path(__file__).resolve().parent
_WIT_DIR = _HERE / "wit"
_GUEST_SHIM = _HERE / "guest" / "udf_guest.py"
# The module names the shim imports the UDF's file and its import list under (see guest/udf_guest.py).
_SOURCE_MODULE = "udf_source"
_PRELOAD_FILE = "udf_preload.json"
# CPython 3.11 counts the AST constructor's recursion depth in state shared by every thread: two threads
# turning parse trees into objects at once, one of them switched out by a finalizer that the collector ran
# mid-conversion, fail with "SystemError: AST constructor recursion depth mismatch" (cpython gh-106905).
# Builds and checks run on several threads (HTTP handlers, build slots), so their parses take turns.
_PARSE_LOCK = threading.Lock()

# Modules a UDF may not import: the sandbox withholds what they exist for. Refusing them at build time gives
# the author a clear message instead of an error on the first document.
_UNAVAILABLE_MODULES = {
    "socket": "the UDF sandbox has no network",
    "ssl": "the UDF sandbox has no network",
    "select": "the UDF sandbox has no network",
    "selectors": "the UDF sandbox has no network",
    "asyncio": "the UDF sandbox has no network or event loop",
    "socketserver": "the UDF sandbox has no network",
    "http.client": "the UDF sandbox has no network",
    "http.server": "the UDF sandbox has no network",
    "urllib.request": "the UDF sandbox has no network",
    "ftplib": "the UDF sandbox has no network",
    "smtplib": "the UDF sandbox has no network",
    "poplib": "the UDF sandbox has no network",
    "imaplib": "the UDF sandbox has no network",
    "xmlrpc": "the UDF sandbox has no network",
    "webbrowser": "the UDF sandbox has no network",
    "subprocess": "the UDF sandbox cannot start processes",
    "multiprocessing": "the UDF sandbox cannot start processes",
    "concurrent": "the UDF sandbox cannot start processes or threads",
    "ctypes": "the UDF sandbox cannot load native code",
}
# The exception names that make an import inside ``try`` optional: the UDF handles its absence itself.
_IMPORT_ERROR_NAMES = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
_ARITY_MESSAGE = "process must take (value, params) or (value, params, meta)"

# How running out of the build's memory limit shows: a MemoryError in the guest's module-level code, or
# an allocation that failed in componentize-py itself (Rust aborts) or in wasmtime growing a memory.
_OUT_OF_MEMORY_RE = re.compile(r"^MemoryError\b|memory allocation of \d+ bytes failed|failed to grow memory", re.M)
_FRAME_RE = re.compile(r'File "[^"]*/' + _SOURCE_MODULE + r'\.py", line (\d+)')
_MISSING_MODULE_RE = re.compile(r"No module named '([^']+)'")
_WASM_MAGIC = b"\0asm"
_MIB = 1 << 20
# A normal build peaks at ~400 MiB resident (componentize-py 0.25.1); room for module-level data beside it.
_BUILD_MEMORY_MB = 2048


@dataclass(frozen=True, slots=True)
class BuildLimits:
    """What one server-side UDF build may take. The defaults leave a normal build (~400 MiB resident,
    ~6 s alone, ~45 s on a loaded 2-core machine, ~18 MB out) a wide margin."""

    #: Builds running at once in one UDF store; more wait (see ``queue_timeout_s``).
    max_concurrent: int = 2
    #: How long a build waits for a free slot before it is refused (``RejectedExecutionError``, HTTP 429).
    queue_timeout_s: float = 5.0
    #: Wall-clock limit of one build; componentize-py's whole process group is killed past it.
    timeout_s: float = 300.0
    #: Data-segment limit (``RLIMIT_DATA``: heap and writable private mappings, the guest's linear memory
    #: among them) of the build process, where the UDF's module-level code runs.
    memory_limit_mb: int = _BUILD_MEMORY_MB
    #: The largest component a build may produce or an upload may carry.
    max_component_mb: int = 64

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.memory_limit_mb < 1 or self.max_component_mb < 1:
            raise ValueError("max_concurrent, memory_limit_mb and max_component_mb must be >= 1")
        if self.queue_timeout_s < 0 or self.timeout_s <= 0:
            raise ValueError("queue_timeout_s must be >= 0 and timeout_s > 0")

    @property
    def max_component_bytes(self) -> int:
        return self.max_component_mb * _MIB


@dataclass(frozen=True, slots=True)
class CheckedSource:
    """What the host-side check learnt about a UDF's source."""

    #: 3 when ``process`` takes ``meta`` too, 2 otherwise; None when ``process`` is not a plain ``def``
    #: (the guest shim decides then, at build time).
    arity: int | None
    #: The first line each module is imported on, anywhere in the file.
    import_lines: dict[str, int] = field(default_factory=dict)
    #: ``(module, optional)`` for imports inside functions, which the build must load ahead of time;
    #: optional ones sit in a ``try`` that handles ``ImportError``, or may name something else than a
    #: module (``from a import b``).
    preload: tuple[tuple[str, bool], ...] = ()


def is_wasm(data: bytes) -> bool:
    """True when ``data`` is a WebAssembly binary (a component or a core module), not Python source."""
    return data[:4] == _WASM_MAGIC


def check_source(source: str, *, filename: str = "udf.py") -> CheckedSource:
    """Check a UDF's source without building it; raise :class:`UdfBuildError` naming file and line."""
    try:
        return _check(source, filename)
    except (RecursionError, MemoryError) as exc:
        # CPython's parser and the checks below recurse per level of nesting: ((((…)))) or a - - - … chain
        # thousands deep exhausts their stack. No UDF needs that; refuse it instead of crashing the caller.
        raise UdfBuildError(
            f"the source nests too deeply to be checked ({type(exc).__name__} in the parser); "
            "flatten the deeply nested expression or statement",
            file=filename,
        ) from exc


def _check(source: str, filename: str) -> CheckedSource:
    try:
        with _PARSE_LOCK:
            tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise UdfBuildError(f"syntax error: {exc.msg}", file=filename, line=exc.lineno) from exc
    arity = _process_arity(tree, filename)
    import_lines: dict[str, int] = {}
    preload: dict[str, bool] = {}
    for node, in_function, optional in _imports(tree):
        for name, maybe_module in _imported_modules(node, filename):
            _refuse_unavailable(name, filename, node.lineno)
            if not (optional or maybe_module):
                _refuse_outside_stdlib(name, filename, node.lineno)
            import_lines.setdefault(name, node.lineno)
            if in_function:
                preload[name] = preload.get(name, True) and (optional or maybe_module)
    return CheckedSource(arity=arity, import_lines=import_lines, preload=tuple(preload.items()))


def build_component(
    source: str,
    *,
    filename: str = "udf.py",
    progress: Callable[[str], None] | None = None,
    limits: BuildLimits = BuildLimits(),
) -> bytes:
    """Build ``source`` (one Python file defining ``process``) into a component and return its bytes.

    ``progress`` is told each phase as it starts. Raises :class:`UdfBuildError` for a source the build
    refuses, naming ``filename`` and the line where the compiler said one, and for a build past ``limits``.
    """
    report = progress or _ignore
    report("checking source")
    checked = check_source(source, filename=filename)
    with tempfile.TemporaryDirectory(prefix="qp-udf-build-") as tmp:
        root = Path(tmp)
        app = root / "app"
        app.mkdir()
        shutil.copyfile(_GUEST_SHIM, app / _GUEST_SHIM.name)
        (app / f"{_SOURCE_MODULE}.py").write_text(source, encoding="utf-8")
        (app / _PRELOAD_FILE).write_text(json.dumps([list(p) for p in checked.preload]), encoding="utf-8")
        output = root / "udf.wasm"
        report("building component with componentize-py")
        _run_componentize(root, app, output, checked, filename, limits)
        size = output.stat().st_size
        if size > limits.max_component_bytes:
            raise UdfBuildError(
                f"the component is {size / _MIB:.1f} MiB, over the limit of {limits.max_component_mb} MiB "
                "(does the module build large data at import time?)",
                file=filename,
            )
        report("done")
        return output.read_bytes()


def _ignore(_phase: str) -> None:
    """The progress callback used when the caller gives none."""


def componentize(
    root: Path,
    wit_dir: Path,
    world: str,
    app: Path,
    module: str,
    output: Path,
    *,
    timeout_s: float,
    memory_limit_bytes: int = _BUILD_MEMORY_MB * _MIB,
) -> subprocess.CompletedProcess[str]:
    """Run componentize-py on ``app``'s ``module`` for ``world``, sandboxed from the host's packages.

    ``root`` is a scratch folder: componentize-py bundles the site-packages of ``VIRTUAL_ENV`` (else of the
    running interpreter), so it is pointed at an empty one there, and what a UDF can import does not depend
    on the host. The child limits its own data segment to ``memory_limit_bytes`` before componentize-py
    starts (no ``preexec_fn``: that is unsafe in a threaded parent), and runs in a session of its own, so a
    timeout kills everything it started. Raises ``subprocess.TimeoutExpired`` (the process group is dead
    by then); the caller reads the result's return code and output.
    """
    (root / "venv" / "lib" / "python" / "site-packages").mkdir(parents=True, exist_ok=True)
    # `python -c` rather than the `componentize-py` script: the module is always importable where this
    # package is, the script need not be on PATH.
    bootstrap = (
        "import resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_DATA, ({memory_limit_bytes}, {memory_limit_bytes})); "
        "from componentize_py import script; sys.exit(script())"
    )
    command = [
        sys.executable,
        "-c",
        bootstrap,
        "--quiet",
        "--wit-path",
        str(wit_dir),
        "--world",
        world,
        "componentize",
        "--python-path",
        str(app),
        "--output",
        str(output),
        module,
    ]
    env = {"VIRTUAL_ENV": str(root / "venv"), "HOME": str(root), "PATH": os.defpath}
    with subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except BaseException:  # the time limit, or the calling thread interrupted: leave nothing running
            _kill_group(process)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):  # gone already
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def _run_componentize(
    root: Path, app: Path, output: Path, checked: CheckedSource, filename: str, limits: BuildLimits
) -> None:
    memory = limits.memory_limit_mb * _MIB
    try:
        done = componentize(
            root, _WIT_DIR, "udf", app, _GUEST_SHIM.stem, output, timeout_s=limits.timeout_s, memory_limit_bytes=memory
        )
    except subprocess.TimeoutExpired as exc:
        raise UdfBuildError(
            f"the build did not finish within {limits.timeout_s:g} s (does the module run forever when imported?)",
            file=filename,
        ) from exc
    if done.returncode != 0 or not output.exists():
        raise _translate_failure(done.stdout + done.stderr, done.returncode, checked, filename, limits)


def _translate_failure(
    log: str, returncode: int, checked: CheckedSource, filename: str, limits: BuildLimits
) -> UdfBuildError:
    """Turn componentize-py's report (a guest traceback inside a Rust backtrace) into a UdfBuildError."""
    if _OUT_OF_MEMORY_RE.search(log):
        return UdfBuildError(
            f"the build ran out of memory (its limit is {limits.memory_limit_mb} MiB): does the module "
            "allocate large data at import time?",
            file=filename,
            line=_last_frame(log),
        )
    if returncode < 0:
        return UdfBuildError(f"the build process was killed by {_signal_name(-returncode)}", file=filename)
    line = _last_frame(log)
    cause = _cause(log)
    missing = _MISSING_MODULE_RE.search(cause)
    if missing is not None:
        module = missing.group(1)
        line = _import_line(module, checked) or line
        cause += " (a UDF can import the Python standard library only)"
    if cause:
        cause = cause.replace(f"/0/{_SOURCE_MODULE}.py", filename)
        return UdfBuildError(cause, file=filename, line=line)
    tail = "\n".join(log.strip().splitlines()[-20:])
    return UdfBuildError(f"componentize-py failed:\n{tail}", file=filename, line=line)


def _last_frame(log: str) -> int | None:
    frames = _FRAME_RE.findall(log.split("Caused by:", 1)[0])
    return int(frames[-1]) if frames else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _cause(log: str) -> str:
    """The guest exception's one-line summary (``Type: message``) from componentize-py's report."""
    _, _, after = log.partition("Caused by:")
    for text in after.splitlines():
        if text.strip():
            return text.strip()
    guest = log.split("Stack backtrace:", 1)[0].strip().splitlines()
    return guest[-1].strip() if guest else ""


def _import_line(module: str, checked: CheckedSource) -> int | None:
    """The line importing ``module`` or a package it belongs to."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        line = checked.import_lines.get(".".join(parts[:end]))
        if line is not None:
            return line
    for name, line in checked.import_lines.items():
        if name.startswith(module + "."):
            return line
    return None


def _process_arity(tree: ast.Module, filename: str) -> int | None:
    """The arity of the last top-level binding of ``process`` when it is a ``def``."""
    binding: ast.stmt | None = None
    for stmt in tree.body:
        if _binds_process(stmt):
            binding = stmt
    if binding is None:
        raise UdfBuildError("no top-level function process(value, params) is defined", file=filename)
    if isinstance(binding, ast.AsyncFunctionDef):
        raise UdfBuildError("process must be a plain def, not async def", file=filename, line=binding.lineno)
    if not isinstance(binding, ast.FunctionDef):
        return None
    args = binding.args
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    kw_required = sum(1 for default in args.kw_defaults if default is None)
    if kw_required == 0 and required <= 3 and (positional >= 3 or args.vararg is not None):
        return 3
    if kw_required == 0 and required <= 2 and positional >= 2:
        return 2
    raise UdfBuildError(_ARITY_MESSAGE, file=filename, line=binding.lineno)


def _binds_process(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return stmt.name == "process"
    if isinstance(stmt, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == "process" for t in stmt.targets)
    if isinstance(stmt, ast.AnnAssign | ast.AugAssign):
        return isinstance(stmt.target, ast.Name) and stmt.target.id == "process"
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        return any((alias.asname or alias.name) == "process" for alias in stmt.names)
    return False


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement with whether it sits in a function and in a ``try`` handling ImportError."""

    def walk(
        node: ast.AST, in_function: bool, optional: bool
    ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, in_function, optional
            return
        if isinstance(node, ast.Try | ast.TryStar):
            guarded = optional or any(_handles_import_error(h) for h in node.handlers)
            for stmt in node.body:
                yield from walk(stmt, in_function, guarded)
            rest: list[ast.AST] = [*node.handlers, *node.orelse, *node.finalbody]
            for other in rest:
                yield from walk(other, in_function, optional)
            return
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            yield from walk(child, inside, optional)

    return walk(tree, False, False)


def _handles_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in _IMPORT_ERROR_NAMES for t in types)


def _imported_modules(node: ast.Import | ast.ImportFrom, filename: str) -> list[tuple[str, bool]]:
    """``(module, maybe_module)`` for each module an import may load: ``from a import b`` loads ``a``, and
    ``a.b`` if b is a submodule rather than a name defined in ``a`` (which the source cannot tell)."""
    if isinstance(node, ast.Import):
        return [(alias.name, False) for alias in node.names]
    if node.level or node.module is None:
        raise UdfBuildError("relative imports are not supported: a UDF is one file", file=filename, line=node.lineno)
    names = [(f"{node.module}.{alias.name}", True) for alias in node.names if alias.name != "*"]
    return [(node.module, False), *names]


def _refuse_outside_stdlib(module: str, filename: str, line: int) -> None:
    """Refuse a module the guest does not have. An import the UDF guards (``try``/``except ImportError``)
    is not checked: the UDF handles its absence."""
    top = module.partition(".")[0]
    if top not in GUEST_STDLIB:
        raise UdfBuildError(
            f"cannot import {module!r}: it is not in the sandbox's Python {GUEST_PYTHON} standard library "
            "(a UDF can import the standard library only; no third-party packages, and no modules that need "
            "native libraries the sandbox lacks)",
            file=filename,
            line=line,
        )


def _refuse_unavailable(module: str, filename: str, line: int) -> None:
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        reason = _UNAVAILABLE_MODULES.get(".".join(parts[:end]))
        if reason is not None:
            raise UdfBuildError(f"cannot import {module!r}: {reason}", file=filename, line=line)
