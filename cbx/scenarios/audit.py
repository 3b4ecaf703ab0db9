"""The scenario's privacy audit: the case's sensitive values searched for in the raw bytes of
every topic of its namespace (they must only ever travel sealed)."""

from __future__ import annotations

import re
from typing import Any

from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.schema.catalogue import Catalogue

_SYMBOL = re.compile(r"^[A-Z][A-Z0-9_]*$")


def sensitive_values(catalogue: Catalogue, requests: list[tuple[str, dict[str, Any]]]) -> set[str]:
    """Every string of six or more characters inside a field the schemas mark sensitive.

    Enum symbols (``MEDIUM``, ``CHILDRENS_HOME``) are left out: they are the schemas' public
    vocabulary and appear in clear elsewhere (the risk grade, for one, is not a sensitive field).
    """
    out: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, str) and len(v) >= 6 and not _SYMBOL.match(v):
            out.add(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for event_type, request in requests:
        sensitive = catalogue.latest(event_type).sensitive_fields
        event = request.get("event")
        if isinstance(event, dict):
            for k, v in event.items():
                if k in sensitive:
                    walk(v)
    return out


async def plaintext_scan(settings: KafkaSettings, values: set[str]) -> tuple[int, int]:
    """(matches, records scanned) of ``values`` in the raw bytes of every topic in the namespace."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix + ".")]
    finally:
        await admin.close()
    needles = [v.encode() for v in values]
    found = 0
    scanned = 0

    def check(r: Any) -> None:
        nonlocal found, scanned
        scanned += 1
        blob = (r.key or b"") + (r.value or b"") + b"".join(v for _, v in r.headers)
        found += sum(1 for n in needles if n in blob)

    for name in names:
        await kafka.read_to_end(settings, name, check)
    return found, scanned
