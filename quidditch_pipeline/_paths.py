"""Dotted field paths (``user.name``) on JSON objects, copy-on-write.

The writers never change the object they are given: they copy each object along the path and return a new
root, so a stage that fails half-way leaves its input exactly as it was (the ``continue`` policy passes the
input on unchanged) at a cost proportional to the path's depth, not the document's size.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

_MISSING: Any = object()

#: Which parts of an object :func:`project` keeps: a key maps to ``None`` (keep its whole value) or to the
#: projection of its value.
Projection = dict[str, "Projection | None"]


@lru_cache(maxsize=1024)  # stages split the same few paths for every document
def split_path(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def check_path(text: str) -> tuple[str, ...]:
    """``text`` split into its names; ``ValueError`` naming it when it is not a dotted field path."""
    if not text or any(not part for part in text.split(".")):
        raise ValueError(f"[{text}] is not a field path (dot-separated names, e.g. user.name)")
    return split_path(text)


def projection(paths: Iterable[str]) -> Projection:
    """The projection that keeps ``paths`` (checked with :func:`check_path`); a path inside another is kept
    whole by the outer one (``_source`` and ``_source.title``: all of ``_source``)."""
    root: Projection = {}
    for path in paths:
        *parents, leaf = check_path(path)
        node = root
        for key in parents:
            child = node.setdefault(key, {})
            if child is None:  # an outer path keeps this whole already
                break
            node = child
        else:
            node[leaf] = None
    return root


def project(root: dict[str, Any], keep: Projection) -> dict[str, Any]:
    """A new object with only the kept paths of ``root`` (the values themselves are shared, not copied).

    A path that is absent, or that runs through something other than an object, is left out.
    """
    out: dict[str, Any] = {}
    for key, inner in keep.items():
        if key in root:
            value = root[key]
            if inner is None:
                out[key] = value
            elif isinstance(value, dict):
                out[key] = project(value, inner)
    return out


def get(root: Any, path: tuple[str, ...], default: Any = _MISSING) -> Any:
    """The value at ``path``, or ``default`` (``MISSING`` when not given) when any step is absent."""
    node = root
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def has(root: Any, path: tuple[str, ...]) -> bool:
    return get(root, path) is not _MISSING


def set_(root: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``root`` with ``value`` at ``path``; missing objects along the path are created."""
    head, rest = path[0], path[1:]
    out = dict(root)
    if not rest:
        out[head] = value
        return out
    child = root.get(head)
    if child is None:
        child = {}
    elif not isinstance(child, dict):
        raise ValueError(f"cannot set [{'.'.join(path)}]: [{head}] is a {type(child).__name__}, not an object")
    out[head] = set_(child, rest, value)
    return out


def remove(root: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``root`` without ``path``; the caller checks that the path exists first."""
    head, rest = path[0], path[1:]
    out = dict(root)
    if not rest:
        del out[head]
    else:
        out[head] = remove(root[head], rest)
    return out


MISSING = _MISSING
