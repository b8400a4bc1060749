"""The sandbox, proven with a hostile UDF: no files, no network, no environment; bounded time, memory, output.

Every behaviour is one branch of the ``hostile`` test UDF (udf_fixtures.py), picked by ``params["do"]``.
Every test runs in both modes: the UDF built into a component of its own, and its source on the shared
interpreter component.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from quidditch_pipeline.errors import UdfCallError, UdfMemoryError, UdfTimeoutError
from quidditch_pipeline.udf import UdfItemResult, UdfRuntime

from .udf_fixtures import HOSTILE_SOURCE, BuiltUdf, interpreter_dir, line_of


def call(runtime: UdfRuntime, udf: BuiltUdf, values: list[Any], timeout_s: float | None = 5.0, **params: Any) -> Any:
    return runtime.call_batch(udf.sha256, udf.path, values, params, [{}] * len(values), timeout_s=timeout_s)


def assert_instance_still_works(runtime: UdfRuntime, udf: BuiltUdf) -> None:
    assert call(runtime, udf, ["still here"], do="echo") == [UdfItemResult(True, "still here")]


def failed(result: UdfItemResult) -> tuple[str, str]:
    assert not result.ok and result.error is not None
    return result.error.type, result.error.message


@pytest.fixture(params=["component", "source"])
def hostile_udf(request: pytest.FixtureRequest) -> BuiltUdf:
    udf: BuiltUdf = request.getfixturevalue(f"hostile_{request.param}_udf")
    return udf


@pytest.fixture
def runtime(udf_runtime: UdfRuntime, hostile_udf: BuiltUdf) -> UdfRuntime:
    udf_runtime.load(hostile_udf.sha256, hostile_udf.path)
    return udf_runtime


# -- time -------------------------------------------------------------------------------------------


def test_an_infinite_loop_is_preempted_at_its_deadline(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    call(runtime, hostile_udf, [0], do="echo")
    overshoots = []
    for _ in range(3):
        started = time.perf_counter()
        with pytest.raises(UdfTimeoutError, match="preempted at its deadline of 50 ms"):
            call(runtime, hostile_udf, [0], timeout_s=0.05, do="loop")
        took = time.perf_counter() - started
        assert took >= 0.05
        overshoots.append(took - 0.05)
        assert_instance_still_works(runtime, hostile_udf)
    # Within the deadline plus 10 ms (one 1 ms epoch tick plus scheduling; ~1-2 ms on a quiet machine).
    # The best of three, so that one descheduling of this process by a busy CI host does not fail it.
    assert min(overshoots) < 0.010


# -- memory -----------------------------------------------------------------------------------------


def test_a_memory_bomb_hits_the_limit_and_the_host_stays_bounded(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with pytest.raises(UdfMemoryError, match=r"ran out of memory .*64 MiB"):
            runtime.call_batch(
                hostile_udf.sha256, hostile_udf.path, [0], {"do": "memory"}, [{}], timeout_s=10, memory_limit_mb=64
            )
    finally:
        done.set()
        sampler.join()
    assert (peak - baseline) < (64 + 32) << 20  # the guest's 64 MiB, plus slack for the new instance
    assert_instance_still_works(runtime, hostile_udf)


def test_a_batch_too_big_for_the_memory_limit_is_refused_before_the_call(
    runtime: UdfRuntime, hostile_udf: BuiltUdf
) -> None:
    before = runtime.stats()
    with pytest.raises(UdfMemoryError, match="cannot fit the UDF's memory limit of 64 MiB"):
        runtime.call_batch(
            hostile_udf.sha256,
            hostile_udf.path,
            ["x" * (40 << 20)],
            {"do": "none"},
            [{}],
            timeout_s=10,
            memory_limit_mb=64,
        )
    assert runtime.stats().instances_created == before.instances_created


def test_a_batch_that_fits_only_in_transit_is_a_memory_error(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    with pytest.raises(UdfMemoryError, match="ran out of memory"):
        runtime.call_batch(
            hostile_udf.sha256,
            hostile_udf.path,
            ["x" * (20 << 20)],
            {"do": "none"},
            [{}],
            timeout_s=10,
            memory_limit_mb=48 + hostile_udf.baseline_mb,
        )
    assert_instance_still_works(runtime, hostile_udf)


def test_memory_hoarded_across_calls_costs_the_instance_when_a_request_no_longer_fits(
    seeded_cache: Path, hostile_udf: BuiltUdf
) -> None:
    # Out of memory inside componentize-py's glue (taking the request in) is a trap, not a MemoryError
    # the guest could catch: the call fails as a trap, and the instance is replaced.
    limit = 48 + hostile_udf.baseline_mb
    with UdfRuntime(seeded_cache, pool_size=1, memory_limit_mb=limit, interpreter_dir=interpreter_dir()) as small:
        assert call(small, hostile_udf, [0], do="hoard", mib=46)[0].value == 1
        with pytest.raises(UdfCallError) as info:
            call(small, hostile_udf, ["x" * (10 << 20)], do="none")
        assert info.value.kind == "trap"
        assert call(small, hostile_udf, [0], do="hoard", mib=1)[0].value == 1  # a fresh instance
        assert small.stats().instances_discarded == 1


def test_deep_recursion_is_a_recursion_error_at_its_line(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    [result] = call(runtime, hostile_udf, [0], do="recursion")
    assert failed(result)[0] == "RecursionError"
    assert result.error is not None and result.error.line == line_of(HOSTILE_SOURCE, "return _recurse(n + 1)")


def test_recursion_past_the_guest_stack_traps_and_costs_only_the_instance(
    runtime: UdfRuntime, hostile_udf: BuiltUdf
) -> None:
    with pytest.raises(UdfCallError, match="call stack exhausted") as info:
        call(runtime, hostile_udf, [0], timeout_s=10, do="unbounded_recursion")
    assert info.value.kind == "trap"
    assert_instance_still_works(runtime, hostile_udf)


# -- files, network, environment ---------------------------------------------------------------------


def test_reading_etc_passwd_fails(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    [result] = call(runtime, hostile_udf, [0], do="read_file", path="/etc/passwd")
    kind, message = failed(result)
    assert kind == "FileNotFoundError"
    assert "root:" not in message


@pytest.mark.parametrize("path", ["/", ".", "/tmp", "/proc/self"])
def test_listing_directories_finds_nothing(runtime: UdfRuntime, hostile_udf: BuiltUdf, path: str) -> None:
    [result] = call(runtime, hostile_udf, [0], do="listdir", path=path)
    assert (result.ok and result.value == []) or failed(result)[0] in {"FileNotFoundError", "PermissionError"}


def test_the_environment_is_empty(runtime: UdfRuntime, hostile_udf: BuiltUdf, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QP_SANDBOX_SECRET", "hunter2")
    [result] = call(runtime, hostile_udf, [0], do="environ")
    assert result == UdfItemResult(True, {})


def test_there_is_no_network(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    [result] = call(runtime, hostile_udf, [0], do="network")
    # The interpreter's snapshot holds `socket` (standard-library modules it pre-imports import it), so in
    # source mode the import works and the sandbox's WASI, which grants no network, refuses the lookup.
    refusals = {"ModuleNotFoundError", "OSError", "PermissionError", "ConnectionRefusedError", "gaierror"}
    assert failed(result)[0] in refusals


def test_output_streams_go_nowhere_without_harm(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    assert call(runtime, hostile_udf, [0], do="print") == [UdfItemResult(True, "printed")]


def test_imports_inside_functions_were_loaded_at_build_time(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    [result] = call(runtime, hostile_udf, ["a sentence that is long"], do="late_import")
    assert result == UdfItemResult(True, "a...")


# -- raising and returning what cannot be mapped -----------------------------------------------------


def test_raising_is_a_per_item_error_with_type_message_and_line(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    before = runtime.stats().instances_discarded
    [result] = call(runtime, hostile_udf, ["x"], do="raise")
    assert failed(result) == ("ValueError", "bad value 'x'")
    assert result.error is not None and result.error.line == line_of(HOSTILE_SOURCE, "# marker: raise")
    assert runtime.stats().instances_discarded == before


def test_sys_exit_is_caught_like_any_exception(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    before = runtime.stats().instances_discarded
    results = call(runtime, hostile_udf, [0, 1], do="exit")
    assert [failed(r) for r in results] == [("SystemExit", "3")] * 2
    assert runtime.stats().instances_discarded == before


@pytest.mark.parametrize(("do", "detail"), [("unmappable", "set"), ("nan", "float")])
def test_a_value_that_is_not_json_is_unmappable(
    runtime: UdfRuntime, hostile_udf: BuiltUdf, do: str, detail: str
) -> None:
    [result] = call(runtime, hostile_udf, [0], do=do)
    kind, message = failed(result)
    assert kind == "unmappable_return_value"
    assert message.startswith(f"unmappable return value: process returned {detail}")


def test_a_value_nested_past_the_guest_stack_traps_the_call_not_the_host(
    runtime: UdfRuntime, hostile_udf: BuiltUdf
) -> None:
    assert call(runtime, hostile_udf, [0], do="nested", depth=500)[0].ok
    with pytest.raises(UdfCallError, match="call stack exhausted"):
        call(runtime, hostile_udf, [0], do="nested", depth=5000)
    assert_instance_still_works(runtime, hostile_udf)


# -- output limit -----------------------------------------------------------------------------------


def test_an_enormous_value_is_bounded_by_the_output_limit(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    assert runtime.max_output_bytes == 1 << 20
    [result] = call(runtime, hostile_udf, [0], do="big", size=4 << 20)
    kind, message = failed(result)
    assert kind == "output_too_large"
    assert "limit is 1048576" in message


def test_the_output_limit_is_a_budget_for_the_whole_call(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    results = call(runtime, hostile_udf, [0, 1, 2], do="big", size=400_000)
    assert [r.ok for r in results] == [True, True, False]
    assert failed(results[2])[0] == "output_too_large"


def test_a_udf_that_tampers_with_the_shim_costs_its_instance_only(runtime: UdfRuntime, hostile_udf: BuiltUdf) -> None:
    # The shim is Python in the same interpreter as the UDF: the host must not trust what it answers.
    # (One thread here, and the pool hands back the instance released last: the next call gets the
    # instance that was tampered with.)
    assert call(runtime, hostile_udf, [0], do="tamper", reply="not json")[0].value == "tampered"
    with pytest.raises(UdfCallError, match="not JSON") as not_json:
        call(runtime, hostile_udf, [0], do="echo")
    assert not_json.value.kind == "output"

    assert call(runtime, hostile_udf, [0], do="tamper", reply=" " * (4 << 20) + "[[null],[]]")[0].ok
    with pytest.raises(UdfCallError, match="over the output limit"):
        call(runtime, hostile_udf, [0], do="echo")

    assert call(runtime, hostile_udf, [0], do="tamper", reply="[[1, 2], [[5, 1, 2, 3]]]")[0].ok
    with pytest.raises(UdfCallError, match="malformed output"):
        call(runtime, hostile_udf, [0], do="echo")

    assert call(runtime, hostile_udf, [0], do="tamper", reply=None)[0].ok  # the shim itself now raises
    with pytest.raises(UdfCallError, match="failed with TypeError") as fatal:
        call(runtime, hostile_udf, [0], do="echo")
    assert fatal.value.kind == "trap"
    assert_instance_still_works(runtime, hostile_udf)
