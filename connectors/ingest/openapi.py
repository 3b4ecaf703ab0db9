"""The connector's OpenAPI 3.1 document, derived from the Avro schemas (never written twice).

Each message type gets one request schema (``<Type>Request``: the request wrapper's fields and the
event) so a standard JSON Schema validator accepts exactly what cbx accepts: closed objects, enum
symbols, ISO dates and times, base64 bytes, and nullability in 3.1's form (``{"type": "null"}``).
Named Avro types become components under their short name (the full name when two namespaces
share one), and every reference resolves. Error answers share one ``Error`` schema.
"""

from __future__ import annotations

import copy
from typing import Any

from fastavro.schema import expand_schema

from broker.model import SYSTEM_TYPES
from broker.schema.catalogue import Catalogue

_REF = "#/components/schemas/"
_DEFAULTABLE = (str, int, float, bool, type(None), list, dict)


class Schemas:
    """JSON Schemas of Avro types, with one component per named type."""

    def __init__(self) -> None:
        self.defs: dict[str, dict[str, Any]] = {}

    def of(self, avro: Any, namespace: str = "") -> dict[str, Any]:
        """The JSON Schema of an (expanded) Avro schema, as agencies post it."""
        if isinstance(avro, str):
            if avro in self.defs:
                return {"$ref": _REF + avro}
            full = avro if "." in avro else f"{namespace}.{avro}"
            if full in self.defs:
                return {"$ref": _REF + full}
            return _primitive(avro)
        if isinstance(avro, list):
            branches = [self.of(b, namespace) for b in avro if b != "null"]
            one = branches[0] if len(branches) == 1 else {"anyOf": branches}
            return _nullable(one) if "null" in avro else one
        kind = avro["type"]
        logical = avro.get("logicalType")
        if logical == "date":
            return {"type": "string", "format": "date"}
        if logical in ("timestamp-millis", "timestamp-micros"):
            return {"type": "string", "format": "date-time"}
        if logical == "uuid":
            return {"type": "string", "format": "uuid"}
        if kind in ("record", "enum", "fixed"):
            name = avro["name"]
            ns = avro.get("namespace", namespace)
            full = name if "." in name else f"{ns}.{name}".lstrip(".")
            if full not in self.defs:
                self.defs[full] = {}  # placeholder against recursion
                self.defs[full] = self._named(avro, full.rpartition(".")[0])
            return {"$ref": _REF + full}
        if kind == "array":
            return {"type": "array", "items": self.of(avro["items"], namespace)}
        if kind == "map":
            return {"type": "object", "additionalProperties": self.of(avro["values"], namespace)}
        return self.of(kind, namespace)

    def _named(self, avro: dict[str, Any], namespace: str) -> dict[str, Any]:
        kind = avro["type"]
        doc = avro.get("doc", "")
        if kind == "enum":
            return {"type": "string", "enum": list(avro["symbols"]), "description": doc}
        if kind == "fixed":
            return {"type": "string", "contentEncoding": "base64", "description": doc}
        props: dict[str, Any] = {}
        required: list[str] = []
        for f in avro["fields"]:
            prop = {**self.of(f["type"], namespace), "description": f.get("doc", "")}
            if "sensitivity" in f:
                prop["x-cbx-sensitivity"] = f["sensitivity"]
            if "default" in f:
                if isinstance(f["default"], _DEFAULTABLE):
                    prop["default"] = f["default"]
            else:
                required.append(f["name"])
            props[f["name"]] = prop
        return {
            "type": "object",
            "description": doc,
            "properties": props,
            "required": required,
            "additionalProperties": False,
        }

    def components(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every component by its key (the short name unless two share it), references
        rewritten to those keys; ``extra`` (already keyed) is added and rewritten too."""
        short: dict[str, list[str]] = {}
        for full in self.defs:
            short.setdefault(full.rpartition(".")[2], []).append(full)
        key = {
            full: (s if len(fulls) == 1 else full) for s, fulls in short.items() for full in fulls
        }
        out = {key[full]: schema for full, schema in self.defs.items()}
        out.update(extra or {})
        rewritten: dict[str, Any] = rewrite(out, {_REF + f: _REF + k for f, k in key.items()})
        return rewritten


def rewrite(node: Any, refs: dict[str, str]) -> Any:
    """``node`` with every ``$ref`` in ``refs`` replaced."""
    if isinstance(node, dict):
        return {
            k: (refs.get(v, v) if k == "$ref" and isinstance(v, str) else rewrite(v, refs))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [rewrite(v, refs) for v in node]
    return node


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    t = schema.get("type")
    if isinstance(t, str) and "$ref" not in schema and "anyOf" not in schema:
        return {**schema, "type": [t, "null"]}
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


def _primitive(t: str) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {
        "null": {"type": "null"},
        "boolean": {"type": "boolean"},
        "int": {"type": "integer", "format": "int32"},
        "long": {"type": "integer", "format": "int64"},
        "float": {"type": "number"},
        "double": {"type": "number"},
        "string": {"type": "string"},
        "bytes": {"type": "string", "contentEncoding": "base64"},
    }
    return table[t]


ERROR = {
    "type": "object",
    "description": "Why a request was refused. `errors` always; `error` (the first problem) "
    "unless the status is 422. A value given is never echoed, only its kind.",
    "properties": {
        "error": {"type": "string", "description": "The first problem, in words."},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Where (event.last_seen.place)."},
                    "problem": {"type": "string", "description": "What is wrong."},
                    "expected": {"type": "string", "description": "What would be right."},
                    "got": {"type": "string", "description": "The kind of value given."},
                },
                "required": ["path", "problem"],
            },
        },
    },
}

ACCEPTED = {
    "type": "object",
    "description": "Published: the message id and every recipient it was sealed for.",
    "properties": {
        "message_id": {"type": "string", "format": "uuid"},
        "event_type": {"type": "string"},
        "case_ref": {"type": "string"},
        "recipients": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"agency": {"type": "string"}, "role": {"type": "string"}},
                "required": ["agency", "role"],
            },
        },
        "published_at": {"type": "string", "format": "date-time"},
    },
    "required": ["message_id", "event_type", "case_ref", "recipients"],
}

REFUSALS = {
    "400": "not a JSON object, or nested too deep",
    "401": "no valid API token",
    "403": "not allowed: scope, agency kind, origin, or the sender's place in the case",
    "404": "no such message type",
    "409": "a case reference two councils use (name the case), or an idempotency key reused",
    "413": "body or sealed message too large",
    "415": "not declared as JSON",
    "422": "field errors, or a message the rules cannot route",
    "503": "the exchange cannot take it now: retry with the same Idempotency-Key",
}


def event_paths(
    catalogue: Catalogue, wrapper_raw: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) for ``POST /v1/events/<type>`` of every message type an agency posts."""
    schemas = Schemas()
    wrapper: Any = expand_schema(copy.deepcopy(wrapper_raw))
    schemas.of(wrapper)
    types = [t for t in catalogue.event_types() if t not in SYSTEM_TYPES]
    bodies = {t: schemas.of(expand_schema(copy.deepcopy(catalogue.latest(t).raw))) for t in types}
    name = wrapper["name"]
    wrapper_def = schemas.defs.pop(name if "." in name else f"{wrapper['namespace']}.{name}")
    requests: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for t in types:
        requests[f"{t}Request"] = {
            **wrapper_def,
            "description": f"A request to send {t}: {wrapper_def['description']}",
            "properties": {
                **wrapper_def["properties"],
                "event": {**bodies[t], "description": catalogue.latest(t).raw.get("doc", "")},
            },
            "required": [*wrapper_def["required"], "event"],
        }
        error = {"application/json": {"schema": {"$ref": _REF + "Error"}}}
        paths[f"/v1/events/{t}"] = {
            "post": {
                "operationId": f"send{t}",
                "summary": catalogue.latest(t).raw.get("doc", t),
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Your id for this request: the same key again returns the "
                        "first answer and publishes nothing.",
                        "schema": {"type": "string", "maxLength": 200},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": _REF + f"{t}Request"}}},
                },
                "responses": {
                    "202": {
                        "description": "published",
                        "content": {"application/json": {"schema": {"$ref": _REF + "Accepted"}}},
                    },
                    **{
                        code: {"description": why, "content": error}
                        for code, why in REFUSALS.items()
                    },
                },
            }
        }
    components = schemas.components({**requests, "Error": ERROR, "Accepted": ACCEPTED})
    return paths, components
