"""Run UDF components in wasmtime: compile once, cache on disk, pool instances, bound time and memory.

One :class:`UdfRuntime` owns one ``wasmtime.Engine`` (epoch interruption on) and the thread that ticks its
epoch. For each component (keyed by sha256) it keeps the compiled form, serialised to
``cache_dir/<sha256>-<wasmtime version>.cwasm`` so a restart maps it back in milliseconds, and a bounded pool
of instances: a ``Store`` is not thread-safe, so an instance serves one thread at a time, and threads calling
the same UDF run in parallel on separate instances (WASM calls release the GIL).

A call crosses into the guest once per batch (see ``wit/udf.wit``). Every instance has a memory limit
(``Store.set_limits``) and every call an epoch deadline; a call that traps, is preempted at its deadline,
runs out of memory or answers garbage costs its instance, which is closed and replaced on demand.

A UDF stored as source (its artifact is Python source, not a component) runs on the shared interpreter
component (:mod:`.interpreter`): one compiled component for every such UDF, each UDF with a pool of its
own, whose instances get the UDF's source (``load-source``) once when created, bounded by ``max_call_ms``.
From then on a call is the same as into a per-UDF component.

No call holds an instance longer than ``max_call_ms``, whatever the caller's budget: a batch that would
take longer is cut into calls sized from the time the UDF has taken per item so far (a batch whose call is
preempted at that maximum is halved and the halves called again), and the instance goes back to the pool
between them. A caller waits for a free instance at most until its deadline (``max_wait_ms`` without one).

The sandbox is a WASI context that grants nothing: no preopened directory (no files), no environment, no
arguments, no network, output streams that go nowhere. Clocks and randomness stay available, and a UDF that
tries a file gets an ``OSError`` it can handle instead of a trap that would kill its instance.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import marshal
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import orjson
from wasmtime import Config, Engine, Store, WasiConfig, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import Component, ExportIndex, Func, Linker

from .._files import file_lock, write_atomically
from ..errors import InputError, UdfCallError, UdfLoadError, UdfMemoryError, UdfTimeoutError
from .interpreter import default_cache_dir, interpreter_component, keep_source

__all__ = ["ABI", "PoolState", "UdfItemError", "UdfItemResult", "UdfRuntime", "UdfRuntimeStats"]

#: The guest ABI this runtime speaks: the version of ``wit/udf.wit``, which guest/udf_guest.py reports too.
ABI = "2.0.0"
_WASMTIME_VERSION = importlib.metadata.version("wasmtime")

_RUN_EXPORT = "run-batch"
_DESCRIBE_EXPORT = "describe"
_LOAD_SOURCE_EXPORT = "load-source"
_WASM_MAGIC = b"\0asm"
_MIB = 1 << 20
# Instantiating runs the component's start code; it is quick, but must not run unbounded either.
_INSTANTIATE_S = 10.0
# What a batch's failed items may add to the output limit (type + message + line, JSON-escaped).
_ERROR_ALLOWANCE = 4096
# marshal format 4 is what every CPython from 3.4 on reads, the guest's 3.14 included.
_MARSHAL_VERSION = 4
# Params from this size on (marshalled) cross apart from the batch, and only when they are not the ones the
# instance had last; smaller ones cross inside it, which costs less than keeping track (measured with one
# query per call: 87 bytes of params ~4 us slower apart, 260 bytes even, 1.2 KB 19% and 49 KB 45% faster).
_PARAMS_APART = 256
# Params sent apart make the request the marshalled tuple (params, batch) (see wit/udf.wit), put together
# from parts marshalled apart: the tuple's header (TYPE_SMALL_TUPLE, 2 items), the params (a bytes object,
# or None: those the instance had last), then the batch. A part written before the batch must not hold
# back-references, which would shift the numbers of the batch's own: format 2 writes none.
_REQUEST_HEADER = b")\x02"
_SAME_PARAMS = _REQUEST_HEADER + marshal.dumps(None, 2)
# The linear memory a UDF instance starts with: componentize-py's CPython snapshot (199 pages, ~12.4 MiB,
# measured with componentize-py 0.25.1), rounded up.
_GUEST_BASELINE = 16 * _MIB
# The same for the shared interpreter, whose snapshot holds the pre-imported standard library too (the
# smallest limit it instantiates with measured 28 MiB), rounded up.
_INTERPRETER_BASELINE = 32 * _MIB
# A deadline no call reaches, for code that drives an _Instance directly (benchmarks/floors.py measures the
# bare call that way); call_batch always sets one of at most max_call_ms.
_NO_DEADLINE = 1 << 62
# What share of max_call_ms a batch's call is sized to take, from the UDF's time per item so far: room for
# items slower than the average before the call reaches the maximum.
_CALL_SHARE = 0.25
# Items in the first call of a batch, while the UDF's time per item is unknown (its first batch).
_PROBE_ITEMS = 16


@dataclass(frozen=True, slots=True)
class UdfItemError:
    """Why one item failed inside the guest.

    ``type`` is the exception's class name (``ValueError``), or ``unmappable_return_value`` (``process``
    returned something that is not JSON) or ``output_too_large`` (it did not fit the call's output limit).
    ``line`` is the line in the UDF's file where it was raised, when known.
    """

    type: str
    message: str
    line: int | None


@dataclass(slots=True)  # not frozen: one per item of every batch, and a frozen init costs ~3x as much
class UdfItemResult:
    """What ``process`` returned for one item (``value``, decoded from JSON), or why it failed. Read-only
    by convention: the results for None, True and False are shared."""

    ok: bool
    value: Any = None
    error: UdfItemError | None = None


_NONE = UdfItemResult(True, None)
_TRUE = UdfItemResult(True, True)
_FALSE = UdfItemResult(True, False)


@dataclass(frozen=True, slots=True)
class UdfRuntimeStats:
    """Counters since the runtime started (for tests, benchmarks and operators)."""

    compiles: int
    cache_loads: int
    instances_created: int
    instances_discarded: int
    loaded: int


@dataclass(frozen=True, slots=True)
class PoolState:
    """One loaded component's instance pool now: instances alive (``busy`` of them serving a call), threads
    waiting for one, and the bound (``pool_size``); ``source``: a UDF run from source on the interpreter."""

    sha256: str
    source: bool
    live: int
    busy: int
    waiting: int
    size: int


class _Trap(Exception):
    """A call into the guest failed inside wasmtime (trap, interrupt, exit)."""


@dataclass(frozen=True, slots=True)
class _Source:
    """A UDF's source, which each new instance of the shared interpreter loads before serving."""

    text: str
    filename: str


class _Component:
    """A compiled component: its exported function's index, its arity, and its instance pool. With
    ``source``, the shared interpreter running that source: a pool of its own, the compiled code shared."""

    def __init__(self, runtime: UdfRuntime, sha256: str, component: Component, source: _Source | None = None) -> None:
        self.sha256 = sha256
        self.component = component
        self.source = source
        self.load_index = None if source is None else component.get_export_index(_LOAD_SOURCE_EXPORT)
        self.baseline = _GUEST_BASELINE if source is None else _INTERPRETER_BASELINE
        run_index = component.get_export_index(_RUN_EXPORT)
        describe_index = component.get_export_index(_DESCRIBE_EXPORT)
        if run_index is None or describe_index is None:
            raise UdfLoadError(
                f"component {sha256[:12]} is not a UDF: it does not export `{_RUN_EXPORT}` and "
                f"`{_DESCRIBE_EXPORT}` (world quidditch:udf/udf@{ABI})"
            )
        self.run_index = run_index
        self.describe_index = describe_index
        self.arity = 0
        # Seconds per item of the calls so far (0.0: none yet); sizes the calls a long batch is cut into.
        # Written without a lock: a float assignment is atomic, and a stale value only sizes a call worse.
        self.item_s = 0.0
        self.pool = _Pool(runtime, self)
        # Instantiate once now: a component that cannot run fails at load, not on its first document.
        first = self.pool.acquire(runtime.memory_limit_bytes, runtime.max_wait_s)
        try:
            self.arity = first.describe(describe_index)
        except BaseException:
            self.pool.discard(first)
            raise
        self.pool.release(first)


class _Instance:
    """One store and one instance of a component; serves one thread at a time.

    The call path goes through wasmtime's C API directly (``wasmtime._ffi``) instead of
    ``component.Func.__call__``, which looks up the function's type and converts arguments through
    Python objects on every call: that cost ~40 us of a ~70 us call. The argument and result buffers are
    allocated once, here; a call only points the argument at the payload, calls, and copies the answer out.

    The instance remembers the params it sent last apart from a batch, which the guest keeps: a call with
    the same params sends None in their place (see ``wit/udf.wit``). A replaced instance starts without.
    """

    __slots__ = (
        "_arg_data",
        "_arg_size",
        "_args",
        "_ctx",
        "_func",
        "_func_ref",
        "_instance",
        "_params",
        "_result",
        "_result_data",
        "_result_ref",
        "_result_size",
        "_result_string_ref",
        "memory_limit",
        "store",
    )

    def __init__(self, runtime: UdfRuntime, component: _Component, memory_limit: int) -> None:
        store = Store(runtime.engine)
        # An empty WASI context: nothing preopened, no environment, no arguments, stdio to nowhere.
        store.set_wasi(WasiConfig())
        store.set_limits(memory_size=memory_limit)
        store.set_epoch_deadline(_ticks(_INSTANTIATE_S, runtime.tick_s))
        try:
            instance = runtime.linker.instantiate(store, component.component)
        except WasmtimeError as exc:
            store.close()
            raise UdfLoadError(
                f"cannot instantiate UDF component {component.sha256[:12]} with a "
                f"{memory_limit // _MIB} MiB memory limit: {_summary(str(exc))}"
            ) from exc
        func = instance.get_func(store, component.run_index)
        if func is None:
            store.close()
            raise UdfLoadError(f"component {component.sha256[:12]}: `{_RUN_EXPORT}` is not a function")
        if component.source is not None:
            try:
                _load_source(store, instance, component, runtime)
            except BaseException:
                store.close()
                raise
        self.store = store
        self.memory_limit = memory_limit
        self._instance = instance
        self._ctx = store._context()
        self._func = func
        self._func_ref = ctypes.byref(func._func)
        # Typed views of the string fields inside the argument and result values, made once: per call,
        # setting and reading them allocates nothing but the answer's bytes.
        self._args = (ffi.wasmtime_component_val_t * 1)()
        self._args[0].kind = ffi.WASMTIME_COMPONENT_STRING
        self._arg_size = ctypes.c_size_t.from_buffer(self._args, _STRING_SIZE_OFFSET)
        self._arg_data = ctypes.c_char_p.from_buffer(self._args, _STRING_DATA_OFFSET)
        self._result = ffi.wasmtime_component_val_t()
        self._result_ref = ctypes.byref(self._result)
        self._result_size = ctypes.c_size_t.from_buffer(self._result, _STRING_SIZE_OFFSET)
        self._result_data = ctypes.c_void_p.from_buffer(self._result, _STRING_DATA_OFFSET)
        self._result_string_ref = ctypes.byref(self._result.of.string)
        self._params = b""
        _check_signature(func, store, component.sha256)

    def describe(self, index: ExportIndex) -> int:
        """Ask the guest shim which ABI it speaks and the UDF's arity; refuse a mismatch."""
        # Once per component, so wasmtime-py's own (slower) call path is fine here.
        func = self._instance.get_func(self.store, index)
        if func is None:
            raise UdfLoadError(f"`{_DESCRIBE_EXPORT}` is not a function")
        try:
            answer = orjson.loads(func(self.store))
            abi, arity = answer["abi"], answer["arity"]
        except (WasmtimeError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UdfLoadError(f"the component's `{_DESCRIBE_EXPORT}` failed: {exc}") from exc
        if abi != ABI:
            raise UdfLoadError(
                f"the component speaks UDF ABI {abi}, this runtime speaks {ABI}: rebuild it with "
                "`quidditch-pipeline udf build`"
            )
        if arity not in (2, 3):
            raise UdfLoadError(f"the component reports an arity of {arity!r}; expected 2 or 3")
        return int(arity)

    def call(self, params: bytes, batch: bytes, ticks: int) -> bytes:
        """One call of ``run-batch`` with what :func:`_encode_request` made; raise :class:`_Trap` when
        wasmtime reports an error."""
        if not params:
            payload = batch
        elif params == self._params:
            payload = _SAME_PARAMS + batch
        else:
            payload = _REQUEST_HEADER + _wire(marshal.dumps(params, 2)) + batch
        # Point the argument at the payload's own buffer: the C API copies it into the guest and does not
        # keep it, and `payload` outlives the call.
        self._arg_size.value = len(payload)
        self._arg_data.value = payload
        _set_epoch_deadline(self._ctx, ticks)
        error = _func_call(self._func_ref, self._ctx, self._args, _ONE, self._result_ref, _ONE)
        if error:
            raise _Trap(str(WasmtimeError._from_ptr(ctypes.cast(error, _ERROR_PTR))))
        if params:
            self._params = params
        data = self._result_data.value
        answer = ctypes.string_at(data, self._result_size.value) if data else b""
        _byte_vec_delete(self._result_string_ref)
        return answer

    def close(self) -> None:
        self.store.close()


def _load_source(store: Store, instance: Any, component: _Component, runtime: UdfRuntime) -> None:
    """Hand a new interpreter instance its UDF's source; its module-level code runs now, within
    ``max_call_ms``. Raises :class:`UdfLoadError` naming file, line and what to change."""
    source = component.source
    assert source is not None
    func = None if component.load_index is None else instance.get_func(store, component.load_index)
    if func is None:
        raise UdfLoadError(f"the shared interpreter does not export `{_LOAD_SOURCE_EXPORT}`")
    store.set_epoch_deadline(_ticks(runtime.max_call_s, runtime.tick_s))
    try:
        answer = orjson.loads(func(store, source.text, source.filename))
    except WasmtimeError as exc:
        if "wasm trap: interrupt" in str(exc):
            raise UdfLoadError(
                f"{source.filename}: module-level code ran past {runtime.max_call_s * 1000:.0f} ms when the "
                "instance was created: move slow set-up out of import time, or precompute it into a constant"
            ) from exc
        raise UdfLoadError(f"{source.filename}: loading the source trapped: {_summary(str(exc))}") from exc
    if isinstance(answer, dict) and "fatal" in answer:
        raise UdfLoadError(f"{source.filename}: module-level code ran out of memory when the instance was created")
    if isinstance(answer, dict) and "error" in answer:
        kind, message, line = answer["error"]
        where = f"{source.filename}:{line}" if line else source.filename
        raise UdfLoadError(f"{where}: {kind}: {message}{_load_hint(kind)}")


def _load_hint(kind: str) -> str:
    if kind in ("ImportError", "ModuleNotFoundError"):
        return " (a UDF can import the sandbox's standard library only)"
    if kind == "SyntaxError":
        return " (fix the syntax at that line)"
    if kind == "TypeError":
        return " (define process(value, params) or process(value, params, meta) at top level)"
    return " (module-level code raised while the instance was created: fix it, or move it into process)"


def _offset(struct: type[ctypes.Structure], field: str) -> int:
    # getattr: wasmtime-py annotates its structures' fields with their Python types, not as descriptors.
    return int(getattr(struct, field).offset)


# Where a string value's length and pointer sit inside a wasmtime_component_val_t.
_STRING_SIZE_OFFSET = _offset(ffi.wasmtime_component_val_t, "of") + _offset(ffi.wasm_byte_vec_t, "size")
_STRING_DATA_OFFSET = _offset(ffi.wasmtime_component_val_t, "of") + _offset(ffi.wasm_byte_vec_t, "data")
# The call itself, through ctypes.CDLL: it releases the GIL while the guest runs. A handle of our own rather
# than wasmtime-py's, without argtypes: every argument is a ctypes object made once per instance, which ctypes
# passes as it is instead of checking and converting each one, and the error comes back as a plain address
# (None when the call succeeded) instead of a new pointer object (together ~0.3 us a call).
_func_call = ctypes.CDLL(ffi.dll._name).wasmtime_component_func_call
_func_call.restype = ctypes.c_void_p
_ONE = ctypes.c_size_t(1)  # one argument, one result
_ERROR_PTR = ctypes.POINTER(ffi.wasmtime_error_t)
# The same library through ctypes.PyDLL, whose calls keep the GIL, for C functions that only set a field,
# free a buffer or bump a counter. Releasing the GIL around them costs more than they do, and each release
# lets the epoch ticker take the GIL in between (measured: ~+12 us per call with a 1 ms tick).
_GIL_DLL = ctypes.PyDLL(ffi.dll._name)
_set_epoch_deadline = _GIL_DLL.wasmtime_context_set_epoch_deadline
_set_epoch_deadline.restype = None
_set_epoch_deadline.argtypes = [ctypes.POINTER(ffi.wasmtime_context_t), ctypes.c_uint64]
_byte_vec_delete = _GIL_DLL.wasm_byte_vec_delete
_byte_vec_delete.restype = None
_byte_vec_delete.argtypes = [ctypes.POINTER(ffi.wasm_byte_vec_t)]
_increment_epoch = _GIL_DLL.wasmtime_engine_increment_epoch
_increment_epoch.restype = None
_increment_epoch.argtypes = [ctypes.POINTER(ffi.wasm_engine_t)]


def _check_signature(func: Func, store: Store, sha256: str) -> None:
    ty = func.type(store)
    params = [type(t).__name__ for _, t in ty.params]
    result = type(ty.result).__name__ if ty.result is not None else None
    if params != ["String"] or result != "String":
        raise UdfLoadError(
            f"component {sha256[:12]}: `{_RUN_EXPORT}` has type ({', '.join(params)}) -> {result}; "
            "expected (string) -> string"
        )


class _Pool:
    """Instances of one component, at most ``runtime.pool_size`` alive; callers wait when all are busy.

    An idle instance is reused only for its own memory limit; when the pool is at its bound and only
    instances with another limit are idle, one of those is closed to make room.
    """

    def __init__(self, runtime: UdfRuntime, component: _Component) -> None:
        self._runtime = runtime
        self._component = component
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        # Notifying costs a few microseconds even with nobody waiting: count the waiters, skip it then.
        self._waiting = 0
        self._idle: list[_Instance] = []
        self._live = 0
        self._closed = False

    def state(self) -> tuple[int, int, int]:
        """Instances alive, busy of them, threads waiting."""
        with self._lock:
            return self._live, self._live - len(self._idle), self._waiting

    def acquire(self, memory_limit: int, timeout_s: float) -> _Instance:
        """An idle instance with ``memory_limit``, or a new one; wait at most ``timeout_s`` for a slot."""
        deadline = None
        with self._lock:
            while True:
                if self._closed:
                    raise UdfLoadError("the UDF was unloaded, or its runtime closed")
                idle = self._idle
                for i in range(len(idle) - 1, -1, -1):  # the one used last first: the common case
                    if idle[i].memory_limit == memory_limit:
                        return idle.pop(i)
                if self._live >= self._runtime.pool_size and idle:
                    self._retire(idle.pop(0))
                if self._live < self._runtime.pool_size:
                    self._live += 1
                    break
                deadline = deadline or time.monotonic() + timeout_s
                timeout_s = deadline - time.monotonic()
                if timeout_s <= 0:
                    raise UdfTimeoutError(
                        f"no instance of UDF component {self._component.sha256[:12]} came free within the "
                        f"deadline: all {self._runtime.pool_size} stayed busy"
                    )
                self._waiting += 1
                try:
                    self._freed.wait(timeout_s)
                finally:
                    self._waiting -= 1
        # Instantiating takes a millisecond or so: do it outside the lock, in the slot reserved above.
        start = time.perf_counter()
        try:
            instance = _Instance(self._runtime, self._component, memory_limit)
        except BaseException:
            with self._lock:
                self._live -= 1
                self._wake()
            raise
        self._runtime._count("instances_created", time.perf_counter() - start)
        return instance

    def release(self, instance: _Instance) -> None:
        with self._lock:
            if self._closed:
                self._retire(instance)
            else:
                self._idle.append(instance)
            self._wake()

    def discard(self, instance: _Instance) -> None:
        """Close an instance that failed; its slot frees up for a fresh one."""
        with self._lock:
            self._retire(instance)
            self._wake()
        self._runtime._count("instances_discarded")

    def _wake(self) -> None:
        if self._waiting:
            self._freed.notify()

    def _retire(self, instance: _Instance) -> None:
        instance.close()
        self._live -= 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            while self._idle:
                self._retire(self._idle.pop())
            self._freed.notify_all()


class UdfRuntime:
    """Loads UDF components and calls them in batches, sandboxed and bounded in time and memory.

    ``cache_dir`` keeps compiled components across restarts (None: compile in every process).
    ``pool_size`` bounds the instances of each UDF; ``memory_limit_mb`` is each instance's linear-memory
    limit unless a call asks for another; ``max_output_bytes`` bounds what one call may return;
    ``max_call_ms`` is the longest one call into the guest may hold an instance (longer batches are cut
    into several calls); ``max_wait_ms`` bounds the wait for a free instance of a call without a deadline;
    ``epoch_tick_ms`` is the resolution of deadlines. ``interpreter_dir`` keeps the shared interpreter
    component and its compiled form (default: the user's cache, see :mod:`.interpreter`), apart from
    ``cache_dir`` so that a runtime with a temporary cache does not build and compile it again.
    ``inline_sources`` bounds the sources loaded with :meth:`load_source` kept loaded (least recently
    loaded first out: they are unloaded, and loaded again when asked for).
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        pool_size: int = 4,
        memory_limit_mb: int = 128,
        max_output_bytes: int = 1 << 20,
        max_call_ms: int = 2000,
        max_wait_ms: int = 10_000,
        epoch_tick_ms: int = 1,
        interpreter_dir: Path | None = None,
        inline_sources: int = 16,
    ) -> None:
        limits = (pool_size, memory_limit_mb, max_output_bytes, max_call_ms, max_wait_ms, epoch_tick_ms, inline_sources)
        if min(limits) < 1:
            raise ValueError(
                "pool_size, memory_limit_mb, max_output_bytes, max_call_ms, max_wait_ms, epoch_tick_ms and "
                "inline_sources must be >= 1"
            )
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.interpreter_dir = default_cache_dir() if interpreter_dir is None else Path(interpreter_dir)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.pool_size = pool_size
        self.memory_limit_bytes = memory_limit_mb * _MIB
        self.max_output_bytes = max_output_bytes
        self.max_call_s = max_call_ms / 1000.0
        self.max_wait_s = max_wait_ms / 1000.0
        self.tick_s = epoch_tick_ms / 1000.0
        config = Config()
        config.epoch_interruption = True
        self.engine = Engine(config)
        self.linker = Linker(self.engine)
        self.linker.add_wasip2()
        self._lock = threading.Lock()
        self._components: dict[str, _Component] = {}
        self._interpreter: tuple[str, Path] | None = None
        # Inline sources loaded, least recently loaded first (an ordered set).
        self._inline: dict[str, None] = {}
        self.inline_sources = inline_sources
        self._interpreter_lock = threading.Lock()
        self._loading: dict[str, Future[_Component]] = {}
        self._counters = {"compiles": 0, "cache_loads": 0, "instances_created": 0, "instances_discarded": 0}
        #: Seconds spent compiling, mapping compiled components back from the cache, and instantiating.
        self._seconds = {"compiles": 0.0, "cache_loads": 0.0, "instances_created": 0.0}
        #: Bumped by every change a snapshot shows while no call runs: a component loaded or unloaded, a load
        #: timed, an instance made or thrown away (see :attr:`changes`).
        self._changes = 0
        self._closed = False
        self._stop = threading.Event()
        self._tick_start = time.monotonic()
        self._epoch = 0
        self._ticker = threading.Thread(target=self._tick, name="udf-epoch-ticker", daemon=True)
        self._ticker.start()

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> UdfRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the ticker and close every idle instance (busy ones close when their call returns)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            components = list(self._components.values())
            self._components.clear()
        self._stop.set()
        self._ticker.join()
        for component in components:
            component.pool.close()

    def _tick(self) -> None:
        # Deadlines are counted in epochs: a call's deadline is `ticks` increments after it starts. The
        # epoch follows the clock, not the number of sleeps (each oversleeps a little, which would add up
        # over a long deadline), and catches up after the thread was kept from running. The increment
        # keeps the GIL: one acquisition per tick.
        engine = self.engine.ptr()
        while not self._stop.is_set():
            time.sleep(self.tick_s)
            due = int((time.monotonic() - self._tick_start) / self.tick_s)
            while self._epoch < due:
                _increment_epoch(engine)
                self._epoch += 1

    def _lag(self, now: float) -> int:
        """Epochs the ticker owes the clock at ``now`` (``time.monotonic()``): a catch-up after a call starts
        must not shorten its budget."""
        return max(0, int((now - self._tick_start) / self.tick_s) - self._epoch)

    def stats(self) -> UdfRuntimeStats:
        with self._lock:
            return UdfRuntimeStats(loaded=len(self._components), **self._counters)

    def timings(self) -> dict[str, tuple[int, float]]:
        """``compiles``, ``cache_loads`` and ``instances_created``: how many, and the seconds they took in all."""
        with self._lock:
            return {what: (self._counters[what], seconds) for what, seconds in self._seconds.items()}

    def pools(self) -> list[PoolState]:
        """The instance pool of every loaded component."""
        with self._lock:
            components = list(self._components.values())
        return [PoolState(c.sha256, c.source is not None, *c.pool.state(), self.pool_size) for c in components]

    @property
    def changes(self) -> int:
        """A number that differs whenever :meth:`snapshot` taken between calls would (a worker sends its parent
        a snapshot only then: taking one costs microseconds, on every batch)."""
        return self._changes

    def snapshot(self) -> dict[str, Any]:
        """:meth:`pools`, :meth:`timings` and the discarded instances as plain JSON values: what a worker process
        sends its parent when they changed, so the parent's metrics show every process's pools."""
        return {
            "pools": [list(astuple(pool)) for pool in self.pools()],
            "timings": {what: list(counted) for what, counted in self.timings().items()},
            "discarded": self.stats().instances_discarded,
        }

    def _count(self, counter: str, seconds: float | None = None) -> None:
        with self._lock:
            self._counters[counter] += 1
            self._changes += 1
            if seconds is not None:
                self._seconds[counter] += seconds

    # -- loading ---------------------------------------------------------------------------------------

    def load(self, sha256: str, wasm_path: Path, *, filename: str | None = None) -> int:
        """Compile (or map back from the cache) the component ``sha256`` read from ``wasm_path``; the arity of
        its ``process``: 3 when it takes ``meta`` (give :meth:`call_batch` metas then), else 2.

        When the file holds Python source rather than a component, the UDF runs on the shared interpreter
        (source mode); ``filename`` names its file in errors (default ``udf.py``).

        Single-flight: when several threads ask for the same component at once, one loads it and the others
        wait for that result. Raises :class:`UdfLoadError`.
        """
        return self._component(sha256, wasm_path, filename).arity

    def load_source(self, source: str, *, filename: str = "udf.py") -> tuple[str, Path]:
        """Load ``source`` on the shared interpreter, stored nowhere but in the interpreter folder's bounded
        cache of sources (content-addressed, see :func:`.interpreter.keep_source`); its sha256 and path, for
        :meth:`call_batch`. Raises :class:`UdfLoadError`."""
        data = source.encode("utf-8")
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            path = keep_source(self.interpreter_dir, sha256, data)
        except OSError as exc:
            raise UdfLoadError(f"cannot keep the inline source under {self.interpreter_dir}: {exc}") from exc
        if sha256 not in self._components:
            self._component(sha256, path, filename)
        # An author editing makes a new source (and pool) per save: keep the last few loaded, not all.
        with self._lock:
            self._inline.pop(sha256, None)
            self._inline[sha256] = None
            evicted = list(self._inline)[: -self.inline_sources]
            for old in evicted:
                del self._inline[old]
        for old in evicted:
            self.unload(old)
        return sha256, path

    def interpreter(self) -> tuple[str, Path]:
        """The shared interpreter component's sha256 and path, built on first use (see :mod:`.interpreter`)."""
        with self._interpreter_lock:
            if self._interpreter is None:
                self._interpreter = interpreter_component(self.interpreter_dir)
            return self._interpreter

    def _component(self, sha256: str, wasm_path: Path, filename: str | None = None) -> _Component:
        component = self._components.get(sha256)
        if component is not None:
            return component
        with self._lock:
            if self._closed:
                raise UdfLoadError("the UDF runtime is closed")
            component = self._components.get(sha256)
            if component is not None:
                return component
            future = self._loading.get(sha256)
            owner = future is None
            if future is None:
                future = self._loading[sha256] = Future()
        if not owner:
            return future.result()
        try:
            component = self._new_component(sha256, Path(wasm_path), filename)
        except BaseException as exc:
            with self._lock:
                del self._loading[sha256]
            future.set_exception(exc)
            raise
        with self._lock:
            del self._loading[sha256]
            closed = self._closed
            if not closed:
                self._components[sha256] = component
                self._changes += 1
        if closed:  # closed while this thread was loading: nobody would close this pool later
            component.pool.close()
            future.set_exception(UdfLoadError("the UDF runtime is closed"))
            return future.result()
        future.set_result(component)
        return component

    def _new_component(self, sha256: str, path: Path, filename: str | None) -> _Component:
        try:
            with path.open("rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise UdfLoadError(f"cannot read UDF component {path}: {exc}") from exc
        if magic == _WASM_MAGIC:
            return _Component(self, sha256, self._compiled(sha256, path))
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise UdfLoadError(f"{path} has sha256 {actual}, expected {sha256}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UdfLoadError(f"{path} is neither a component nor UTF-8 Python source") from exc
        return _Component(self, sha256, self._interpreter_compiled(), _Source(text, filename or "udf.py"))

    def prepare_interpreter(self) -> Path:
        """Build the shared interpreter and compile it now, unless its folder holds both already (what
        ``quidditch-pipeline udf prepare`` runs at install time); where its compiled form is kept."""
        self._interpreter_compiled()
        return self._interpreter_cache(self.interpreter()[0])

    def _interpreter_compiled(self) -> Component:
        interpreter_sha, interpreter_path = self.interpreter()
        return self._compiled(interpreter_sha, interpreter_path, self._interpreter_cache(interpreter_sha))

    def _interpreter_cache(self, interpreter_sha: str) -> Path:
        return self.interpreter_dir / f"{interpreter_sha}-{_WASMTIME_VERSION}.cwasm"

    def unload(self, sha256: str, *, drop_compiled: bool = False) -> None:
        """Forget a component (say, its UDF version was deleted): close its idle instances now, busy ones
        when their call returns. Its compiled form stays cached on disk unless ``drop_compiled`` (a
        component that failed to load, or that nothing will use again)."""
        with self._lock:
            component = self._components.pop(sha256, None)
            self._changes += 1
        if component is not None:
            component.pool.close()
        cache = self.compiled_path(sha256) if drop_compiled else None
        if cache is not None:
            try:
                cache.unlink(missing_ok=True)
            except OSError as exc:
                raise UdfLoadError(f"cannot delete the compiled component {cache}: {exc}") from exc

    def compiled_path(self, sha256: str) -> Path | None:
        """Where the compiled form of component ``sha256`` is cached (None without a cache folder)."""
        return None if self.cache_dir is None else self.cache_dir / f"{sha256}-{_WASMTIME_VERSION}.cwasm"

    def _compiled(self, sha256: str, wasm_path: Path, cache: Path | None = None) -> Component:
        cache = cache or self.compiled_path(sha256)
        if cache is None:
            return self._compile(sha256, wasm_path, None)
        component = self._cached(cache)
        if component is not None:
            return component
        # Processes sharing the cache folder (pipeline workers) compile a component once: the first to miss
        # takes the folder's lock and compiles; the others wait on it, then map the file it wrote.
        with file_lock(cache.parent):
            component = self._cached(cache)
            return component if component is not None else self._compile(sha256, wasm_path, cache)

    def _cached(self, cache: Path) -> Component | None:
        """The compiled component mapped back from ``cache``; None when missing or unusable."""
        if not cache.is_file():
            return None
        start = time.perf_counter()
        try:
            component = Component.deserialize_file(self.engine, str(cache))
        except WasmtimeError:
            return None  # corrupt, or written by another engine configuration: compiled again
        self._count("cache_loads", time.perf_counter() - start)
        return component

    def _compile(self, sha256: str, wasm_path: Path, cache: Path | None) -> Component:
        """Compile the component; with ``cache``, write its compiled form there and map it back."""
        try:
            wasm = wasm_path.read_bytes()
        except OSError as exc:
            raise UdfLoadError(f"cannot read UDF component {wasm_path}: {exc}") from exc
        actual = hashlib.sha256(wasm).hexdigest()
        if actual != sha256:
            raise UdfLoadError(f"{wasm_path} has sha256 {actual}, expected {sha256}")
        start = time.perf_counter()
        try:
            component = Component(self.engine, wasm)
        except WasmtimeError as exc:
            raise UdfLoadError(f"cannot compile UDF component {sha256[:12]}: {_summary(str(exc))}") from exc
        self._count("compiles", time.perf_counter() - start)
        if cache is None:
            return component
        try:
            write_atomically(cache, component.serialize())
        except OSError as exc:
            raise UdfLoadError(f"cannot write the compiled component to {cache}: {exc}") from exc
        # Map the compiled code back from the file: its pages are then shared and evictable, not heap.
        return Component.deserialize_file(self.engine, str(cache))

    # -- calling ---------------------------------------------------------------------------------------

    def call_batch(
        self,
        sha256: str,
        wasm_path: Path,
        values: Sequence[Any],
        params: Mapping[str, Any],
        metas: Sequence[Mapping[str, Any]] | None,
        *,
        timeout_s: float | None,
        memory_limit_mb: int | None = None,
    ) -> list[UdfItemResult]:
        """Run ``process`` on every value; one result per value, in order.

        The values cross in one call into the guest unless that call would run past ``max_call_ms``: then in
        several, sized from the UDF's time per item so far. ``metas[i]`` goes with ``values[i]``; they are
        passed only to a ``process`` that takes ``meta``, and may be None for one that does not (see
        :meth:`load`). ``timeout_s`` counts from when the UDF is loaded (see :meth:`load`), waiting for a
        free instance included. Raises :class:`UdfTimeoutError` (preempted at ``timeout_s``, one item alone
        past ``max_call_ms``, or no instance free in time), :class:`UdfMemoryError` (hit the memory limit),
        :class:`UdfCallError` (trap, malformed or oversized output) and :class:`UdfLoadError`; the instance
        is discarded after any of these but a load error and a wait.
        """
        # Loading (compiling, the first time) is not the call's: its time limit starts once the UDF is loaded.
        component = self._component(sha256, wasm_path)
        started = time.monotonic()
        count = len(values)
        if not count:
            return []
        if metas is None:
            if component.arity == 3:
                raise ValueError("this UDF's process takes meta: give one meta per value")
        elif len(metas) != count:
            raise ValueError(f"{len(metas)} metas for {count} values")
        limit = self.memory_limit_bytes if memory_limit_mb is None else memory_limit_mb * _MIB
        deadline = None if timeout_s is None else started + timeout_s
        metas = metas if component.arity == 3 else None
        size = self._call_size(component, count)
        if size == count:  # the common case: the whole batch in one call, nothing to slice or join
            try:
                return self._call(component, values, params, metas, limit, deadline, timeout_s)
            except _Split:
                size = max(1, min(count // 2, self._call_size(component, count)))
        results: list[UdfItemResult] = []
        start = 0
        while start < count:
            end = min(start + size, count)
            try:
                results += self._call(
                    component,
                    values[start:end],
                    params,
                    None if metas is None else metas[start:end],
                    limit,
                    deadline,
                    timeout_s,
                )
            except _Split:
                # At most half as many, fewer when the time per item just learnt says so.
                size = max(1, min((end - start) // 2, self._call_size(component, count - start)))
                continue
            start = end
            size = self._call_size(component, count - start)
        return results

    def _call_size(self, component: _Component, remaining: int) -> int:
        """How many of ``remaining`` items the next call should carry to fit ``max_call_ms``."""
        item_s = component.item_s
        if item_s <= 0.0:
            return min(remaining, _PROBE_ITEMS) if remaining > _PROBE_ITEMS * 4 else remaining
        return max(1, min(remaining, int(self.max_call_s * _CALL_SHARE / item_s)))

    def _call(
        self,
        component: _Component,
        values: Sequence[Any],
        params: Mapping[str, Any],
        metas: Sequence[Mapping[str, Any]] | None,
        limit: int,
        deadline: float | None,
        timeout_s: float | None,
    ) -> list[UdfItemResult]:
        """One call into the guest; raises :class:`_Split` when the values should go in smaller calls."""
        count = len(values)
        apart, batch = _encode_request(params, values, metas, self.max_output_bytes)
        size = len(apart) + len(batch)
        baseline = component.baseline
        if limit > baseline and 2 * size + baseline > limit:
            # Taking the request in needs its bytes twice (the string as received, then as a Python str),
            # and running out there traps inside componentize-py's glue, where no MemoryError can be caught.
            # (A limit below the baseline fails when the instance is created, with its own message.)
            if count > 1:
                raise _Split
            raise UdfMemoryError(
                f"the batch is {size / _MIB:.1f} MiB: it cannot fit the UDF's memory limit of "
                f"{limit // _MIB} MiB (split the batch or raise memory_limit_mb)"
            )
        now = time.monotonic()
        remaining = None if deadline is None else deadline - now
        instance = component.pool.acquire(limit, self.max_wait_s if remaining is None else remaining)
        now = time.monotonic()
        budget = self.max_call_s
        capped = True  # preempted at max_call_s rather than at the caller's deadline
        if deadline is not None and deadline - now <= budget:
            budget, capped = max(deadline - now, 0.0), False
        ticks = _ticks(budget, self.tick_s) + self._lag(now)
        try:
            raw = instance.call(apart, batch, ticks)
            took = time.monotonic() - now
            if len(raw) > self.max_output_bytes + _ERROR_ALLOWANCE * (count + 1):
                raise UdfCallError(
                    f"the UDF returned {len(raw)} bytes, over the output limit of {self.max_output_bytes}",
                    kind="output",
                )
            results = _decode_response(raw, count, limit)
        except _Trap as trap:
            component.pool.discard(instance)
            error = _classify(str(trap), timeout_s)
            if capped and isinstance(error, UdfTimeoutError):
                item_s = self.max_call_s / count  # it took longer than this per item, at least
                component.item_s = max(component.item_s, item_s)
                if count > 1:
                    raise _Split from trap
                error = UdfTimeoutError(
                    f"one item ran past the longest a call may hold an instance ({self.max_call_s * 1000:.0f} ms)"
                )
            raise error from trap
        except BaseException:  # a failed call, or anything else: the instance's state is unknown
            component.pool.discard(instance)
            raise
        component.pool.release(instance)
        previous = component.item_s
        component.item_s = took / count if previous <= 0.0 else (previous + took / count) / 2
        return results


class _Split(Exception):
    """The values of a call must go in smaller calls: it ran past ``max_call_ms``, or does not fit the memory."""


def _ticks(seconds: float, tick_s: float) -> int:
    # The first increment comes anywhere within one tick of the call's start, so one tick more than the
    # budget: never preempt before the deadline, at most one tick after it.
    return max(1, math.ceil(seconds / tick_s)) + 1


# The params object last found small: calls mostly pass a stage's own params object, which then need not be
# marshalled apart to be measured again. A stale answer costs only speed: params grown since cross inside
# the batch, which is correct too.
_small_params: object = None


def _encode_request(
    params: Mapping[str, Any], values: Sequence[Any], metas: Sequence[Mapping[str, Any]] | None, limit: int
) -> tuple[bytes, bytes]:
    """(params to send apart, marshalled, or b"" when they are in the batch; the batch, ready to send)."""
    global _small_params
    if params is not _small_params:
        apart = _marshal(params)
        if len(apart) >= _PARAMS_APART:
            return apart, _wire(_marshal((None, values, metas, limit)))
        _small_params = params
    return b"", _wire(_marshal((params, values, metas, limit)))


def _marshal(data: Any) -> bytes:
    try:
        return marshal.dumps(data, _MARSHAL_VERSION)
    except ValueError:
        # Not plain dicts, lists and scalars (a Mapping view, a datetime, a tuple subclass): give the guest
        # what JSON would make of them, which is what it would see from an HTTP client anyway.
        try:
            plain = orjson.loads(orjson.dumps(data, default=_plain))
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise InputError(f"a UDF's input must be JSON-serialisable: {exc}") from exc
        return marshal.dumps(plain, _MARSHAL_VERSION)


def _wire(packed: bytes) -> bytes:
    # The WIT string must be UTF-8: carry each byte as one latin-1 character (the guest reverses this).
    return packed.decode("latin-1").encode("utf-8")


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _decode_response(raw: bytes, count: int, memory_limit: int) -> list[UdfItemResult]:
    """Parse the guest's JSON answer; anything but the expected shape is a failed call."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UdfCallError(f"the UDF returned output that is not JSON: {exc}", kind="output") from exc
    if isinstance(answer, dict) and "fatal" in answer:
        kind, message = _fatal(answer["fatal"])
        if kind == "MemoryError":
            raise UdfMemoryError(f"the UDF ran out of memory (its limit is {memory_limit // _MIB} MiB)")
        raise UdfCallError(f"the UDF's call failed with {kind}: {message}", kind="trap")
    try:
        values, errors = answer
        if len(values) != count:
            raise ValueError(f"{len(values)} results for {count} inputs")
        results = [
            _NONE if v is None else _TRUE if v is True else _FALSE if v is False else UdfItemResult(True, v)
            for v in values
        ]
        for index, kind, message, line in errors:
            if not (
                isinstance(index, int)
                and 0 <= index < count
                and isinstance(kind, str)
                and isinstance(message, str)
                and (line is None or isinstance(line, int))
            ):
                raise ValueError(f"malformed item error {[index, kind, message, line]!r}")
            results[index] = UdfItemResult(False, None, UdfItemError(kind, message, line))
    except (ValueError, TypeError) as exc:
        raise UdfCallError(f"the UDF returned malformed output: {exc}", kind="output") from exc
    return results


def _fatal(fatal: Any) -> tuple[str, str]:
    if isinstance(fatal, list) and len(fatal) == 2 and all(isinstance(part, str) for part in fatal):
        return fatal[0], fatal[1]
    return "error", repr(fatal)[:200]


def _classify(message: str, timeout_s: float | None) -> UdfCallError:
    """Translate wasmtime's report of a failed call into the project's error.

    Running out of memory is not among them: in Python code the guest catches it (a ``fatal``
    MemoryError answer); in componentize-py's glue it traps like any other bug would, and nothing in
    wasmtime's report tells the two apart.
    """
    if "wasm trap: interrupt" in message:
        budget = "" if timeout_s is None else f" of {timeout_s * 1000:.0f} ms"
        return UdfTimeoutError(f"the UDF was preempted at its deadline{budget}")
    return UdfCallError(f"the UDF trapped: {_summary(message)}", kind="trap")


def _summary(message: str) -> str:
    """The cause of a wasmtime error, without its wasm backtrace."""
    _, _, cause = message.rpartition("Caused by:")
    lines = [text.strip() for text in (cause or message).splitlines() if text.strip()]
    return "; ".join(lines[:3]) if lines else message
