"""Writer schemas by fingerprint, backed by the compacted topic ``cbx.schemas``.

Every schema in the local catalogue is known at start-up. A fingerprint nobody here knows (an
agency on a newer version) is looked up in ``cbx.schemas``; a schema read from the topic is accepted
only if its own fingerprint equals the key it was published under.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException

from broker.errors import SchemaError, UnknownSchemaError
from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger
from broker.schema.catalogue import Catalogue, SchemaVersion, schema_fingerprint

log = get_logger("schema_store")


class SchemaStore:
    """Parsed writer schemas keyed by fingerprint, with the raw JSON for republishing."""

    def __init__(self, catalogue: Catalogue | None = None) -> None:
        self._parsed: dict[bytes, Any] = {}
        self._raw: dict[bytes, dict[str, Any]] = {}
        if catalogue is not None:
            for v in catalogue.all_versions():
                self._parsed[v.fingerprint] = v.parsed
                self._raw[v.fingerprint] = v.raw

    def __contains__(self, fp: bytes) -> bool:
        return fp in self._parsed

    def __len__(self) -> int:
        return len(self._parsed)

    def writer_for(self, fp: bytes) -> Any:
        """The parsed writer schema for ``fp``; UnknownSchemaError if not known here."""
        try:
            return self._parsed[fp]
        except KeyError:
            raise UnknownSchemaError(fp) from None

    def register(self, raw: dict[str, Any], expected_fp: bytes | None = None) -> bytes:
        """Add a schema; with ``expected_fp``, refuse one whose fingerprint differs."""
        try:
            parsed = fastavro.parse_schema(json.loads(json.dumps(raw)))
        except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
            raise SchemaError(f"not a valid Avro schema: {exc}") from exc
        fp = schema_fingerprint(parsed)
        if expected_fp is not None and fp != expected_fp:
            raise SchemaError(
                f"schema published under fingerprint {expected_fp.hex()} has fingerprint {fp.hex()}"
            )
        self._parsed[fp] = parsed
        self._raw[fp] = raw
        return fp

    async def publish(
        self,
        settings: KafkaSettings,
        versions: list[SchemaVersion],
        derived: list[tuple[bytes, dict[str, Any]]] | None = None,
    ) -> int:
        """Publish schema versions, and ``derived`` (fingerprint, schema) pairs such as the wire
        forms of bodies, to ``cbx.schemas`` (idempotent: same key, same value)."""
        entries = [(v.fingerprint, v.raw) for v in versions] + list(derived or [])
        await kafka.ensure_topics(
            settings, [s for s in settings.topics.core() if s.name == settings.topics.schemas]
        )
        producer = kafka.producer(settings)
        await producer.start()
        try:
            futures = [
                await producer.send(
                    settings.topics.schemas,
                    json.dumps(raw, sort_keys=True).encode(),
                    key=fp.hex().encode(),
                )
                for fp, raw in entries
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return len(entries)

    async def refresh(self, settings: KafkaSettings, timeout_s: float = 10.0) -> int:
        """Read ``cbx.schemas`` from the start to its current end; returns schemas added."""
        before = len(self._parsed)
        await kafka.read_to_end(
            settings, settings.topics.schemas, lambda r: self._accept(r.key, r.value), timeout_s
        )
        return len(self._parsed) - before

    def _accept(self, key: bytes | None, value: bytes | None) -> int:
        if key is None or value is None:
            return 0
        try:
            fp = bytes.fromhex(key.decode())
            if fp in self._parsed:
                return 0
            self.register(json.loads(value), expected_fp=fp)
            return 1
        except (ValueError, SchemaError) as exc:
            log.warning("schema_rejected", key=key.decode(errors="replace"), error=str(exc))
            return 0

    async def resolve(self, settings: KafkaSettings, fp: bytes) -> Any:
        """The writer schema for ``fp``, fetching ``cbx.schemas`` once if it is not cached."""
        if fp not in self._parsed:
            await self.refresh(settings)
        return self.writer_for(fp)
