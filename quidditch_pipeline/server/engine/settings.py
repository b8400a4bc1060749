"""Index settings: the flat ``index.*`` keys an index accepts, their validation, and the nested view.

Settings arrive nested (``{"index": {"document": {"default_pipeline": "p"}}}``) or flat
(``index.document.default_pipeline``), optionally under ``"settings"``; they are stored flat and shown nested.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from ...errors import InputError

__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "FAILURE_STORE_ENABLED",
    "FAILURE_STORE_MAX_SEARCH_FAILURES",
    "OWN_SETTINGS",
    "PIPELINE_SETTINGS",
    "nest_settings",
    "normalize_settings",
    "parse_interval",
    "split_own_settings",
]

#: The settings an index accepts, flat, with their defaults (``None``: unset).
PIPELINE_SETTINGS: Final = {
    "document": "index.document.default_pipeline",
    "query": "index.query.default_pipeline",
    "result": "index.result.default_pipeline",
    "document_final": "index.document.final_pipeline",
    "query_final": "index.query.final_pipeline",
}
#: Failed documents go to the index's failure store instead of failing the write (``"true"``/``"false"``).
FAILURE_STORE_ENABLED: Final = "index.failure_store.enabled"
#: How many failed searches (query or result pipeline) the failure store keeps, newest first (0: none).
FAILURE_STORE_MAX_SEARCH_FAILURES: Final = "index.failure_store.max_search_failures"
#: The settings this project owns, which an Elasticsearch or OpenSearch cluster would refuse as unknown: a
#: gateway keeps them in its registry and never sends them upstream.
OWN_SETTINGS: Final = frozenset(
    {*PIPELINE_SETTINGS.values(), FAILURE_STORE_ENABLED, FAILURE_STORE_MAX_SEARCH_FAILURES}
)
_KNOWN_SETTINGS: Final = OWN_SETTINGS | {"index.refresh_interval", "index.number_of_shards", "index.number_of_replicas"}
#: At most one search window (``index.max_result_window``): the kept failures are read back in one search.
MAX_SEARCH_FAILURES_LIMIT: Final = 10_000
DEFAULT_REFRESH_INTERVAL: Final = 1.0


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def normalize_settings(body: Mapping[str, Any]) -> dict[str, Any]:
    """Nested or flat settings (optionally under ``"settings"``) as flat ``index.*`` keys; ``None`` removes.

    Values are validated: pipeline names are strings, ``refresh_interval`` a time value, shards exactly 1.
    """
    if set(body) == {"settings"} and isinstance(body["settings"], Mapping):
        body = body["settings"]
    flat: dict[str, Any] = {}
    _flatten("", body, flat)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        full = key if key.startswith("index.") else f"index.{key}"
        if full not in _KNOWN_SETTINGS:
            raise InputError(f"unknown setting [{full}]; supported: {', '.join(sorted(_KNOWN_SETTINGS))}")
        out[full] = None if value is None else _check_setting(full, value)
    return out


def split_own_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Settings (nested or flat, optionally under ``"settings"``) split into this project's own settings
    (:data:`OWN_SETTINGS`), flat, validated, and everything else, untouched: what a gateway keeps and what it
    sends its upstream.

    Without own settings the rest is ``settings`` itself; with them it is the other keys, flat (which
    Elasticsearch and OpenSearch read alike)."""
    if set(settings) == {"settings"} and isinstance(settings["settings"], Mapping):
        settings = settings["settings"]
    flat: dict[str, Any] = {}
    _flatten("", settings, flat)
    own = {key for key in flat if (key if key.startswith("index.") else f"index.{key}") in OWN_SETTINGS}
    if not own:
        return {}, dict(settings)
    kept = normalize_settings({key: flat[key] for key in own})
    return kept, {key: value for key, value in flat.items() if key not in own}


def _check_setting(key: str, value: Any) -> Any:
    if key in PIPELINE_SETTINGS.values():
        if not isinstance(value, str) or not value:
            raise InputError(f"setting [{key}] must be a pipeline name, got [{value!r}]")
        return value
    if key == "index.refresh_interval":
        parse_interval(value, key)
        return str(value)
    if key == FAILURE_STORE_ENABLED:
        if isinstance(value, bool) or value in ("true", "false"):
            return str(value).lower()
        raise InputError(f"setting [{key}] must be true or false, got [{value!r}]")
    number = _setting_int(key, value)
    if key == FAILURE_STORE_MAX_SEARCH_FAILURES and number > MAX_SEARCH_FAILURES_LIMIT:
        raise InputError(f"setting [{key}] must be at most {MAX_SEARCH_FAILURES_LIMIT}, got [{value!r}]")
    if key == "index.number_of_shards" and number != 1:
        raise InputError(f"setting [{key}] must be 1: an index of the reference host has one shard")
    return str(number)


def _setting_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InputError(f"setting [{key}] must be a non-negative integer, got [{value!r}]")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"setting [{key}] must be a non-negative integer, got [{value!r}]") from None
    if number < 0:
        raise InputError(f"setting [{key}] must be a non-negative integer, got [{value!r}]")
    return number


_INTERVAL: Final = re.compile(r"^(\d+)(ms|s|m|h)$")


def parse_interval(value: Any, key: str = "index.refresh_interval") -> float | None:
    """An Elasticsearch time value in seconds; ``-1`` (never) is ``None``."""
    text = str(value).strip()
    if text == "-1":
        return None
    match = _INTERVAL.match(text)
    if not match or isinstance(value, bool):
        raise InputError(f"setting [{key}] must be a time value such as 1s, 500ms or -1, got [{value!r}]")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    return int(match.group(1)) * scale


def nest_settings(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat dotted keys as nested objects (how Elasticsearch shows settings by default)."""
    out: dict[str, Any] = {}
    for key, value in sorted(flat.items()):
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
