"""A stop ends the router even when a Kafka client will not close (no broker needed)."""

from __future__ import annotations

import asyncio
import time

import pytest

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
