"""``_search?verbose_pipeline=true``: the query and result pipelines' verbose traces as OpenSearch (2.19+)
shows its search pipelines' ones, ``processor_results`` at the top level of the search response.

Each stage that ran is one entry, in the order they ran (query pipeline, final query pipeline, result
pipeline), with OpenSearch's keys::

    {"processor_name", "tag"?, "duration_millis", "status": "success" | "fail", "error"? (when fail),
     "input_data", "output_data"}

``input_data``/``output_data`` are the search body for a query pipeline's stages and the hit list for a result
pipeline's (as OpenSearch shows a response processor's). Beyond OpenSearch, each entry says which
``pipeline`` (and ``pipeline_type``) ran it, its ``stage_type``, its ``outcome`` as ``_execute`` reports it
(``success``, ``skipped`` by a false condition or a disabled stage, ``dropped``, ``retried``, ``error``,
``error_ignored``, ``error_handled``), its ``attempts``, ``took_us``, and for compound stages and failure
handlers their own entries under ``stages`` and ``on_failure``. A skipped stage answers its input unchanged.
As in OpenSearch, the key is absent when no stage ran, and a search that a pipeline fails answers its error.
"""

from __future__ import annotations

from typing import Any

__all__ = ["processor_results"]

#: ``_execute`` stage statuses that OpenSearch would call a failed processor (it marks a processor failed
#: whenever it threw, ``ignore_failure`` or not).
_FAILED = frozenset({"error", "error_ignored", "error_handled"})


def processor_results(traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of ``processor_results`` for the pipeline traces that ``PipelineService.process_query`` and
    ``process_results`` appended."""
    results: list[dict[str, Any]] = []
    for trace in traces:
        kind = trace["type"]
        results.extend(_entries(trace["stages"], trace["input"], trace["pipeline"], kind))
    return results


def _entries(stages: list[dict[str, Any]], value: Any, pipeline: str, kind: str) -> list[dict[str, Any]]:
    """One entry per traced stage; ``value`` is what the first of them got."""
    entries = []
    for stage in stages:
        outcome = stage["status"]
        output = stage.get("output")
        if output is None and outcome == "skipped":
            output = value  # a skipped stage passes its input on
        entry: dict[str, Any] = {"processor_name": stage["name"]}
        if stage.get("tag"):
            entry["tag"] = stage["tag"]
        took_us = float(stage.get("took_us") or 0.0)
        entry["duration_millis"] = round(took_us / 1000)
        entry["status"] = "fail" if outcome in _FAILED else "success"
        if outcome in _FAILED:
            entry["error"] = stage.get("error")
        entry["input_data"] = _data(value, kind)
        entry["output_data"] = _data(output, kind)
        entry.update(pipeline=pipeline, pipeline_type=kind, stage_type=stage["type"], outcome=outcome)
        entry.update(attempts=stage.get("attempts", 0), took_us=took_us)
        if stage.get("stages"):
            entry["stages"] = _entries(stage["stages"], value, pipeline, kind)
        if stage.get("on_failure"):
            entry["on_failure"] = _entries(stage["on_failure"], value, pipeline, kind)
        entries.append(entry)
        if output is not None:
            value = output
    return entries


def _data(value: Any, kind: str) -> Any:
    """What OpenSearch shows as a processor's data: the body for a request, the hit list for a response."""
    if kind == "result" and isinstance(value, dict) and "hits" in value:
        return value["hits"]
    return value
