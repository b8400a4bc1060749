"""The UDF store (issue 10): a version is registered only once it loads, versions as users expect, bounded
builds, and nothing left behind by a failed or deleted version.

Real components from the session's build cache run in real wasmtime; a fake builder appears only where the
test is about the store's own bookkeeping around a build (the queue), beside the real builds of
``test_udf_build.py``.
"""

from __future__ import annotations

import gc
import hashlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from quidditch_pipeline import DefinitionError, NotFoundError, PipelineService
from quidditch_pipeline.errors import (
    ConflictError,
    PayloadTooLargeError,
    RejectedExecutionError,
    UdfBuildError,
    UdfLoadError,
)
from quidditch_pipeline.registry import Registry
from quidditch_pipeline.storage import MemoryStorage
from quidditch_pipeline.udf import ArtifactStore, BuildLimits, UdfRuntime, UdfStore, build_component
from quidditch_pipeline.udf.store import UdfCatalog

from .udf_fixtures import BuiltUdf, UdfBuilds

# A WebAssembly core module (not a component), an empty component (valid, but of another world: it exports
# nothing), and bytes that only start like WebAssembly.
CORE_MODULE = b"\0asm\x01\0\0\0"
EMPTY_COMPONENT = b"\0asm\x0d\0\x01\0"
GARBAGE = b"\0asm" + b"\xff" * 64


@pytest.fixture
def svc(tmp_path: Path, udf_runtime: UdfRuntime) -> Iterator[PipelineService]:
    with PipelineService(MemoryStorage(), tmp_path / "udfs", runtime=udf_runtime) as service:
        yield service


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# -- a version is registered only once it loads -------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (GARBAGE, "cannot compile"),
        (CORE_MODULE, "cannot compile"),
        (EMPTY_COMPONENT, "is not a UDF: it does not export `run-batch`"),
    ],
    ids=["garbage", "core-module", "other-world"],
)
def test_a_component_that_does_not_load_leaves_no_version_and_the_corrected_upload_succeeds(
    svc: PipelineService, tmp_path: Path, hostile_udf: BuiltUdf, body: bytes, why: str
) -> None:
    with pytest.raises(UdfLoadError) as info:
        svc.put_udf("broken", "1.0.0", body)
    assert info.value.status == 400
    assert "UDF [broken] version [1.0.0] does not load" in info.value.message
    assert why in info.value.message
    # No ghost: no version, no latest, no artifact, no compiled form.
    with pytest.raises(NotFoundError):
        svc.udf_versions("broken")
    with pytest.raises(NotFoundError):
        svc.udfs.resolve("broken", None)
    assert leftovers(tmp_path / "udfs") == []
    compiled = svc.runtime.compiled_path(hashlib.sha256(body).hexdigest())
    assert compiled is not None and not compiled.exists()
    # Immutability does not lock the failed attempt in: the right component under the same version is taken.
    put = svc.put_udf("broken", "1.0.0", hostile_udf.wasm)
    assert (put["created"], put["sha256"]) == (True, hostile_udf.sha256)
    assert svc.udf_versions("broken") == ["1.0.0"]


def test_a_failed_load_keeps_the_versions_that_were_there(svc: PipelineService, hostile_udf: BuiltUdf) -> None:
    svc.put_udf("f", "1.0.0", hostile_udf.wasm)
    with pytest.raises(UdfLoadError):
        svc.put_udf("f", "2.0.0", EMPTY_COMPONENT)
    assert svc.udf_versions("f") == ["1.0.0"]
    assert svc.udf_info("f")["latest"] == "1.0.0"


def test_an_upload_over_the_size_limit_is_refused(
    tmp_path: Path, udf_runtime: UdfRuntime, hostile_udf: BuiltUdf
) -> None:
    limits = BuildLimits(max_component_mb=4)
    with PipelineService(MemoryStorage(), tmp_path / "udfs", runtime=udf_runtime, udf_build_limits=limits) as svc:
        with pytest.raises(PayloadTooLargeError, match=r"UDF \[big\] version \[1.0.0\].* over the limit of 4 MiB"):
            svc.put_udf("big", "1.0.0", hostile_udf.wasm)
        assert leftovers(tmp_path / "udfs") == []


# -- semantic versions ---------------------------------------------------------------------------------


def test_a_pre_release_never_becomes_latest_while_a_release_exists(
    svc: PipelineService, hostile_udf: BuiltUdf
) -> None:
    svc.put_udf("f", "2.0.0-rc.1", hostile_udf.wasm)
    assert svc.udfs.resolve("f", None).version == "2.0.0-rc.1"  # no release yet: the pre-release is all there is
    svc.put_udf("f", "1.0.0", hostile_udf.wasm)
    svc.put_udf("f", "1.1.0-beta.2", hostile_udf.wasm)
    assert svc.udf_versions("f") == ["1.0.0", "1.1.0-beta.2", "2.0.0-rc.1"]
    assert svc.udfs.resolve("f", None).version == "1.0.0"
    assert svc.udf_info("f")["latest"] == "1.0.0"
    assert svc.list_udfs()["udfs"] == [{"name": "f", "versions": svc.udf_versions("f"), "latest": "1.0.0"}]
    assert svc.udfs.resolve("f", "2.0.0-rc.1").version == "2.0.0-rc.1"  # pinned explicitly
    svc.put_udf("f", "2.0.0", hostile_udf.wasm)
    assert svc.udfs.resolve("f", None).version == "2.0.0"


@pytest.mark.parametrize("version", ["1.0.0+build.7", "1.0.0-rc.1+sha.5"])
def test_build_metadata_cannot_make_a_second_version(
    svc: PipelineService, hostile_udf: BuiltUdf, version: str
) -> None:
    svc.put_udf("f", "1.0.0", hostile_udf.wasm)
    with pytest.raises(DefinitionError, match=r"version: .*carries build metadata") as info:
        svc.put_udf("f", version, hostile_udf.wasm)
    assert info.value.status == 400
    assert svc.udf_versions("f") == ["1.0.0"]


@pytest.mark.parametrize(("name", "version"), [("f\n", "1.0.0"), ("f", "1.0.0\n"), ("f", " 1.0.0")])
def test_names_and_versions_are_matched_whole(
    svc: PipelineService, hostile_udf: BuiltUdf, name: str, version: str
) -> None:
    with pytest.raises(DefinitionError):
        svc.put_udf(name, version, hostile_udf.wasm)
    assert svc.list_udfs()["total"] == 0


# -- bounded builds --------------------------------------------------------------------------------------


def catalog() -> UdfCatalog:
    """The registry is the store's catalog; in memory here."""
    return Registry(MemoryStorage())


def test_builds_beyond_the_limit_wait_briefly_then_are_refused_with_429(
    tmp_path: Path, udf_runtime: UdfRuntime, hostile_udf: BuiltUdf
) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow_builder(source: str, **_: Any) -> bytes:
        started.set()
        release.wait(10)
        return hostile_udf.wasm

    limits = BuildLimits(max_concurrent=1, queue_timeout_s=0.3)
    store = UdfStore(catalog(), ArtifactStore(tmp_path / "udfs"), udf_runtime, limits=limits, builder=slow_builder)
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(store.put("a", "1.0.0", "def process(v, p): return v")))
    first.start()
    assert started.wait(10)
    began = time.monotonic()
    with pytest.raises(RejectedExecutionError) as info:
        store.put("b", "1.0.0", "def process(v, p): return None")
    waited = time.monotonic() - began
    assert (info.value.status, info.value.error_type) == (429, "es_rejected_execution_exception")
    assert "UDF [b] version [1.0.0]: 1 UDF builds are running" in info.value.message
    assert 0.25 <= waited < 2.0
    release.set()
    first.join(10)
    assert results and results[0].created
    # The slot is free again: the next build goes ahead.
    assert store.put("b", "1.0.0", "def process(v, p): return None").created


def test_a_different_source_for_an_existing_version_is_refused_before_any_build(
    tmp_path: Path, udf_runtime: UdfRuntime, hostile_udf: BuiltUdf
) -> None:
    builds: list[str] = []

    def builder(source: str, **_: Any) -> bytes:
        builds.append(source)
        return hostile_udf.wasm

    store = UdfStore(catalog(), ArtifactStore(tmp_path / "udfs"), udf_runtime, builder=builder)
    store.put("a", "1.0.0", "def process(v, p): return v")
    with pytest.raises(ConflictError, match="versions are immutable"):
        store.put("a", "1.0.0", "def process(v, p): return None")
    assert len(builds) == 1


def test_a_build_killed_midway_leaves_nothing_and_the_next_build_succeeds(
    tmp_path: Path, udf_runtime: UdfRuntime, udf_builds: UdfBuilds, hostile_udf: BuiltUdf
) -> None:
    """The Proof of issue 10: a worker thread's build killed mid-way (its componentize-py process killed).

    The killed build is a real one; the next build of the same source comes from the session's cache (the
    hostile UDF's: built once for the suite), since what is under test is the store after the kill. With one
    build slot, a slot the killed build kept would refuse the next build with a 429."""
    source = hostile_udf.source
    builds = 0

    def builder(source: str, **options: Any) -> bytes:
        nonlocal builds
        builds += 1
        return build_component(source, **options) if builds == 1 else udf_builds.build("hostile", source).wasm

    limits = BuildLimits(max_concurrent=1, queue_timeout_s=1)
    store = UdfStore(catalog(), ArtifactStore(tmp_path / "udfs"), udf_runtime, limits=limits, builder=builder)
    errors: list[BaseException] = []

    def put() -> None:
        try:
            store.put("victim", "1.0.0", source)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    me = psutil.Process()
    worker = threading.Thread(target=put)
    worker.start()
    deadline = time.monotonic() + 60
    killed = False
    while not killed and time.monotonic() < deadline:
        for child in me.children(recursive=True):
            if is_build_of(child, source):  # not a build the session's cache may be running beside it
                time.sleep(0.5)  # let it get going
                child.kill()
                killed = True
                break
        time.sleep(0.05)
    worker.join(120)
    assert killed and len(errors) == 1
    assert isinstance(errors[0], UdfBuildError)
    assert "killed by SIGKILL" in errors[0].message
    assert store.versions("victim") == []
    assert leftovers(tmp_path / "udfs") == []
    assert not [c for c in me.children(recursive=True) if is_build_of(c, source)]
    again = store.put("victim", "1.0.0", source)
    assert again.created and store.versions("victim") == ["1.0.0"] and builds == 2


def is_build_of(process: psutil.Process, source: str) -> bool:
    """Whether ``process`` is componentize-py building ``source`` (build.py writes it to its ``app`` folder)."""
    try:
        command = process.cmdline()
    except psutil.NoSuchProcess:
        return False
    if not any("componentize_py" in part for part in command) or "--python-path" not in command:
        return False
    app = Path(command[command.index("--python-path") + 1])
    try:
        return (app / "udf_source.py").read_text(encoding="utf-8") == source
    except OSError:
        return False


# -- nothing leaks -----------------------------------------------------------------------------------------


def with_custom_section(wasm: bytes, payload: bytes) -> bytes:
    """``wasm`` plus a custom section (id 0): a different sha256, the same component."""
    name = b"qp-test"
    body = _leb128(len(name)) + name + payload
    return wasm + b"\x00" + _leb128(len(body)) + body


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_a_deleted_version_releases_its_component_unless_another_version_shares_it(
    svc: PipelineService, hostile_udf: BuiltUdf, tmp_path: Path
) -> None:
    svc.put_udf("f", "1.0.0", hostile_udf.wasm)
    svc.put_udf("g", "1.0.0", hostile_udf.wasm)  # the same component under another name
    svc.delete_udf("f", "1.0.0")
    assert hostile_udf.sha256 in svc.runtime._components  # still used by g
    assert leftovers(tmp_path / "udfs") == [f"{hostile_udf.sha256}.wasm"]
    svc.delete_udf("g", "1.0.0")
    assert hostile_udf.sha256 not in svc.runtime._components
    assert leftovers(tmp_path / "udfs") == []


#: Versions put and deleted, and after how many the resident memory is first measured (the runtime's pools, the
#: allocator's arenas and SQLite's cache are warm by then). A version that stayed resident would keep at least its
#: component's bytes (~18 MiB) or its instance's linear memory (16 MiB), so every cycle after the first
#: measurement may add at most what 200 MiB over 180 cycles allowed: ~1.1 MiB.
VERSIONS, WARM_AFTER = 70, 10
GROWTH_PER_VERSION = (200 << 20) // 180


def test_putting_and_deleting_versions_keeps_resident_memory_bounded(
    tmp_path: Path, seeded_cache: Path, hostile_udf: BuiltUdf, record_property: Any
) -> None:
    """Each version is a distinct component (the hostile one plus a custom section), really loaded: its
    compiled form mapped back from the cache (seeded per sha256 from the one compile of the session, so the
    test pays no compile of its own), instantiated, called once, then deleted."""
    compiled = next(seeded_cache.glob(f"{hostile_udf.sha256}-*.cwasm"))
    base = hostile_udf.wasm
    rss: dict[int, int] = {}
    process = psutil.Process()
    udfs = tmp_path / "udfs"
    with PipelineService(MemoryStorage(), udfs, compiled_cache_dir=seeded_cache, pool_size=1) as svc:
        for i in range(VERSIONS):
            wasm = with_custom_section(base, i.to_bytes(4, "big"))
            sha = hashlib.sha256(wasm).hexdigest()
            cache = svc.runtime.compiled_path(sha)
            assert cache is not None
            shutil.copyfile(compiled, cache)
            version = f"1.0.{i}"
            assert svc.put_udf("leak", version, wasm)["created"]
            assert svc.execute_udf("leak", {"n": i}, version=version, params={"do": "echo"})["raw"] == {"n": i}
            svc.delete_udf("leak", version)
            cache.unlink()
            if i + 1 in (WARM_AFTER, VERSIONS):
                gc.collect()
                rss[i + 1] = process.memory_info().rss
        assert svc.runtime.stats().loaded == 0
        assert leftovers(udfs) == []
    growth = rss[VERSIONS] - rss[WARM_AFTER]
    cycles = VERSIONS - WARM_AFTER
    record_property(f"rss_after_{WARM_AFTER}_mib", rss[WARM_AFTER] / (1 << 20))
    record_property(f"rss_after_{VERSIONS}_mib", rss[VERSIONS] / (1 << 20))
    print(f"RSS after {WARM_AFTER} versions {rss[WARM_AFTER] / (1 << 20):.0f} MiB, "
          f"after {VERSIONS} {rss[VERSIONS] / (1 << 20):.0f} MiB")  # fmt: skip
    assert growth < cycles * GROWTH_PER_VERSION, (
        f"resident memory grew by {growth / (1 << 20):.0f} MiB over {cycles} put+delete cycles"
    )


def test_a_call_error_names_the_udf(svc: PipelineService, hostile_udf: BuiltUdf) -> None:
    svc.put_udf("spinner", "1.0.0", hostile_udf.wasm)
    out = svc.execute_udf("spinner", {}, params={"do": "loop"})
    assert out["status"] == "failed" and out["error"]["type"] == "timeout"
    assert out["error"]["reason"].startswith("UDF [spinner@1.0.0] the UDF was preempted at its deadline")
