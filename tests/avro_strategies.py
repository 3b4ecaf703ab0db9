"""Hypothesis strategies that generate records for any Avro schema (as fastavro would write them),
and the matching agency JSON (as the HTTP ingest would receive it)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from hypothesis import strategies as st

_UTC = dt.UTC
_TS = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(_UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
_DATE = st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2100, 1, 1))
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


def records(
    schema: Any,
    named: dict[str, Any] | None = None,
    text: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[Any]:
    """Records for a raw (JSON) Avro schema, with logical types as Python objects.

    ``text`` replaces the strategy for strings (for example, distinctive values to look for).
    """
    named = {} if named is None else named
    text = _TEXT if text is None else text
    if isinstance(schema, str):
        if schema in named:
            return st.deferred(lambda: records(named[schema], named, text))
        if schema == "string":
            return text
        if schema == "bytes" and text is not _TEXT:
            return text.map(str.encode)
        return _primitive(schema)
    if isinstance(schema, list):
        return st.one_of(*[records(s, named, text) for s in schema])
    t = schema["type"]
    lt = schema.get("logicalType")
    if lt == "date":
        return _DATE
    if lt == "timestamp-millis":
        return _TS
    if lt == "uuid":
        return st.uuids().map(str)
    if t == "record":
        full = _full(schema)
        named[full] = schema
        return st.fixed_dictionaries(
            {f["name"]: records(f["type"], named, text) for f in schema["fields"]}
        )
    if t == "enum":
        named[_full(schema)] = schema
        return st.sampled_from(schema["symbols"])
    if t == "fixed":
        named[_full(schema)] = schema
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if t == "array":
        return st.lists(records(schema["items"], named, text), max_size=3)
    if t == "map":
        return st.dictionaries(_TEXT, records(schema["values"], named, text), max_size=3)
    return records(t, named, text)


def _full(schema: dict[str, Any]) -> str:
    ns = schema.get("namespace")
    return f"{ns}.{schema['name']}" if ns and "." not in schema["name"] else schema["name"]


def _primitive(t: str) -> st.SearchStrategy[Any]:
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": _TEXT,
        "bytes": st.binary(max_size=64),
    }[t]


def normalise(value: Any) -> Any:
    """Make a decoded record comparable with a generated one (UUID objects become strings)."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    return value
