"""``quidditch-pipeline udf build SRC.py --name N --version V [-o OUT.wasm]``: build a UDF on the command line."""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..definitions import is_valid_name, parse_udf_version
from ..errors import UdfBuildError
from .build import build_component

__all__ = ["main_udf_build", "register"]


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
