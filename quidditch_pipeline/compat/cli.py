"""``quidditch-pipeline import SRC.json --from elasticsearch``: translate a pipeline written for another engine.

The translation and its report go to stdout as JSON; with ``--data-dir`` the pipeline is stored in that data
directory, with ``--url`` it is sent to a running server's ``POST /_pipeline/{name}/_import``. A translation
that would change behaviour is refused (exit 1, every position on stderr) unless ``--accept-losses``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape

from ..errors import DefinitionError, QuidditchError
from ._import import TRANSLATORS, import_pipeline

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``import`` command to the top-level parser's subcommands."""
    command = subparsers.add_parser(
        "import",
        help="translate an Elasticsearch ingest or OpenSearch search pipeline and store it",
        description=__doc__,
    )
    command.add_argument("source", metavar="SRC.json", help="the pipeline as the other engine takes it")
    command.add_argument("--from", dest="from_", required=True, choices=sorted(TRANSLATORS), help="its engine")
    command.add_argument("--name", help="the pipeline's name here (default: the id in SRC, or the file's stem)")
    command.add_argument("--dry-run", action="store_true", help="print the translation and report; store nothing")
    command.add_argument(
        "--accept-losses", action="store_true", help="store even when the report lists behaviour that is left out"
    )
    target = command.add_mutually_exclusive_group()
    target.add_argument("--data-dir", help="store into this data directory")
    target.add_argument("--url", help="store through the server at this URL (POST /_pipeline/{name}/_import)")
    command.add_argument("--token", help="the server's admin token (with --url)")
    command.set_defaults(func=main_import)


def main_import(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        name, body = _read_source(args.source, args.name)
        if args.url and not args.dry_run:
            answer = _post(args.url, name, body, args)
        elif args.data_dir and not args.dry_run:
            from ..service import PipelineService

            with PipelineService.open(args.data_dir) as service:
                answer = import_pipeline(service, body, name, args.from_, accept_losses=args.accept_losses,
                                         dry_run=False, how_to_accept="pass --accept-losses")  # fmt: skip
        elif args.dry_run:
            answer = import_pipeline(None, body, name, args.from_, accept_losses=True, dry_run=True, how_to_accept="")
        else:
            raise QuidditchError("give --data-dir or --url to store the pipeline, or --dry-run to only translate")
    except DefinitionError as exc:
        err.print(f"[bold red]{escape(args.source)}: not imported[/] ({escape(exc.subject)})")
        for path, message in exc.problems:
            err.print(f"  [cyan]{escape(path or '(top level)')}[/]: {escape(message)}")
        return 1
    except QuidditchError as exc:
        err.print(f"[bold red]error:[/] {escape(exc.message)}")
        return 1
    sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    for finding in answer["report"]:
        mark = "[yellow]left out[/]" if finding["lossy"] else "[dim]note[/]"
        err.print(f"{mark} [cyan]{escape(finding['path'])}[/]: {escape(finding['reason'])}")
    return 0


def _read_source(path: str, name: str | None) -> tuple[str, Any]:
    """The pipeline body and its name; a file holding a ``GET _ingest/pipeline/{id}`` answer is unwrapped."""
    try:
        body = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise QuidditchError(f"cannot read {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise QuidditchError(f"{path}: not valid JSON: {exc}") from exc
    if isinstance(body, dict) and len(body) == 1:
        ((key, inner),) = body.items()
        if isinstance(inner, dict) and not _is_pipeline_key(key):
            return name or key, inner
    return name or re.sub(r"[^a-z0-9_.-]", "-", Path(path).stem.lower()), body


def _is_pipeline_key(key: str) -> bool:
    return key in {"processors", "request_processors", "response_processors", "phase_results_processors", "_meta"}


def _post(url: str, name: str, body: Any, args: argparse.Namespace) -> dict[str, Any]:
    query = urllib.parse.urlencode({"from": args.from_, "accept_losses": str(args.accept_losses).lower()})
    headers = {"content-type": "application/json"}
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    request = urllib.request.Request(
        f"{url.rstrip('/')}/_pipeline/{urllib.parse.quote(name, safe='')}/_import?{query}",
        data=orjson.dumps(body),
        method="POST",
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        error = json.loads(exc.read() or b"{}").get("error", {})
        problems = [(p["path"], p["message"]) for p in error.get("problems", [])]
        if problems:
            raise DefinitionError(problems, subject=f"import through {url}") from exc
        raise QuidditchError(f"{url} answered {exc.code}: {error.get('reason', exc.reason)}") from exc
    except urllib.error.URLError as exc:
        raise QuidditchError(f"cannot reach {url}: {exc.reason}") from exc
