"""Where a partition given to a router instance without a committed offset starts, without a
broker: the router commits its log start offset once it is idle, and only for a partition the
group has no offset for."""

from __future__ import annotations

import time

import pytest
from test_router_close import Core, Pipe, Read

from broker.kafka.settings import KafkaSettings
from broker.router import service as router_service

Part = tuple[str, int]


class Offsets(Pipe):
    """The fake pipe, with the group's committed offsets and the fetched log starts."""

    def __init__(
        self, committed: dict[Part, int | None], starts: dict[Part, int], failing: set[Part]
    ) -> None:
        super().__init__(failing)
        self.group_offsets = committed
        self.starts = starts
        self.asked: list[set[Part]] = []

    async def committed(self, parts: set[Part]) -> dict[Part, int | None]:
        self.asked.append(set(parts))
        return {p: self.group_offsets.get(p) for p in parts}

    async def log_starts(self, parts: list[Part]) -> dict[Part, int]:
        return {p: self.starts[p] for p in parts if p in self.starts}

    async def commit(self, offsets: dict[Part, int]) -> None:
        await super().commit(offsets)
        self.group_offsets.update(offsets)


def _router(pipe: Pipe, parts: list[Part]) -> router_service.RouterService:
    router = router_service.RouterService(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    router.pipe = pipe  # type: ignore[assignment]
    router.core = Core()  # type: ignore[assignment]
    router._acquire(parts)
    router._unsynced.clear()  # the routed ids: not what these tests are about
    return router


async def test_only_a_partition_without_an_offset_is_started_at_its_log_start() -> None:
    """Four partitions given: one the group has an offset for (left alone), two without one
    (committed at where each begins, 0 and 7, not where this instance has read to: a record of
    one of them read and not routed is still read again by the next owner), and one not fetched
    yet, whose start is not known (left for the next round)."""
    routed, quiet, trimmed, paused = ("t.a", 0), ("t.b", 0), ("t.b", 1), ("t.c", 0)
    pipe = Offsets(
        {routed: 41, quiet: None, trimmed: None, paused: None},
        {routed: 0, quiet: 0, trimmed: 7},
        failing=set(),
    )
    router = _router(pipe, [routed, quiet, trimmed, paused])
    router.work.add([Read(*trimmed, 9)])  # read, not routed yet
    await router._seed()
    assert pipe.commits == [{quiet: 0, trimmed: 7}]
    assert router._unseeded == {paused}
    assert pipe.group_offsets[routed] == 41
    # Next round: only the one still without an offset is asked about.
    pipe.starts[paused] = 3
    await router._seed()
    assert pipe.asked[-1] == {paused}
    assert pipe.commits[-1] == {paused: 3}
    assert router._unseeded == set()
    await router._seed()
    assert len(pipe.commits) == 2  # nothing left to do, nothing asked
    assert len(pipe.asked) == 2


async def test_a_routed_or_given_up_partition_needs_no_starting_offset() -> None:
    """A partition whose first batch is routed has its offset from that transaction; one given up
    is its next owner's to start."""
    lane, bulk, gone = ("t.a", 2), ("t.b", 0), ("t.c", 0)
    pipe = Offsets({}, {lane: 0, bulk: 0, gone: 0}, failing=set())
    router = _router(pipe, [lane, bulk, gone])
    await router._route([Read(*lane, 4)])
    assert pipe.commits == [{lane: 5}]
    router._release([gone])
    assert router._unseeded == {bulk}
    await router._seed()
    assert pipe.commits[-1] == {bulk: 0}
    assert pipe.asked == [{bulk}]


async def test_a_failed_commit_of_starting_offsets_is_aborted_and_tried_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The commit fails (a rebalance, the broker away): the transaction is aborted, the
    partitions stay to be started, and the next try waits longer than a routine round."""
    quiet = ("t.b", 0)
    pipe = Offsets({}, {quiet: 0}, failing={quiet})
    router = _router(pipe, [quiet])
    before = time.monotonic()
    await router._seed()
    assert pipe.commits == []
    assert pipe.aborts == 1
    assert router._unseeded == {quiet}
    assert router._next_seed >= before + router_service.SEED_RETRY_S
    pipe.failing.clear()
    await router._seed()
    assert pipe.commits == [{quiet: 0}]


async def test_an_instance_without_a_producer_commits_nothing() -> None:
    """The producer could not be made again: nothing is asked or committed until it is."""
    quiet = ("t.b", 0)
    pipe = Offsets({}, {quiet: 0}, failing=set())
    pipe.producer = None
    router = _router(pipe, [quiet])
    await router._seed()
    assert pipe.asked == []
    assert pipe.commits == []
    assert router._unseeded == {quiet}
