"""A definition from a stored pipeline answer (``get_pipeline`` adds the revision and times to it)."""

from __future__ import annotations

from typing import Any, Final

from ..definitions import PipelineDefinition, parse_definition

_STORED_EXTRAS: Final = frozenset({"revision", "created_at", "updated_at"})


def stored_definition(stored: dict[str, Any] | PipelineDefinition) -> PipelineDefinition:
    if isinstance(stored, PipelineDefinition):
        return stored
    return parse_definition({k: v for k, v in stored.items() if k not in _STORED_EXTRAS})
