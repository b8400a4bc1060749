"""Placeholder UDF of the shared interpreter: ``load_source`` replaces it on every instance."""


def process(value: object, params: object) -> object:
    raise RuntimeError("no UDF source was loaded into this instance")
