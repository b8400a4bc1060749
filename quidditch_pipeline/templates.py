"""Mustache templates in processor values, messages and field names (``{{title}}``, ``{{_ingest.timestamp}}``).

Compiled once, when a pipeline is built, with ``chevron``: its tokenizer refuses what is not a template
(an unclosed tag or section, a stray closing tag), so a bad template is refused when the pipeline is stored;
``pystache``, the other maintained candidate, parses ``{{a`` and an unclosed ``{{#a}}`` without a word. The
tokens are kept and rendered per input.

What a template sees: the value (the document source, the search body, the hit) and, under ``_ingest``, the
ingest metadata (``timestamp``, and in failure handlers ``on_failure_message`` and its siblings). Values are
rendered without escaping, ``{{x}}`` and ``{{{x}}}`` alike: the result is a field value, not HTML. Partials
(``{{> name}}``, which chevron would read from files) and keys naming Python attributes (``__class__``) are
refused: a template reads JSON data only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chevron
from chevron.tokenizer import ChevronError, tokenize

__all__ = ["Template", "compile_value", "is_template", "render_value"]

_TAG_TYPES = {"literal", "variable", "no escape", "section", "inverted section", "end", "set delimiter"}


def is_template(text: str) -> bool:
    """Whether ``text`` holds a Mustache tag (otherwise it is used as it is, at no cost per input)."""
    return "{{" in text


class Template:
    """One compiled Mustache template; ``ValueError`` naming the problem when ``source`` is not one."""

    __slots__ = ("_key", "_tokens", "source")

    def __init__(self, source: str) -> None:
        try:
            tokens = list(tokenize(source))
        except ChevronError as exc:
            raise ValueError(f"invalid template [{source}]: {' '.join(str(exc).split())}") from None
        for tag, key in tokens:
            if tag == "partial":
                raise ValueError(f"invalid template [{source}]: partials ({{{{> {key}}}}}) are not supported")
            if tag not in _TAG_TYPES:
                raise ValueError(f"invalid template [{source}]: [{tag}] tags are not supported")
            if tag != "literal" and any(part.startswith("__") for part in key.split(".")):
                raise ValueError(f"invalid template [{source}]: [{key}] is not a field path")
        # Values are not HTML: render every variable unescaped, as a field value.
        self._tokens = [("no escape", key) if tag == "variable" else (tag, key) for tag, key in tokens]
        # The common case, one variable and nothing else, is read directly.
        only = self._tokens[0] if len(self._tokens) == 1 else None
        self._key = only[1].split(".") if only is not None and only[0] == "no escape" else None
        self.source = source

    def render(self, value: Any, ingest: Mapping[str, Any] | None) -> str:
        scopes: list[Any] = [{"_ingest": ingest or {}}, value]
        key = self._key
        if key is not None:
            return _text(_lookup(key, scopes))
        rendered: str = chevron.render(self._tokens, scopes=scopes)
        return rendered

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _lookup(key: list[str], scopes: list[Any]) -> Any:
    """What chevron finds for a dotted key: the first scope that has the whole path, else ``""``."""
    for scope in scopes:
        node = scope
        for part in key:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                break
        else:
            return node
    return ""


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def compile_value(value: Any) -> Any:
    """``value`` with every string that holds a tag compiled into a :class:`Template` (nested in objects and
    lists too); ``value`` itself when it holds none."""
    if isinstance(value, str):
        return Template(value) if is_template(value) else value
    if isinstance(value, dict):
        compiled = {k: compile_value(v) for k, v in value.items()}
        return value if all(compiled[k] is v for k, v in value.items()) else compiled
    if isinstance(value, list):
        items = [compile_value(v) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def render_value(compiled: Any, value: Any, ingest: Mapping[str, Any] | None) -> Any:
    """The value of :func:`compile_value`'s result for one input: each template rendered, fresh containers."""
    if isinstance(compiled, Template):
        return compiled.render(value, ingest)
    if isinstance(compiled, dict):
        return {k: render_value(v, value, ingest) for k, v in compiled.items()}
    if isinstance(compiled, list):
        return [render_value(v, value, ingest) for v in compiled]
    return compiled
