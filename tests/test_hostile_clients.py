"""Hostile clients against the real server (``serve`` in a subprocess, loopback only): a flood of UDF builds,
bodies that together exceed the in-flight bytes breaker, a YAML bomb, deeply nested bodies, and slowloris
sockets. During each attack another client measures the latency of ``GET /``: the server must keep answering
it (p99 under a generous 2 s: the point is that it answers, not a benchmark). The p99s are printed (``-s``)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .hostile_inputs import BILLION_LAUGHS
from .server_harness import PYTHON, ServerProcess

#: Small on purpose, so a few sockets reach them.
IN_FLIGHT_LIMIT = 2_000_000
BODY_TIMEOUT_S = 4.0
#: Generous: the machine is small and shared; a stuck server takes far longer.
P99_BOUND_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("hostile") / "data"
    # No worker processes: the attacks are on the HTTP layer and the builds, which run in the server process,
    # and two idle workers would only take memory and CPU from the builds. One build slot, and a short wait
    # for it: a flood of three builds is one build and two refusals.
    extra = ("--max-in-flight-bytes", str(IN_FLIGHT_LIMIT), "--body-timeout", str(BODY_TIMEOUT_S), "--workers", "0",
             "--max-concurrent-builds", "1", "--build-queue-timeout", "2")  # fmt: skip
    with ServerProcess(data, extra=extra) as server:
        yield server


class Probe:
    """``GET /`` in a loop from its own client while an attack runs; the latencies it saw."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get("/").status_code
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                self.latencies.append(time.perf_counter() - started)
                if status != 200:
                    self.failures.append(f"GET / answered {status}")
                self._stop.wait(0.02)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@contextlib.contextmanager
def attack(server: ServerProcess, name: str) -> Iterator[Probe]:
    with Probe(server.url) as probe:
        yield probe
    assert not probe.failures, probe.failures[:5]
    assert len(probe.latencies) >= 5, f"{name}: only {len(probe.latencies)} probes answered"
    p99 = probe.p99()
    print(f"\n[{name}] GET / during the attack: {len(probe.latencies)} requests, p99 {p99 * 1000:.1f} ms, "
          f"max {max(probe.latencies) * 1000:.1f} ms")  # fmt: skip
    assert p99 < P99_BOUND_S, f"{name}: p99 of GET / was {p99:.2f} s"


def raw_request(server: ServerProcess, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(head.encode())
    return sock


def read_response(sock: socket.socket, timeout: float) -> bytes:
    """What the server answered, until it closes or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data and b'"status"' in data:
            break
    return data


def put_head(path: str, length: int, content_type: str = "application/json") -> str:
    return (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )


def node_stats(server: ServerProcess) -> dict[str, object]:
    (node,) = httpx.get(f"{server.url}/_nodes/stats", timeout=10).json()["nodes"].values()
    return dict(node)


# --------------------------------------------------------------------------------------------- attacks


def put_flood(server: ServerProcess, i: int, timeout: float) -> httpx.Response:
    """PUT version ``1.0.i`` of the flood UDF, whose source is its own for each ``i`` (a build of its own)."""
    source = f"def process(value, params, meta):\n    return {{'flood': {i}}}\n"
    return httpx.put(f"{server.url}/_udf/flood/1.0.{i}", content=source, headers=PYTHON, timeout=timeout)


def test_a_flood_of_udf_builds_leaves_the_server_responsive(server: ServerProcess) -> None:
    answers: dict[int, httpx.Response] = {}

    def build(i: int) -> None:
        answers[i] = put_flood(server, i, timeout=500)

    with attack(server, "udf build flood"):
        threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=520)
    # Built, or refused as too many at once (one slot, a 2 s wait for it; a build takes seconds): never a 5xx.
    statuses = sorted(response.status_code for response in answers.values())
    assert len(statuses) == 3 and set(statuses) <= {201, 429} and statuses[0] == 201, statuses
    for response in answers.values():
        if response.status_code == 429:
            assert response.json()["error"]["type"] == "es_rejected_execution_exception", response.text
    # What was built runs, and the same source again is acknowledged without another build.
    built = next(i for i, response in answers.items() if response.status_code == 201)
    run = httpx.post(f"{server.url}/_udf/flood/_execute", json={"version": f"1.0.{built}", "input": {}}, timeout=60)
    assert run.status_code == 200 and run.json()["raw"] == {"flood": built}, run.text
    started = time.monotonic()
    again = put_flood(server, built, timeout=60)
    assert again.status_code == 200, again.text
    assert time.monotonic() - started < 2, "the same source again must not be built again"


def test_bodies_in_flight_past_the_breaker_are_429_and_released(server: ServerProcess) -> None:
    holders: list[socket.socket] = []
    with attack(server, "oversized bodies in flight"):
        # Two requests each hold 800 kB of a 900 kB body: 1.6 MB of the 2 MB in flight.
        for i in range(2):
            sock = raw_request(server, put_head(f"/flood/_doc/{i}", 900_000))
            sock.sendall(b'{"t": "' + b"x" * 799_993)
            holders.append(sock)
        time.sleep(0.5)
        third = raw_request(server, put_head("/flood/_doc/3", 900_000))
        answer = b""
        with contextlib.suppress(OSError):
            for _ in range(14):
                readable, _, _ = select.select([third], [], [], 0)
                if readable:
                    break
                third.sendall(b"x" * 64_000)
        answer = read_response(third, 10)
        third.close()
        assert b" 429 " in answer.split(b"\r\n", 1)[0], answer[:300]
        assert b"circuit_breaking_exception" in answer
        # The two holders stall: the read deadline answers them 408 and their bytes are released.
        for sock in holders:
            stalled = read_response(sock, BODY_TIMEOUT_S + 10)
            assert b" 408 " in stalled.split(b"\r\n", 1)[0], stalled[:300]
            assert b"request_timeout_exception" in stalled
            sock.close()
    deadline = time.monotonic() + 10
    while node_stats(server)["breakers"]["in_flight_requests"]["estimated_size_in_bytes"] != 0:  # type: ignore[index]
        assert time.monotonic() < deadline, node_stats(server)
        time.sleep(0.1)
    assert httpx.put(f"{server.url}/flood", json={}, timeout=30).status_code in {200, 400}
    assert httpx.put(f"{server.url}/flood/_doc/ok", json={"t": "small"}, timeout=30).status_code == 201




def repeated(seconds: float, send: Callable[[], httpx.Response]) -> list[tuple[httpx.Response, float]]:
    """``send()`` again and again for ``seconds`` (a quick refusal is an attack only when repeated)."""
    answers = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.perf_counter()
        response = send()
        answers.append((response, time.perf_counter() - started))
    return answers


def test_a_yaml_bomb_is_refused_quickly(server: ServerProcess) -> None:
    with attack(server, "YAML bomb"), httpx.Client(base_url=server.url, timeout=60) as client:
        answers = repeated(2.0, lambda: client.put("/_pipeline/bomb", content=BILLION_LAUGHS,
                                                   headers={"content-type": "application/yaml"}))  # fmt: skip
    for response, took in answers:
        assert response.status_code == 400, response.text[:300]
        assert response.json()["error"]["type"] in {"parse_exception", "illegal_argument_exception"}
        assert took < 5, f"the YAML bomb took {took:.1f} s to refuse"
    assert httpx.get(f"{server.url}/_pipeline/bomb", timeout=10).status_code == 404


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/_pipeline/deep", "application/json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        ("/_pipeline/deep", "application/yaml", b"[" * 100_000 + b"]" * 100_000),
        ("/deep/_doc/1", "application/json", b"[" * 200_000 + b"]" * 200_000),
        ("/deep/_search", "application/json", b'{"query": ' * 50_000 + b"{}" + b"}" * 50_000),
    ],
    ids=["pipeline-json", "pipeline-yaml", "document", "search"],
)
def test_deeply_nested_bodies_are_400(server: ServerProcess, path: str, content_type: str, body: bytes) -> None:
    method = "POST" if path.endswith("_search") else "PUT"
    with attack(server, f"deep nesting ({path}, {content_type})"), httpx.Client(base_url=server.url) as client:
        answers = repeated(2.0, lambda: client.request(method, path, content=body,
                                                       headers={"content-type": content_type}, timeout=60))  # fmt: skip
    for response, _took in answers:
        # 404: the index does not exist, which is checked after the body parsed (or failed to).
        assert response.status_code in {400, 404}, response.text[:300]
        assert response.json()["status"] == response.status_code


def test_slowloris_sockets_do_not_stop_other_clients(server: ServerProcess) -> None:
    slow_heads: list[socket.socket] = []
    slow_bodies: list[socket.socket] = []
    with attack(server, "slowloris"):
        for i in range(20):
            slow_heads.append(raw_request(server, f"GET /_cat/indices?i={i} HTTP/1.1\r\nHost: 127.0.0.1\r\n"))
        for i in range(10):
            sock = raw_request(server, put_head(f"/slow/_doc/{i}", 10_000))
            sock.sendall(b'{"t": "')
            slow_bodies.append(sock)
        # A header byte now and then keeps the slow heads alive.
        for _ in range(6):
            for sock in slow_heads:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
            time.sleep(0.5)
        answers = [read_response(sock, BODY_TIMEOUT_S + 10) for sock in slow_bodies]
    for answer in answers:
        assert b" 408 " in answer.split(b"\r\n", 1)[0], answer[:300]
    for sock in slow_heads + slow_bodies:
        sock.close()
    assert httpx.get(f"{server.url}/", timeout=10).status_code == 200


def test_the_server_log_has_no_unexpected_errors(server: ServerProcess, tmp_path: Path) -> None:
    """After every attack: no request ended in an unexpected exception."""
    assert node_stats(server)["http"] == {"unexpected_errors": 0}, server.output()[-3000:]
