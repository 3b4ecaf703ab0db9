"""The raw aiokafka baseline of the latency benchmarks: cbx's topology without cbx.

A producer writes to a source topic; a relay consumes it and, in a transaction with the consumed
offsets, writes each record to three topics; three consumers read them. ``arrived(key)`` is
called when a record's key has been read from all three.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import TopicSpec

FAN_OUT = 3


class RawRelay:
    def __init__(
        self, settings: KafkaSettings, name: str, arrived: Callable[[bytes], None]
    ) -> None:
        self.settings = settings
        self.prefix = f"{name}{uuid.uuid4().hex[:8]}"
        self.source = f"{self.prefix}.in"
        self.outs = [f"{self.prefix}.out{i}" for i in range(FAN_OUT)]
        self.arrived = arrived
        self.seen: dict[bytes, set[str]] = {}
        self.producer: AIOKafkaProducer = kafka.producer(settings)
        self._clients: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._topics_made = False

    async def create_topics(self) -> None:
        self._topics_made = True
        await kafka.ensure_topics(
            self.settings, [TopicSpec(t, 3) for t in [self.source, *self.outs]]
        )

    async def start(self) -> None:
        """Every client started (cold: nothing was started before); topics first if need be."""
        if not self._topics_made:
            await self.create_topics()
        group = f"{self.prefix}-relay"
        relay_in = kafka.consumer(self.settings, self.source, group_id=group, max_poll_records=500)
        relay_out = kafka.transactional_producer(self.settings, group, linger_ms=2)
        await relay_in.start()
        await relay_out.start()
        readers = []
        for t in self.outs:
            c = kafka.consumer(self.settings, t, group_id=f"{self.prefix}-{t}")
            await c.start()
            readers.append(c)
        await self.producer.start()
        self._clients = [relay_in, relay_out, *readers, self.producer]
        self._tasks = [asyncio.create_task(self._relay(relay_in, relay_out, group))] + [
            asyncio.create_task(self._read(c, t)) for c, t in zip(readers, self.outs, strict=True)
        ]

    async def _relay(self, relay_in: Any, relay_out: Any, group: str) -> None:
        while not self._stop.is_set():
            batch = await relay_in.getmany(timeout_ms=100)
            for tp, records in batch.items():
                async with relay_out.transaction():
                    for r in records:
                        for t in self.outs:
                            await relay_out.send(t, r.value, key=r.key)
                    await relay_out.send_offsets_to_transaction({tp: records[-1].offset + 1}, group)

    async def _read(self, c: AIOKafkaConsumer, topic: str) -> None:
        while not self._stop.is_set():
            batch = await c.getmany(timeout_ms=100)
            for records in batch.values():
                for r in records:
                    got = self.seen.setdefault(r.key, set())
                    got.add(topic)
                    if len(got) == FAN_OUT:
                        del self.seen[r.key]
                        self.arrived(r.key)

    async def send(self, key: bytes, value: bytes) -> None:
        """Queue one record on the source topic."""
        await self.producer.send(self.source, value, key=key)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self._clients:
            await client.stop()
