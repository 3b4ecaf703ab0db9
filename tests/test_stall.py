"""A consumer that stops fetching a partition with records waiting is noticed and replaced: the
watch's judgement with a clock of its own, and an inbox on the real broker whose consumer stops
fetching (paused from outside, as after a cluster outage) handing everything over once, anyway."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from agencies import SHARING
from aiokafka.errors import KafkaConnectionError
from exchange import exchange
from test_router import ALL, KENT, LANCS, placement_body

from broker.kafka.settings import KafkaSettings
from broker.kafka.stall import StallWatch
from connectors.gateway.inbox import Delivered


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_partition_behind_and_unmoved_for_the_window_is_stalled() -> None:
    clock = Clock()
    watch = StallWatch(stall_s=30, every_s=5, clock=clock)
    assert not watch.due()
    clock.now = 5
    assert watch.due()
    assert watch.observe({"a": 10, "b": 4}, {"a": 12, "b": 4}) == []  # a behind from 5
    assert not watch.due()
    for now in (15, 25):
        clock.now = now
        assert watch.observe({"a": 10, "b": 4}, {"a": 12, "b": 9}) == []  # b behind from 15
    clock.now = 34.9
    assert watch.observe({"a": 10, "b": 4}, {"a": 12, "b": 9}) == []  # a: 4 looks, 29.9 s
    clock.now = 35
    assert watch.observe({"a": 10, "b": 4}, {"a": 12, "b": 9}) == ["a"]
    clock.now = 45
    assert watch.observe({"a": 10, "b": 4}, {"a": 12, "b": 9}) == ["a", "b"]


def test_a_slow_caller_is_not_a_stalled_consumer() -> None:
    """Looking once a slow batch: long enough unmoved, but too few looks to judge."""
    clock = Clock()
    watch = StallWatch(stall_s=30, clock=clock)
    watch.observe({"a": 10}, {"a": 20})
    clock.now = 60
    assert watch.observe({"a": 10}, {"a": 20}) == []
    clock.now = 120
    assert watch.observe({"a": 10}, {"a": 25}) == []
    clock.now = 180
    assert watch.observe({"a": 10}, {"a": 25}) == ["a"]  # four looks in a row, three minutes


def test_moving_caught_up_or_unassigned_partitions_are_not_stalled() -> None:
    clock = Clock()
    watch = StallWatch(stall_s=30, clock=clock)
    watch.observe({"a": 10, "b": 1, "c": 0}, {"a": 20, "b": 5, "c": 3})
    clock.now = 40
    # a moved (slowly), b caught up, c was taken away by a rebalance, d has no end offset known
    assert watch.observe({"a": 11, "b": 5, "d": 2}, {"a": 20, "b": 5}) == []
    for now in (50, 60, 69.9):  # a behind at 11 from 40; b and c behind again from 50
        clock.now = now
        assert watch.observe({"a": 11, "b": 5, "c": 0}, {"a": 20, "b": 9, "c": 3}) == []
    clock.now = 70
    assert watch.observe({"a": 11, "b": 5, "c": 0}, {"a": 20, "b": 9, "c": 3}) == ["a"]
    clock.now = 80
    assert watch.observe({"a": 11, "b": 5, "c": 0}, {"a": 20, "b": 9, "c": 3}) == ["a", "b", "c"]


class Unreachable:
    """A consumer whose cluster cannot be asked for end offsets."""

    def assignment(self) -> set[str]:
        return {"a"}

    async def end_offsets(self, tps: list[str]) -> dict[str, int]:
        raise KafkaConnectionError("no broker")

    async def position(self, tp: str) -> int:
        return 0


async def test_nothing_is_judged_while_the_cluster_cannot_be_asked() -> None:
    clock = Clock()
    watch = StallWatch(stall_s=0, clock=clock)
    assert await watch.look(Unreachable()) == []
    clock.now = 100
    assert await watch.look(Unreachable()) == []


@pytest.mark.kafka
async def test_an_inbox_whose_consumer_stops_fetching_is_renewed(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    delivered: list[Delivered] = []

    async def sink(d: Delivered) -> None:
        delivered.append(d)

    async with exchange(kafka_ns, tmp_path) as ex:
        for agency in ALL:
            await ex.agency(agency, inbox=agency == LANCS, sink=sink)
        await ex.sync_all()
        inbox = ex.connectors[LANCS].inbox
        inbox.stall_s = 2.0

        async def assigned() -> Any:
            c = inbox._consumer
            return c if c is not None and c.assignment() else None

        stopped = await ex.wait_for(assigned, what="the inbox's partitions assigned")
        # The consumer stops fetching every partition, as one was seen to after an outage.
        stopped.pause(*stopped.assignment())
        kent = ex.connectors[KENT]
        sent = []
        for i in range(20):
            body, case = placement_body(), f"KCC-ST-{i}"
            out = await kent.send("PlacementNotified", body, case_ref=case, sharing=SHARING)
            sent.append(str(out.header.message_id))

        async def all_handed_over() -> bool:
            return {str(d.header.message_id) for d in delivered} >= set(sent)

        await ex.wait_for(all_handed_over, within_s=60, what="every message handed over")
        assert inbox._consumer is not stopped, "the stalled consumer was replaced"
        assert inbox.running
        await asyncio.sleep(1)
        counts = Counter(str(d.header.message_id) for d in delivered)
        assert all(counts[m] == 1 for m in sent), "each handed over once"
