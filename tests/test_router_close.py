"""The router's own bookkeeping, without a broker: a stop that cannot hang, and partitions put back
where they belong after a rebalance."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition

from broker.kafka.settings import KafkaSettings
from broker.router import service as router_service


class Stuck:
    """A client whose close never returns (as aiokafka's fetcher has been seen to)."""

    topic = "cbx.directory"

    def __init__(self) -> None:
        self.asked = 0

    async def stop(self) -> None:
        self.asked += 1
        await asyncio.Event().wait()


async def test_a_client_that_will_not_close_does_not_hang_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(router_service, "CLOSE_TIMEOUT_S", 0.2)
    router = router_service.RouterService(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    stuck_consumer, stuck_follower = Stuck(), Stuck()
    router.consumer = stuck_consumer
    router.follower = stuck_follower  # type: ignore[assignment]
    started = time.monotonic()
    await asyncio.wait_for(router.close(), 5)
    assert time.monotonic() - started < 2
    assert stuck_consumer.asked == 1
    assert stuck_follower.asked == 1


class Positions:
    """A consumer that records where the router puts each partition."""

    def __init__(self, committed: int | None) -> None:
        self._committed = committed
        self.seeks: list[tuple[str, int | None]] = []

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._committed

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((f"{tp.topic}/{tp.partition}", offset))

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.seeks.extend((f"{tp.topic}/{tp.partition}", None) for tp in tps)


@pytest.mark.parametrize("committed", [None, 7])
async def test_records_fetched_across_a_rebalance_are_read_again(committed: int | None) -> None:
    """A fetch that spans a rebalance may return the first records read after the rebalance's
    rewind. The router does not route them (the batch predates its generation), so it must put
    the partition back to the committed offset: otherwise the consumer's position is past them
    and they wait for the next rebalance."""
    router = router_service.RouterService(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    tp = TopicPartition("cbx.outbound.la-e10000016", 0)
    consumer = Positions(committed)
    router.consumer = consumer
    router.assigned = {tp}
    router.producers[router.bucket(tp)] = object()  # type: ignore[assignment]
    fetched_in = router.generation
    await router.acquire([tp])  # the rebalance, while the fetch was in flight
    consumer.seeks.clear()
    await router._route_batch(tp, ["a record"], fetched_in)
    assert consumer.seeks == [(f"{tp.topic}/0", committed)]
    # A partition given up meanwhile is left to its new owner.
    await router.release([tp])
    consumer.seeks.clear()
    await router._route_batch(tp, ["a record"], fetched_in)
    assert consumer.seeks == []
