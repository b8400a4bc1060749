"""Recency boost — a result-pipeline UDF (``scope: hit``): recent hits score higher.

``value`` is one hit, ``{"_id", "_score", "_source"}``. The hit's age comes from ``_source.age_days``, or
else from an ISO-8601 date in ``_source[params["date_field"]]`` measured against ``params["now"]`` (an
ISO date; today when omitted). Returns the new score, a number: the host stores it as the hit's ``_score``
and re-sorts the hits. A hit without an age keeps its score (``None``).

params: ``days`` (30): how recent counts as recent · ``boost`` (2.0): the factor for a recent hit ·
``decay`` (0.0): how much of the score an old hit loses per extra ``days`` window, floored at ``floor``
(0.1) · ``date_field`` ("published") · ``now`` (today).
"""

import datetime


def _age_days(source, params):
    age = source.get("age_days")
    if isinstance(age, (int, float)) and not isinstance(age, bool):
        return float(age)
    stamp = source.get(params.get("date_field", "published"))
    if not isinstance(stamp, str):
        return None
    published = datetime.date.fromisoformat(stamp[:10])
    now = params.get("now")
    today = datetime.date.fromisoformat(now[:10]) if now else datetime.date.today()
    return float((today - published).days)


def process(value, params):
    age = _age_days(value.get("_source") or {}, params)
    if age is None:
        return None
    score = float(value.get("_score") or 0.0)
    days = float(params.get("days", 30))
    if age <= days:
        return score * float(params.get("boost", 2.0))
    windows = (age - days) / days
    factor = max(float(params.get("floor", 0.1)), 1.0 - float(params.get("decay", 0.0)) * windows)
    return score * factor
