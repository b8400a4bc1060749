"""Query synonyms — a query-pipeline UDF: expands ``match`` queries with synonyms from ``params``.

``value`` is the search body. Every ``match`` clause (at the top of ``query`` or inside ``bool``) whose
text contains a word listed in ``params["synonyms"]`` (``{"laptop": ["notebook"]}``) gets the synonyms
appended, and ``"operator": "or"``, so any of them matches. Returns ``{"query": <rewritten query>}``, which
the host merges into the request; a body with nothing to expand is left unchanged (``None``).
"""


def _expand(text, synonyms):
    words = text.split()
    extra = []
    for word in words:
        for synonym in synonyms.get(word.lower(), []):
            if synonym not in words and synonym not in extra:
                extra.append(synonym)
    return " ".join(words + extra) if extra else None


def _rewrite(query, synonyms):
    """The query with its match clauses expanded, or None when nothing changed."""
    if not isinstance(query, dict):
        return None
    if isinstance(query.get("match"), dict):
        clauses = {}
        for field, spec in query["match"].items():
            options = dict(spec) if isinstance(spec, dict) else {"query": spec}
            expanded = _expand(str(options.get("query", "")), synonyms)
            if expanded is not None:
                options.update(query=expanded, operator="or")
                clauses[field] = options
        return {"match": {**query["match"], **clauses}} if clauses else None
    if isinstance(query.get("bool"), dict):
        rewritten = dict(query["bool"])
        changed = False
        for occur in ("must", "should", "filter", "must_not"):
            clauses = rewritten.get(occur)
            items = clauses if isinstance(clauses, list) else [clauses] if clauses is not None else []
            new = [_rewrite(c, synonyms) for c in items]
            if any(n is not None for n in new):
                changed = True
                rewritten[occur] = [n if n is not None else c for n, c in zip(new, items, strict=True)]
        return {"bool": rewritten} if changed else None
    return None


def process(value, params):
    query = _rewrite(value.get("query"), params.get("synonyms", {}))
    return None if query is None else {"query": query}
