"""One router per resource, each built by ``router(ctx)`` and joined in :func:`~quidditch_pipeline.server.create_app`.

* :mod:`.root` — ``GET /`` (server information);
* :mod:`.pipelines` — ``/_pipeline``: definitions, revisions, ``_execute``, ``_stats``;
* :mod:`.udfs` — ``/_udf``: versions, builds, ``_execute``;
* :mod:`.indexes` — ``/{index}``, ``_settings``, ``_refresh``, ``_cat/indices``;
* :mod:`.documents` — ``_doc``, ``_create``, ``_bulk``;
* :mod:`.search` — ``_search``, ``_count``.
"""
