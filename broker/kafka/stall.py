"""Noticing a consumer that has stopped fetching.

A consumer can come back from a cluster outage fetching some of its partitions and not others:
records wait on a partition, the broker answers, yet its position never moves. Nothing raises,
so nothing else notices. :class:`StallWatch` compares, now and then, each assigned partition's
position with its end offset (for a ``read_committed`` consumer, the last stable offset): a
partition with records waiting whose position has not moved for ``stall_s`` is stalled, and the
caller replaces its consumer (committed offsets make that safe: nothing is skipped, and what was
handed over and committed is not handed over again).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from aiokafka.errors import KafkaError

#: How long a partition may have records waiting with its position unmoved.
STALL_S = 30.0
#: How often positions are compared with end offsets.
CHECK_EVERY_S = 5.0
#: Looks in a row that must find a partition behind and unmoved. A healthy consumer hands a
#: waiting partition's records over within a fetch or two, however slowly its caller handles
#: each batch; so a slow caller (looking once a batch) is not mistaken for a stalled consumer.
MIN_LOOKS = 4
#: The longest a look at end offsets or a position may take; a look that takes longer (brokers
#: down) judges nothing.
LOOK_TIMEOUT_S = 10.0


class StallWatch:
    """Which partitions have had records waiting, with their position unmoved, for ``stall_s``
    and ``MIN_LOOKS`` looks in a row."""

    def __init__(
        self,
        stall_s: float = STALL_S,
        every_s: float = CHECK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_s = stall_s
        self.every_s = every_s
        self._clock = clock
        self._last_check = clock()
        #: partition -> (position when first seen behind, when, looks since that found it there)
        self._behind: dict[Hashable, tuple[int, float, int]] = {}

    def due(self) -> bool:
        return self._clock() - self._last_check >= self.every_s

    def observe(self, positions: Mapping[Any, int], ends: Mapping[Any, int]) -> list[Any]:
        """Record one look; return the partitions stalled as of this look."""
        now = self._clock()
        self._last_check = now
        stalled = []
        for tp, position in positions.items():
            end = ends.get(tp)
            if end is None or position >= end:
                self._behind.pop(tp, None)
                continue
            seen = self._behind.get(tp)
            if seen is None or seen[0] != position:
                self._behind[tp] = (position, now, 1)
                continue
            looks = seen[2] + 1
            self._behind[tp] = (position, seen[1], looks)
            if now - seen[1] >= self.stall_s and looks >= MIN_LOOKS:
                stalled.append(tp)
        for tp in set(self._behind) - set(positions):
            del self._behind[tp]
        return stalled

    async def look(self, consumer: Any) -> list[Any]:
        """Look at ``consumer``'s assigned partitions; the stalled ones (empty when the cluster
        cannot be asked, or a partition has no position yet: nothing is judged then)."""
        self._last_check = self._clock()
        tps = list(consumer.assignment())
        if not tps:
            return []
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(tps), LOOK_TIMEOUT_S)
            positions = {}
            for tp in tps:
                with contextlib.suppress(TimeoutError):
                    positions[tp] = await asyncio.wait_for(consumer.position(tp), 1.0)
        except (KafkaError, TimeoutError):
            # Brokers down, a leader moving, a rebalance taking a partition away: no judgement.
            return []
        return self.observe(positions, ends)
