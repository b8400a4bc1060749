"""How a batch and its answers cross between the parent and a pipeline worker: bytes, never pickles.

A frame is a 4-byte little-endian header length, the header (orjson), then the body. A request's body is the
inputs' JSON bytes back to back, exactly as they arrived (the header lists their sizes), so the parent
neither parses nor re-serialises a ``_bulk`` line; an answer's body is the changed values' JSON bytes back
to back. Everything the parent reads from a worker, the process where UDFs ran, goes through ``orjson.loads``
and the explicit decoders below: nothing is unpickled. One frame per batch crosses a pipe with
``Connection.send_bytes`` (a length-prefixed write of one buffer; see the README for its measured cost).

Per-item answer codes: ``CHANGED`` (success, the new value follows in the body), ``UNCHANGED`` (success, the
value is the one sent: nothing crosses back), ``DROPPED``, ``REJECTED`` (a query pipeline said no) and
``FAILED`` (the error is in the header).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import Any

import orjson

from ..errors import (
    InputError,
    PipelineTimeoutError,
    QuidditchError,
    StageError,
    StageTimeoutError,
    StageUnavailableError,
    StorageError,
    UdfLoadError,
)

__all__ = [
    "CHANGED",
    "DROPPED",
    "FAILED",
    "REJECTED",
    "UNCHANGED",
    "cut",
    "decode",
    "encode",
    "error_from_wire",
    "error_to_wire",
    "split",
]

CHANGED = 0
UNCHANGED = 1
DROPPED = 2
REJECTED = 3
FAILED = 4

_LENGTH = struct.Struct("<I")

# The errors a worker may report, rebuilt by name in the parent: an allowlist, not a class lookup.
_STAGE_ERRORS: dict[str, type[StageError]] = {
    cls.__name__: cls for cls in (StageError, StageTimeoutError, StageUnavailableError, PipelineTimeoutError)
}
_MESSAGE_ERRORS: dict[str, type[QuidditchError]] = {
    cls.__name__: cls for cls in (InputError, UdfLoadError, StorageError)
}


def encode(header: dict[str, Any], parts: Sequence[bytes] = ()) -> bytes:
    """One frame: ``header`` and the ``parts`` of the body back to back."""
    head = orjson.dumps(header)
    return b"".join([_LENGTH.pack(len(head)), head, *parts])


def decode(frame: bytes) -> tuple[dict[str, Any], memoryview]:
    """The header and the body of a frame (the body is a view: slicing it copies nothing)."""
    view = memoryview(frame)
    (size,) = _LENGTH.unpack_from(view)
    header = orjson.loads(view[_LENGTH.size : _LENGTH.size + size])
    if not isinstance(header, dict):
        raise ValueError("a frame's header must be a JSON object")
    return header, view[_LENGTH.size + size :]


def split(body: memoryview, sizes: Sequence[int]) -> list[memoryview]:
    """The body cut into consecutive pieces of ``sizes`` bytes."""
    pieces = []
    offset = 0
    for size in sizes:
        pieces.append(body[offset : offset + size])
        offset += size
    if offset != len(body):
        raise ValueError(f"a frame's body holds {len(body)} bytes, its header accounts for {offset}")
    return pieces


def cut(body: memoryview, sizes: Sequence[int]) -> list[bytes]:
    """:func:`split`, as ``bytes`` (one copy of the body, then one slice per piece)."""
    if not sizes:
        return []
    data = bytes(body)
    offsets = list(itertools.accumulate(sizes, initial=0))
    if offsets[-1] != len(data):
        raise ValueError(f"a frame's body holds {len(data)} bytes, its header accounts for {offsets[-1]}")
    return [data[a:b] for a, b in itertools.pairwise(offsets)]


def error_to_wire(error: QuidditchError) -> dict[str, Any]:
    if isinstance(error, StageError):
        return {
            "class": type(error).__name__,
            "cause": error.cause,
            "pipeline": error.pipeline,
            "stage": error.stage,
            "stage_type": error.stage_type,
            "input_id": error.input_id,
            "cause_type": error.cause_type,
            "tag": error.tag,
        }
    return {"class": type(error).__name__, "message": error.message}


def error_from_wire(data: dict[str, Any], pipeline: str) -> QuidditchError:
    """The error a worker reported, rebuilt from plain fields (an unknown class becomes a ``StageError``)."""
    name = data.get("class")
    stage_error = _STAGE_ERRORS.get(name) if isinstance(name, str) else None
    if stage_error is not None:
        return stage_error(
            str(data["cause"]),
            pipeline=str(data["pipeline"]),
            stage=str(data["stage"]),
            stage_type=str(data["stage_type"]),
            input_id=None if data["input_id"] is None else str(data["input_id"]),
            cause_type=str(data["cause_type"]),
            tag=None if data.get("tag") is None else str(data["tag"]),
        )
    message_error = _MESSAGE_ERRORS.get(name) if isinstance(name, str) else None
    if message_error is not None:
        return message_error(str(data["message"]))
    return StageError(str(data.get("message")), pipeline=pipeline)
