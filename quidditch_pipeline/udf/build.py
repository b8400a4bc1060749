"""Build a UDF's Python source into a WebAssembly component with componentize-py.

The source is checked on the host first (syntax, a top-level ``process`` taking ``(value, params)`` or
``(value, params, meta)``, no imports the sandbox cannot serve), so the common mistakes fail in milliseconds
with a file and a line, before the seconds-long build. componentize-py then imports the shim and the UDF
inside its own sandbox (pre-initialisation) and snapshots them; an import that fails there fails the build,
and its traceback is translated into a :class:`UdfBuildError` naming the UDF's file and line.

componentize-py runs in a child process: it gets a fresh temporary directory, an environment that holds
nothing of the host's (no variables, and an empty ``VIRTUAL_ENV`` so no host site-packages are bundled into
the component: a UDF gets the guest's standard library and nothing else), and a time limit, since the UDF's
module-level code runs during the build. That also makes concurrent builds from several threads safe.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UdfBuildError

__all__ = ["CheckedSource", "build_component", "check_source", "is_wasm"]

_HERE = Path(__file__).resolve().parent
_WIT_DIR = _HERE / "wit"
_GUEST_SHIM = _HERE / "guest" / "udf_guest.py"
# The module names the shim imports the UDF's file and its import list under (see guest/udf_guest.py).
_SOURCE_MODULE = "udf_source"
_PRELOAD_FILE = "udf_preload.json"

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

_FRAME_RE = re.compile(r'File "[^"]*/' + _SOURCE_MODULE + r'\.py", line (\d+)')
_MISSING_MODULE_RE = re.compile(r"No module named '([^']+)'")
_WASM_MAGIC = b"\0asm"


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
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise UdfBuildError(f"syntax error: {exc.msg}", file=filename, line=exc.lineno) from exc
    arity = _process_arity(tree, filename)
    import_lines: dict[str, int] = {}
    preload: dict[str, bool] = {}
    for node, in_function, optional in _imports(tree):
        for name, maybe_module in _imported_modules(node, filename):
            _refuse_unavailable(name, filename, node.lineno)
            import_lines.setdefault(name, node.lineno)
            if in_function:
                preload[name] = preload.get(name, True) and (optional or maybe_module)
    return CheckedSource(arity=arity, import_lines=import_lines, preload=tuple(preload.items()))


def build_component(
    source: str,
    *,
    filename: str = "udf.py",
    progress: Callable[[str], None] | None = None,
    timeout_s: float = 300.0,
) -> bytes:
    """Build ``source`` (one Python file defining ``process``) into a component and return its bytes.

    ``progress`` is told each phase as it starts. Raises :class:`UdfBuildError` for a source the build
    refuses, naming ``filename`` and the line where the compiler said one.
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
        _run_componentize(root, app, output, checked, filename, timeout_s)
        report("done")
        return output.read_bytes()


def _ignore(_phase: str) -> None:
    """The progress callback used when the caller gives none."""


def componentize(
    root: Path, wit_dir: Path, world: str, app: Path, module: str, output: Path, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run componentize-py on ``app``'s ``module`` for ``world``, sandboxed from the host's packages.

    ``root`` is a scratch folder: componentize-py bundles the site-packages of ``VIRTUAL_ENV`` (else of the
    running interpreter), so it is pointed at an empty one there, and what a UDF can import does not depend
    on the host. Raises ``subprocess.TimeoutExpired``; the caller reads the result's return code and output.
    """
    (root / "venv" / "lib" / "python" / "site-packages").mkdir(parents=True, exist_ok=True)
    # `python -c` rather than the `componentize-py` script: the module is always importable where this
    # package is, the script need not be on PATH.
    command = [
        sys.executable,
        "-c",
        "import sys; from componentize_py import script; sys.exit(script())",
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
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def _run_componentize(
    root: Path, app: Path, output: Path, checked: CheckedSource, filename: str, timeout_s: float
) -> None:
    try:
        done = componentize(root, _WIT_DIR, "udf", app, _GUEST_SHIM.stem, output, timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise UdfBuildError(
            f"the build did not finish within {timeout_s:g} s (does the module run forever when imported?)",
            file=filename,
        ) from exc
    if done.returncode != 0 or not output.exists():
        raise _translate_failure(done.stdout + done.stderr, checked, filename)


def _translate_failure(log: str, checked: CheckedSource, filename: str) -> UdfBuildError:
    """Turn componentize-py's report (a guest traceback inside a Rust backtrace) into a UdfBuildError."""
    guest = log.split("Caused by:", 1)[0]
    frames = _FRAME_RE.findall(guest)
    line = int(frames[-1]) if frames else None
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


def _refuse_unavailable(module: str, filename: str, line: int) -> None:
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        reason = _UNAVAILABLE_MODULES.get(".".join(parts[:end]))
        if reason is not None:
            raise UdfBuildError(f"cannot import {module!r}: {reason}", file=filename, line=line)
