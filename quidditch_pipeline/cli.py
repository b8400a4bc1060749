"""The ``quidditch-pipeline`` command: validate and execute pipeline files, build UDFs, serve HTTP."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .definitions import load_definition
from .errors import DefinitionError, QuidditchError

__all__ = ["main"]


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise QuidditchError(f"cannot read {path}: {exc.strerror}") from exc


def _json_arg(text: str, what: str) -> Any:
    """A JSON value given inline, or ``@path`` to read it from a file."""
    raw = _read_text(text[1:]) if text.startswith("@") else text
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise QuidditchError(f"{what}: not valid JSON: {exc}") from exc


def _print_definition_error(console: Console, source: str, exc: DefinitionError) -> None:
    console.print(f"[bold red]{source}: invalid[/]")
    for path, message in exc.problems:
        console.print(f"  [cyan]{escape(path or '(top level)')}[/]: {escape(message)}", highlight=False)


def cmd_validate(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        definition = load_definition(_read_text(args.file))
    except DefinitionError as exc:
        _print_definition_error(console, args.file, exc)
        return 1
    except QuidditchError as exc:
        console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        return 1
    Console().print(
        f"[green]{args.file}: valid[/] {definition.type} pipeline [bold]{definition.name}[/] "
        f"{definition.version} with {len(definition.stages)} stage(s)"
    )
    return 0


def cmd_execute(args: argparse.Namespace) -> int:
    from .service import PipelineService

    err = Console(stderr=True)
    try:
        definition = load_definition(_read_text(args.file))
        value = _json_arg(args.input, "--input")
        params = _json_arg(args.params, "--params") if args.params else None
        service = PipelineService.open(args.data_dir) if args.data_dir else PipelineService.in_memory()
        with service:
            response = service.execute(definition.to_dict(), value, params=params, verbose=True)
    except DefinitionError as exc:
        _print_definition_error(err, args.file, exc)
        return 1
    except QuidditchError as exc:
        err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(response, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_trace(Console(), definition.name, response)
    return 1 if response["status"] == "failed" else 0


_STATUS_STYLE = {
    "success": "green",
    "retried": "yellow",
    "error_ignored": "yellow",
    "skipped": "dim",
    "dropped": "magenta",
    "error": "red",
}


def _trace_rows(table: Table, stages: list[dict[str, Any]], depth: int = 0) -> None:
    for stage in stages:
        style = _STATUS_STYLE.get(stage["status"], "")
        table.add_row(
            "  " * depth + escape(stage["name"]),
            stage["type"],
            f"[{style}]{stage['status']}[/]" if style else stage["status"],
            str(stage["attempts"]),
            f"{stage['took_us']:.1f}",
            escape(stage["error"] or ""),
        )
        _trace_rows(table, stage.get("stages", []), depth + 1)


def _print_trace(console: Console, name: str, response: dict[str, Any]) -> None:
    table = Table(title=f"pipeline {name}", title_justify="left")
    for column in ("stage", "type", "status", "attempts", "took µs", "error"):
        table.add_column(column, overflow="fold")
    _trace_rows(table, response.get("stages", []))
    console.print(table)
    status = response["status"]
    color = {"success": "green", "failed": "red"}.get(status, "yellow")
    console.print(f"status: [{color}]{status}[/]  took: {response['took_us']} µs")
    if response.get("error"):
        console.print(f"error: {escape(response['error']['reason'])}", highlight=False)
    if response.get("output") is not None:
        console.print_json(orjson.dumps(response["output"]).decode())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quidditch-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check a pipeline file (JSON or YAML)")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_validate)

    execute = sub.add_parser("execute", help="run the pipeline in FILE on an input and show each stage")
    execute.add_argument("file")
    execute.add_argument("--input", required=True, help="the input as JSON, or @path to a JSON file")
    execute.add_argument("--params", help="execute-time parameters as JSON, or @path")
    execute.add_argument("--json", action="store_true", help="print the _execute response as JSON")
    execute.add_argument("--data-dir", help="run against the registry in this data directory (its UDFs and pipelines)")
    execute.set_defaults(func=cmd_execute)

    from .compat.cli import register as register_import
    from .server.serve import register as register_serve
    from .udf.cli import register as register_udf

    register_udf(sub)
    register_serve(sub)
    register_import(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
