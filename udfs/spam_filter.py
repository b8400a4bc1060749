"""Spam filter — a document-pipeline UDF: ``False`` drops the document, ``True`` keeps it.

``value`` is the document's source. A document is spam when its text (``title`` and ``body``, or the
fields in ``params["fields"]``) contains a banned phrase, more links than ``max_links``, or is mostly
shouting (the share of upper-case letters above ``max_caps_ratio`` in a text of 20 letters or more).

params: ``banned`` (a list of phrases; a built-in list when omitted) · ``max_links`` (3) ·
``max_caps_ratio`` (0.7) · ``fields`` (["title", "body"]).
"""

import re

BANNED = ("buy now", "free money", "click here", "limited offer", "winner!!!")
LINK = re.compile(r"https?://", re.IGNORECASE)


def _text(doc, fields):
    return " ".join(str(doc[f]) for f in fields if isinstance(doc.get(f), str))


def process(value, params):
    text = _text(value, params.get("fields", ["title", "body"]))
    lowered = text.lower()
    if any(phrase.lower() in lowered for phrase in params.get("banned", BANNED)):
        return False
    if len(LINK.findall(text)) > params.get("max_links", 3):
        return False
    letters = [c for c in text if c.isalpha()]
    if len(letters) >= 20:
        caps = sum(1 for c in letters if c.isupper()) / len(letters)
        if caps > params.get("max_caps_ratio", 0.7):
            return False
    return True
