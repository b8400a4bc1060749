"""``UpstreamBackend``: the ``SearchBackend`` of gateway mode, an Elasticsearch or OpenSearch cluster.

The HTTP layer runs the pipelines as it does in front of the embedded host; this backend forwards what is left
to the cluster through ``elastic_transport`` (the transport of the official Elasticsearch client; it speaks to
OpenSearch alike, since it does no product check): one connection pool per node, retries of 429/502/503/504
answers and of refused connections (with backoff across nodes), TLS and its certificates. Bodies are bytes in
and out (serialised here with orjson), so a search body and its extra URL parameters reach the cluster as they
came: aggregations, sort and highlighting work although the embedded host lacks them.

What the gateway keeps and the cluster never sees: the index settings this project owns (``OWN_SETTINGS``:
those that name pipelines, and ``index.failure_store.*``), which a cluster would refuse as unknown. They live in
the registry (pipelines as its index associations, the others as its index settings), so they persist with it,
and gateway nodes sharing one PostgreSQL registry share them. An index's failure store ``X::failures`` is the
ordinary upstream index ``quidditch-failures-X`` (``:`` is illegal there), created with mappings that keep what
failed unmapped (``FAILURE_STORE_MAPPINGS``); user index names with that prefix are refused.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, Protocol
from urllib.parse import quote, urlencode, urlsplit

import orjson
from elastic_transport import ConnectionTimeout, NodeConfig, Serializer, Transport, TransportError

from ...errors import InputError, QuidditchError, UpstreamError, UpstreamTimeoutError, UpstreamUnavailableError
from ...failures import FAILURE_STORE_MAPPINGS
from .backend import (
    FAILURE_STORE_SUFFIX,
    DeleteOp,
    IndexExistsError,
    IndexInfo,
    IndexNotFoundError,
    IndexOp,
    InvalidIndexNameError,
    StoredDoc,
    WriteResult,
    failure_store_index,
    failure_store_owner,
    validate_index_name,
)
from .settings import OWN_SETTINGS, PIPELINE_SETTINGS

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FAILURE_STORE_PREFIX",
    "KeptSettings",
    "UpstreamBackend",
    "UpstreamConfig",
    "UpstreamResponse",
    "upstream_index_name",
]

#: The upstream name of index ``X``'s failure store ``X::failures`` is ``quidditch-failures-X``.
FAILURE_STORE_PREFIX: Final = "quidditch-failures-"
#: Seconds one upstream request may take by default.
DEFAULT_TIMEOUT_S: Final = 30.0
#: The statuses the transport retries (Elasticsearch's own client retries the same).
RETRY_ON_STATUS: Final = (429, 502, 503, 504)
_RESULTS: Final[dict[str, Literal["created", "updated", "deleted", "not_found"]]] = {
    "created": "created", "updated": "updated", "deleted": "deleted", "not_found": "not_found",
    "noop": "updated",
}  # fmt: skip


def upstream_index_name(name: str) -> str:
    """The upstream index that holds backend index ``name``."""
    if name.endswith(FAILURE_STORE_SUFFIX):
        return FAILURE_STORE_PREFIX + name.removesuffix(FAILURE_STORE_SUFFIX)
    return name


def _backend_index_name(upstream: str) -> str:
    if upstream.startswith(FAILURE_STORE_PREFIX):
        return upstream.removeprefix(FAILURE_STORE_PREFIX) + FAILURE_STORE_SUFFIX
    return upstream


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where the cluster is and how to reach it. One of ``username``+``password``, ``api_key`` (Elasticsearch's
    ``ApiKey``) or ``bearer`` authenticates; ``ca_certs`` and ``verify_certs`` are for ``https://`` URLs."""

    urls: tuple[str, ...]
    username: str | None = None
    password: str | None = None
    api_key: str | None = None
    bearer: str | None = None
    ca_certs: str | None = None
    verify_certs: bool = True
    #: Seconds one upstream request may take; past it the gateway answers 504.
    request_timeout: float = DEFAULT_TIMEOUT_S
    #: Retries of a refused connection or a 429/502/503/504 answer.
    max_retries: int = 3
    #: Seconds an index's existence and upstream settings are reused before they are read again (the
    #: settings the gateway keeps are the registry's, always current).
    index_cache_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.urls:
            raise InputError("an upstream URL is required")
        if sum(x is not None for x in (self.username, self.api_key, self.bearer)) > 1:
            raise InputError("give one of upstream user and password, API key or bearer token")
        if (self.username is None) != (self.password is None):
            raise InputError("an upstream user needs a password, and a password a user")

    def headers(self) -> dict[str, str]:
        if self.api_key is not None:
            return {"authorization": f"ApiKey {self.api_key}"}
        if self.bearer is not None:
            return {"authorization": f"Bearer {self.bearer}"}
        if self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"authorization": f"Basic {token}"}
        return {}

    def nodes(self) -> list[NodeConfig]:
        nodes = []
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise InputError(f"upstream [{url}] must be an http:// or https:// URL")
            nodes.append(
                NodeConfig(
                    parts.scheme,
                    parts.hostname,
                    parts.port or (443 if parts.scheme == "https" else 9200),
                    path_prefix=parts.path.rstrip("/"),
                    headers=self.headers(),
                    request_timeout=self.request_timeout,
                    verify_certs=self.verify_certs,
                    ca_certs=self.ca_certs,
                    # Every request of the gateway's thread pool may be upstream at once.
                    connections_per_node=64,
                )
            )
        return nodes


class _Bytes(Serializer):
    """Bodies stay bytes through the transport: parsed (orjson) only where the gateway reads them."""

    mimetype: ClassVar[str] = "application/json"

    def loads(self, data: bytes) -> bytes:
        return data

    def dumps(self, data: Any) -> bytes:
        assert isinstance(data, bytes)
        return data


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    content_type: str
    body: bytes


_BYTES: Final = _Bytes()
_SERIALIZERS: Final = {
    mimetype: _BYTES
    for mimetype in (
        "application/json", "application/x-ndjson", "application/vnd.elasticsearch+json",
        "application/vnd.elasticsearch+x-ndjson", "application/yaml", "application/cbor", "application/smile",
        "text/*",
    )
}  # fmt: skip


class KeptSettings(Protocol):
    """Where a gateway keeps its indexes' own settings (``PipelineService``, over its registry)."""

    def associations(self, index: str) -> dict[str, str]:
        """The index's pipelines by kind (``document``, ``query_final``, …)."""
        ...

    def index_settings(self, index: str) -> dict[str, str]:
        """The index's other own settings, flat (``index.failure_store.enabled``, …)."""
        ...


class UpstreamBackend:
    """A ``SearchBackend`` whose indexes live in an Elasticsearch or OpenSearch cluster.

    ``kept`` holds the settings the gateway keeps for each index instead of sending them upstream
    (:meth:`kept_settings`).
    """

    def __init__(self, config: UpstreamConfig, kept: KeptSettings) -> None:
        self.config = config
        #: How errors name the upstream: its URLs, without credentials.
        self.name = ",".join(f"{n.scheme}://{n.host}:{n.port}{n.path_prefix}" for n in config.nodes())
        self._kept = kept
        self._transport = Transport(
            config.nodes(),
            serializers=_SERIALIZERS,
            max_retries=config.max_retries,
            retry_on_status=RETRY_ON_STATUS,
            # A timed-out write may have been applied: sending it again is the caller's decision.
            retry_on_timeout=False,
            retry_backoff_base=0.1,
            retry_backoff_cap=2.0,
            meta_header=False,
        )
        # backend name -> (read at, concrete upstream name, its flat settings)
        self._indexes: dict[str, tuple[float, str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------------- transport

    def forward(
        self, method: str, target: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> UpstreamResponse:
        """One request to the cluster as it is (``target``: path and query string); its answer as it came."""
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = content_type
        try:
            response = self._transport.perform_request(method, target, body=body, headers=headers)
        except ConnectionTimeout as exc:
            raise UpstreamTimeoutError(self.name, self.config.request_timeout) from exc
        except TransportError as exc:
            raise UpstreamUnavailableError(self.name, exc.message) from exc
        raw = response.body if isinstance(response.body, bytes) else b""
        return UpstreamResponse(response.meta.status, response.meta.headers.get("content-type") or "", raw)

    def _json(self, method: str, target: str, body: Any = None, *, ndjson: bool = False) -> dict[str, Any]:
        """The cluster's JSON answer; an error answer raised as the error it names."""
        payload = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
        answer = self.forward(method, target, payload, "application/x-ndjson" if ndjson else "application/json")
        data = self._parse(answer)
        if answer.status >= 400:
            raise self._error(answer.status, data.get("error"))
        return data

    def _parse(self, answer: UpstreamResponse) -> dict[str, Any]:
        try:
            data = orjson.loads(answer.body) if answer.body else {}
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            reason = f"upstream answered {answer.status} with a body that is not a JSON object"
            raise UpstreamError(self.name, "upstream_exception", reason, 502 if answer.status < 400 else answer.status)
        return data

    def _error(self, status: int, error: Any) -> QuidditchError:
        """The upstream's error as the project's: index not found and exists as such, the rest as they came."""
        if not isinstance(error, dict):
            reason = error if isinstance(error, str) else f"upstream answered {status}"
            return UpstreamError(self.name, "upstream_exception", reason, status)
        error_type = str(error.get("type", "upstream_exception"))
        index = _backend_index_name(str(error.get("index", "")))
        if error_type == "index_not_found_exception" and index:
            return IndexNotFoundError(index)
        if error_type == "resource_already_exists_exception" and index:
            return IndexExistsError(index)
        details = {key: value for key, value in error.items() if key not in {"type", "reason", "root_cause"}}
        return UpstreamError(self.name, error_type, str(error.get("reason", "")), status, details)

    # ----------------------------------------------------------------------------------------- indexes

    def create_index(self, name: str, settings: Mapping[str, Any] | None = None) -> IndexInfo:
        """Create ``name`` upstream with ``settings`` less this project's own (the caller keeps those); a
        failure store with the mappings that keep what failed unmapped."""
        upstream = {key: value for key, value in (settings or {}).items() if key not in OWN_SETTINGS}
        body: dict[str, Any] = {"settings": upstream} if upstream else {}
        if failure_store_owner(name) is not None:
            body["mappings"] = FAILURE_STORE_MAPPINGS
        return self.create_index_from_body(name, body)

    def create_index_from_body(self, name: str, body: Mapping[str, Any]) -> IndexInfo:
        """Create ``name`` upstream with an index creation body as Elasticsearch takes it (mappings, aliases,
        any setting), passed on unchanged."""
        base = name.removesuffix(FAILURE_STORE_SUFFIX)
        validate_index_name(base)
        if base.startswith(FAILURE_STORE_PREFIX):
            raise InvalidIndexNameError(name, f"must not start with [{FAILURE_STORE_PREFIX}] (failure stores)")
        self._forget(name)
        self._json("PUT", _path(upstream_index_name(name)), dict(body))
        return self.get_index(name)

    def delete_index(self, name: str) -> None:
        """Delete ``name`` upstream, and an index's failure store with it (as the embedded host does: a new
        index of the same name must neither show nor re-drive the old one's failures)."""
        self._forget(name)
        self._json("DELETE", _path(upstream_index_name(name)))
        if failure_store_owner(name) is None:
            store = failure_store_index(name)
            self._forget(store)
            answer = self.forward("DELETE", _path(upstream_index_name(store)))
            if answer.status >= 400 and answer.status != 404:  # 404: the index had no failure store
                raise self._error(answer.status, self._parse(answer).get("error"))

    def get_index(self, name: str) -> IndexInfo:
        concrete, settings = self._upstream_settings(name)
        backend_name = _backend_index_name(concrete)
        return IndexInfo(
            backend_name,
            str(settings.get("index.uuid", "")),
            int(settings.get("index.creation_date", 0)),
            {**settings, **self.kept_settings(backend_name)},
        )

    def kept_settings(self, name: str) -> dict[str, Any]:
        """The settings the gateway keeps for index ``name`` (flat keys): its pipelines and its other own
        settings, read from the registry on every call (always current)."""
        pipelines = {
            PIPELINE_SETTINGS[kind]: pipeline
            for kind, pipeline in self._kept.associations(name).items()
            if kind in PIPELINE_SETTINGS
        }
        return {**self._kept.index_settings(name), **pipelines}

    def list_indexes(self) -> list[IndexInfo]:
        """The cluster's open, visible indexes (``_cat/indices``, which Elasticsearch, OpenSearch and the
        embedded host all serve), each with its settings."""
        answer = self.forward("GET", "/_cat/indices?" + urlencode({"format": "json", "expand_wildcards": "open"}))
        if answer.status != 200:
            raise self._error(answer.status, self._parse(answer).get("error"))
        rows = orjson.loads(answer.body or b"[]")
        found = []
        for row in sorted(rows, key=lambda row: str(row.get("index"))):
            try:
                info = self.get_index(_backend_index_name(str(row.get("index"))))
            except IndexNotFoundError:
                continue  # deleted since it was listed
            docs = int(row.get("docs.count") or 0)
            found.append(IndexInfo(info.name, info.uuid, info.creation_date, info.settings, docs))
        return found

    def update_settings(self, name: str, changes: Mapping[str, Any]) -> IndexInfo:
        """Send ``changes`` less this project's own settings (the caller keeps those) to the index upstream."""
        upstream = {key: value for key, value in changes.items() if key not in OWN_SETTINGS}
        if upstream:
            self._forget(name)
            self._json("PUT", _path(upstream_index_name(name), "_settings"), upstream)
        return self.get_index(name)

    def _upstream_settings(self, name: str) -> tuple[str, dict[str, Any]]:
        """The concrete upstream index ``name`` is (itself, or an alias's) and its flat settings."""
        cached = self._indexes.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.config.index_cache_s:
            return cached[1], cached[2]
        target = _path(upstream_index_name(name), "_settings")
        found = self._json("GET", target + "?" + urlencode({"flat_settings": "true"}))
        if len(found) != 1:
            raise InputError(f"[{name}] names {len(found)} indexes; a gateway runs the pipelines of one index")
        ((concrete, body),) = found.items()
        settings = body.get("settings", {}) if isinstance(body, dict) else {}
        self._remember(name, concrete, settings)
        return concrete, settings

    def _remember(self, name: str, concrete: str, settings: dict[str, Any]) -> None:
        with self._lock:
            self._indexes[name] = (time.monotonic(), concrete, settings)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._indexes.pop(name, None)

    # ----------------------------------------------------------------------------------------- documents

    def bulk(
        self, index: str, ops: Sequence[IndexOp | DeleteOp], *, refresh: bool = False
    ) -> list[WriteResult | QuidditchError]:
        """One upstream ``_bulk`` for ``ops``; each item's answer mapped back, an error with its own type and
        status. A generated id is sent as an ``index`` action under that id, so a retried request overwrites
        instead of adding a second document."""
        target = upstream_index_name(index)
        lines = []
        for op in ops:
            if isinstance(op, DeleteOp):
                lines.append(orjson.dumps({"delete": {"_index": target, "_id": op.id}}))
                continue
            action = "create" if op.create and not op.auto_id else "index"
            lines.append(orjson.dumps({action: {"_index": target, "_id": op.id}}))
            lines.append(orjson.dumps(op.source))
        lines.append(b"")
        answer = self._json("POST", "/_bulk" + ("?refresh=true" if refresh else ""), b"\n".join(lines), ndjson=True)
        items = answer.get("items")
        if not isinstance(items, list) or len(items) != len(ops):
            count = len(items) if isinstance(items, list) else 0
            reason = f"upstream answered {count} bulk items for {len(ops)} actions"
            raise UpstreamError(self.name, "upstream_exception", reason, 502)
        return [self._item(op, item) for op, item in zip(ops, items, strict=True)]

    def _item(self, op: IndexOp | DeleteOp, item: Any) -> WriteResult | QuidditchError:
        body = next(iter(item.values()), None) if isinstance(item, dict) and len(item) == 1 else None
        if not isinstance(body, dict):
            return UpstreamError(self.name, "upstream_exception", f"a bulk item is not an object: {item!r}", 502)
        status = int(body.get("status", 500))
        if "error" in body:
            return self._error(status, body["error"])
        result = _RESULTS.get(str(body.get("result")), "updated")
        return WriteResult(str(body.get("_id", op.id)), int(body.get("_version", 0)), result)

    def get_doc(self, index: str, doc_id: str) -> StoredDoc | None:
        answer = self.forward("GET", _path(upstream_index_name(index), "_doc", doc_id))
        data = self._parse(answer)
        if answer.status == 404 and data.get("found") is False:
            return None
        if answer.status >= 400:
            raise self._error(answer.status, data.get("error"))
        return StoredDoc(str(data.get("_id", doc_id)), int(data.get("_version", 0)), data.get("_source") or {})

    # ----------------------------------------------------------------------------------------- search

    def search(
        self, index: str, body: Mapping[str, Any], params: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """``_search`` upstream with ``body`` and ``params`` as they are: the cluster validates and runs them."""
        query = "?" + urlencode(params) if params else ""
        return self._json("POST", _path(upstream_index_name(index), "_search") + query, dict(body))

    def count(self, index: str, body: Mapping[str, Any]) -> int:
        answer = self._json("POST", _path(upstream_index_name(index), "_count"), dict(body))
        return int(answer.get("count", 0))

    def refresh(self, index: str | None = None) -> None:
        self._json("POST", "/_refresh" if index is None else _path(upstream_index_name(index), "_refresh"))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> UpstreamBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _path(*parts: str) -> str:
    return "".join("/" + quote(part, safe=",*") for part in parts)
