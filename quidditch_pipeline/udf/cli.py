"""The ``udf`` command: ``udf build SRC.py --name N --version V [-o OUT.wasm]`` builds a UDF into a component;
``udf test SRC.py [--inputs FILE] [--input JSON]… [--native] [--watch]`` runs it on sample inputs in the
sandbox (source mode, locally), and with ``--native`` in the host's CPython too, reporting disagreements;
``udf prepare [--cache-dir DIR]`` builds and compiles the shared interpreter of source mode once, at install
time, so that the first ``serve --demo`` or ``udf test`` does not pay for it."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..definitions import is_valid_name, parse_udf_version
from ..errors import InputError, UdfBuildError, UdfLoadError
from .build import build_component
from .tester import TestReport

__all__ = ["main_udf_build", "main_udf_prepare", "main_udf_test", "register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``udf`` command (with ``udf build``) to the top-level parser's subcommands."""
    udf = subparsers.add_parser("udf", help="build Python UDFs into WebAssembly components")
    commands = udf.add_subparsers(dest="udf_command", required=True)
    build = commands.add_parser(
        "build",
        help="build SRC.py (one file defining process(value, params[, meta])) into a component",
        description="Check SRC.py, then build it with componentize-py into a sandboxed WebAssembly component.",
    )
    build.add_argument("source", metavar="SRC.py", help="the UDF's Python source file")
    build.add_argument("--name", required=True, help="the UDF's name ([a-z0-9][a-z0-9_.-]*)")
    build.add_argument("--version", required=True, help="the UDF's semantic version, e.g. 1.0.0")
    build.add_argument(
        "-o", "--output", metavar="OUT.wasm", help="where to write the component (default: NAME-VERSION.wasm)"
    )
    build.set_defaults(func=main_udf_build)

    test = commands.add_parser(
        "test",
        help="run SRC.py on sample inputs in the sandbox (no build, no server); --native compares with CPython",
        description=(
            "Run SRC.py on every sample input in the sandbox (on the shared interpreter: no build), print each "
            "result, the value the mapping makes of it, errors with their line, and the time per call. With "
            "--native, also run it in this CPython and report every input where the two disagree. --watch "
            "runs again on every save. Exits 1 on any error or disagreement."
        ),
    )
    test.add_argument("source", metavar="SRC.py", help="the UDF's Python source file")
    test.add_argument("--inputs", metavar="FILE", help="sample inputs: a JSON array, or NDJSON (one value a line)")
    test.add_argument(
        "--input", action="append", default=[], metavar="JSON", help="one sample input as JSON (repeatable)"
    )
    test.add_argument("--params", default="{}", metavar="JSON", help="the UDF's params, a JSON object")
    test.add_argument("--type", choices=("document", "query", "result"), default="document", help="pipeline type")
    test.add_argument("--scope", choices=("hit", "response"), default="hit", help="a result UDF's scope")
    test.add_argument("--target-field", help="where the mapping puts a value that is not an object")
    test.add_argument("--native", action="store_true", help="also run in the host's CPython and compare")
    test.add_argument("--watch", action="store_true", help="run again on every save, printing what changed")
    test.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where the shared interpreter component is kept (built there on first use; default: the user's cache)",
    )
    test.set_defaults(func=main_udf_test)

    prepare = commands.add_parser(
        "prepare",
        help="build and compile the shared interpreter of source mode now (once per release; about a minute)",
        description=(
            "Build the shared interpreter component that source-mode UDFs run on, and compile it, into its cache "
            "folder, unless both are there already. Run once after installing (the Quickstart and CI do), so the "
            "first `serve --demo` or `udf test` finds it ready."
        ),
    )
    prepare.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where to keep the shared interpreter (default: the user's cache, where `serve` looks for it)",
    )
    prepare.set_defaults(func=main_udf_prepare)


def main_udf_build(args: argparse.Namespace) -> int:
    """Run ``udf build``; 0 on success, 1 (with ``file:line: message`` on stderr) on failure."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    problem = _check_name_version(args.name, args.version)
    if problem:
        _fail(err, f"error: {problem}")
        return 1
    try:
        source = Path(args.source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(err, f"error: cannot read {args.source}: {exc}")
        return 1
    output = Path(args.output or f"{args.name}-{args.version}.wasm")
    started = time.monotonic()
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            label = f"{args.name} {args.version}"
            task = progress.add_task(f"{label}: starting", total=None)
            component = build_component(
                source,
                filename=args.source,
                progress=lambda phase: progress.update(task, description=f"{label}: {phase}"),
            )
    except UdfBuildError as exc:
        _fail(err, exc.message)  # file:line: message
        return 1
    try:
        output.write_bytes(component)
    except OSError as exc:
        _fail(err, f"error: cannot write {output}: {exc}")
        return 1
    sha256 = hashlib.sha256(component).hexdigest()
    Console(highlight=False, soft_wrap=True).print(
        f"[green]built[/] {args.name} {args.version} -> {output} "
        f"({len(component) / 1e6:.1f} MB, sha256 {sha256[:16]}…) in {time.monotonic() - started:.1f} s"
    )
    return 0


def main_udf_test(args: argparse.Namespace) -> int:
    """Run ``udf test``; 0 when every input ran without error or disagreement, else 1."""
    from ..service import PipelineService  # the service imports this package: import it on use
    from .interpreter import default_cache_dir, interpreter_built
    from .runtime import UdfRuntime
    from .tester import load_inputs, run_udf_test, watch_runs

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    path = Path(args.source)
    inputs_path = None if args.inputs is None else Path(args.inputs)
    try:
        params = orjson.loads(args.params)
        if not isinstance(params, dict):
            raise InputError("--params must be a JSON object")
        load_inputs(inputs_path, args.input)  # refuse bad inputs before starting anything
    except (orjson.JSONDecodeError, InputError, OSError) as exc:
        _fail(err, f"error: {exc.message if isinstance(exc, InputError) else exc}")
        return 1

    last: list[TestReport] = []

    def run() -> TestReport:
        try:
            inputs = load_inputs(inputs_path, args.input)
        except (InputError, OSError) as exc:
            return TestReport(load_error=f"error: {exc.message if isinstance(exc, InputError) else exc}")
        last[:] = [_run(inputs)]
        return last[0]

    def _run(inputs: list[Any]) -> TestReport:
        return run_udf_test(
            service,
            path,
            inputs,
            params=params,
            type=args.type,
            scope=args.scope,
            target_field=args.target_field,
            native=args.native,
        )

    out = Console(highlight=False, soft_wrap=True)

    def emit(text: str) -> None:
        out.print(text, markup=False)

    interpreter_dir = None if args.cache_dir is None else Path(args.cache_dir)
    if not interpreter_built(interpreter_dir or default_cache_dir()):
        err.print(
            "building the shared UDF interpreter (once per release of quidditch-pipeline: about a minute)…",
            markup=False,
        )
    with (
        UdfRuntime(interpreter_dir=interpreter_dir) as runtime,
        PipelineService.in_memory(runtime=runtime) as service,
    ):
        if args.watch:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the watch
                watch_runs(path, [] if inputs_path is None else [inputs_path], run, emit)
            return 1 if not last or last[0].failed else 0
        report = run()
    if report.load_error is not None:
        _fail(err, report.load_error)
        return 1
    for outcome in report.outcomes:
        emit(outcome.line(timed=True))
    errors = sum(1 for o in report.outcomes if o.error)
    disagreements = sum(1 for o in report.outcomes if o.disagreement)
    summary = f"{len(report.outcomes)} inputs: {errors} errors"
    emit(summary + (f", {disagreements} disagreements with native CPython" if args.native else ""))
    return 1 if report.failed else 0


def main_udf_prepare(args: argparse.Namespace) -> int:
    """Run ``udf prepare``; 0 once the interpreter is built and compiled, 1 (with the reason) if it cannot be."""
    from .interpreter import default_cache_dir, interpreter_built
    from .runtime import UdfRuntime

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    interpreter_dir = Path(args.cache_dir) if args.cache_dir is not None else default_cache_dir()
    if not interpreter_built(interpreter_dir):
        err.print("building the shared UDF interpreter (once per release of quidditch-pipeline)…", markup=False)
    started = time.monotonic()
    try:
        with UdfRuntime(interpreter_dir=interpreter_dir) as runtime:
            compiled = runtime.prepare_interpreter()
            stats = runtime.stats()
    except UdfLoadError as exc:
        _fail(err, f"error: {exc.message}")
        return 1
    what = "compiled" if stats.compiles else "already compiled"
    Console(highlight=False, soft_wrap=True).print(
        f"[green]ready[/] shared UDF interpreter {what}: {compiled} ({time.monotonic() - started:.1f} s)"
    )
    return 0


def _fail(console: Console, message: str) -> None:
    # markup=False: paths and compiler messages may hold [brackets] that are not rich markup.
    console.print(message, style="bold red", markup=False)


def _check_name_version(name: str, version: str) -> str | None:
    if not is_valid_name(name):
        return f"--name {name!r} is not a valid UDF name ([a-z0-9][a-z0-9_.-]{{0,127}})"
    try:
        parse_udf_version(version)
    except ValueError as exc:
        return f"--version {version!r}: {exc}"
    return None
