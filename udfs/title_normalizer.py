"""Title normalizer — a document-pipeline UDF that returns a dict, shallow-merged into the document.

Normalises ``title`` (or ``params["field"]``): Unicode NFKC, whitespace collapsed and trimmed, then title
case except for small words after the first (``a``, ``of``, ``the``, …). Words in ``params["keep"]`` (say
``["iPhone", "USB"]``) keep the spelling given there. With ``params["keep_original"]`` the raw title is
kept in ``<field>_raw``. A document without a title is left unchanged (``None``).
"""

import unicodedata

SMALL_WORDS = frozenset({"a", "an", "and", "as", "at", "but", "by", "for", "in", "of", "on", "or", "the", "to"})


def _word(word, index, keep):
    spelled = keep.get(word.lower())
    if spelled is not None:
        return spelled
    if index > 0 and word.lower() in SMALL_WORDS:
        return word.lower()
    return word[:1].upper() + word[1:].lower()


def process(value, params):
    field = params.get("field", "title")
    raw = value.get(field)
    if not isinstance(raw, str):
        return None
    keep = {word.lower(): word for word in params.get("keep", [])}
    words = unicodedata.normalize("NFKC", raw).split()
    result = {field: " ".join(_word(w, i, keep) for i, w in enumerate(words))}
    if params.get("keep_original"):
        result[field + "_raw"] = raw
    return result
