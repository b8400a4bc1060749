"""How a JSON document is stored in tantivy: the schema, the derived fields, and reading a stored document back.

Each document is stored four ways: the original bytes (``_raw``, returned as ``_source``), a JSON field
``_source`` analysed with tantivy's default tokenizer and searched by path (``_source.title``), a JSON field
``_keyword`` holding the untokenized strings (what ``title.keyword`` means in Elasticsearch's dynamic mapping)
and a text field ``_all`` with every string leaf, which a query that names no field searches. ``_numbers``
(fast) holds the numbers for range queries and ``_field_names`` the paths present, for ``exists``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import tantivy

from ...errors import StorageError

__all__ = ["KEYWORD_IGNORE_ABOVE", "make_document", "schema", "stored"]


def schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("_id", stored=True, tokenizer_name="raw")
    builder.add_json_field("_source", stored=False, expand_dots_enabled=True)
    # Exact values and existence need no frequencies or positions ("basic").
    builder.add_json_field(
        "_keyword", stored=False, tokenizer_name="raw", index_option="basic", expand_dots_enabled=True
    )
    # Range queries on JSON paths need a fast (columnar) field; numbers only, so long texts cost nothing here.
    builder.add_json_field("_numbers", stored=False, fast=True, index_option="basic", expand_dots_enabled=True)
    builder.add_text_field("_all", stored=False)
    builder.add_text_field("_field_names", stored=False, tokenizer_name="raw", index_option="basic")
    builder.add_bytes_field("_raw", stored=True, indexed=False)
    builder.add_integer_field("_version", stored=True, indexed=False)
    return builder.build()


def stored(doc: tantivy.Document) -> tuple[str, int, bytes]:
    """A stored document's id, version and original source bytes."""
    doc_id, version, raw = doc.get_first("_id"), doc.get_first("_version"), doc.get_first("_raw")
    if doc_id is None or version is None or raw is None:
        raise StorageError("a stored document lacks _id, _version or _raw")
    return str(doc_id), int(version), bytes(raw)


#: Like Elasticsearch's ``ignore_above`` on the ``.keyword`` of a dynamic mapping: longer strings are not
#: indexed for exact match (they cost a unique term each and nobody matches them exactly).
KEYWORD_IGNORE_ABOVE: Final = 256


@dataclass(slots=True)
class _Leaves:
    """What one walk of a source collects for the derived fields, keyed by dotted path."""

    strings: list[str] = field(default_factory=list)
    keywords: dict[str, list[str]] = field(default_factory=dict)
    numbers: dict[str, list[int | float]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)

    def walk(self, value: Any, path: str) -> None:
        if isinstance(value, str):
            self.strings.append(value)
            if len(value) <= KEYWORD_IGNORE_ABOVE:
                self.keywords.setdefault(path, []).append(value)
            self.names.add(path)
        elif isinstance(value, bool):
            self.names.add(path)
        elif isinstance(value, int | float):
            self.numbers.setdefault(path, []).append(value)
            self.names.add(path)
        elif isinstance(value, dict):
            before = len(self.names)
            for key, inner in value.items():
                self.walk(inner, f"{path}.{key}" if path else key)
            # An object exists when something under it does (Elasticsearch's ``exists`` on an object).
            if path and len(self.names) > before:
                self.names.add(path)
        elif isinstance(value, list):
            for inner in value:
                self.walk(inner, path)


def make_document(
    doc_id: str, version: int, source: dict[str, Any], raw: bytes, *, kept: bytes | None = None
) -> tantivy.Document:
    """``source`` (whose JSON is ``raw``) indexed; ``kept`` is what ``_raw`` stores when it is more than what
    is indexed (a failure store keeps the failed document's source without indexing it)."""
    leaves = _Leaves()
    leaves.walk(source, "")
    doc = tantivy.Document()
    doc.add_text("_id", doc_id)
    # A JSON string crosses into tantivy faster than a dict it would have to walk.
    doc.add_json("_source", raw.decode())
    # Flat dotted keys: with expand_dots_enabled they are the same paths as the nested source.
    doc.add_json("_keyword", leaves.keywords)
    doc.add_json("_numbers", leaves.numbers)
    for leaf in leaves.strings:
        doc.add_text("_all", leaf)
    for name in leaves.names:
        doc.add_text("_field_names", name)
    doc.add_bytes("_raw", raw if kept is None else kept)
    doc.add_integer("_version", version)
    return doc
