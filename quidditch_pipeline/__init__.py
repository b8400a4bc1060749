"""quidditch-pipeline: document, query and result pipelines for a search engine, whose stages are Python UDFs
compiled to WebAssembly and run sandboxed in wasmtime, native processors, composites and pipeline calls."""

from __future__ import annotations

from ._outcome import DROP, Drop

# Registers the OpenSearch-equivalent processors, so a stored pipeline that uses them loads in any host.
from .compat import search_processors as _search_processors  # noqa: F401
from .definitions import (
    FailurePolicy,
    PipelineDefinition,
    PipelineType,
    RetryPolicy,
    StageType,
    dump_definition,
    load_definition,
    parse_definition,
)
from .errors import (
    ConflictError,
    DefinitionError,
    InputError,
    NotFoundError,
    PipelineTimeoutError,
    PipelineUnavailableError,
    QueryRejectedError,
    QuidditchError,
    RejectedExecutionError,
    StageError,
    StageTimeoutError,
    StorageError,
    UdfBuildError,
    UdfCallError,
    UdfError,
    UdfLoadError,
    UdfMemoryError,
    UdfTimeoutError,
    WorkerError,
)
from .processors import ProcessorError, register_processor
from .service import DocumentOutcome, JsonDocumentOutcome, PipelineService

__all__ = [
    "DROP",
    "ConflictError",
    "DefinitionError",
    "DocumentOutcome",
    "Drop",
    "FailurePolicy",
    "InputError",
    "JsonDocumentOutcome",
    "NotFoundError",
    "PipelineDefinition",
    "PipelineService",
    "PipelineTimeoutError",
    "PipelineType",
    "PipelineUnavailableError",
    "ProcessorError",
    "QueryRejectedError",
    "QuidditchError",
    "RejectedExecutionError",
    "RetryPolicy",
    "StageError",
    "StageTimeoutError",
    "StageType",
    "StorageError",
    "UdfBuildError",
    "UdfCallError",
    "UdfError",
    "UdfLoadError",
    "UdfMemoryError",
    "UdfTimeoutError",
    "WorkerError",
    "dump_definition",
    "load_definition",
    "parse_definition",
    "register_processor",
]

__version__ = "0.1.0"
