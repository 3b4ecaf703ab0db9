"""Views rebuilt from compacted topics and kept current: read to the end, then follow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger

log = get_logger("follow")
#: How long the broker may hold a follower's fetch when nothing new is visible (aiokafka's default
#: is 500 ms, by which a view would trail its topic after every transaction). A view that someone
#: waits on (the placement registry, before a message about a new case can be routed; the
#: tracker's log, for a receipt that overtook its ROUTED entries) asks for less. Each empty fetch
#: at idle is one request to the broker: 10 a second per follower, 20 for the prompt ones.
FETCH_WAIT_MS = 100
PROMPT_FETCH_WAIT_MS = 50


class TopicFollower:
    """Feeds every committed record of a topic to ``handle``, from the start, while it runs.

    ``sync()`` waits until everything committed before the call has been handled, so a caller can
    be sure its view includes what it (or anyone) wrote a moment ago.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        handle: Callable[[Any], object],
        fetch_wait_ms: int = FETCH_WAIT_MS,
    ) -> None:
        self.fetch_wait_ms = fetch_wait_ms
        self.settings = settings
        self.topic = topic
        self.handle = handle
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._tps: list[TopicPartition] = []
        self._progress = asyncio.Condition()
        #: Seconds the last sync spent asking for the end offsets (the rest was reading to them).
        self.asked_s = 0.0

    async def start(self) -> None:
        parts = await kafka.partitions(self.settings, self.topic)
        self._tps = [TopicPartition(self.topic, p) for p in parts]
        # A read_committed fetch is not answered when a transaction's marker makes records
        # visible, only when its wait runs out, so a view trails the topic by up to the wait
        # after every transaction; each empty fetch at idle costs the broker a request.
        self._consumer = kafka.consumer(
            self.settings, group_id=None, fetch_max_wait_ms=self.fetch_wait_ms
        )
        await self._consumer.start()
        if self._tps:
            self._consumer.assign(self._tps)
            await self._consumer.seek_to_beginning(*self._tps)
        self._task = asyncio.create_task(self._run(), name=f"follow {self.topic}")
        await self.sync()

    async def _run(self) -> None:
        while True:
            if not self._tps:
                await asyncio.sleep(0.5)
                continue
            batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for r in records:
                    try:
                        self.handle(r)
                    except Exception as exc:  # one bad record must not stop the view
                        log.warning(
                            "record_skipped",
                            topic=self.topic,
                            offset=r.offset,
                            error_class=type(exc).__name__,
                        )
            async with self._progress:
                self._progress.notify_all()

    async def sync(self, timeout_s: float = 30.0) -> None:
        """Return once every record committed before this call has been handled.

        TimeoutError only when the view makes no progress for ``timeout_s``: a large topic read
        from the start takes as long as it takes, so long as it moves."""
        if not self._tps:
            return
        loop = asyncio.get_running_loop()
        asked = loop.time()
        end = await self._consumer.end_offsets(self._tps)
        self.asked_s = loop.time() - asked
        seen = -1
        moved = loop.time()
        while True:
            positions = [await self._consumer.position(tp) for tp in self._tps]
            if all(p >= end[tp] for p, tp in zip(positions, self._tps, strict=True)):
                return
            if sum(positions) != seen:
                seen, moved = sum(positions), loop.time()
            elif loop.time() - moved > timeout_s:
                raise TimeoutError(f"{self.topic}: no progress for {timeout_s:.0f} s")
            async with self._progress:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), 0.5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
