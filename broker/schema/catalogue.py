"""The schema catalogue: every Avro file under ``schemas/``, each version, parsed once.

Layout: ``schemas/<Name>/v<N>.avsc``; the highest N is the current version. Each file is
self-contained (shared named types are defined inline), so each is the complete specification an
agency's engineer reads, and each version is an exact snapshot of what was once on the wire.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException, fingerprint, to_parsing_canonical_form

from broker.errors import SchemaError
from broker.model import SensitivityClass
from broker.paths import schemas_dir

_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")
ENVELOPE = "Envelope"
EVENTS_NAMESPACE = "cbx.events"


def schema_fingerprint(parsed: Any) -> bytes:
    """CRC-64-AVRO fingerprint (8 bytes, little-endian) of a parsed schema's canonical form."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one schema, as committed."""

    name: str
    version: int
    path: Path
    raw: dict[str, Any] = field(repr=False)

    @cached_property
    def parsed(self) -> Any:
        """fastavro's parsed form (ready for the writer and reader)."""
        try:
            return fastavro.parse_schema(json.loads(json.dumps(self.raw)))
        except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
            raise SchemaError(f"{self.path}: not a valid Avro schema: {exc}") from exc

    @cached_property
    def fingerprint(self) -> bytes:
        return schema_fingerprint(self.parsed)

    @property
    def full_name(self) -> str:
        return f"{self.raw.get('namespace', '')}.{self.raw['name']}".lstrip(".")

    @cached_property
    def sensitive_fields(self) -> dict[str, SensitivityClass]:
        """Top-level fields tagged with a sensitivity class, in schema order."""
        return sensitive_fields(self.raw)


def sensitive_fields(raw: dict[str, Any]) -> dict[str, SensitivityClass]:
    """The ``sensitivity`` tags of a record schema's top-level fields."""
    out: dict[str, SensitivityClass] = {}
    for f in raw.get("fields", []):
        tag = f.get("sensitivity")
        if tag is None:
            continue
        try:
            out[f["name"]] = SensitivityClass(tag)
        except ValueError as exc:
            raise SchemaError(
                f"{raw.get('name')}.{f['name']}: sensitivity {tag!r} is not one of "
                f"{', '.join(SensitivityClass)}"
            ) from exc
    return out


@dataclass
class Catalogue:
    """All schema versions found in a folder."""

    root: Path
    versions: dict[str, list[SchemaVersion]]

    @classmethod
    def load(cls, root: Path | None = None) -> Catalogue:
        root = root or schemas_dir()
        versions: dict[str, list[SchemaVersion]] = {}
        if not root.is_dir():
            raise SchemaError(f"schema folder {root} does not exist")
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name[0].isupper()):
            found = []
            for path in folder.iterdir():
                m = _VERSION_FILE.match(path.name)
                if not m:
                    continue
                try:
                    raw = json.loads(path.read_text())
                except ValueError as exc:
                    raise SchemaError(f"{path}: not valid JSON: {exc}") from exc
                if raw.get("name") != folder.name:
                    raise SchemaError(
                        f"{path}: record name {raw.get('name')!r} differs from its folder name"
                    )
                found.append(SchemaVersion(folder.name, int(m.group(1)), path, raw))
            if found:
                versions[folder.name] = sorted(found, key=lambda v: v.version)
        return cls(root, versions)

    def names(self) -> list[str]:
        return sorted(self.versions)

    def event_types(self) -> list[str]:
        """Names of message body schemas (namespace ``cbx.events``); the rest is infrastructure."""
        return [n for n in self.names() if self.latest(n).raw.get("namespace") == EVENTS_NAMESPACE]

    def latest(self, name: str) -> SchemaVersion:
        try:
            return self.versions[name][-1]
        except KeyError:
            raise SchemaError(
                f"no schema named {name!r}; known: {', '.join(self.names())}"
            ) from None

    def get(self, name: str, version: int) -> SchemaVersion:
        for v in self.versions.get(name, []):
            if v.version == version:
                return v
        raise SchemaError(f"schema {name} has no version {version}")

    def all_versions(self) -> list[SchemaVersion]:
        return [v for name in self.names() for v in self.versions[name]]

    def by_fingerprint(self) -> dict[bytes, SchemaVersion]:
        return {v.fingerprint: v for v in self.all_versions()}
