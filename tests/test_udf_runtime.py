"""The wasmtime runtime: compile cache, single-flight loads, instance pools, limits, raw per-item results.

Most tests share the session's runtime and the ``hostile`` test UDF (see udf_fixtures.py); a test that needs
its own runtime gives it a cache seeded with the session's compiled component (``seeded_cache``), so that
only the test about recompiling a corrupt cache pays for a compile. Every test of calls runs in both modes:
the UDF as a component of its own, and its source on the shared interpreter; the tests of a component's own
compile cache run on the component.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import wasmtime

from quidditch_pipeline.errors import InputError, UdfLoadError, UdfMemoryError, UdfTimeoutError
from quidditch_pipeline.udf import ABI, UdfItemError, UdfItemResult, UdfRuntime
from quidditch_pipeline.udf import runtime as runtime_module

from .udf_fixtures import BuiltUdf, interpreter_dir

UDF_DIR = Path(runtime_module.__file__).parent


def call(runtime: UdfRuntime, udf: BuiltUdf, values: list[Any], timeout_s: float | None = 5.0, **params: Any) -> Any:
    metas = [{"id": str(i), "index": "test"} for i in range(len(values))]
    return runtime.call_batch(udf.sha256, udf.path, values, params, metas, timeout_s=timeout_s)


@pytest.fixture(params=["component", "source"])
def hostile_udf(request: pytest.FixtureRequest) -> BuiltUdf:
    udf: BuiltUdf = request.getfixturevalue(f"hostile_{request.param}_udf")
    return udf


@pytest.fixture
def small_pool(seeded_cache: Path) -> Iterator[UdfRuntime]:
    with UdfRuntime(seeded_cache, interpreter_dir=interpreter_dir(), pool_size=2) as runtime:
        yield runtime


# -- compiling, caching, loading --------------------------------------------------------------------


def test_a_second_runtime_maps_the_compiled_component_back(seeded_cache: Path, hostile_udf: BuiltUdf) -> None:
    with UdfRuntime(seeded_cache, interpreter_dir=interpreter_dir()) as runtime:
        started = time.perf_counter()
        runtime.load(hostile_udf.sha256, hostile_udf.path)
        took = time.perf_counter() - started
        stats = runtime.stats()
    assert (stats.compiles, stats.cache_loads, stats.instances_created) == (0, 1, 1)
    assert took < 1.0  # ~5 ms on a quiet machine: deserialize_file maps the file


def test_concurrent_loads_load_once(seeded_cache: Path, hostile_udf: BuiltUdf) -> None:
    with UdfRuntime(seeded_cache, interpreter_dir=interpreter_dir()) as runtime:
        start = threading.Barrier(8)

        def load() -> None:
            start.wait()
            runtime.load(hostile_udf.sha256, hostile_udf.path)

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = runtime.stats()
    assert (stats.compiles, stats.cache_loads, stats.loaded) == (0, 1, 1)


def test_a_corrupt_cache_file_is_compiled_again_once_for_concurrent_calls_in_two_runtimes(
    seeded_component_cache: Path, hostile_component_udf: BuiltUdf
) -> None:
    """Two runtimes on one cache folder (as two worker processes share one), two threads each making the first
    call at once, find the compiled file truncated: one compile in all, which every other caller maps back."""
    [compiled] = seeded_component_cache.iterdir()
    compiled.write_bytes(compiled.read_bytes()[: 1 << 20])  # truncated, as by a crash mid-write
    runtimes = [UdfRuntime(seeded_component_cache, interpreter_dir=interpreter_dir()) for _ in range(2)]
    try:
        results: list[Any] = []

        def first_call(runtime: UdfRuntime) -> None:
            # Compiling takes seconds; the call's 1 s limit starts once the UDF is loaded.
            results.append(call(runtime, hostile_component_udf, ["ok"], timeout_s=1.0, do="echo")[0].value)

        threads = [threading.Thread(target=first_call, args=(runtime,)) for runtime in runtimes for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == ["ok"] * 4
        stats = [runtime.stats() for runtime in runtimes]
        assert sorted((s.compiles, s.cache_loads) for s in stats) == [(0, 1), (1, 0)]
    finally:
        for runtime in runtimes:
            runtime.close()
    with UdfRuntime(seeded_component_cache, interpreter_dir=interpreter_dir()) as again:
        again.load(hostile_component_udf.sha256, hostile_component_udf.path)
        assert (again.stats().compiles, again.stats().cache_loads) == (0, 1)
    assert [p.name for p in seeded_component_cache.iterdir()] == [compiled.name]  # no temporary files left


def test_a_file_that_does_not_match_its_sha256_is_refused(tmp_path: Path, hostile_udf: BuiltUdf) -> None:
    with UdfRuntime(tmp_path) as runtime, pytest.raises(UdfLoadError, match="expected " + "0" * 64):
        runtime.load("0" * 64, hostile_udf.path)


def test_a_component_that_is_not_a_udf_is_refused(tmp_path: Path) -> None:
    import hashlib

    empty = bytes(wasmtime.wat2wasm("(component)"))
    path = tmp_path / "empty.wasm"
    path.write_bytes(empty)
    with UdfRuntime(tmp_path / "cache") as runtime, pytest.raises(UdfLoadError, match="not a UDF"):
        runtime.load(hashlib.sha256(empty).hexdigest(), path)


def test_a_memory_limit_below_what_the_component_starts_with_is_a_load_error(
    udf_runtime: UdfRuntime, hostile_udf: BuiltUdf
) -> None:
    with pytest.raises(UdfLoadError, match="1 MiB memory limit"):
        udf_runtime.call_batch(hostile_udf.sha256, hostile_udf.path, [1], {}, [{}], timeout_s=5, memory_limit_mb=1)


def test_guest_shim_wit_and_runtime_agree_on_the_abi() -> None:
    guest = (UDF_DIR / "guest" / "udf_guest.py").read_text()
    wit = (UDF_DIR / "wit" / "udf.wit").read_text()
    assert re.search(r'^ABI = "([^"]+)"', guest, re.M)[1] == ABI  # type: ignore[index]
    assert f"package quidditch:udf@{ABI};" in wit
    shared = (UDF_DIR / "wit_source" / "udf-source.wit").read_text()
    assert f"package quidditch:udf-source@{ABI};" in shared  # the interpreter's world: the same ABI plus load-source


# -- calls and results ------------------------------------------------------------------------------


RAW_VALUES: list[Any] = [None, True, False, 0, -3, 2.5, "text", '{"a": 1}', [1, "two"], {"a": {"b": [1, None]}}]


def test_results_are_the_raw_values_process_returned(udf_runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    results = call(udf_runtime, hostile_udf, RAW_VALUES, do="echo")
    assert results == [UdfItemResult(True, value) for value in RAW_VALUES]


def test_meta_and_params_reach_process(udf_runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    metas = call(udf_runtime, hostile_udf, ["a", "b"], do="meta")
    assert [r.value for r in metas] == [{"id": "0", "index": "test"}, {"id": "1", "index": "test"}]
    [params] = call(udf_runtime, hostile_udf, ["a"], do="params", days=7, nested={"x": [1]})
    assert params.value == {"do": "params", "days": 7, "nested": {"x": [1]}}


def test_an_empty_batch_calls_nothing(udf_runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    assert call(udf_runtime, hostile_udf, [], do="loop") == []


def test_inputs_are_given_to_the_guest_as_json_would(udf_runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    values: list[Any] = [MappingProxyType({"a": 1}), (1, 2)]
    assert [r.value for r in call(udf_runtime, hostile_udf, values, do="echo")] == [{"a": 1}, [1, 2]]
    with pytest.raises(InputError, match="JSON-serialisable"):
        call(udf_runtime, hostile_udf, [object()], do="echo")


def test_per_item_errors_leave_the_neighbours_alone(udf_runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    results = call(udf_runtime, hostile_udf, [1, 2, 3, 4], do="fail_odd")
    assert [r.ok for r in results] == [False, True, False, True]
    assert [r.value for r in results if r.ok] == [4, 8]
    assert results[0].error == UdfItemError("KeyError", "1", results[0].error.line if results[0].error else None)


# -- instances: pool, parallelism, replacement -------------------------------------------------------


def test_two_threads_calling_one_udf_run_in_parallel(udf_runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    call(udf_runtime, hostile_udf, [0], do="echo")
    start = threading.Barrier(2)

    def spin() -> None:
        start.wait()
        call(udf_runtime, hostile_udf, [0], do="spin", seconds=1.0)

    threads = [threading.Thread(target=spin) for _ in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each call spins 1 s of wall-clock time in its guest: one after the other (a GIL held during the call,
    # a shared instance) they would take 2 s. The margin absorbs a busy machine starting one thread late.
    assert time.monotonic() - started < 1.6


def test_the_pool_is_bounded_and_callers_wait_for_an_instance(small_pool: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    errors: list[BaseException] = []

    def spin() -> None:
        try:
            call(small_pool, hostile_udf, [0], do="spin", seconds=0.3)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=spin) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert time.monotonic() - started >= 0.6  # the third call waited for one of the two instances
    assert small_pool.stats().instances_created == 2


def test_waiting_for_an_instance_counts_against_the_deadline(seeded_cache: Path, hostile_udf: BuiltUdf) -> None:
    with UdfRuntime(seeded_cache, interpreter_dir=interpreter_dir(), pool_size=1) as runtime:
        runtime.load(hostile_udf.sha256, hostile_udf.path)
        busy = threading.Thread(target=call, args=(runtime, hostile_udf, [0]), kwargs={"do": "spin", "seconds": 0.5})
        busy.start()
        time.sleep(0.1)
        with pytest.raises(UdfTimeoutError, match="came free within the deadline: all 1 stayed busy"):
            call(runtime, hostile_udf, [0], timeout_s=0.1, do="echo")
        busy.join()
        assert runtime.stats().instances_discarded == 0


def test_an_instance_that_failed_is_discarded_and_replaced(small_pool: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    call(small_pool, hostile_udf, [0], do="echo")
    before = small_pool.stats()
    with pytest.raises(UdfTimeoutError):
        call(small_pool, hostile_udf, [0], timeout_s=0.05, do="loop")
    assert call(small_pool, hostile_udf, ["again"], do="echo")[0].value == "again"
    after = small_pool.stats()
    assert after.instances_discarded == before.instances_discarded + 1
    assert after.instances_created == before.instances_created + 1


def test_an_instance_serves_one_memory_limit(small_pool: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    def echo(limit: int | None) -> None:
        small_pool.call_batch(
            hostile_udf.sha256, hostile_udf.path, [1], {"do": "echo"}, [{}], timeout_s=5, memory_limit_mb=limit
        )

    echo(None)
    echo(64)
    echo(64)
    echo(None)
    assert small_pool.stats().instances_created == 2
    echo(96)  # the pool is full: an idle instance of another limit makes room
    stats = small_pool.stats()
    assert stats.instances_created == 3 and stats.instances_discarded == 0


def test_a_memory_limit_can_be_set_per_call(udf_runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    with pytest.raises(UdfMemoryError, match="48 MiB"):
        udf_runtime.call_batch(
            hostile_udf.sha256, hostile_udf.path, [0], {"do": "memory"}, [{}], timeout_s=10, memory_limit_mb=48
        )
    assert call(udf_runtime, hostile_udf, [1], do="echo")[0].value == 1


def test_unload_forgets_a_component_until_it_is_asked_for_again(small_pool: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    call(small_pool, hostile_udf, [1], do="echo")
    small_pool.unload(hostile_udf.sha256)
    assert small_pool.stats().loaded == 0
    assert call(small_pool, hostile_udf, [2], do="echo")[0].value == 2
    stats = small_pool.stats()
    assert (stats.loaded, stats.cache_loads, stats.compiles) == (1, 2, 0)


def test_close_stops_the_ticker_and_refuses_further_calls(seeded_cache: Path, hostile_udf: BuiltUdf) -> None:
    runtime = UdfRuntime(seeded_cache, interpreter_dir=interpreter_dir())
    call(runtime, hostile_udf, [1], do="echo")
    ticker = runtime._ticker
    runtime.close()
    assert not ticker.is_alive()
    with pytest.raises(UdfLoadError, match="closed"):
        call(runtime, hostile_udf, [1], do="echo")
    runtime.close()  # closing twice is harmless


def test_the_udf_package_exports_what_all_says() -> None:
    import quidditch_pipeline.udf as package

    public = {name for name, value in vars(package).items() if not name.startswith("_")}
    modules = {name for name, value in vars(package).items() if type(value).__name__ == "module"}
    assert set(package.__all__) == public - modules - {"annotations"}


# -- issue 10: no call holds an instance past max_call_ms; waits are bounded ------------------------------


def test_a_long_batch_is_cut_into_calls_that_each_fit_the_maximum(
    seeded_cache: Path, hostile_udf: BuiltUdf, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 items of 30 ms each: 600 ms of work under a 5 s budget, with calls capped at 200 ms. The batch
    succeeds whole, in several calls, none of which held the instance for longer than the maximum."""
    held: list[float] = []
    real_call = runtime_module._Instance.call

    def timed(self: Any, params: bytes, batch: bytes, ticks: int) -> bytes:
        began = time.monotonic()
        try:
            return real_call(self, params, batch, ticks)
        finally:
            held.append(time.monotonic() - began)

    with UdfRuntime(seeded_cache, interpreter_dir=interpreter_dir(), pool_size=1, max_call_ms=200) as runtime:
        call(runtime, hostile_udf, [0, 1], do="spin", seconds=0.03)  # the UDF's time per item, learnt
        monkeypatch.setattr(runtime_module._Instance, "call", timed)
        results = call(runtime, hostile_udf, list(range(20)), timeout_s=5.0, do="spin", seconds=0.03)
        assert [r.value for r in results] == list(range(20))
        assert len(held) >= 3 and max(held) < 0.2 + 0.1
        assert runtime.stats().instances_discarded == 0  # no call was preempted: each fit the maximum


def test_a_batch_slower_than_expected_is_split_when_preempted_at_the_maximum(
    seeded_cache: Path, hostile_udf: BuiltUdf
) -> None:
    with UdfRuntime(seeded_cache, interpreter_dir=interpreter_dir(), pool_size=1, max_call_ms=200) as runtime:
        call(runtime, hostile_udf, [0], do="echo")  # learnt: items are fast
        results = call(runtime, hostile_udf, list(range(12)), timeout_s=5.0, do="spin", seconds=0.04)
        assert [r.value for r in results] == list(range(12))
        assert runtime.stats().instances_discarded >= 1  # the first, too-big call was preempted and split


def test_one_item_longer_than_the_maximum_fails_alone_with_a_clear_error(
    seeded_cache: Path, hostile_udf: BuiltUdf
) -> None:
    with UdfRuntime(seeded_cache, interpreter_dir=interpreter_dir(), pool_size=1, max_call_ms=200) as runtime:
        began = time.monotonic()
        with pytest.raises(UdfTimeoutError, match=r"ran past the longest a call may hold an instance \(200 ms\)"):
            call(runtime, hostile_udf, [0], timeout_s=5.0, do="spin", seconds=1.0)
        assert time.monotonic() - began < 0.9
        assert call(runtime, hostile_udf, ["ok"], do="echo")[0].value == "ok"


def test_waiting_for_an_instance_without_a_deadline_is_bounded(seeded_cache: Path, hostile_udf: BuiltUdf) -> None:
    with UdfRuntime(seeded_cache, interpreter_dir=interpreter_dir(), pool_size=1, max_wait_ms=200) as runtime:
        runtime.load(hostile_udf.sha256, hostile_udf.path)
        busy = threading.Thread(target=call, args=(runtime, hostile_udf, [0]), kwargs={"do": "spin", "seconds": 0.6})
        busy.start()
        time.sleep(0.1)
        began = time.monotonic()
        with pytest.raises(UdfTimeoutError, match=r"no instance of UDF component [0-9a-f]{12} came free") as info:
            call(runtime, hostile_udf, [0], timeout_s=None, do="echo")
        assert info.value.kind == "timeout"
        assert time.monotonic() - began < 0.8
        busy.join()


def test_unload_can_drop_the_compiled_form(
    seeded_component_cache: Path, hostile_component_udf: BuiltUdf, tmp_path: Path
) -> None:
    cache = tmp_path / "own-cache"
    cache.mkdir()
    for compiled in seeded_component_cache.iterdir():
        (cache / compiled.name).write_bytes(compiled.read_bytes())
    with UdfRuntime(cache) as runtime:
        runtime.load(hostile_component_udf.sha256, hostile_component_udf.path)
        path = runtime.compiled_path(hostile_component_udf.sha256)
        assert path is not None and path.exists()
        runtime.unload(hostile_component_udf.sha256)
        assert path.exists() and runtime.stats().loaded == 0
        runtime.load(hostile_component_udf.sha256, hostile_component_udf.path)
        runtime.unload(hostile_component_udf.sha256, drop_compiled=True)
        assert not path.exists()
