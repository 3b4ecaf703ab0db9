"""Column mappings of CSV exports (``schemas/filedrop/*.yaml``): which column is which field.

A mapping is matched on the file name; each column names a field path of the request (``case_ref``,
``event.last_seen.postcode``) and its cells are read by the type of the field they map to
(booleans accept yes/no, lists are split on a separator).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fastavro.schema import expand_schema

from broker.errors import ConfigurationError
from broker.paths import schemas_dir
from connectors.ingest.request import RequestReader

WRAPPER_FIELDS = {"case_ref": True, "urgency": False, "occurred_at": False}
_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


def parse_path(path: str) -> tuple[str | int, ...]:
    """``event.address.lines[0]`` → ``("event", "address", "lines", 0)``."""
    out: list[str | int] = []
    for name, index in _SEGMENT.findall(path):
        out.append(int(index) if index else name)
    if not out or "".join(str(p) for p in out) != re.sub(r"[.\[\]]", "", path):
        raise ConfigurationError(f"bad column path {path!r}")
    return tuple(out)


@dataclass(frozen=True)
class Column:
    name: str
    path: tuple[str | int, ...]
    split: str | None
    kind: str  # boolean, int, number or string: how a cell's text is read
    required: bool

    @property
    def dotted(self) -> str:
        out = ""
        for p in self.path:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
        return out


@dataclass(frozen=True)
class Mapping:
    name: str
    match: tuple[str, ...]
    event_type: str
    urgency: str
    sharing: dict[str, Any]
    columns: tuple[Column, ...]

    def matches(self, filename: str) -> bool:
        return any(fnmatch.fnmatch(filename.lower(), m) for m in self.match)

    def column_for(self, error_path: str) -> str | None:
        """The column whose path is, or contains, the field an error is about."""
        best: tuple[int, str] | None = None
        for c in self.columns:
            dotted = c.dotted
            inside = error_path == dotted or error_path.startswith((dotted + ".", dotted + "["))
            if inside and (best is None or len(dotted) > best[0]):
                best = (len(dotted), c.name)
        return best[1] if best else None


def _leaf(schema: Any, path: tuple[str | int, ...]) -> tuple[str, bool]:
    """(kind of the value at ``path`` in an expanded Avro schema, whether it is required)."""
    t = schema
    required = True
    for seg in path:
        if isinstance(t, list):
            branches = [b for b in t if b != "null"]
            required = required and len(branches) == len(t)
            t = branches[0]
        if isinstance(seg, int):
            if not (isinstance(t, dict) and t.get("type") == "array"):
                raise ConfigurationError("index on a field that is not a list")
            t = t["items"]
            required = required and seg == 0
            continue
        if not (isinstance(t, dict) and t.get("type") == "record"):
            raise ConfigurationError(f"{seg!r}: the field above it is not a record")
        field = next((f for f in t["fields"] if f["name"] == seg), None)
        if field is None:
            raise ConfigurationError(f"{t['name']} has no field {seg!r}")
        ft = field["type"]
        required = (
            required and "default" not in field and not (isinstance(ft, list) and "null" in ft)
        )
        t = ft
    if isinstance(t, list):
        t = next(b for b in t if b != "null")
    if isinstance(t, dict) and t.get("type") == "array":
        t = t["items"]
    base = t.get("type") if isinstance(t, dict) else t
    logical = t.get("logicalType") if isinstance(t, dict) else None
    if base == "boolean":
        return "boolean", required
    if base in ("int", "long") and logical is None:
        return "int", required
    if base in ("float", "double"):
        return "number", required
    return "string", required


def load_mapping(path: Path, reader: RequestReader) -> Mapping:
    data = yaml.safe_load(path.read_text())
    where = f"{path.name}"
    try:
        event_type = data["event_type"]
        if event_type not in reader.converters:
            raise ConfigurationError(f"{where}: unknown message type {event_type}")
        event_schema: Any = expand_schema(reader.catalogue.latest(event_type).raw)
        wrapper: Any = expand_schema(reader.wrapper_raw)
        columns = []
        for name, spec in data["columns"].items():
            spec = spec if isinstance(spec, dict) else {"path": spec}
            p = parse_path(spec["path"])
            if p[0] == "event":
                kind, required = _leaf(event_schema, p[1:])
            elif p[0] in WRAPPER_FIELDS and len(p) == 1:
                kind, required = _leaf(wrapper, p)
                required = WRAPPER_FIELDS[str(p[0])]
            else:
                raise ConfigurationError(
                    f"path must start with event. or be one of {', '.join(WRAPPER_FIELDS)}"
                )
            columns.append(Column(name, p, spec.get("split"), kind, required))
        match = data["match"]
        return Mapping(
            name=data["name"],
            match=tuple([match] if isinstance(match, str) else match),
            event_type=event_type,
            urgency=data.get("urgency", "ROUTINE"),
            sharing=data["sharing"],
            columns=tuple(columns),
        )
    except KeyError as exc:
        raise ConfigurationError(f"{where}: missing {exc.args[0]!r}") from None
    except ConfigurationError as exc:
        if str(exc).startswith(where):
            raise
        raise ConfigurationError(f"{where}: {exc}") from None


def load_mappings(reader: RequestReader, folders: list[Path] | None = None) -> list[Mapping]:
    """Mappings shipped in ``schemas/filedrop`` plus any in ``folders`` (theirs come first)."""
    out: list[Mapping] = []
    for folder in [*(folders or []), schemas_dir() / "filedrop"]:
        out += [load_mapping(p, reader) for p in sorted(folder.glob("*.yaml"))]
    return out


def _cell(text: str, kind: str) -> Any:
    """A cell's text as the JSON value the field takes (left as text when it does not read)."""
    t = text.strip()
    low = t.lower()
    if kind == "boolean":
        return True if low in _TRUE else False if low in _FALSE else t
    if kind == "int":
        try:
            return int(t)
        except ValueError:
            return t
    if kind == "number":
        try:
            return float(t)
        except ValueError:
            return t
    return t


def _put(target: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = target
    for seg in path[:-1]:
        if isinstance(seg, int):
            raise ConfigurationError("nested lists are not supported in column paths")
        node = node.setdefault(seg, {})  # a list is built as {index: value}, see _lists
    node[path[-1]] = value


def _lists(value: Any) -> Any:
    """Turn ``{0: a, 2: b}`` placeholders into lists ``[a, b]``, recursively."""
    if isinstance(value, dict):
        if value and all(isinstance(k, int) for k in value):
            return [_lists(value[k]) for k in sorted(value)]
        return {k: _lists(v) for k, v in value.items()}
    return value


def row_request(mapping: Mapping, row: dict[str, str]) -> dict[str, Any]:
    """One CSV row as the request HTTP ingest would take."""
    request: dict[str, Any] = {"urgency": mapping.urgency, "sharing": mapping.sharing}
    for c in mapping.columns:
        text = row.get(c.name)
        if text is None or not text.strip():
            continue
        if c.split is not None:
            value: Any = [_cell(x, c.kind) for x in text.split(c.split) if x.strip()]
        else:
            value = _cell(text, c.kind)
        _put(request, c.path, value)
    request.setdefault("event", {})
    return dict(_lists(request))
