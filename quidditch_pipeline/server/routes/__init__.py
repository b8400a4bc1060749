"""One router per resource, each built by ``router(ctx)`` and joined in :func:`~quidditch_pipeline.server.create_app`.

* :mod:`.root` — ``GET /`` (server information);
* :mod:`.metrics` — ``GET /_prometheus/metrics`` (Prometheus);
* :mod:`.pipelines` — ``/_pipeline``: definitions, revisions, ``_execute``, ``_stats``;
* :mod:`.imports` — ``/_pipeline/{name}/_import``: pipelines written for Elasticsearch or OpenSearch;
* :mod:`.ingest` — ``/_ingest/pipeline`` and ``/_search/pipeline``: the other engines' paths, as aliases;
* :mod:`.udfs` — ``/_udf``: versions, builds, ``_execute``;
* :mod:`.indexes` — ``/{index}``, ``_settings``, ``_refresh``, ``_cat/indices``;
* :mod:`.documents` — ``_doc``, ``_create``, ``_bulk``;
* :mod:`.search` — ``_search``, ``_count``.
"""
