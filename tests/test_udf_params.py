"""Params cross to a UDF instance once: big ones apart from the batch and only when they change, small ones
inside every batch (see ``wit/udf.wit``). Either way each call gets params of its own, as if decoded anew.

The test UDF runs in source mode: the guest shim that receives the params is the same module in a component
and in the shared interpreter, so the session builds no component for these tests.
"""

from __future__ import annotations

import marshal
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from quidditch_pipeline.errors import UdfCallError
from quidditch_pipeline.udf import UdfRuntime
from quidditch_pipeline.udf import runtime as runtime_module

from .udf_fixtures import BuiltUdf, UdfSources

# Changes its params in the ways a UDF might, and shows the params each call got.
PARAMS_SOURCE = '''\
"""Test UDF: value picks what to do with params; returns the params it saw (after doing it)."""
import sys

KEPT = []


def _down(n):
    return _down(n + 1)


def process(value, params):
    if value == "mutate":
        params["added"] = True
        params.pop("n", None)
        for words in params["table"].values():
            words.append("changed")
    elif value == "keep":
        KEPT.append(params["table"])
    elif value == "change_kept":
        for table in KEPT:
            table["kept"] = ["changed"]
            table["w0"].append("changed")
    elif value == "depth":
        deep, depth = params["deep"], 0
        while deep:
            deep, depth = deep[0], depth + 1
        return depth
    elif value == "trap":
        sys.setrecursionlimit(10**6)
        _down(0)
    return params
'''


def table(words: int) -> dict[str, Any]:
    """Params as a stage has them: parsed from JSON (keys shared, as orjson caches them)."""
    entries = {f"w{i}": [f"s{i}", f"t{i}"] for i in range(words)}
    return dict(orjson.loads(orjson.dumps({"table": entries, "n": 1, "ratio": 1.0, "flag": True, "none": None})))


SMALL = table(2)
BIG = table(60)


@pytest.fixture(scope="module")
def params_udf(udf_sources: UdfSources) -> BuiltUdf:
    return udf_sources.build("params", PARAMS_SOURCE)


@pytest.fixture
def runtime(udf_runtime: UdfRuntime, params_udf: BuiltUdf) -> Iterator[UdfRuntime]:
    """A runtime with one instance per UDF, so that every call lands on the instance of the call before."""
    udf_runtime.load(params_udf.sha256, params_udf.path)  # the interpreter compiled once, into its folder
    with UdfRuntime(udf_runtime.cache_dir, interpreter_dir=udf_runtime.interpreter_dir, pool_size=1) as runtime:
        yield runtime


def call(runtime: UdfRuntime, udf: BuiltUdf, values: list[Any], params: dict[str, Any]) -> list[Any]:
    results = runtime.call_batch(udf.sha256, udf.path, values, params, None, timeout_s=5.0)
    assert all(r.ok for r in results), [r.error for r in results]
    return [r.value for r in results]


def sent_last(runtime: UdfRuntime, udf: BuiltUdf) -> bytes:
    """The params the (only) instance of ``udf`` was sent apart from a batch last."""
    [instance] = runtime._components[udf.sha256].pool._idle
    return instance._params


def test_small_params_cross_inside_the_batch_and_big_ones_apart() -> None:
    assert len(marshal.dumps(SMALL)) < runtime_module._PARAMS_APART <= len(marshal.dumps(BIG))
    apart, batch = runtime_module._encode_request(SMALL, ["v"], None, 100)
    assert apart == b""
    assert marshal.loads(batch.decode().encode("latin-1")) == (SMALL, ["v"], None, 100)
    apart, batch = runtime_module._encode_request(BIG, ["v"], None, 100)
    assert marshal.loads(apart) == BIG
    assert marshal.loads(batch.decode().encode("latin-1")) == (None, ["v"], None, 100)


def test_a_batch_marshalled_apart_keeps_its_back_references_behind_the_params() -> None:
    # Keys parsed by orjson are one object per name, so the batch refers back to them: the parts put in
    # front of it (header, params) must not shift those references.
    values = orjson.loads(orjson.dumps([{"title": "a", "tags": ["x"]}, {"title": "b", "tags": ["y"]}]))
    metas = [{"id": "1", "index": "i"}, {"id": "2", "index": "i"}]
    apart, batch = runtime_module._encode_request(BIG, values, metas, 100)
    same = runtime_module._SAME_PARAMS + batch
    fresh = runtime_module._REQUEST_HEADER + runtime_module._wire(marshal.dumps(apart, 2)) + batch
    for payload, sent in ((same, None), (fresh, apart)):
        assert marshal.loads(payload.decode().encode("latin-1")) == (sent, (None, values, metas, 100))


@pytest.mark.parametrize("params", [SMALL, BIG], ids=["small", "big"])
def test_what_a_udf_does_to_its_params_stays_in_its_call(
    runtime: UdfRuntime, params_udf: BuiltUdf, params: dict[str, Any]
) -> None:
    # The first call with params decodes them, the second and later ones take the guest's copy of them.
    for _ in range(3):
        [changed] = call(runtime, params_udf, ["mutate"], params)
        assert changed["added"] is True and "n" not in changed
        assert all(words[-1] == "changed" for words in changed["table"].values())
        assert call(runtime, params_udf, ["echo"], params) == [params]
    after = call(runtime, params_udf, ["echo"], params)[0]
    assert after == params
    assert [type(after[key]) for key in ("n", "ratio", "flag")] == [int, float, bool]
    assert sent_last(runtime, params_udf) == (marshal.dumps(params) if params is BIG else b"")


def test_params_a_udf_kept_from_an_earlier_call_are_not_the_next_calls(
    runtime: UdfRuntime, params_udf: BuiltUdf
) -> None:
    for _ in range(3):
        call(runtime, params_udf, ["keep"], BIG)
    assert call(runtime, params_udf, ["change_kept", "echo"], BIG)[1] == BIG
    assert call(runtime, params_udf, ["echo"], BIG) == [BIG]


def test_other_params_are_sent_and_then_kept(runtime: UdfRuntime, params_udf: BuiltUdf) -> None:
    other = table(80)
    for params in (BIG, BIG, other, other, BIG, SMALL, BIG, other):
        assert call(runtime, params_udf, ["echo"], params) == [params]
    assert sent_last(runtime, params_udf) == marshal.dumps(other)


def test_params_that_grew_since_they_were_found_small_still_arrive_whole(
    runtime: UdfRuntime, params_udf: BuiltUdf
) -> None:
    params = dict(SMALL)
    assert call(runtime, params_udf, ["echo"], params) == [params]
    params["table"] = BIG["table"]  # the same object, now big: measured once, it keeps crossing in the batch
    assert call(runtime, params_udf, ["echo"], params) == [params]
    assert call(runtime, params_udf, ["echo"], dict(params)) == [params]  # another object: measured, sent apart
    assert sent_last(runtime, params_udf) == marshal.dumps(params)


def test_params_that_cannot_be_copied_are_decoded_again(runtime: UdfRuntime, params_udf: BuiltUdf) -> None:
    deep: list[Any] = []
    for _ in range(1200):  # past the guest's recursion limit (1000), not past what marshal reads there (~1500)
        deep = [deep]
    for params in ({"deep": deep}, {"deep": [[]], "pair": (1, [2]), "pad": "x" * 300}):
        for _ in range(3):
            assert call(runtime, params_udf, ["depth"], params) == [1200 if len(params) == 1 else 1]


def test_a_replaced_instance_is_sent_the_params_again(runtime: UdfRuntime, params_udf: BuiltUdf) -> None:
    call(runtime, params_udf, ["echo"], BIG)
    with pytest.raises(UdfCallError, match="call stack exhausted"):
        call(runtime, params_udf, ["trap"], BIG)
    assert call(runtime, params_udf, ["echo"], BIG) == [BIG]
    assert runtime.stats().instances_discarded == 1


def test_an_instance_asked_for_params_it_was_never_sent_fails_the_call(
    runtime: UdfRuntime, params_udf: BuiltUdf
) -> None:
    runtime.load(params_udf.sha256, params_udf.path)
    pool = runtime._components[params_udf.sha256].pool
    instance = pool.acquire(runtime.memory_limit_bytes, runtime.max_wait_s)
    apart, batch = runtime_module._encode_request(BIG, ["echo"], None, 100)
    instance._params = apart  # as if it had been sent them: the request carries None in their place
    raw = instance.call(apart, batch, runtime_module._NO_DEADLINE)
    pool.discard(instance)
    with pytest.raises(UdfCallError, match="never sent to this instance"):
        runtime_module._decode_response(raw, 1, runtime.memory_limit_bytes)
