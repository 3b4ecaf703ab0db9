"""What a service reads at start is kept out of the cyclic collector's walk, with no garbage."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from agencies import PLACING
from exchange import exchange

from broker import heap
from broker.kafka.settings import KafkaSettings


class _Node:
    def __init__(self) -> None:
        self.other: object = None


def test_what_is_kept_is_no_longer_walked_by_a_full_collection() -> None:
    registry = [_Node() for _ in range(1_000)]
    before = gc.get_freeze_count()

    kept = heap.keep("a registry")

    assert kept == gc.get_freeze_count()
    assert kept >= before + len(registry)
    walked = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
    assert not any(id(node) in walked for node in registry)


def test_garbage_at_the_moment_of_keeping_is_collected_not_kept() -> None:
    cycle = _Node()
    cycle.other = cycle  # a reference cycle: only the collector frees it
    gone = weakref.ref(cycle)
    del cycle

    heap.keep("views")

    assert gone() is None


def test_what_is_made_after_is_collected_as_usual() -> None:
    heap.keep("views")
    later = _Node()
    later.other = later
    gone = weakref.ref(later)
    del later

    gc.collect()

    assert gone() is None


def test_the_collector_is_held_off_while_views_are_read_side_by_side_and_runs_again_after() -> None:
    assert gc.isenabled()
    with heap.loading("directory"):
        assert not gc.isenabled()
        with heap.loading("placements"):
            assert not gc.isenabled()
        assert not gc.isenabled()  # the directory is still being read
        read = [_Node() for _ in range(100)]
    assert gc.isenabled()
    walked = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
    assert not any(id(node) in walked for node in read)


def test_a_reading_that_fails_still_lets_the_collector_run_again() -> None:
    try:
        with heap.loading("registry"):
            raise TimeoutError("the broker did not answer")
    except TimeoutError:
        pass
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off() -> None:
    gc.disable()
    try:
        with heap.loading("registry"):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_a_connector_keeps_its_views_out_of_the_walk_once_read(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    async with exchange(kafka_ns, tmp_path, start_router=False) as ex:
        conn = await ex.agency(PLACING)

        assert gc.isenabled()
        walked = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
        assert id(conn.registry) not in walked
        assert id(conn.directory) not in walked
