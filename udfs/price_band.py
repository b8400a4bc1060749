"""Price band — a document-pipeline UDF that enriches a document with ``price_band``.

``budget`` below ``params["budget_below"]`` (50), ``premium`` from ``params["premium_from"]`` (500) up,
``mid`` between. Returns ``{"price_band": ...}``, merged into the document; a document without a numeric
``price`` is left unchanged (``None``).
"""


def process(value, params):
    price = value.get("price")
    if isinstance(price, bool) or not isinstance(price, (int, float)):
        return None
    if price < params.get("budget_below", 50):
        return {"price_band": "budget"}
    if price >= params.get("premium_from", 500):
        return {"price_band": "premium"}
    return {"price_band": "mid"}
