"""What the server tests share: the app on a live loopback port (uvicorn in a thread), the ``serve`` command in
a subprocess, and one test UDF put in source mode (no build; every server maps the one compiled interpreter)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from quidditch_pipeline import PipelineService
from quidditch_pipeline.server import ServerLimits, TantivyBackend, create_app

ROOT = Path(__file__).resolve().parents[1]

#: One UDF whose behaviour the stage parameters choose, so one build serves every pipeline the tests need.
TEST_UDF_SOURCE = """
def process(value, params, meta):
    mode = params.get("mode")
    if mode == "score":
        return float(value["_source"].get("rank", 0))
    if mode == "flag":
        return {params.get("field", "flagged"): True}
    if mode == "keep_unless":
        node = value
        for part in params["path"].split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return not node
    if mode == "fail":
        raise ValueError("failing on purpose")
    return None
"""


PYTHON = {"content-type": "text/x-python"}


_NDJSON = {"content-type": "application/x-ndjson"}


def put_probe(client: httpx.Client, path: str = "/_udf/probe/1.0.0", **kwargs: Any) -> httpx.Response:
    """PUT the probe UDF (``TEST_UDF_SOURCE``) at ``path`` in source mode: the server tests need what it does,
    not a component of its own (the tests of uploading and building components upload or build one)."""
    headers = {**PYTHON, **kwargs.pop("headers", {})}
    return client.put(path, params={"mode": "source"}, content=TEST_UDF_SOURCE, headers=headers, **kwargs)


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with contextlib.closing(_loopback_socket()) as sock:
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_app(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a thread; yields its base URL."""
    sock = _loopback_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextlib.contextmanager
def served_data_dir(
    data: Path, *, limits: ServerLimits | None = None, **options: Any
) -> Iterator[tuple[PipelineService, TantivyBackend, str]]:
    """A service (``PipelineService.open(data, **options)``) and a tantivy backend on ``data`` that refreshes
    every 50 ms, served in a thread (:func:`serve_app`); yields both and the base URL."""
    with (
        PipelineService.open(data, **options) as service,
        TantivyBackend(data, refresh_tick=0.05) as backend,
        serve_app(create_app(service, backend, limits=limits)) as url,
    ):
        yield service, backend, url


class ServerProcess:
    """``quidditch-pipeline serve`` in a subprocess on a loopback port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        token: str | None = None,
        extra: tuple[str, ...] = (),
        entry: tuple[str, ...] = ("quidditch_pipeline.server.serve",),
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k != "QUIDDITCH_ADMIN_TOKEN"}
        env["PYTHONPATH"] = str(ROOT)
        if token is not None:
            env["QUIDDITCH_ADMIN_TOKEN"] = token
        command = [
            sys.executable, "-m", *entry,
            "--port", str(self.port), "--data-dir", str(data_dir), "--log-level", "warning", *extra,
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        # One client for every poll: ``httpx.get`` makes a client, and with it an SSL context, each time (~40 ms
        # of CPU), which every 50 ms took half a core from the server starting beside it on a 2-core machine.
        with httpx.Client(timeout=1) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
                with contextlib.suppress(httpx.TransportError):
                    if probe.get(self.url + "/").status_code == 200:
                        return
                time.sleep(0.05)
        raise RuntimeError(f"the server did not answer within {timeout} s:\n{self.output()}")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the graceful shutdown; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> ServerProcess:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.kill()


@contextlib.contextmanager
def started(server: ServerProcess) -> Iterator[ServerProcess]:
    """``server`` while it starts, not waited for (``wait_ready`` it later), so that the servers a test needs
    start in parallel instead of one after the other; killed on the way out if it still runs."""
    try:
        yield server
    finally:
        server.__exit__()


@contextlib.contextmanager
def loopback_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on a free loopback port answering with ``handler``; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    # serve_forever looks for shutdown() between polls: a short poll makes every stub's teardown that much
    # shorter (the default half second was most of what the upstream tests' teardowns took).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def kill_during_bulks(
    server: ServerProcess,
    client: httpx.Client,
    first: int,
    body: Callable[[int, int], bytes],
    answered: Callable[[int, list[dict[str, Any]]], None],
    rng: random.Random,
    batch: int = 50,
) -> bool:
    """Send ``_bulk`` requests back to back from a thread (``body(first_id, batch)``: the NDJSON of ids
    ``first_id …``), hand each bulk that was answered, and so acknowledged, to ``answered(first_id, items)``, and
    SIGKILL ``server`` (no shutdown, no commit) once 1 to 3 of them were, part-way through the next one (a random
    fraction of the last answered bulk's duration into it). True when the kill cut a bulk off in flight: it
    had reached the server and got no answer (not merely the next one refused a connection)."""
    stop, enough = threading.Event(), threading.Event()
    wanted = rng.randint(1, 3)
    state: dict[str, Any] = {"answered": 0, "last_s": 0.0, "cut": False}

    def writer() -> None:
        at = first
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = client.post("/_bulk", content=body(at, batch), headers=_NDJSON)
            except httpx.ConnectError:
                return
            except httpx.TransportError:
                state["cut"] = True
                return
            answered(at, response.json()["items"])
            state["last_s"] = time.monotonic() - sent
            state["answered"] += 1
            if state["answered"] >= wanted:
                enough.set()
            at += batch

    thread = threading.Thread(target=writer)
    thread.start()
    if not enough.wait(timeout=120):
        server.kill()
        stop.set()
        thread.join(timeout=30)
        raise AssertionError(f"fewer than {wanted} bulks were answered in 120 s:\n{server.output()}")
    time.sleep(rng.uniform(0.2, 0.8) * state["last_s"])
    server.kill()
    stop.set()
    thread.join(timeout=30)
    return bool(state["cut"])
