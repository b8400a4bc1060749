"""``quidditch-pipeline serve``: the reference server (uvicorn) on a data directory.

Everything lives under ``--data-dir``: the registry and UDF components of the service, wasmtime's compiled
artifacts, and the tantivy indexes with their settings and translogs, so a restart keeps all of it. With
``--upstream`` (gateway mode) the indexes live in that Elasticsearch or OpenSearch cluster instead, and this
server runs the pipelines in front of it (:mod:`.engine.upstream`).
SIGTERM or Ctrl-C shut down gracefully: the listener closes, in-flight requests finish, every index is
committed and the service closed.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from rich.console import Console

from ..errors import QuidditchError
from ..service import PipelineService
from ..udf import BuildLimits
from ._limits import ServerLimits
from .app import create_app
from .demo import find_udf_dir, run_demo
from .engine import TantivyBackend, UpstreamBackend, UpstreamConfig
from .engine.upstream import DEFAULT_TIMEOUT_S

__all__ = ["main", "register", "run", "usable_cores"]

TOKEN_ENV = "QUIDDITCH_ADMIN_TOKEN"
REGISTRY_ENV = "QUIDDITCH_REGISTRY"
UPSTREAM_ENV = "QUIDDITCH_UPSTREAM"
#: Secrets are better kept out of the command line (``ps`` shows it to every user).
UPSTREAM_PASSWORD_ENV = "QUIDDITCH_UPSTREAM_PASSWORD"
UPSTREAM_API_KEY_ENV = "QUIDDITCH_UPSTREAM_API_KEY"
#: How long a shutdown waits for in-flight requests by default: a server-side UDF build plus its load takes
#: ~12 s on a quiet machine of this class and ~50 s on a loaded one, and a build cut off is work thrown away.
GRACEFUL_SHUTDOWN_S = 120.0
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_S = 5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP server (pipelines, UDFs and tantivy indexes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9200, help="port to listen on (default: 9200)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where everything is kept (./data)")
    parser.add_argument(
        "--admin-token",
        default=None,
        help=f"require 'Authorization: Bearer TOKEN' on admin routes (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--registry",
        default=None,
        help="a postgresql:// URL: keep the registry there, shared by every node started on it "
        f"(default: ${REGISTRY_ENV}, else SQLite under --data-dir)",
    )
    add_upstream_arguments(parser)
    defaults = ServerLimits()
    parser.add_argument(
        "--max-in-flight-bytes",
        type=int,
        default=defaults.max_in_flight_bytes,
        help="request body bytes in flight across all requests; past it a request is answered 429 "
        f"circuit_breaking_exception (default: {defaults.max_in_flight_bytes})",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=defaults.body_timeout_s,
        help=f"seconds a request body may take to arrive; past it 408 (default: {defaults.body_timeout_s:g})",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="register the example UDFs, demo pipelines and a sample 'products' index first",
    )
    parser.add_argument(
        "--workers",
        type=_at_least(0),
        default=None,
        help="pipeline worker processes for document batches; 0 runs pipelines in the server process "
        "(default: the number of usable cores)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=GRACEFUL_SHUTDOWN_S,
        help=f"seconds a shutdown waits for in-flight requests, e.g. UDF builds (default: {GRACEFUL_SHUTDOWN_S:g})",
    )
    parser.add_argument(
        "--udf-mode",
        choices=["component", "source"],
        default="component",
        help="how a UDF uploaded as Python source is stored without ?mode=: built into a component "
        "(production) or kept as source for the shared interpreter (the author's loop) (default: component)",
    )
    builds = BuildLimits()
    parser.add_argument(
        "--max-concurrent-builds",
        type=_at_least(1),
        default=builds.max_concurrent,
        help="UDF builds (componentize-py, a core and ~400 MiB each) running at once; more wait "
        f"--build-queue-timeout for a slot, then get 429 (default: {builds.max_concurrent})",
    )
    parser.add_argument(
        "--build-queue-timeout",
        type=float,
        default=builds.queue_timeout_s,
        help=f"seconds a UDF build waits for a free slot before it is refused (default: {builds.queue_timeout_s:g})",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="(info)"
    )


def add_upstream_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("gateway mode (in front of an Elasticsearch or OpenSearch cluster)")
    group.add_argument(
        "--upstream",
        default=None,
        help="the cluster's URL (several: comma-separated): run pipelines here and keep the indexes there, "
        f"instead of in tantivy (default: ${UPSTREAM_ENV})",
    )
    group.add_argument("--upstream-user", default=None, help="basic authentication user")
    group.add_argument("--upstream-password", default=None, help=f"its password (default: ${UPSTREAM_PASSWORD_ENV})")
    group.add_argument("--upstream-api-key", default=None, help=f"an API key (default: ${UPSTREAM_API_KEY_ENV})")
    group.add_argument("--upstream-bearer", default=None, help="a bearer token")
    group.add_argument("--upstream-ca-certs", default=None, help="CA certificates (PEM) for an https:// upstream")
    group.add_argument(
        "--upstream-verify-certs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="verify the upstream's TLS certificate (default: verify)",
    )
    group.add_argument(
        "--upstream-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds an upstream request may take before the gateway answers 504 "
        f"(default: {DEFAULT_TIMEOUT_S:g})",
    )


def upstream_config(args: argparse.Namespace) -> UpstreamConfig | None:
    """Gateway mode's settings from the command line and the environment; ``None``: embedded mode."""
    url = args.upstream or os.environ.get(UPSTREAM_ENV) or None
    if url is None:
        return None
    return UpstreamConfig(
        tuple(part.strip() for part in url.split(",") if part.strip()),
        username=args.upstream_user,
        password=args.upstream_password or os.environ.get(UPSTREAM_PASSWORD_ENV) or None,
        api_key=args.upstream_api_key or os.environ.get(UPSTREAM_API_KEY_ENV) or None,
        bearer=args.upstream_bearer,
        ca_certs=args.upstream_ca_certs,
        verify_certs=args.upstream_verify_certs,
        request_timeout=args.upstream_timeout,
    )


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0))


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of ``minimum`` or more (argparse names the option in its refusal)."""

    def count(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more")
        return value

    return count


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C; 0 after a clean shutdown, 1 when the data directory cannot be opened."""
    console = Console(stderr=True, soft_wrap=True)
    token = args.admin_token or os.environ.get(TOKEN_ENV) or None
    data_dir: Path = args.data_dir
    registry = args.registry or os.environ.get(REGISTRY_ENV) or None
    workers = usable_cores() if args.workers is None else args.workers
    try:
        builds = BuildLimits(max_concurrent=args.max_concurrent_builds, queue_timeout_s=args.build_queue_timeout)
        service = PipelineService.open(
            data_dir, registry=registry, workers=workers, udf_mode=args.udf_mode, udf_build_limits=builds
        )
    except (QuidditchError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {getattr(exc, 'message', exc)}", highlight=False)
        return 1
    with service:
        try:
            upstream = upstream_config(args)
            backend: TantivyBackend | UpstreamBackend = (
                TantivyBackend(data_dir) if upstream is None else UpstreamBackend(upstream, service)
            )
        except QuidditchError as exc:
            console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
            return 1
        with backend:
            limits = ServerLimits(max_in_flight_bytes=args.max_in_flight_bytes, body_timeout_s=args.body_timeout)
            app = create_app(service, backend, admin_token=token, limits=limits)
            config = uvicorn.Config(
                app,
                host=args.host,
                port=args.port,
                log_level=args.log_level,
                lifespan="off",
                ws="none",
                timeout_graceful_shutdown=args.graceful_timeout,
                # An idle keep-alive connection is closed after this; h11 also bounds a request's head at
                # 16 KiB, so slow or endless headers cost one small buffer each, never a worker thread.
                timeout_keep_alive=KEEP_ALIVE_S,
            )
            server = uvicorn.Server(config)
            console.print(
                f"quidditch-pipeline on [bold]http://{args.host}:{args.port}[/] · data in {data_dir.resolve()} · "
                + (f"gateway to {backend.name} · " if isinstance(backend, UpstreamBackend) else "")
                + f"admin token {'required' if token else 'not set'}",
                highlight=False,
            )
            # Everything loaded so far lives as long as the server: out of the collector's way. A full
            # collection then walks only what requests made, not the ~60k objects of the loaded modules
            # (measured: ~30 ms per full collection under _bulk load, 3-4 us per document; see README).
            gc.collect()
            gc.freeze()
            stop = threading.Event()
            demo = _start_demo(args, server, token, console, stop) if args.demo else None
            try:
                _serve(server)
            finally:
                stop.set()
            if demo is not None:
                demo.join(timeout=args.graceful_timeout)
    console.print("indexes committed, service closed: bye", highlight=False)
    return 0


def _start_demo(
    args: argparse.Namespace, server: uvicorn.Server, token: str | None, console: Console, stop: threading.Event
) -> threading.Thread | None:
    """Set the demo up in the background once the server listens (it talks to the server over HTTP)."""
    udf_dir = find_udf_dir()
    if udf_dir is None:
        console.print("[bold red]demo:[/] the example UDFs (udfs/*.py) were not found; run from the repository")
        return None
    host = "127.0.0.1" if args.host in {"0.0.0.0", "::", ""} else args.host
    thread = threading.Thread(
        target=run_demo,
        args=(f"http://{host}:{args.port}",),
        kwargs={"token": token, "console": console, "udf_dir": udf_dir, "ready": lambda: server.started, "stop": stop},
        name="demo-setup",
        daemon=True,
    )
    thread.start()
    return thread


def _serve(server: uvicorn.Server) -> None:
    """Run uvicorn; once it has shut down gracefully, let the caller close the backend and the service.

    uvicorn re-raises the signal that stopped it after restoring the previous handlers; with the default
    SIGTERM handler that would end the process before the indexes are committed. These handlers make the
    re-raised signal a no-op, so the ``with`` blocks around this call run.
    """

    def after_shutdown(signum: int, frame: FrameType | None) -> None:
        """The signal has done its work: uvicorn has stopped."""

    previous = {sig: signal.signal(sig, after_shutdown) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m quidditch_pipeline.server.serve [options]``: the ``serve`` command on its own."""
    parser = argparse.ArgumentParser(prog="quidditch-pipeline serve", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
