"""Document routes: ``_doc``, ``_create`` and ``_bulk`` (through the index's document pipeline), get, delete."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from ...errors import (
    DefinitionError,
    InputError,
    NotFoundError,
    PayloadTooLargeError,
    QuidditchError,
    StageError,
)
from ...failures import redirectable
from .._body import json_object, parse_object, read_body
from .._errors import error_of
from .._pipelines import NO_PIPELINE, final_pipeline_name, pipeline_name
from .._responses import EXISTS, BulkBody, DocBody, ErrorBody, JsonResponse, WriteBody, json_body_doc, responses
from .._routing import AppContext, PipelineParam, RefreshParam, refresh_flag, route
from ..engine import (
    DeleteOp,
    IndexInfo,
    IndexOp,
    WriteResult,
    validate_doc_id,
    validate_index_name,
)
from ..engine.backend import InvalidIndexNameError, failure_store_owner
from ..engine.backend import new_doc_id as _new_id
from ..failure_store import FailedDocument, FailureStoreOutcome


def _write_body(index: str, result: WriteResult, *, refreshed: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "_index": index,
        "_id": result.id,
        "_version": result.version,
        "result": result.result,
        "_shards": {"total": 1, "successful": 1, "failed": 0},
    }
    if refreshed:
        body["forced_refresh"] = True
    return body


def _noop_body(index: str, doc_id: str) -> dict[str, Any]:
    return {"_index": index, "_id": doc_id, "result": "noop", "_shards": {"total": 0, "successful": 0, "failed": 0}}


@dataclass(slots=True)
class _BulkItem:
    action: str
    index: str | None
    id: str | None
    pipeline: str | None
    source: dict[str, Any] | None = None
    raw: bytes = b""  # the source line as it arrived: parsed here only when no pipeline parses it first
    line: int = 0
    auto_id: bool = False
    error: QuidditchError | None = None
    result: WriteResult | None = None
    dropped: bool = False
    #: Where its pipeline failed: the pipelines that guarded it (for the failure store's ``pipeline_trace``).
    guards: tuple[str, ...] = ()
    #: Elasticsearch's ``failure_store`` flag (``used``, ``not_enabled``, ``failed``) and where it went.
    failure: FailureStoreOutcome | None = None

    def response(self) -> dict[str, Any]:
        body: dict[str, Any] = {"_index": self.index, "_id": self.id}
        if self.error is not None:
            body.update(status=self.error.status, error=error_of(self.error)["error"])
        elif self.dropped:
            body.update(_noop_body(self.index or "", self.id or ""), status=200)
        else:
            assert self.result is not None and self.index is not None
            body.update(_write_body(self.index, self.result), status=self.result.status)
        if self.failure is not None:
            self.failure.annotate(body)
        return {self.action: body}


_BULK_META: Final = frozenset({"_index", "_id", "pipeline", "routing", "require_alias", "op_type"})


def _parse_bulk(raw: bytes, default_index: str | None, max_items: int) -> list[_BulkItem]:
    """NDJSON action lines, each followed by a source line except for ``delete``."""
    lines = raw.split(b"\n")
    items: list[_BulkItem] = []
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        number += 1
        if not line:
            continue
        try:
            action_line = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DefinitionError([(f"line {number}", f"not valid JSON: {exc}")], subject="bulk request") from exc
        if not isinstance(action_line, dict) or len(action_line) != 1:
            raise DefinitionError(
                [(f"line {number}", "an action line is an object with one key: index, create, delete or update")],
                subject="bulk request",
            )
        ((action, meta),) = action_line.items()
        if action not in {"index", "create", "delete", "update"}:
            raise DefinitionError(
                [(f"line {number}", f"unknown action [{action}]; expected one of create, delete, index, update")],
                subject="bulk request",
            )
        if not isinstance(meta, dict) or set(meta) - _BULK_META:
            unknown = sorted(set(meta) - _BULK_META) if isinstance(meta, dict) else ["(not an object)"]
            raise DefinitionError(
                [(f"line {number}", f"unknown action parameter {unknown[0]}")], subject="bulk request"
            )
        if len(items) >= max_items:
            raise PayloadTooLargeError(f"a bulk request may hold at most {max_items} actions")
        index = meta.get("_index", default_index)
        if not isinstance(index, str):
            raise DefinitionError([(f"line {number}", "index is missing")], subject="bulk request")
        doc_id = meta.get("_id")
        if doc_id is not None and not isinstance(doc_id, str):
            doc_id = str(doc_id)
        op_type = meta.get("op_type")
        if op_type is not None:
            # ``op_type: create`` on an index action is a create: refused, never an overwrite, if the id exists.
            fits = action in {"index", "create"} and op_type in {"index", "create"}
            if not fits or (action, op_type) == ("create", "index"):
                raise DefinitionError(
                    [(f"line {number}", f"op_type [{op_type}] does not fit the {action} action")],
                    subject="bulk request",
                )
            action = op_type
        pipeline = meta.get("pipeline")
        item = _BulkItem(action, index, doc_id, pipeline if isinstance(pipeline, str) else None)
        items.append(item)
        if action == "delete":
            if doc_id is None:
                raise DefinitionError([(f"line {number}", "id is missing for delete")], subject="bulk request")
            continue
        if number >= len(lines) or not lines[number].strip():
            raise DefinitionError(
                [(f"line {number + 1}", f"the {action} action needs a source line")], subject="bulk request"
            )
        source_line = lines[number]
        number += 1
        if action == "update":
            item.error = InputError("the update action is not supported; use index to replace the document")
            continue
        item.raw, item.line = source_line, number
        if doc_id is None:
            item.id, item.auto_id = _new_id(), True
    return items


def _parse_source(item: _BulkItem, raw: bytes) -> None:
    """The item's source from JSON bytes, or its per-item error naming the line it came from."""
    try:
        item.source = parse_object(raw, required=True, what=f"document source (line {item.line})")
    except DefinitionError as exc:
        item.error = exc


def router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    svc, backend = ctx.service, ctx.backend

    def write_one(
        index: str,
        doc_id: str,
        source: dict[str, Any],
        pipeline: str | None,
        refresh: bool,
        *,
        create: bool,
        auto_id: bool = False,
    ) -> Response:
        if failure_store_owner(index) is not None:
            raise InvalidIndexNameError(index, "a failure store is written only with the failures of its index")
        info = backend.get_index(index)
        validate_doc_id(doc_id)
        guards = (pipeline_name(info, "document", pipeline), final_pipeline_name(info, "document"))
        try:
            processed = svc.process_document(index, doc_id, source, pipeline=guards[0], final_pipeline=guards[1])
        except QuidditchError as exc:
            if not redirectable(exc):
                raise
            failed = FailedDocument(None if auto_id else doc_id, source, exc, guards, "create" if create else "index")
            (outcome,) = ctx.failures.redirect(info, [failed], refresh=refresh)
            written = outcome.result
            body = error_of(exc) if written is None else _write_body(index, written, refreshed=refresh)
            outcome.annotate(body)
            return JsonResponse(body, status_code=exc.status if written is None else written.status)
        if processed is None:
            return JsonResponse(_noop_body(index, doc_id))
        (result,) = backend.bulk(index, [IndexOp(doc_id, processed, create=create, auto_id=auto_id)], refresh=refresh)
        if isinstance(result, QuidditchError):
            raise result
        return JsonResponse(_write_body(index, result, refreshed=refresh), status_code=result.status)

    doc_body = json_body_doc({"type": "object", "description": "the document's source"})
    write_responses = {
        **responses(WriteBody, 400, 404, 409, 413, ok_status=201),
        200: {"model": WriteBody, "description": "Replaced, or dropped by the pipeline (noop)"},
    }

    @route(router, ["PUT", "POST"], "/{index}/_doc/{doc_id:path}", responses=write_responses, openapi_extra=doc_body)
    async def index_document(
        index: str,
        doc_id: str,
        request: Request,
        pipeline: PipelineParam = None,
        refresh: RefreshParam = None,
        op_type: Annotated[Literal["index", "create"], Query()] = "index",
    ) -> Response:
        """Index a document under an id, through the index's document pipeline (or ``?pipeline=``)."""
        source = await json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(
            write_one, index, doc_id, source, pipeline, refresh_flag(refresh), create=op_type == "create"
        )

    @route(router, ["PUT", "POST"], "/{index}/_create/{doc_id:path}", responses=write_responses, openapi_extra=doc_body)
    async def create_document(
        index: str, doc_id: str, request: Request, pipeline: PipelineParam = None, refresh: RefreshParam = None
    ) -> Response:
        """Index a document only if its id is new (409 otherwise)."""
        source = await json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(write_one, index, doc_id, source, pipeline, refresh_flag(refresh), create=True)

    @route(router, ["POST"], "/{index}/_doc", responses=write_responses, openapi_extra=doc_body)
    async def index_document_auto_id(
        index: str, request: Request, pipeline: PipelineParam = None, refresh: RefreshParam = None
    ) -> Response:
        """Index a document under a generated id."""
        source = await json_object(request, ctx.limits.max_body_bytes, required=True)
        return await run_in_threadpool(
            write_one, index, _new_id(), source, pipeline, refresh_flag(refresh), create=True, auto_id=True
        )

    @route(
        router,
        ["GET"],
        "/{index}/_doc/{doc_id:path}",
        responses={
            **responses(DocBody, 400),
            404: {"model": ErrorBody | DocBody, "description": "No such index (error), or no such document"},
        },
    )
    def get_document(index: str, doc_id: str) -> Response:
        """Real-time get: a document is here as soon as it is acknowledged."""
        doc = backend.get_doc(index, doc_id)
        if doc is None:
            return JsonResponse({"_index": index, "_id": doc_id, "found": False}, status_code=404)
        return JsonResponse(
            {"_index": index, "_id": doc_id, "_version": doc.version, "found": True, "_source": doc.source}
        )

    @route(router, ["HEAD"], "/{index}/_doc/{doc_id:path}", response_class=Response, responses=EXISTS)
    def document_exists(index: str, doc_id: str) -> Response:
        try:
            found = backend.get_doc(index, doc_id) is not None
        except NotFoundError:
            found = False
        return Response(status_code=200 if found else 404)

    @route(
        router,
        ["DELETE"],
        "/{index}/_doc/{doc_id:path}",
        responses={
            **responses(WriteBody, 400),
            404: {"model": ErrorBody | WriteBody, "description": "No such index (error), or no such document"},
        },
    )
    def delete_document(index: str, doc_id: str, refresh: RefreshParam = None) -> Response:
        (result,) = backend.bulk(index, [DeleteOp(doc_id)], refresh=refresh_flag(refresh))
        if isinstance(result, QuidditchError):
            raise result
        return JsonResponse(_write_body(index, result), status_code=result.status)

    bulk_doc = {
        "requestBody": {
            "required": True,
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    }
    bulk_responses = responses(BulkBody, 400, 404, 413)

    @route(router, ["POST", "PUT"], "/_bulk", responses=bulk_responses, openapi_extra=bulk_doc)
    async def bulk(request: Request, pipeline: PipelineParam = None, refresh: RefreshParam = None) -> dict[str, Any]:
        """NDJSON index, create and delete actions; one result per action, in order."""
        raw = await read_body(request, ctx.limits.max_body_bytes)
        return await run_in_threadpool(run_bulk, raw, None, pipeline, refresh_flag(refresh))

    @route(router, ["POST", "PUT"], "/{index}/_bulk", responses=bulk_responses, openapi_extra=bulk_doc)
    async def bulk_index(
        index: str, request: Request, pipeline: PipelineParam = None, refresh: RefreshParam = None
    ) -> dict[str, Any]:
        """Bulk with a default index for actions that name none."""
        raw = await read_body(request, ctx.limits.max_body_bytes)
        return await run_in_threadpool(run_bulk, raw, index, pipeline, refresh_flag(refresh))

    def run_bulk(raw: bytes, default_index: str | None, pipeline: str | None, refresh: bool) -> dict[str, Any]:
        started = time.perf_counter()
        items = _parse_bulk(raw, default_index, ctx.limits.max_bulk_items)
        infos: dict[str, IndexInfo] = {}
        # An index that cannot be looked up is looked up once per request, not once per item (an unreachable
        # upstream would otherwise cost its retries for every item).
        refused: dict[str, QuidditchError] = {}
        for item in items:
            if item.error is not None or item.index is None:
                continue
            if item.index in refused:
                item.error = refused[item.index]
                continue
            try:
                if item.index not in infos:
                    validate_index_name(item.index)
                    infos[item.index] = backend.get_index(item.index)
                if item.id is not None:
                    validate_doc_id(item.id)
            except QuidditchError as exc:
                item.error = exc
                if item.index not in infos:
                    refused[item.index] = exc
        run_document_pipelines(items, infos, pipeline)
        redirect(items, infos, refresh)
        write(items, refresh)
        return {
            "took": int((time.perf_counter() - started) * 1000),
            "errors": any(item.error is not None for item in items),
            "items": [item.response() for item in items],
        }

    def run_document_pipelines(items: list[_BulkItem], infos: dict[str, IndexInfo], pipeline: str | None) -> None:
        """One batch per (index, pipeline): each stage runs once over the batch."""
        groups: dict[tuple[str, str | None], list[_BulkItem]] = {}
        for item in items:
            if item.action in {"index", "create"} and item.error is None and item.index is not None:
                groups.setdefault((item.index, item.pipeline or pipeline), []).append(item)
        for (index, override), group in groups.items():
            name = pipeline_name(infos[index], "document", override)
            final = final_pipeline_name(infos[index], "document")
            if name == NO_PIPELINE and final == NO_PIPELINE:
                for item in group:
                    _parse_source(item, item.raw)
                continue
            # The source lines go to the pipeline as they arrived (a worker parses them, not this process);
            # what comes back is parsed once, for the index.
            try:
                outcomes = svc.process_documents_json(
                    index, [(item.id, item.raw) for item in group], pipeline=name, final_pipeline=final
                )
            except QuidditchError as exc:
                for item in group:
                    item.error = exc
                continue
            for item, outcome in zip(group, outcomes, strict=True):
                if outcome.status == "dropped":
                    item.dropped = True
                elif isinstance(outcome.error, InputError):  # the source line itself is not a JSON object
                    where = f"document source (line {item.line})"
                    item.error = DefinitionError([("", outcome.error.message)], subject=where)
                elif outcome.status == "failed":
                    item.error = _outcome_error(outcome.error, name, item.id)
                    item.guards = (name, final)
                else:
                    _parse_source(item, outcome.source_json or b"")

    def redirect(items: list[_BulkItem], infos: dict[str, IndexInfo], refresh: bool) -> None:
        """Items whose pipeline failed go to their index's failure store, when it has one (durably, now)."""
        failed: dict[str, list[tuple[_BulkItem, FailedDocument]]] = {}
        for i in items:
            if i.index in infos and i.error is not None and redirectable(i.error):
                doc = FailedDocument(None if i.auto_id else i.id, orjson.loads(i.raw), i.error, i.guards, i.action)
                failed.setdefault(i.index, []).append((i, doc))
        for index, group in failed.items():
            outcomes = ctx.failures.redirect(infos[index], [doc for _, doc in group], refresh=refresh)
            for (item, _), outcome in zip(group, outcomes, strict=True):
                item.failure = outcome
                if outcome.result is not None:
                    item.error, item.result = None, outcome.result

    def write(items: list[_BulkItem], refresh: bool) -> None:
        by_index: dict[str, list[_BulkItem]] = {}
        for item in items:
            if item.error is None and not item.dropped and item.result is None and item.index is not None:
                by_index.setdefault(item.index, []).append(item)
        for index, group in by_index.items():
            ops = [
                DeleteOp(item.id or "")
                if item.action == "delete"
                else IndexOp(item.id or "", item.source or {}, create=item.action == "create", auto_id=item.auto_id)
                for item in group
            ]
            try:
                results = backend.bulk(index, ops, refresh=refresh)
            except QuidditchError as exc:
                for item in group:
                    item.error = exc
                continue
            for item, result in zip(group, results, strict=True):
                if isinstance(result, QuidditchError):
                    item.error = result
                else:
                    item.result = result

    return router


def _outcome_error(error: object, pipeline: str | None, doc_id: str | None) -> QuidditchError:
    if isinstance(error, QuidditchError):
        return error
    return StageError(str(error), pipeline=pipeline or "", input_id=doc_id)
