"""Strict parser — a document-pipeline UDF that refuses malformed documents by raising.

Each field in ``params["schema"]`` (default ``{"title": "str", "price": "number"}``) must be present and of
its type (``str``, ``number``, ``int``, ``bool``, ``list``, ``object``); otherwise ``process`` raises
``ValueError`` naming the document (``meta["id"]``) and the field, and the stage's ``on_failure`` policy
decides (``abort`` refuses the document, ``continue`` indexes it as it is). A valid document is returned
with its string fields trimmed.
"""

TYPES = {
    "str": (str,),
    "number": (int, float),
    "int": (int,),
    "bool": (bool,),
    "list": (list,),
    "object": (dict,),
}
DEFAULT_SCHEMA = {"title": "str", "price": "number"}


def process(value, params, meta):
    doc_id = meta.get("id")
    trimmed = {}
    for field, type_name in params.get("schema", DEFAULT_SCHEMA).items():
        if field not in value:
            raise ValueError(f"document {doc_id}: missing field {field!r}")
        field_value = value[field]
        is_bool = isinstance(field_value, bool)
        if not isinstance(field_value, TYPES[type_name]) or (is_bool and type_name != "bool"):
            raise ValueError(
                f"document {doc_id}: field {field!r} must be {type_name}, not {type(field_value).__name__}"
            )
        if isinstance(field_value, str) and field_value != field_value.strip():
            trimmed[field] = field_value.strip()
    return trimmed or None
