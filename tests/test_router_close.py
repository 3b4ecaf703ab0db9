"""The router's own bookkeeping, without a broker: a stop that cannot hang, and records read again
from the right place after a failed transaction."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from broker.errors import ConfigurationError
from broker.kafka import txn
from broker.kafka.settings import KafkaSettings
from broker.kafka.txn import CallStuck
from broker.router import service as router_service
from broker.router.core import Outcome


class Stuck:
    """A client whose close never returns."""

    topic = "cbx.directory"

    def __init__(self) -> None:
        self.asked = 0

    async def stop(self) -> None:
        self.asked += 1
        await asyncio.Event().wait()

    async def close(self, timeout_s: float) -> None:
        await self.stop()


async def test_a_client_that_will_not_close_does_not_hang_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(router_service, "CLOSE_TIMEOUT_S", 0.2)
    router = router_service.RouterService(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    stuck_pipe, stuck_follower = Stuck(), Stuck()
    router.pipe = stuck_pipe  # type: ignore[assignment]
    router.follower = stuck_follower  # type: ignore[assignment]
    started = time.monotonic()
    await asyncio.wait_for(router.close(), 5)
    assert time.monotonic() - started < 2
    assert stuck_pipe.asked == 1
    assert stuck_follower.asked == 1


class Read:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.at = (topic, partition, offset)

    def topic(self) -> str:
        return self.at[0]

    def partition(self) -> int:
        return self.at[1]

    def offset(self) -> int:
        return self.at[2]

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, int(time.time() * 1000))


class Pipe:
    """Transactions that fail for the partitions in ``failing``; seeks and commits recorded."""

    def __init__(self, failing: set[tuple[str, int]], error: Exception | None = None) -> None:
        self.failing = failing
        self.error = error or RuntimeError("the transaction failed")
        self.producer: Any = object()
        self.forgotten: list[set[str]] = []
        self.seeks: list[dict[tuple[str, int], int]] = []
        self.commits: list[dict[tuple[str, int], int]] = []
        self.aborts = 0

    def known_partitions(self, topic: str) -> int:
        return 3  # partitions 0 and 1 bulk, 2 the lane

    def begin(self) -> None:
        pass

    def produce(self, *args: Any) -> None:
        pass

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        if set(offsets) & self.failing:
            raise self.error
        self.commits.append(offsets)

    async def abort(self) -> bool:
        self.aborts += 1
        return True

    async def seek(self, positions: dict[tuple[str, int], int]) -> None:
        self.seeks.append(positions)

    def forget(self, names: set[str]) -> None:
        self.forgotten.append(set(names))


class Core:
    def process(self, rec: Any) -> Outcome:
        return Outcome([], "duplicate")


async def test_a_failed_transaction_is_read_again_and_its_partitions_then_go_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transaction over three partitions fails because of one of them: every partition in it
    is put back to its first record in it, what was read of them after is forgotten, and the
    next round gives each its own transaction, so the two good ones are routed while the bad
    one keeps failing alone."""
    nap = asyncio.sleep
    monkeypatch.setattr(router_service.asyncio, "sleep", lambda s: nap(0))
    router = router_service.RouterService(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    bad, good1, good2 = ("t.a", 0), ("t.b", 0), ("t.b", 1)
    pipe = Pipe({bad})
    router.pipe = pipe  # type: ignore[assignment]
    router.core = Core()  # type: ignore[assignment]
    router.assigned = {bad, good1, good2}
    batch = [Read(*bad, 5), Read(*good1, 7), Read(*good2, 9), Read(*bad, 6), Read(*good1, 8)]
    router.work.add([Read(*good1, 9), Read(*bad, 7)])  # read after the batch
    await router._route(batch)
    assert pipe.commits == []
    assert router._alone == {bad, good1, good2}
    assert pipe.aborts == 1
    assert pipe.seeks == [{bad: 5, good1: 7, good2: 9}]
    assert len(router.work) == 0
    await router._route(batch)
    assert pipe.commits == [{good1: 9}, {good2: 10}]
    assert pipe.seeks[-1] == {bad: 5}
    assert router._alone == {bad}
    # Once committed alone, the good ones go together again.
    await router._route([Read(*good1, 9), Read(*good2, 10)])
    assert pipe.commits[-1] == {good1: 10, good2: 11}
    # A partition given up meanwhile is not put back: its next owner reads it.
    router._release([bad])
    await router._route([Read(*bad, 5)])
    assert pipe.seeks[-1] == {bad: 5}
    assert len(pipe.seeks) == 2
    assert router._alone == set()


async def test_a_commit_given_up_as_stuck_is_not_routed_again_before_the_routed_ids_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit that blocked past its bound may yet have gone through (the next producer's
    InitProducerId settles it either way): its partitions are read again from their first record
    in it, and marked to catch up with the routed ids first, so what it did commit is known as
    routed. A commit that failed and was aborted cleanly needs no catch-up."""
    nap = asyncio.sleep
    monkeypatch.setattr(router_service.asyncio, "sleep", lambda s: nap(0))
    router = router_service.RouterService(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    lane, bulk = ("t.a", 2), ("t.b", 0)
    pipe = Pipe({lane}, CallStuck("send_offsets_to_transaction blocked"))
    router.pipe = pipe  # type: ignore[assignment]
    router.core = Core()  # type: ignore[assignment]
    router.assigned = {lane, bulk}
    await router._route([Read(*lane, 4), Read(*bulk, 8)])
    assert pipe.seeks == [{lane: 4, bulk: 8}]
    assert router._unsynced == {lane, bulk}
    router._unsynced.clear()
    pipe.error = RuntimeError("refused, and aborted")
    await router._route([Read(*lane, 4)])
    assert router._unsynced == set()


async def test_a_transaction_call_that_blocks_past_its_bound_gives_its_producer_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """librdkafka was seen blocked in send_offsets_to_transaction for minutes past its timeout.
    Past the bound the pipe goes on with a new worker thread and no producer; the stuck call,
    should it ever return, finishes on the producer it started with, never on the next one."""
    monkeypatch.setattr(txn, "STUCK_S", 0.3)
    release = threading.Event()
    calls: list[tuple[str, str]] = []

    class Producer:
        def __init__(self, name: str) -> None:
            self.name = name

        def send_offsets_to_transaction(self, *args: Any) -> None:
            calls.append((self.name, "send_offsets"))
            if self.name == "stuck":
                release.wait(10)

        def commit_transaction(self, *args: Any) -> None:
            calls.append((self.name, "commit"))

        def poll(self, *args: Any) -> None:
            pass

    class Consumer:
        def consumer_group_metadata(self) -> object:
            return object()

    pipe = txn.Pipe(KafkaSettings(bootstrap_servers="127.0.0.1:9"), "g", "t", "^x", print, print)
    pipe.producer, pipe.consumer = Producer("stuck"), Consumer()
    pipe._in_transaction = True
    with pytest.raises(CallStuck, match="blocked for more than"):
        await pipe.commit({("t.a", 0): 5})
    assert pipe.producer is None
    assert not pipe._in_transaction
    # The pipe works on, on a new thread, while the stuck call still blocks.
    pipe.producer = Producer("next")
    await pipe.commit({("t.a", 0): 5})
    assert calls == [("stuck", "send_offsets"), ("next", "send_offsets"), ("next", "commit")]
    release.set()
    await asyncio.sleep(0.2)
    # The stuck call ended with its own step: nothing after it ran on either producer.
    assert calls == [("stuck", "send_offsets"), ("next", "send_offsets"), ("next", "commit")]


def test_a_process_with_a_call_stuck_for_good_still_ends() -> None:
    """The router logged that it had stopped and never ended: the worker thread left to a
    stuck call was joined at exit. Calls run on a daemon thread now."""
    code = (
        "import threading; from broker.kafka.txn import _Worker; "
        "w = _Worker('kafka'); w.submit(threading.Event().wait); print('leaving')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leaving"


async def test_a_transaction_caught_by_a_rebalance_is_routed_again_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Offsets sent with a generation the group has left behind (a router joined or left while
    the transaction was open) say nothing about the partitions: the transaction is aborted, its
    partitions are read again from their first record in it, and they stay together, with no
    pause before the next try (an urgent report must not wait out a back-off it did not earn)."""
    naps: list[float] = []
    nap = asyncio.sleep

    def sleep(s: float) -> Any:
        naps.append(s)
        return nap(0)

    monkeypatch.setattr(router_service.asyncio, "sleep", sleep)
    router = router_service.RouterService(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    lane, bulk = ("t.a", 2), ("t.b", 0)
    moved = KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))
    pipe = Pipe({lane}, moved)
    router.pipe = pipe  # type: ignore[assignment]
    router.core = Core()  # type: ignore[assignment]
    router.assigned = {lane, bulk}
    await router._route([Read(*lane, 4), Read(*bulk, 8), Read(*lane, 5)])
    assert pipe.aborts == 1
    assert pipe.seeks == [{lane: 4, bulk: 8}]
    assert router._alone == set()
    assert naps == []
    # Caught again (the rebalance is not over): a short pause before the third try.
    await router._route([Read(*lane, 4), Read(*bulk, 8)])
    assert router._alone == set()
    assert naps == [0.1]
    naps.clear()
    # Any other failure still backs off, and its partitions then go alone.
    pipe.error = RuntimeError("the transaction failed")
    await router._route([Read(*lane, 4), Read(*bulk, 8)])
    assert router._alone == {lane, bulk}
    assert naps == [0.5]


def test_an_instance_name_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance name ends the producer's transactional id: it must be a name Kafka and the
    ACL prefix take, and an error says which setting is wrong."""
    from broker.errors import ConfigurationError

    monkeypatch.setenv("CBX_ROUTER_INSTANCE", "router-0")
    assert router_service.instance_name() == "router-0"
    assert router_service.instance_name("b.1") == "b.1"
    for bad in ("two words", "x" * 101, "a/b", "é"):
        monkeypatch.setenv("CBX_ROUTER_INSTANCE", bad)
        with pytest.raises(ConfigurationError, match="CBX_ROUTER_INSTANCE"):
            router_service.instance_name()
    monkeypatch.delenv("CBX_ROUTER_INSTANCE")
    assert router_service.instance_name()  # the host's name


def test_the_router_group_uses_the_consumer_protocol_unless_told_classic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CBX_ROUTER_GROUP_PROTOCOL", raising=False)
    assert router_service.group_protocol() == "consumer"
    monkeypatch.setenv("CBX_ROUTER_GROUP_PROTOCOL", "classic")
    assert router_service.group_protocol() == "classic"
    monkeypatch.setenv("CBX_ROUTER_GROUP_PROTOCOL", "eager")
    with pytest.raises(ConfigurationError, match="CBX_ROUTER_GROUP_PROTOCOL: 'eager'"):
        router_service.group_protocol()


@pytest.mark.parametrize("protocol", ["consumer", "classic"])
def test_the_consumer_is_made_with_the_settings_its_protocol_accepts(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka refuses the classic protocol's session, heartbeat and assignor settings with
    the consumer protocol (the broker holds them): the pipe drops them, and keeps them for the
    classic one. No broker is needed to make a consumer and subscribe it."""
    pipe = txn.Pipe(
        KafkaSettings("127.0.0.1:1"),
        "g",
        "g.a",
        "^cbx\\.outbound\\..*",
        lambda parts: None,
        lambda parts: None,
        consumer_conf={
            "group.protocol": protocol,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 500,
        },
    )
    made: list[dict[str, Any]] = []
    real = txn.Consumer

    def consumer(conf: dict[str, Any]) -> Any:
        made.append(conf)
        return real(conf)

    monkeypatch.setattr(txn, "Consumer", consumer)
    c = pipe._new_consumer()
    try:
        (conf,) = made
        classic = {"partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms"}
        if protocol == "consumer":
            assert conf["group.protocol"] == "consumer"
            assert not classic & conf.keys()
        else:
            assert classic <= conf.keys()
            assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    finally:
        c.close()
        pipe._thread.shutdown(wait=False)
        pipe._meta_thread.shutdown(wait=False)
