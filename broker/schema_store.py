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
from aiokafka import TopicPartition
from fastavro.schema import SchemaParseException

from broker import kafka, topics
from broker.catalogue import Catalogue, SchemaVersion, schema_fingerprint
from broker.errors import SchemaError, UnknownSchemaError
from broker.logging import get_logger
from broker.settings import KafkaSettings

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

    async def publish(self, settings: KafkaSettings, versions: list[SchemaVersion]) -> int:
        """Publish schema versions to ``cbx.schemas`` (idempotent: same key, same value)."""
        await kafka.ensure_topics(
            settings, [s for s in topics.core_topics() if s.name == topics.SCHEMAS]
        )
        producer = kafka.producer(settings)
        await producer.start()
        try:
            futures = [
                await producer.send(
                    topics.SCHEMAS,
                    json.dumps(v.raw, sort_keys=True).encode(),
                    key=v.fingerprint.hex().encode(),
                )
                for v in versions
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return len(versions)

    async def refresh(self, settings: KafkaSettings, timeout_s: float = 10.0) -> int:
        """Read ``cbx.schemas`` from the start to its current end; returns schemas added."""
        partitions = await kafka.partitions(settings, topics.SCHEMAS)
        if not partitions:
            return 0
        consumer = kafka.consumer(settings, group_id=None, enable_auto_commit=False)
        await consumer.start()
        added = 0
        try:
            tps = [TopicPartition(topics.SCHEMAS, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while loop.time() < deadline:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                    break
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        added += self._accept(r.key, r.value)
        finally:
            await consumer.stop()
        return added

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
