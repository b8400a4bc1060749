"""The pipelines users already have (DESIGN §13): Elasticsearch ingest pipelines and OpenSearch search pipelines
translated into this project's definitions, and back where expressible.

Every translation returns a :class:`Translation`: the definition(s) and a list of :class:`Finding` s, each naming
its position in the source (``processors[2].set.if``) and whether leaving it out changes behaviour. Nothing is
dropped silently: :meth:`Translation.require_lossless` refuses a lossy translation unless the caller accepts it.
"""

from __future__ import annotations

from ._import import import_pipeline, translate
from ._report import Finding, Translation
from ._stored import stored_definition
from .elasticsearch import from_elasticsearch, to_elasticsearch
from .opensearch import from_opensearch, pipeline_names, to_opensearch

__all__ = [
    "Finding",
    "Translation",
    "from_elasticsearch",
    "from_opensearch",
    "import_pipeline",
    "pipeline_names",
    "stored_definition",
    "to_elasticsearch",
    "to_opensearch",
    "translate",
]
