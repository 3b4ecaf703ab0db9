"""The client stack on a real broker: plain, idempotent and transactional produce/consume.

aiokafka's own CI does not run transactions against Kafka 4.x; these tests are the proof for cbx.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import pytest
from aiokafka import TopicPartition

from broker.kafka import clients as kafka
from broker.kafka.clients import TopicSpec
from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_aiokafka_c_extension_is_loaded() -> None:
    assert kafka.c_extension_loaded(), "aiokafka runs without its C extension: throughput falls"


async def _drain(consumer: Any, expected: int, within_s: float = 30.0) -> list[Any]:
    records: list[Any] = []
    deadline = asyncio.get_running_loop().time() + within_s
    while len(records) < expected and asyncio.get_running_loop().time() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        for recs in batch.values():
            records.extend(recs)
    return records


async def _read_all(
    settings: KafkaSettings, topic: str, isolation: str, settle_s: float = 2.0
) -> list[Any]:
    """Everything on ``topic`` visible at ``isolation``, reading until it goes quiet."""
    c = kafka.consumer(settings, topic, group_id=None, isolation_level=isolation)
    await c.start()
    try:
        records: list[Any] = []
        quiet_since = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - quiet_since < settle_s:
            batch = await c.getmany(timeout_ms=300)
            got = [r for recs in batch.values() for r in recs]
            if got:
                records.extend(got)
                quiet_since = asyncio.get_running_loop().time()
        return records
    finally:
        await c.stop()


async def test_produce_and_consume(kafka_settings: KafkaSettings, topic_name: str) -> None:
    await kafka.ensure_topics(kafka_settings, [TopicSpec(topic_name, partitions=3)])
    p = kafka.producer(kafka_settings)
    await p.start()
    try:
        futures = [
            await p.send(topic_name, f"v{i}".encode(), key=f"case-{i % 5}".encode())
            for i in range(100)
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await p.stop()
    assert len({m.partition for m in metas}) > 1
    c = kafka.consumer(kafka_settings, topic_name, group_id=f"{topic_name}.g")
    await c.start()
    try:
        records = await _drain(c, 100)
    finally:
        await c.stop()
    assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(100))
    # Same key, same partition, in send order.
    by_key: dict[bytes, list[bytes]] = {}
    parts: dict[bytes, set[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(r.key, []).append(r.value)
        parts.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in parts.values())
    for key, values in by_key.items():
        k = int(key.decode().split("-")[1])
        assert values == [f"v{i}".encode() for i in range(100) if i % 5 == k]


async def test_idempotent_producer_writes_each_record_once_in_order(
    kafka_settings: KafkaSettings, topic_name: str
) -> None:
    await kafka.ensure_topics(kafka_settings, [TopicSpec(topic_name)])
    p = kafka.producer(kafka_settings, enable_idempotence=True, max_batch_size=512, linger_ms=0)
    await p.start()
    try:
        assert p._txn_manager is not None, "idempotence must be on"
        futures = [await p.send(topic_name, str(i).encode()) for i in range(2000)]
        await asyncio.gather(*futures)
        producer_id = p._txn_manager.producer_id
    finally:
        await p.stop()
    assert producer_id >= 0
    records = await _read_all(kafka_settings, topic_name, "read_uncommitted")
    assert [int(r.value) for r in records] == list(range(2000))


async def test_transactional_consume_transform_produce(
    kafka_settings: KafkaSettings, topic_name: str
) -> None:
    src, dst = f"{topic_name}.in", f"{topic_name}.out"
    group = f"{topic_name}.router"
    await kafka.ensure_topics(kafka_settings, [TopicSpec(src, 2), TopicSpec(dst, 2)])

    p = kafka.producer(kafka_settings)
    await p.start()
    try:
        await asyncio.gather(*[await p.send(src, f"m{i}".encode()) for i in range(50)])
    finally:
        await p.stop()

    async def run_once(abort: bool) -> int:
        c = kafka.consumer(kafka_settings, src, group_id=group)
        tp = kafka.transactional_producer(kafka_settings, f"{group}.tx")
        await c.start()
        await tp.start()
        moved = 0
        try:
            records = await _drain(c, 50)
            with pytest.raises(RuntimeError) if abort else contextlib.nullcontext():
                async with tp.transaction():
                    for r in records:
                        await tp.send(dst, r.value.upper(), key=r.key)
                        moved += 1
                    offsets = {}
                    for r in records:
                        tpn = TopicPartition(r.topic, r.partition)
                        offsets[tpn] = max(offsets.get(tpn, 0), r.offset + 1)
                    await tp.send_offsets_to_transaction(offsets, group)
                    if abort:
                        raise RuntimeError("crash inside the transaction")
        finally:
            await tp.stop()
            await c.stop()
        return moved

    # First attempt aborts after writing every output record and the offsets.
    assert await run_once(abort=True) == 50
    # The records of the aborted transaction are on the log, visible only to read_uncommitted.
    uncommitted = await _read_all(kafka_settings, dst, "read_uncommitted")
    assert len(uncommitted) == 50
    assert await _read_all(kafka_settings, dst, "read_committed") == []

    # The group's offsets were not committed, so the retry sees every input again and commits.
    assert await run_once(abort=False) == 50
    committed = await _read_all(kafka_settings, dst, "read_committed")
    counts = Counter(r.value for r in committed)
    assert set(counts) == {f"M{i}".encode() for i in range(50)}
    assert set(counts.values()) == {1}, "each input must appear exactly once for read_committed"

    # A third run finds nothing left: the offsets were committed with the transaction.
    c = kafka.consumer(kafka_settings, src, group_id=group)
    await c.start()
    try:
        leftover = await c.getmany(timeout_ms=2000)
    finally:
        await c.stop()
    assert sum(len(v) for v in leftover.values()) == 0


@pytest.mark.parametrize("tracked", [True, False], ids=["kafka.send", "producer.send"])
async def test_a_topic_created_after_the_producer_started_strands_no_other_topics_batch(
    kafka_settings: KafkaSettings, topic_name: str, tracked: bool
) -> None:
    """A producer writes a topic it learnt of from a whole-cluster refresh, then (while that batch
    still lingers) a topic created after that refresh. With ``kafka.send`` both are written at
    once; with aiokafka's own ``send`` the first batch loses its topic's metadata and waits
    until it expires."""
    old, new = f"{topic_name}.old", f"{topic_name}.new"
    await kafka.ensure_topics(kafka_settings, [TopicSpec(old)])
    p = kafka.producer(kafka_settings, linger_ms=500, request_timeout_ms=5000)
    await p.start()
    try:
        # A refresh while the producer tracks no topic yet (as a transactional producer's start,
        # or the periodic refresh, makes) asks for the whole cluster: ``old`` becomes known
        # without being tracked. ``new`` does not exist yet.
        await p.client.force_metadata_update()
        await kafka.ensure_topics(kafka_settings, [TopicSpec(new)])
        if tracked:
            first = await kafka.send(p, old, b"to the old topic")
            second = await kafka.send(p, new, b"to the new topic")
            written = await asyncio.wait_for(asyncio.gather(first, second), 4.0)
            assert [m.topic for m in written] == [old, new]
        else:
            first = await p.send(old, b"to the old topic")
            await p.send(new, b"to the new topic")
            # What kafka.send exists for: if aiokafka stops stranding the batch, this fails and
            # the helper can go.
            with pytest.raises(Exception, match="NotLeaderForPartition"):
                await asyncio.wait_for(first, 15.0)
    finally:
        await p.stop()
