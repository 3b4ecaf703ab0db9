"""Quarantine: inbox records a connector could not deliver, kept exactly as they arrived.

A record that cannot be verified, decoded or opened, that the agency's profile does not take, or
that the agency's system refused for good is one record's failure: the inbox keeps it here and goes
on with the next. Each is one JSON file (0600) named by its topic, partition and offset, holding the
original key, value and headers (the value is still sealed: nothing is decrypted into this folder)
and the reason code, never a field value. Writing the same record again overwrites the same file,
so a batch handled twice after a crash keeps one copy.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.files import write_private_json


@dataclass(frozen=True)
class Quarantined:
    """One kept record and why."""

    path: Path
    reason: str
    error_class: str
    message_id: str | None
    source: str


class Quarantine:
    """A folder of quarantined inbox records."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def keep(
        self,
        record: Any,
        reason: str,
        error_class: str,
        message_id: str | None = None,
        detail: str = "",
    ) -> Quarantined:
        """Write ``record`` (a Kafka consumer record) with its reason; returns where."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        source = f"{record.topic}/{record.partition}/{record.offset}"
        name = f"{record.topic}.{record.partition}.{record.offset}.json"
        doc = {
            "source": source,
            "message_id": message_id,
            "reason": reason,
            "error_class": error_class,
            "detail": detail,
            "quarantined_at": dt.datetime.now(dt.UTC).isoformat(),
            "key": _b64(record.key),
            "value": _b64(record.value),
            "headers": [[k, _b64(v)] for k, v in (record.headers or [])],
        }
        final = write_private_json(self.folder / name, doc)
        return Quarantined(final, reason, error_class, message_id, source)

    def list(self) -> list[dict[str, Any]]:
        """Every quarantined record's metadata (no key, value or headers), oldest first."""
        out = []
        for p in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            doc = json.loads(p.read_text())
            out.append({k: v for k, v in doc.items() if k not in ("key", "value", "headers")})
        return sorted(out, key=lambda d: d["quarantined_at"])


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(bytes(value)).decode()
