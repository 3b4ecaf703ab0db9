"""aiokafka client factories and topic administration, all fed by :mod:`broker.settings`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from broker.errors import KafkaUnavailableError
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


async def read_to_end(
    settings: KafkaSettings,
    topic: str,
    handle: Callable[[Any], object],
    timeout_s: float = 30.0,
) -> int:
    """Feed every record of ``topic`` (committed ones, from the start to the current end) to
    ``handle``; returns how many were read. Used to rebuild views from compacted topics."""
    parts = await partitions(settings, topic)
    if not parts:
        return 0
    c = consumer(settings, group_id=None)
    await c.start()
    count = 0
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            positions = [await c.position(tp) for tp in tps]
            if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                return count
            if loop.time() > deadline:
                raise KafkaUnavailableError(
                    f"reading {topic} to its end took over {timeout_s:.0f}s"
                )
            for records in (await c.getmany(timeout_ms=200, max_records=5000)).values():
                for r in records:
                    handle(r)
                    count += 1
    finally:
        await c.stop()
