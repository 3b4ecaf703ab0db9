"""aiokafka client factories and topic administration, all fed by :mod:`broker.settings`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from broker.settings import KafkaSettings


def c_extension_loaded() -> bool:
    """True when aiokafka's compiled record codec is in use (several times faster)."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    module: str = DefaultRecordBatchBuilder.__module__
    return module.startswith("aiokafka.record._crecords")


def producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer (acks=all) unless overridden."""
    kwargs: dict[str, Any] = {
        **settings.aiokafka_kwargs(),
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
    }
    kwargs.update(overrides)
    return AIOKafkaProducer(**kwargs)


def transactional_producer(
    settings: KafkaSettings, transactional_id: str, **overrides: Any
) -> AIOKafkaProducer:
    """A transactional producer; use ``async with p.transaction():`` (aborts on exception)."""
    return producer(settings, transactional_id=transactional_id, **overrides)


def consumer(settings: KafkaSettings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A ``read_committed`` consumer that commits explicitly, from the earliest offset."""
    kwargs: dict[str, Any] = {
        **settings.aiokafka_kwargs(),
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    kwargs.update(overrides)
    return AIOKafkaConsumer(*topics, **kwargs)


def admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**settings.aiokafka_kwargs())


@dataclass(frozen=True)
class TopicSpec:
    """A topic cbx needs, with its partitions and configuration."""

    name: str
    partitions: int = 1
    config: dict[str, str] = field(default_factory=dict)


async def ensure_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec], replication: int = 1
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    specs = list(specs)
    client = admin(settings)
    await client.start()
    try:
        existing = set(await client.list_topics())
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partitions,
                replication_factor=replication,
                topic_configs=s.config,
            )
            for s in specs
            if s.name not in existing
        ]
        if new:
            # Another process may create one between list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await client.create_topics(new)
        await _wait_for_metadata(client, [s.name for s in specs])
    finally:
        await client.close()


async def _wait_for_metadata(client: AIOKafkaAdminClient, names: list[str]) -> None:
    for _ in range(100):
        if set(names) <= set(await client.list_topics()):
            return
        await asyncio.sleep(0.1)


async def partitions(settings: KafkaSettings, topic: str) -> list[int]:
    """Partition ids of ``topic`` (empty when it does not exist)."""
    client = admin(settings)
    await client.start()
    try:
        described = await client.describe_topics([topic])
    finally:
        await client.close()
    for t in described:
        if t.get("topic") == topic and not t.get("error_code"):
            return sorted(p["partition"] for p in t.get("partitions", []))
    return []
