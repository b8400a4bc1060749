"""The guest side of a UDF component: the shim componentize-py builds together with the author's module.

It runs inside the sandbox (CPython 3.14 compiled to WebAssembly), never on the host. componentize-py imports
it at build time and snapshots the result, so the author's module, everything it imports and the modules
named in ``udf_preload.json`` (imports written inside functions, which could not be found at run time: the
sandbox has no files) are loaded once, at build time.

The contract with the host is ``../wit/udf.wit``. Every exception a UDF raises is caught here, per item, and
returned as ``[index, type, message, line]``: an uncaught exception would trap and kill the instance.
A ``MemoryError`` ends the whole call instead (``fatal``): the instance's linear memory is then at its limit,
and the host replaces it. An instance keeps the big params the host sent it last, which the host then does
not send again; each call still gets params of its own (see :func:`_params`).
"""

import functools
import json
import json.encoder
import marshal
import os
from collections.abc import Callable

import udf_source  # type: ignore[import-not-found]  # the author's file, copied under this name by build.py
import wit_world  # type: ignore[import-not-found]  # bindings componentize-py generates from udf.wit

ABI = "2.0.0"

# Bounds what one failing item adds to the response, whatever the exception's text.
_MESSAGE_LIMIT = 512
_NAME_LIMIT = 128
# co_flags bit of a function that takes *args.
_CO_VARARGS = 0x04
# What a copy of params may share with the params it copies: nothing a UDF can change in place.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def _not_json(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not a JSON value")


# The C encoder json.dumps uses, made once: json.dumps and JSONEncoder.encode build it anew on every call,
# which measured ~2.7 us of a ~4 us encode of a one-item answer in the guest. `_markers` is its cycle check.
_markers: dict[int, object] = {}
_c_encode = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    _markers, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
)


def _encode(value: object) -> str:
    """Compact JSON with non-ASCII escaped; TypeError/ValueError/RecursionError for what is not JSON."""
    try:
        return "".join(_c_encode(value, 0))
    except BaseException:
        _markers.clear()  # an encode that failed midway leaves its open containers marked
        raise


_UDF_FILE = udf_source.__file__
# Prebuilt: when memory has run out, building this answer could fail too.
_FATAL_MEMORY = '{"fatal":["MemoryError","the UDF ran out of memory"]}'


def _preload() -> None:
    """Import the modules the UDF imports inside functions, while files are still there to import from."""
    path = os.path.join(os.path.dirname(__file__), "udf_preload.json")
    with open(path, encoding="utf-8") as fh:
        modules = json.load(fh)
    for name, optional in modules:
        try:
            __import__(name)
        except ImportError:
            if not optional:
                raise


def _arity(fn: object) -> int:
    """3 when ``process`` can take ``(value, params, meta)``, else 2; refuse anything else at build time."""
    code = getattr(fn, "__code__", None)
    if code is None:
        raise TypeError("process must be a function defined with def")
    line = code.co_firstlineno
    positional = code.co_argcount
    required = positional - len(getattr(fn, "__defaults__", None) or ())
    kw_required = code.co_kwonlyargcount - len(getattr(fn, "__kwdefaults__", None) or {})
    takes_more = bool(code.co_flags & _CO_VARARGS)
    if kw_required == 0 and required <= 3 and (positional >= 3 or takes_more):
        return 3
    if kw_required == 0 and required <= 2 and positional >= 2:
        return 2
    raise TypeError(f"line {line}: process must take (value, params) or (value, params, meta)")


def _error(index: int, exc: BaseException) -> list[object]:
    """``[index, type, message, line]`` for one failed item; line is the deepest frame in the UDF's file."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _UDF_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    try:
        message = str(exc)
    except BaseException:  # a hostile __str__ must not take the batch down
        message = "<unprintable exception>"
    return [index, type(exc).__name__[:_NAME_LIMIT], message[:_MESSAGE_LIMIT], line]


def _encode_each(results: list[object], errors: list[list[object]], limit: int) -> str:
    """Encode item by item: mark the values that are not JSON or overflow the output budget as failed."""
    parts = []
    used = 0
    for index, result in enumerate(results):
        piece = "null"
        if result is not None:
            try:
                piece = _encode(result)
            except MemoryError:
                raise
            except BaseException as exc:  # TypeError, ValueError (NaN, cycles), RecursionError (nesting)
                message = f"unmappable return value: process returned {type(result).__name__}: {exc}"
                errors.append([index, "unmappable_return_value", message[:_MESSAGE_LIMIT], None])
                piece = "null"
            if used + len(piece) > limit:
                message = f"output too large: the value is {len(piece)} bytes, the call's limit is {limit}"
                errors.append([index, "output_too_large", message, None])
                piece = "null"
        used += len(piece)
        parts.append(piece)
    return "[" + ",".join(parts) + "]"


def _copier(data: object) -> Callable[[], object]:
    """A function that makes a fresh copy of ``data`` (params as marshal decoded them): new dicts and lists
    around the same immutable values. TypeError for anything else (a set, a tuple): decode those again."""
    # List comprehensions, not generators: they run in the caller's frame, so nesting as deep as the
    # recursion limit raises RecursionError instead of exhausting the guest's C stack.
    if type(data) is dict:
        items = [(k, v, None if type(v) in _IMMUTABLE else _copier(v)) for k, v in data.items()]
        if all(copy is None for _, _, copy in items):
            return data.copy
        return lambda: {k: v if copy is None else copy() for k, v, copy in items}
    if type(data) is list:
        pairs = [(v, None if type(v) in _IMMUTABLE else _copier(v)) for v in data]
        if all(copy is None for _, copy in pairs):
            return data.copy
        return lambda: [v if copy is None else copy() for v, copy in pairs]
    raise TypeError(f"{type(data).__name__} is not copied")


# The params the host last sent this instance apart from a batch, as it marshalled them, and (once they
# come back) a function that copies them.
_params_raw: bytes | None = None
_params_copy: Callable[[], object] | None = None


def _params(sent: bytes | None) -> object:
    """This call's own params: decoded from ``sent``, or (None) a copy of the params sent last.

    Whatever a UDF does to its params stays in its call, as when each call decoded its own. A copy costs
    about half of decoding them again (measured in the guest: 0.6 against 1.2 ms for a table of 2,000
    short lists).
    """
    global _params_raw, _params_copy
    if sent is not None:
        params = marshal.loads(sent)
        _params_raw, _params_copy = sent, None
        return params
    if _params_raw is None:
        raise ValueError("the host referred to params it never sent to this instance")
    if _params_copy is None:
        # Made when params come back, not when they arrive: two stages taking turns on one instance would
        # pay for it on every call.
        raw = _params_raw
        try:
            _params_copy = _copier(marshal.loads(raw))
        except (TypeError, RecursionError):
            _params_copy = functools.partial(marshal.loads, raw)
    try:
        return _params_copy()
    except RecursionError:  # the UDF lowered its recursion limit since the copier was made
        return marshal.loads(_params_raw)


def _run(request: str) -> str:
    # The host's own data, marshalled (guest-side loads is ~5x faster than json.loads) and carried as a
    # latin-1 string; what goes back is JSON, since the host must never unmarshal what a guest made.
    batch = marshal.loads(request.encode("latin-1"))
    if len(batch) == 2:  # (params sent apart, batch)
        sent, (_, values, metas, limit) = batch
        params = _params(sent)
    else:
        params, values, metas, limit = batch
    process = _PROCESS
    results: list[object] = []
    errors: list[list[object]] = []
    append = results.append
    for index, value in enumerate(values):
        try:
            append(process(value, params) if metas is None else process(value, params, metas[index]))
        except MemoryError:
            raise
        except BaseException as exc:  # SystemExit and KeyboardInterrupt included: nothing may escape
            append(None)
            errors.append(_error(index, exc))
    # One encoder call for the whole answer is the fast path; item by item only to find what went wrong.
    # The encoder escapes non-ASCII (ensure_ascii), so a length in characters is a length in bytes.
    response: str | None
    try:
        # Without errors, the results alone: one container fewer for the encoder to walk (~0.7 us).
        response = _encode([results, errors]) if errors else "[" + _encode(results) + ",[]]"
    except MemoryError:
        raise
    except BaseException:
        response = None
    if response is None or len(response) > limit:
        body = _encode_each(results, errors, limit)
        response = "[" + body + "," + _encode(errors) + "]"
    return response


class WitWorld(wit_world.WitWorld):  # type: ignore[misc]  # the class name componentize-py looks for
    def describe(self) -> str:
        return _DESCRIPTION

    def run_batch(self, request: str) -> str:
        try:
            return _run(request)
        except MemoryError:
            return _FATAL_MEMORY
        except BaseException as exc:  # a malformed request, or a UDF that broke this shim
            return '{"fatal":' + _encode(_error(0, exc)[1:3]) + "}"


def _find_process() -> Callable[..., object]:
    process: object = getattr(udf_source, "process", None)
    if not callable(process):
        raise TypeError("the UDF defines no top-level function process(value, params)")
    return process


_preload()
_PROCESS = _find_process()
_DESCRIPTION = _encode({"abi": ABI, "arity": _arity(_PROCESS)})
