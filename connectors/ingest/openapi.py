"""JSON Schema for agency JSON, derived from the Avro schemas (the OpenAPI document is not
written twice: each ingest route's request body comes from here)."""

from __future__ import annotations

from typing import Any

from broker.schema.catalogue import Catalogue


def json_schema(avro: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a raw Avro schema as agencies post it (ISO dates, base64 bytes)."""
    if isinstance(avro, str):
        if avro in defs:
            return {"$ref": f"#/components/schemas/{avro.rsplit('.', 1)[-1]}"}
        return _primitive(avro)
    if isinstance(avro, list):
        branches = [json_schema(b, defs) for b in avro if b != "null"]
        one = branches[0] if len(branches) == 1 else {"anyOf": branches}
        return {**one, "nullable": True} if "null" in avro else one
    t = avro["type"]
    lt = avro.get("logicalType")
    if lt == "date":
        return {"type": "string", "format": "date"}
    if lt in ("timestamp-millis", "timestamp-micros"):
        return {"type": "string", "format": "date-time"}
    if lt == "uuid":
        return {"type": "string", "format": "uuid"}
    if t == "record":
        name = f"{avro.get('namespace', '')}.{avro['name']}".lstrip(".")
        defs[name] = None  # placeholder against recursion
        props = {}
        required = []
        for f in avro["fields"]:
            prop = json_schema(f["type"], defs)
            prop = {**prop, "description": f.get("doc", "")}
            if "sensitivity" in f:
                prop["x-cbx-sensitivity"] = f["sensitivity"]
            props[f["name"]] = prop
            if "default" not in f:
                required.append(f["name"])
        schema = {
            "type": "object",
            "description": avro.get("doc", ""),
            "properties": props,
            "required": required,
            "additionalProperties": False,
        }
        defs[name] = schema
        return {"$ref": f"#/components/schemas/{avro['name']}"}
    if t == "enum":
        name = f"{avro.get('namespace', '')}.{avro['name']}".lstrip(".")
        defs[name] = {"type": "string", "enum": avro["symbols"], "description": avro.get("doc", "")}
        return {"$ref": f"#/components/schemas/{avro['name']}"}
    if t == "array":
        return {"type": "array", "items": json_schema(avro["items"], defs)}
    if t == "map":
        return {"type": "object", "additionalProperties": json_schema(avro["values"], defs)}
    if t == "fixed":
        return {"type": "string", "format": "byte"}
    return json_schema(t, defs)


def _primitive(t: str) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {
        "null": {"nullable": True},
        "boolean": {"type": "boolean"},
        "int": {"type": "integer", "format": "int32"},
        "long": {"type": "integer", "format": "int64"},
        "float": {"type": "number"},
        "double": {"type": "number"},
        "string": {"type": "string"},
        "bytes": {"type": "string", "format": "byte"},
    }
    return table[t]


def components(catalogue: Catalogue) -> dict[str, Any]:
    """Every named type of every event body, as OpenAPI components (by short name)."""
    defs: dict[str, Any] = {}
    for name in catalogue.event_types():
        json_schema(catalogue.latest(name).raw, defs)
    return {full.rsplit(".", 1)[-1]: schema for full, schema in defs.items() if schema}
