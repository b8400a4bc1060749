"""The project's exceptions, in one place.

::

    QuidditchError
     ├── DefinitionError        a pipeline definition or a request body is invalid (HTTP 400);
     │                          ``problems`` lists ``(field path, message)`` pairs
     ├── InputError             an input does not fit the pipeline type (HTTP 400)
     ├── NotFoundError          an unknown pipeline, UDF, UDF version or index (HTTP 404)
     ├── ConflictError          in use, immutable version, wrong type (HTTP 409)
     ├── StageError             one stage failed for one input: pipeline, stage, type, input id, cause
     │    ├── StageTimeoutError the stage ran past its deadline (preempted, or checked when it returned)
     │    └── StageUnavailableError  the stage cannot run at all (its UDF or called pipeline is gone):
     │                          the input fails whatever the stage's policy (fail closed)
     ├── PipelineTimeoutError   the whole pipeline ran past its deadline
     ├── QueryRejectedError     a query pipeline said no to a search request (HTTP 400)
     ├── UdfError               raised by the UDF toolchain and runtime
     │    ├── UdfBuildError     componentize-py refused the source (file, line, message)
     │    ├── UdfLoadError      a component could not be compiled or instantiated
     │    └── UdfCallError      a whole call into WASM failed; ``kind`` is ``trap``, ``timeout``,
     │         │                ``memory`` or ``output``
     │         ├── UdfTimeoutError
     │         └── UdfMemoryError
     ├── PipelineUnavailableError  an index's configured pipeline is missing or cannot be built: the
     │                          writes or searches it guards are refused (fail closed, HTTP 400)
     ├── WorkerError            a pipeline worker process died or hung while it held the item (HTTP 503:
     │                          the item was not processed; sending it again is safe)
     ├── StorageError           the durable store could not be read or written
 │    └── StorageUnavailableError  the shared registry database is unreachable: changes are refused
 │                          (HTTP 503) while what is cached keeps serving
     ├── AuthenticationError    an admin route was called without the admin token (HTTP 401)
     ├── PayloadTooLargeError   a request is larger than the server's limits allow (HTTP 413)
     ├── RequestTimeoutError    a request body did not arrive within the server's read deadline (HTTP 408)
     ├── RejectedExecutionError too much work at once: a bounded queue is full (HTTP 429)
     │    └── CircuitBreakingError  request bytes in flight exceed the breaker's limit (HTTP 429)
     └── UpstreamError          a gateway's upstream cluster answered an error: its type, reason, status and
          │                     other fields passed on as they came
          ├── UpstreamUnavailableError  the upstream cannot be reached (HTTP 502, naming it)
          └── UpstreamTimeoutError      the upstream did not answer within the timeout (HTTP 504)

Errors of a dependency (wasmtime, componentize-py, tantivy, sqlite) are translated into these where they
are caught, with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AuthenticationError",
    "CircuitBreakingError",
    "ConflictError",
    "DefinitionError",
    "InputError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PipelineTimeoutError",
    "PipelineUnavailableError",
    "QueryRejectedError",
    "QuidditchError",
    "RejectedExecutionError",
    "RequestTimeoutError",
    "StageError",
    "StageTimeoutError",
    "StageUnavailableError",
    "StorageError",
    "StorageUnavailableError",
    "UdfBuildError",
    "UdfCallError",
    "UdfError",
    "UdfLoadError",
    "UdfMemoryError",
    "UdfTimeoutError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "WorkerError",
]


class QuidditchError(Exception):
    """Base of every error this package raises on purpose."""

    #: The Elasticsearch-style ``error.type`` the HTTP layer reports.
    error_type = "quidditch_exception"
    #: The HTTP status the HTTP layer answers with.
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class DefinitionError(QuidditchError):
    """A definition or request is invalid; ``problems`` holds ``(field path, message)`` pairs."""

    error_type = "parse_exception"
    status = 400

    def __init__(self, problems: Sequence[tuple[str, str]], *, subject: str = "pipeline definition") -> None:
        self.problems = [(path, msg) for path, msg in problems]
        lines = [f"{path}: {msg}" if path else msg for path, msg in self.problems]
        super().__init__(f"invalid {subject}: " + "; ".join(lines))
        self.subject = subject

    def __repr__(self) -> str:
        return f"DefinitionError(subject={self.subject!r}, problems={self.problems!r})"


class InputError(QuidditchError):
    """An input does not fit what the pipeline type accepts."""

    error_type = "illegal_argument_exception"
    status = 400


class NotFoundError(QuidditchError):
    """Something named does not exist."""

    error_type = "resource_not_found_exception"
    status = 404

    def __init__(self, kind: str, name: str, detail: str = "") -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} [{name}] not found" + (f": {detail}" if detail else ""))

    def __repr__(self) -> str:
        return f"NotFoundError(kind={self.kind!r}, name={self.name!r})"


class ConflictError(QuidditchError):
    """The change conflicts with what is stored (in use, immutable, wrong type)."""

    error_type = "illegal_state_exception"
    status = 409


class StageError(QuidditchError):
    """One stage failed for one input. Wrapped once, at the innermost stage; outer layers pass it on."""

    error_type = "pipeline_execution_exception"
    status = 400
    kind = "error"

    def __init__(
        self,
        cause: str,
        *,
        pipeline: str = "",
        stage: str = "",
        stage_type: str = "",
        input_id: str | None = None,
        cause_type: str | None = None,
        tag: str | None = None,
    ) -> None:
        self.cause = cause
        self.pipeline = pipeline
        self.stage = stage
        self.stage_type = stage_type
        self.input_id = input_id
        self.cause_type = cause_type or self.kind
        self.tag = tag
        super().__init__(self._render())

    def _render(self) -> str:
        tag = f" tag [{self.tag}]" if self.tag else ""
        where = f"pipeline [{self.pipeline}] stage [{self.stage}]{tag} ({self.stage_type})"
        on = f" on input [{self.input_id}]" if self.input_id is not None else ""
        return f"{where} failed{on}: {self.cause}"

    def located(
        self, *, pipeline: str, stage: str, stage_type: str, input_id: str | None, tag: str | None = None
    ) -> StageError:
        """This error with its location filled in (only where it is still blank: innermost wins)."""
        if self.stage:
            tag = self.tag
        err = type(self)(
            self.cause,
            pipeline=self.pipeline or pipeline,
            stage=self.stage or stage,
            stage_type=self.stage_type or stage_type,
            input_id=self.input_id if self.input_id is not None else input_id,
            cause_type=self.cause_type,
            tag=tag,
        )
        return err

    def to_dict(self) -> dict[str, object]:
        return {
            "type": self.cause_type,
            "reason": self.message,
            "pipeline": self.pipeline,
            "stage": self.stage,
            "stage_type": self.stage_type,
            "input_id": self.input_id,
            "tag": self.tag,
            "cause": self.cause,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pipeline={self.pipeline!r}, stage={self.stage!r}, "
            f"input_id={self.input_id!r}, cause={self.cause!r})"
        )


class StageTimeoutError(StageError):
    """The stage ran past its deadline."""

    kind = "timeout"


class StageUnavailableError(StageError):
    """The stage cannot run at all: its UDF version or called pipeline is gone or cannot be loaded.

    Unlike other stage errors no policy applies (``continue`` would pass the input on without the stage):
    the input fails, and the service refuses the request with :class:`PipelineUnavailableError`.
    """

    kind = "unavailable"


class PipelineTimeoutError(StageError):
    """The pipeline's own deadline passed before or while a stage ran."""

    kind = "timeout"


class QueryRejectedError(QuidditchError):
    """A query pipeline rejected the search request."""

    error_type = "query_rejected_exception"
    status = 400

    def __init__(self, message: str, *, pipeline: str = "", stage: str = "") -> None:
        super().__init__(message)
        self.pipeline = pipeline
        self.stage = stage


class UdfError(QuidditchError):
    """Base of the UDF toolchain's and runtime's errors."""

    error_type = "udf_exception"
    status = 400


class UdfBuildError(UdfError):
    """Building a UDF failed; names the file and line when the compiler said them."""

    error_type = "udf_build_exception"

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        super().__init__(where + message)


class UdfLoadError(UdfError):
    """A component could not be compiled, deserialised or instantiated."""

    error_type = "udf_load_exception"


class UdfCallError(UdfError):
    """A whole call into WASM failed (the instance is discarded)."""

    kind = "trap"

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class UdfTimeoutError(UdfCallError):
    """The call was preempted at its deadline (epoch interruption)."""

    kind = "timeout"


class UdfMemoryError(UdfCallError):
    """The instance hit its linear-memory limit."""

    kind = "memory"


class PipelineUnavailableError(QuidditchError):
    """The pipeline an index is configured with is missing or cannot be built; what it guards is refused."""

    error_type = "illegal_argument_exception"
    status = 400

    def __init__(self, index: str, kind: str, pipeline: str, cause: str) -> None:
        self.index = index
        self.kind = kind
        self.pipeline = pipeline
        self.cause = cause
        super().__init__(f"index [{index}]: {kind} pipeline [{pipeline}] is unavailable: {cause}")

    def __repr__(self) -> str:
        return f"PipelineUnavailableError(index={self.index!r}, kind={self.kind!r}, pipeline={self.pipeline!r})"


class WorkerError(QuidditchError):
    """The pipeline worker process that held this item died or stopped answering; the item was not processed."""

    error_type = "pipeline_worker_exception"
    status = 503

    def __init__(self, message: str, *, pid: int | None = None, pipeline: str = "") -> None:
        super().__init__(message)
        self.pid = pid
        self.pipeline = pipeline

    def __repr__(self) -> str:
        return f"WorkerError(pid={self.pid!r}, pipeline={self.pipeline!r}, message={self.message!r})"


class StorageError(QuidditchError):
    """The durable store failed."""

    error_type = "storage_exception"
    status = 500


class StorageUnavailableError(StorageError):
    """The shared registry database cannot be reached: a change is refused; sending it again later is safe."""

    error_type = "storage_unavailable_exception"
    status = 503


class AuthenticationError(QuidditchError):
    """An admin route was called without the admin token."""

    error_type = "security_exception"
    status = 401


class PayloadTooLargeError(QuidditchError):
    """A request is larger than the server's limits allow."""

    error_type = "request_entity_too_large_exception"
    status = 413


class RequestTimeoutError(QuidditchError):
    """A request body did not arrive within the server's read deadline (a slow or stalled client)."""

    error_type = "request_timeout_exception"
    status = 408


class RejectedExecutionError(QuidditchError):
    """A bounded queue is full (server-side UDF builds, pipeline workers): try again later."""

    error_type = "es_rejected_execution_exception"
    status = 429


class CircuitBreakingError(RejectedExecutionError):
    """Request bytes in flight across all requests would exceed the breaker's limit."""

    error_type = "circuit_breaking_exception"


class UpstreamError(QuidditchError):
    """The upstream cluster of a gateway answered an error; it is passed on with its own type and status.

    ``details`` holds the upstream error's other fields (``caused_by``, ``index``, ``shard``...), shown as they
    came, so a client sees what the cluster said."""

    def __init__(
        self, upstream: str, error_type: str, reason: str, status: int, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(reason)
        self.upstream = upstream
        self.error_type = error_type
        self.status = status
        self.details = details or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.upstream!r}, {self.error_type!r}, {self.message!r}, {self.status})"


class UpstreamUnavailableError(UpstreamError):
    """The upstream cannot be reached (refused, reset, DNS, TLS): nothing was done there."""

    def __init__(self, upstream: str, cause: str) -> None:
        super().__init__(upstream, "connect_transport_exception", f"upstream [{upstream}] is unavailable: {cause}", 502)


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer in time: the request may or may not have taken effect there."""

    def __init__(self, upstream: str, timeout_s: float) -> None:
        super().__init__(
            upstream,
            "receive_timeout_transport_exception",
            f"upstream [{upstream}] did not answer within {timeout_s:g} s",
            504,
        )
