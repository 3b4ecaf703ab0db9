"""Exactly once through crashes: a router killed mid-stream loses and repeats nothing."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from agencies import SHARING, body_of
from exchange import Exchange, RouterProcess, exchange
from test_router import (
    ALL,
    CASE,
    KENT,
    KENT_POLICE,
    LANCS,
    LANCS_POLICE,
    PROVIDER,
    placement_body,
)

from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka

MESSAGES = 10_000
KILLS = 4


def kill_points(rng: random.Random, total: int) -> list[int]:
    """A random point of the stream in each of ``KILLS`` bands, so every kill lands while
    messages are in flight, at a point nobody chose."""
    bands = [(0.10, 0.25), (0.30, 0.45), (0.50, 0.65), (0.70, 0.85)][:KILLS]
    return [int(total * rng.uniform(lo, hi)) for lo, hi in bands]


async def kill_at_points(
    ex: Exchange,
    rng: random.Random,
    total: int,
    victims: Callable[[int], list[RouterProcess]],
    produced: Callable[[], int],
) -> list[tuple[int, int, int, str]]:
    """At each kill point (once the routers have committed that many records), SIGKILL
    ``victims(k)`` and start them again after a random pause; for each, the point, the records
    routed and the messages produced when it came, and who was killed."""
    kills = []
    for k, target in enumerate(kill_points(rng, total)):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done, _ = await ex.router_progress()
            if done >= target:
                break
            await asyncio.sleep(0.05)
        chosen = victims(k)
        kills.append((target, done, produced(), "+".join(r.name for r in chosen)))
        for r in chosen:
            r.kill()
        await asyncio.sleep(rng.uniform(0.1, 1.0))
        for r in chosen:
            r.start()
    return kills


async def drain(ex: Exchange) -> float:
    """Seconds until the routers have committed everything on the outbound topics."""

    async def drained() -> bool:
        done, total = await ex.router_progress()
        return done >= total

    started = time.monotonic()
    await ex.wait_for(drained, within_s=600, what="the router to reach the end of its input")
    return time.monotonic() - started


async def test_sigkill_at_random_points_loses_nothing_and_duplicates_nothing(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    rng = random.Random(20261126)
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        await ex.connectors[KENT].send(
            "PlacementNotified", placement_body(), case_ref=CASE, sharing=SHARING
        )
        host_force = ex.connectors[LANCS_POLICE]

        await ex.wait_registered(LANCS_POLICE, CASE)

        body = body_of("ChildMissingReported")
        sent: set[str] = set()

        kills_done = asyncio.Event()

        async def produce() -> None:
            for start in range(0, MESSAGES, 250):
                if start >= MESSAGES * 0.9:
                    # The last tenth waits for the last kill: every kill comes mid-stream.
                    await kills_done.wait()
                batch = [
                    host_force.prepare(
                        "ChildMissingReported",
                        body,
                        case_ref=CASE,
                        sharing=SHARING,
                        urgency="IMMEDIATE",
                    )
                    for _ in range(min(250, MESSAGES - start))
                ]
                await host_force.publish(batch)
                sent.update(str(o.header.message_id) for o in batch)
                await asyncio.sleep(0.05)

        progress_at_kill: list[tuple[int, int, int]] = []

        async def chaos() -> None:
            kills = await kill_at_points(
                ex, rng, MESSAGES, lambda k: [ex.router], lambda: len(sent)
            )
            progress_at_kill.extend(k[:3] for k in kills)
            kills_done.set()

        await asyncio.gather(produce(), chaos())
        assert len(sent) == MESSAGES

        drain_s = await drain(ex)

        dead = await ex.dead_letters()
        assert dead == [], {d.reason for d in dead}
        told = (KENT, KENT_POLICE, LANCS, PROVIDER)  # the home is told its child is missing
        for agency in told:
            ids = await ex.inbox_ids(agency)
            missing_ids = {i for i in ids if i in sent}
            assert len(missing_ids) == MESSAGES, f"{agency} lost {MESSAGES - len(missing_ids)}"
            dupes = {i: n for i, n in ids.items() if n != 1}
            assert dupes == {}, f"{agency} got duplicates: {len(dupes)}"
        # The sender and parties not concerned got none of them.
        for agency in (LANCS_POLICE, *[a for a in ALL if a not in told]):
            ids = await ex.inbox_ids(agency)
            assert not (set(ids) & sent), agency
        # Each kill came when the router had reached its random point (not after a time-out)
        # and before the whole stream had been produced or routed.
        assert ex.router.starts == KILLS + 1
        mid_stream = [
            target <= done < MESSAGES and produced < MESSAGES
            for target, done, produced in progress_at_kill
        ]
        assert all(mid_stream), progress_at_kill
        print(f"\nprogress at kills: {progress_at_kill}; drained in {drain_s:.1f}s")
