"""The compatibility gate: every schema version is FULL_TRANSITIVE compatible with all earlier ones.

FULL_TRANSITIVE: for every pair of versions (old, new) of a schema, a reader on either can read data
written with the other. The check is the Apache ``avro`` package's maintained implementation of the
specification's resolution rules (``avro.compatibility``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import avro.schema
import yaml
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.errors import AvroException

from broker.errors import ConfigurationError, SchemaError
from broker.schema.catalogue import Catalogue, SchemaVersion, sensitive_fields


@dataclass(frozen=True)
class CompatibilityProblem:
    """One way in which two versions of a schema cannot read each other."""

    schema: str
    version: int
    other_version: int
    direction: str
    location: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.schema} v{self.version} is not compatible with v{self.other_version} "
            f"({self.direction}), field {self.location}: {self.message}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "schema": self.schema,
            "version": self.version,
            "other_version": self.other_version,
            "direction": self.direction,
            "location": self.location,
            "message": self.message,
        }


def _avro(v: SchemaVersion) -> avro.schema.Schema:
    try:
        return avro.schema.parse(json.dumps(v.raw))
    except (AvroException, ValueError, TypeError) as exc:
        raise SchemaError(f"{v.name} v{v.version}: not a valid Avro schema: {exc}") from exc


_KIND_TEXT = {
    "reader_field_missing_default_value": "field {m!r} has no default and the writer does not "
    "have it (a field removed without a default, or added without one)",
    "type_mismatch": "{m}",
    "name_mismatch": "named type renamed ({m})",
    "fixed_size_mismatch": "fixed size changed ({m})",
    "missing_enum_symbols": "enum symbols {m} unknown to the reader (add an enum default)",
    "missing_union_branch": "union branch missing in the reader ({m})",
}


def _field_path(raw: dict[str, object], location: str) -> str:
    """Turn a checker location such as ``/fields/3/type/fields/1`` into ``last_seen.place``."""
    node: object = raw
    names: list[str] = []
    parts = [p for p in location.split("/") if p]
    i = 0
    while i < len(parts):
        part = parts[i]
        if part == "fields" and i + 1 < len(parts) and isinstance(node, dict):
            fields = node.get("fields")
            idx = int(parts[i + 1])
            if isinstance(fields, list) and idx < len(fields):
                field = fields[idx]
                names.append(str(field["name"]))
                node = field["type"]
            i += 2
            continue
        if part in ("type", "items", "values") and isinstance(node, dict):
            node = node.get(part, node)
        i += 1
    return ".".join(names) or "(record)"


def _pair(
    name: str,
    reader: SchemaVersion,
    writer: SchemaVersion,
    checker: ReaderWriterCompatibilityChecker,
) -> list[CompatibilityProblem]:
    result = checker.get_compatibility(_avro(reader), _avro(writer))
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = sorted({k.value for k in result.incompatibilities})
    messages = sorted(result.messages)
    described = (
        [_KIND_TEXT.get(kind, kind).format(m=m) for kind in kinds for m in messages]
        if len(kinds) == 1
        else [f"{', '.join(kinds)}: {'; '.join(messages)}"]
    )
    locations = sorted(loc for loc in result.locations if loc != "/") or ["/"]
    fields = ", ".join(_field_path(reader.raw, loc) for loc in locations)
    return [
        CompatibilityProblem(
            schema=name,
            version=max(reader.version, writer.version),
            other_version=min(reader.version, writer.version),
            direction=f"v{reader.version} reader, v{writer.version} writer",
            location=fields,
            message="; ".join(described),
        )
    ]


def check_schema(versions: list[SchemaVersion]) -> list[CompatibilityProblem]:
    """Every problem between every pair of versions of one schema, both directions."""
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    problems: list[CompatibilityProblem] = []
    for i, new in enumerate(versions):
        for old in versions[:i]:
            problems += _pair(new.name, new, old, checker)  # backward: new reads old
            problems += _pair(new.name, old, new, checker)  # forward: old reads new
    return problems


def check_tags(versions: list[SchemaVersion]) -> list[CompatibilityProblem]:
    """A field's sensitivity class may never be removed or changed in a later version."""
    problems: list[CompatibilityProblem] = []
    for i, new in enumerate(versions):
        new_tags = sensitive_fields(new.raw)
        for old in versions[:i]:
            for field, cls in sensitive_fields(old.raw).items():
                now = new_tags.get(field)
                if now is not None and now != cls:
                    problems.append(
                        CompatibilityProblem(
                            new.name,
                            new.version,
                            old.version,
                            "sensitivity",
                            f"/fields/{field}",
                            f"field {field!r} changed sensitivity from {cls} to {now}",
                        )
                    )
    return problems


@dataclass(frozen=True)
class Exception_:
    """A reviewed exception to the gate (``schemas/compatibility.yaml``)."""

    schema: str
    version: int
    other_version: int
    direction: str
    symbols: frozenset[str]
    reason: str

    def accepts(self, p: CompatibilityProblem) -> bool:
        """Only missing enum symbols, all of them listed, between exactly these versions."""
        if (p.schema, p.version, p.other_version) != (
            self.schema,
            self.version,
            self.other_version,
        ):
            return False
        older_reads = p.direction == f"v{self.other_version} reader, v{self.version} writer"
        if (self.direction == "forward") != older_reads:
            return False
        parts = p.message.split("; ")
        if not all(part.startswith("enum symbols ") for part in parts):
            return False
        named = set(re.findall(r"'([A-Za-z_][A-Za-z0-9_]*)'", p.message))
        return bool(named) and named <= self.symbols


def load_exceptions(path: Path) -> list[Exception_]:
    """The reviewed exceptions; none when the file does not exist."""
    if not path.exists():
        return []
    try:
        doc: Any = yaml.safe_load(path.read_text()) or {}
        return [
            Exception_(
                schema=e["schema"],
                version=int(e["version"]),
                other_version=int(e["other_version"]),
                direction=str(e["direction"]),
                symbols=frozenset(e["symbols"]),
                reason=" ".join(str(e["reason"]).split()),
            )
            for e in doc.get("exceptions") or []
        ]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"{path}: unreadable compatibility exceptions: {exc}") from exc


@dataclass(frozen=True)
class CheckReport:
    """Result of ``cbx schemas check``."""

    schemas: int
    versions: int
    problems: list[CompatibilityProblem]
    #: Problems a reviewed exception accepts, with its reason.
    accepted: list[tuple[CompatibilityProblem, str]] = dc_field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_catalogue(catalogue: Catalogue) -> CheckReport:
    """Parse every file (fastavro and avro) and run the FULL_TRANSITIVE gate on each schema."""
    problems: list[CompatibilityProblem] = []
    count = 0
    for name in catalogue.names():
        versions = catalogue.versions[name]
        for v in versions:
            _ = v.parsed  # fastavro must accept it too
            _avro(v)
            count += 1
        problems += check_schema(versions)
        problems += check_tags(versions)
    exceptions = load_exceptions(catalogue.root / "compatibility.yaml")
    accepted: list[tuple[CompatibilityProblem, str]] = []
    failing: list[CompatibilityProblem] = []
    for p in problems:
        match = next((e for e in exceptions if e.accepts(p)), None)
        if match is None:
            failing.append(p)
        else:
            accepted.append((p, match.reason))
    return CheckReport(len(catalogue.names()), count, failing, accepted)
