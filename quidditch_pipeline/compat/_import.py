"""Translate, check and store: what ``POST /_pipeline/{name}/_import`` and ``quidditch-pipeline import`` share."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..definitions import parse_definition
from ..errors import InputError
from ._report import Translation
from .elasticsearch import from_elasticsearch
from .opensearch import from_opensearch

if TYPE_CHECKING:
    from ..service import PipelineService

#: Source system -> translator.
TRANSLATORS: Final[dict[str, Callable[[Any, str], Translation]]] = {
    "elasticsearch": from_elasticsearch,
    "opensearch": from_opensearch,
}


def translate(body: Any, name: str, source: str) -> Translation:
    translator = TRANSLATORS.get(source)
    if translator is None:
        raise InputError(f"cannot import from [{source}]; known: {', '.join(sorted(TRANSLATORS))}")
    return translator(body, name)


def import_pipeline(
    service: PipelineService | None,
    body: Any,
    name: str,
    source: str,
    *,
    accept_losses: bool,
    dry_run: bool,
    how_to_accept: str,
) -> dict[str, Any]:
    """Translate ``body`` from ``source`` and store the result under ``name`` (unless ``dry_run``).

    Answers ``{"stored", "pipelines" (the put answers), "definitions", "report"}``; a lossy translation is
    refused (:class:`~quidditch_pipeline.errors.DefinitionError`) unless ``accept_losses``. Every definition
    is validated before any is stored.
    """
    translation = translate(body, name, source)
    definitions = [parse_definition(d) for d in translation.definitions]
    answer: dict[str, Any] = {
        "stored": False,
        "pipelines": [],
        "definitions": translation.definitions,
        "report": translation.report(),
    }
    if dry_run or service is None:
        return answer
    translation.require_lossless(accept_losses, how_to_accept)
    answer["pipelines"] = [service.put_pipeline(d) for d in definitions]
    answer["stored"] = True
    return answer
