"""Dotted field paths (``user.name``) on JSON objects, copy-on-write.

The writers never change the object they are given: they copy each object along the path and return a new
root, so a stage that fails half-way leaves its input exactly as it was (the ``continue`` policy passes the
input on unchanged) at a cost proportional to the path's depth, not the document's size.
"""

from __future__ import annotations

from typing import Any

_MISSING: Any = object()


def split_path(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


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
