"""Reading a topic to its end fails only when it stops moving, never because it is large: a
registry of any size can be rebuilt at start (no fixed timeout that a big topic exceeds)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from broker.kafka import clients as kafka
from broker.kafka.follow import TopicFollower
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import TopicSpec

pytestmark = pytest.mark.kafka

RECORDS = 6000


async def _fill(settings: KafkaSettings, topic: str) -> None:
    await kafka.ensure_topics(settings, [TopicSpec(topic, 2)])
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send(topic, b"x" * 50, key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def test_a_slow_read_of_a_large_topic_finishes_under_a_short_stall_limit(
    kafka_ns: KafkaSettings,
) -> None:
    settings = kafka_ns
    topic = f"{settings.topic_prefix}.big"
    await _fill(settings, topic)
    seen: list[Any] = []

    def slow(r: Any) -> None:  # 0.2 ms a record: the whole read takes over a second
        time.sleep(0.0002)
        seen.append(r)

    started = time.monotonic()
    count = await kafka.read_to_end(settings, topic, slow, timeout_s=0.5)
    assert count == RECORDS == len(seen)
    assert time.monotonic() - started > 0.5  # longer than the limit, yet it moved all along

    followed: list[Any] = []

    def slow_follow(r: Any) -> None:
        time.sleep(0.0002)
        followed.append(r)

    follower = TopicFollower(settings, topic, slow_follow)
    try:
        await follower.start()  # start() syncs: every record handled
        await follower.sync(timeout_s=0.5)
    finally:
        await follower.stop()
    assert len(followed) == RECORDS
