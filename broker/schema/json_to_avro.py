"""Agency JSON to Avro records, compiled from the schema once and checked in the same pass.

Agencies post plain JSON: ISO 8601 dates and times, enum symbols as strings, unions as bare values,
bytes as base64. :func:`compile_schema` turns an Avro schema into a converter that walks the JSON
once, builds the record fastavro's writer expects, and collects every problem with its field path.
Errors name the path, what was expected and what kind of value came; never the value itself, which
may be exactly the personal data that must not reach a log.

This replaces ``fastavro.validation.validate`` + write (the validator walks the record a second
time and reports only the first problem); ``benchmarks/bench_codec.py`` measures the difference.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.schema import limits

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of the input."""

    path: str
    problem: str
    expected: str
    got: str

    def __str__(self) -> str:
        return (
            f"{self.path or '(record)'}: {self.problem} (expected {self.expected}, got {self.got})"
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "path": self.path,
            "problem": self.problem,
            "expected": self.expected,
            "got": self.got,
        }


class _Invalid:
    """Marker for a value that failed conversion (its errors are already recorded)."""


INVALID = _Invalid()
Converter = Callable[[Any, str, list[FieldError]], Any]


def kind_of(value: Any) -> str:
    """The JSON kind of a value, for error messages (never the value)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def compile_schema(parsed: Any) -> Converter:
    """A converter for a fastavro-parsed schema (named types resolved through the schema)."""
    named: dict[str, Any] = {}
    cache: dict[str, Converter] = {}
    return _compile(
        parsed, named, cache, parsed.get("namespace", "") if isinstance(parsed, dict) else ""
    )


def _compile(schema: Any, named: dict[str, Any], cache: dict[str, Converter], ns: str) -> Converter:
    if isinstance(schema, str):
        if schema in named:
            return _named_ref(schema, cache)
        if "." not in schema and f"{ns}.{schema}" in named:
            return _named_ref(f"{ns}.{schema}", cache)
        return _primitive(schema)
    if isinstance(schema, list):
        return _union([_compile(s, named, cache, ns) for s in schema], schema)
    t = schema["type"]
    logical = schema.get("logicalType")
    if t == "string" and logical is None and "maxLength" in schema:
        return _string(int(schema["maxLength"]))
    if logical == "date" and t == "int":
        return _date
    if logical in ("timestamp-millis", "timestamp-micros") and t == "long":
        return _timestamp
    if logical == "uuid" and t == "string":
        return _uuid
    if t in ("record", "error"):
        name = schema["name"]
        named[name] = schema
        holder: list[Converter] = []
        cache[name] = lambda v, p, e: holder[0](v, p, e)
        inner_ns = name.rsplit(".", 1)[0] if "." in name else ns
        fields = [
            (
                f["name"],
                _compile(f["type"], named, cache, inner_ns),
                "default" in f,
                f.get("default"),
            )
            for f in schema["fields"]
        ]
        holder.append(_record(name, fields))
        return cache[name]
    if t == "enum":
        named[schema["name"]] = schema
        cache[schema["name"]] = _enum(schema["name"], schema["symbols"])
        return cache[schema["name"]]
    if t == "fixed":
        named[schema["name"]] = schema
        cache[schema["name"]] = _fixed(schema["size"])
        return cache[schema["name"]]
    if t == "array":
        return _array(_compile(schema["items"], named, cache, ns))
    if t == "map":
        return _map(_compile(schema["values"], named, cache, ns))
    return _compile(t, named, cache, ns)


def _named_ref(name: str, cache: dict[str, Converter]) -> Converter:
    return lambda v, p, e: cache[name](v, p, e)


def _primitive(t: str) -> Converter:
    def null(v: Any, p: str, e: list[FieldError]) -> Any:
        if v is None:
            return None
        e.append(FieldError(p, "must be null", "null", kind_of(v)))
        return INVALID

    def boolean(v: Any, p: str, e: list[FieldError]) -> Any:
        if isinstance(v, bool):
            return v
        e.append(FieldError(p, "wrong type", "boolean", kind_of(v)))
        return INVALID

    def integer(lo: int, hi: int, label: str) -> Converter:
        def conv(v: Any, p: str, e: list[FieldError]) -> Any:
            if isinstance(v, int) and not isinstance(v, bool):
                if lo <= v <= hi:
                    return v
                e.append(FieldError(p, "out of range", label, "integer out of range"))
                return INVALID
            e.append(FieldError(p, "wrong type", label, kind_of(v)))
            return INVALID

        return conv

    def number(v: Any, p: str, e: list[FieldError]) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            try:
                f = float(v)
            except OverflowError:
                f = math.inf
            if math.isfinite(f):
                return f
            e.append(FieldError(p, "out of range", "a finite number", kind_of(v)))
            return INVALID
        e.append(FieldError(p, "wrong type", "number", kind_of(v)))
        return INVALID

    def bytes_(v: Any, p: str, e: list[FieldError]) -> Any:
        if isinstance(v, str):
            if len(v) > limits.MAX_BYTES * 4 // 3 + 4:
                e.append(FieldError(p, "too long", f"at most {limits.MAX_BYTES} bytes", "string"))
                return INVALID
            try:
                return base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                e.append(FieldError(p, "not valid base64", "base64 string", "string"))
                return INVALID
        e.append(FieldError(p, "wrong type", "base64 string", kind_of(v)))
        return INVALID

    table: dict[str, Converter] = {
        "null": null,
        "boolean": boolean,
        "int": integer(*_INT32, "32-bit integer"),
        "long": integer(*_INT64, "64-bit integer"),
        "float": number,
        "double": number,
        "string": _string(limits.MAX_STRING),
        "bytes": bytes_,
    }
    try:
        return table[t]
    except KeyError:
        raise ValueError(f"unsupported Avro type {t!r}") from None


def _string(max_length: int) -> Converter:
    expected = f"string of at most {max_length} characters"

    def conv(v: Any, p: str, e: list[FieldError]) -> Any:
        if not isinstance(v, str):
            e.append(FieldError(p, "wrong type", "string", kind_of(v)))
            return INVALID
        if len(v) > max_length:
            e.append(FieldError(p, "too long", expected, f"string of {len(v)} characters"))
            return INVALID
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            e.append(FieldError(p, "contains a lone surrogate", "valid Unicode text", "string"))
            return INVALID
        return v

    return conv


_DATE_EXPECTED = f"date YYYY-MM-DD, {limits.EARLIEST_YEAR} to {limits.LATEST_YEAR}"
_TIME_EXPECTED = f"ISO 8601 date-time with offset, {limits.TIME_RANGE}"


def _date(v: Any, p: str, e: list[FieldError]) -> Any:
    if isinstance(v, str) and _DATE.match(v):
        try:
            d = dt.date.fromisoformat(v)
        except ValueError:
            e.append(FieldError(p, "not a real calendar date", "date YYYY-MM-DD", "string"))
            return INVALID
        if not limits.EARLIEST_DATE <= d <= limits.LATEST_DATE:
            e.append(FieldError(p, "outside the supported range", _DATE_EXPECTED, "string"))
            return INVALID
        return d
    e.append(FieldError(p, "wrong format", "date YYYY-MM-DD", kind_of(v)))
    return INVALID


def _timestamp(v: Any, p: str, e: list[FieldError]) -> Any:
    if isinstance(v, str):
        try:
            parsed = dt.datetime.fromisoformat(v)
        except ValueError:
            e.append(FieldError(p, "wrong format", "ISO 8601 date-time with offset", "string"))
            return INVALID
        if parsed.tzinfo is None:
            e.append(
                FieldError(
                    p, "no time zone", "ISO 8601 date-time with offset (Z or +01:00)", "string"
                )
            )
            return INVALID
        try:
            utc = parsed.astimezone(dt.UTC)
        except (OverflowError, ValueError):  # year 1 at +14:00 is before year 1 in UTC
            utc = None
        if utc is None or not limits.EARLIEST <= utc <= limits.LATEST:
            e.append(FieldError(p, "outside the supported range", _TIME_EXPECTED, "string"))
            return INVALID
        return parsed
    e.append(FieldError(p, "wrong type", "ISO 8601 date-time with offset", kind_of(v)))
    return INVALID


def _uuid(v: Any, p: str, e: list[FieldError]) -> Any:
    if isinstance(v, str):
        try:
            return str(uuid.UUID(v))
        except ValueError:
            e.append(FieldError(p, "not a UUID", "UUID string", "string"))
            return INVALID
    e.append(FieldError(p, "wrong type", "UUID string", kind_of(v)))
    return INVALID


def _enum(name: str, symbols: list[str]) -> Converter:
    allowed = frozenset(symbols)
    label = f"one of {', '.join(symbols)}" if len(symbols) <= 14 else f"a {name} symbol"

    def conv(v: Any, p: str, e: list[FieldError]) -> Any:
        if isinstance(v, str) and v in allowed:
            return v
        problem = "unknown symbol" if isinstance(v, str) else "wrong type"
        e.append(FieldError(p, problem, label, kind_of(v)))
        return INVALID

    return conv


def _fixed(size: int) -> Converter:
    def conv(v: Any, p: str, e: list[FieldError]) -> Any:
        if isinstance(v, str):
            try:
                raw = base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) == size:
                return raw
        e.append(FieldError(p, "wrong value", f"base64 of exactly {size} bytes", kind_of(v)))
        return INVALID

    return conv


def _array(item: Converter) -> Converter:
    def conv(v: Any, p: str, e: list[FieldError]) -> Any:
        if not isinstance(v, list):
            e.append(FieldError(p, "wrong type", "array", kind_of(v)))
            return INVALID
        if len(v) > limits.MAX_ITEMS:
            e.append(
                FieldError(p, "too many items", f"at most {limits.MAX_ITEMS}", f"{len(v)} items")
            )
            return INVALID
        out = [item(x, f"{p}[{i}]", e) for i, x in enumerate(v)]
        return INVALID if any(x is INVALID for x in out) else out

    return conv


def _map(value: Converter) -> Converter:
    def conv(v: Any, p: str, e: list[FieldError]) -> Any:
        if not isinstance(v, dict):
            e.append(FieldError(p, "wrong type", "object", kind_of(v)))
            return INVALID
        if len(v) > limits.MAX_ITEMS:
            e.append(FieldError(p, "too many entries", f"at most {limits.MAX_ITEMS}", f"{len(v)}"))
            return INVALID
        # Map keys are data (not field names), so paths give the entry's position, not its key.
        out = {k: value(x, f"{p}{{entry {i}}}", e) for i, (k, x) in enumerate(v.items())}
        return INVALID if any(x is INVALID for x in out.values()) else out

    return conv


def _union(branches: list[Converter], schema: list[Any]) -> Converter:
    nullable = "null" in schema
    others = [b for b, s in zip(branches, schema, strict=True) if s != "null"]
    labels = [
        s if isinstance(s, str) else s.get("name", s.get("logicalType", s["type"]))
        for s in schema
        if s != "null"
    ]
    expected = " or ".join(str(x) for x in labels) + (" or null" if nullable else "")

    def conv(v: Any, p: str, e: list[FieldError]) -> Any:
        if v is None:
            if nullable:
                return None
            e.append(FieldError(p, "missing value", expected, "null"))
            return INVALID
        if len(others) == 1:
            return others[0](v, p, e)
        for branch in others:
            trial: list[FieldError] = []
            out = branch(v, p, trial)
            if out is not INVALID:
                return out
        e.append(FieldError(p, "matches no branch of the union", expected, kind_of(v)))
        return INVALID

    return conv


def _record(name: str, fields: list[tuple[str, Converter, bool, Any]]) -> Converter:
    known = frozenset(f[0] for f in fields)

    def conv(v: Any, p: str, e: list[FieldError]) -> Any:
        if not isinstance(v, dict):
            e.append(FieldError(p, "wrong type", f"object ({name.rsplit('.', 1)[-1]})", kind_of(v)))
            return INVALID
        out: dict[str, Any] = {}
        bad = False
        for fname, fconv, has_default, default in fields:
            fpath = _join(p, fname)
            if fname in v:
                val = fconv(v[fname], fpath, e)
            elif has_default:
                # A fresh container each time: records must never share the schema's default.
                val = default.copy() if isinstance(default, list | dict) else default
            else:
                e.append(FieldError(fpath, "required field is missing", "a value", "nothing"))
                bad = True
                continue
            if val is INVALID:
                bad = True
            out[fname] = val
        for extra in sorted(v.keys() - known)[: limits.MAX_ERRORS]:
            shown = extra if len(extra) <= 64 else f"{extra[:60]}..."
            shown = shown.encode("utf-8", "backslashreplace").decode("utf-8")
            e.append(
                FieldError(_join(p, shown), "unknown field", "no such field", kind_of(v[extra]))
            )
            bad = True
        return INVALID if bad else out

    return conv


class JsonConversionError(ValueError):
    """The JSON payload does not fit the schema; ``errors`` lists every problem."""

    def __init__(self, schema_name: str, errors: list[FieldError]) -> None:
        self.schema_name = schema_name
        self.errors = errors
        super().__init__(
            f"{schema_name}: {len(errors)} invalid field(s): " + "; ".join(str(x) for x in errors)
        )


class JsonToAvro:
    """Converter for one schema: ``convert`` returns the record or raises with every error."""

    def __init__(self, parsed: Any) -> None:
        self.name = parsed["name"] if isinstance(parsed, dict) else str(parsed)
        self._conv = compile_schema(parsed)

    def errors(self, payload: Any) -> list[FieldError]:
        errs: list[FieldError] = []
        self._conv(payload, "", errs)
        return errs

    def convert(self, payload: Any) -> Any:
        errs: list[FieldError] = []
        out = self._conv(payload, "", errs)
        if errs or out is INVALID:
            raise JsonConversionError(self.name, errs)
        return out
