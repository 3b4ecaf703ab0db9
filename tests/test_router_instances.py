"""Several router instances in one group share the outbound partitions, exactly once.

The group (the consumer protocol: the broker assigns) shares the partitions out; each instance has
one transactional producer, and the member's epoch in each transaction's offsets (KIP-447) fences
an instance that has lost its partitions. What the previous owner routed, the new owner must know
before routing the partitions again.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest
from agencies import SHARING, body_of
from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete
from aiokafka.errors import GroupCoordinatorNotAvailableError
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
from test_router_crash import KILLS, drain, kill_at_points

from broker.envelope import Outgoing
from broker.kafka import clients as kafka
from broker.kafka import lanes
from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


async def _both_own_partitions(ex: Exchange, routers: list[RouterProcess]) -> None:
    async def shared() -> bool:
        return all('"partitions_assigned"' in r.log_text() for r in routers)

    await ex.wait_for(shared, what="both router instances to own partitions")


def _last(router: RouterProcess, event: str) -> dict[str, object] | None:
    found = None
    for line in router.log_text().splitlines():
        if f'"{event}"' in line:
            found = json.loads(line)
    return found


async def _placed(ex: Exchange, what: str) -> Outgoing:
    """A placement Kent publishes, once Lancashire has it: the message."""
    kent = ex.connectors[KENT]
    msg = kent.prepare("PlacementNotified", placement_body(), case_ref=CASE, sharing=SHARING)
    await kent.publish([msg])
    mid = str(msg.header.message_id)

    async def delivered() -> bool:
        return mid in await ex.inbox_ids(LANCS)

    await ex.wait_for(delivered, what=what)
    return msg


def _owned(router: RouterProcess) -> set[str]:
    """What ``router`` owns now, from its log: the increments of each assignment."""
    owned: set[str] = set()
    for line in router.log_text().splitlines():
        if '"partitions_assigned"' in line:
            owned |= set(json.loads(line)["partitions"])
        elif '"partitions_revoked"' in line:
            owned -= set(json.loads(line)["partitions"])
    return owned


async def test_routers_share_the_partitions_with_one_producer_each(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """Two instances over some thirty outbound partitions: each partition is owned by exactly
    one, each instance has one transactional producer named after it, and the second joining
    moves only the partitions it takes (incremental assignment): the first keeps the rest."""
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        every: set[str] = set()
        for agency in ALL:
            topic = kafka_ns.topics.outbound(agency)
            every |= {f"{topic}/{p}" for p in await kafka.partitions(kafka_ns, topic)}

        async def all_first() -> bool:
            return every <= _owned(ex.router)

        await ex.wait_for(all_first, what="the first instance to own every partition")
        second = ex.add_router()
        routers = [ex.router, second]

        async def split() -> bool:
            a, b = (_owned(r) for r in routers)
            return bool(a and b and a | b >= every and not a & b)

        await ex.wait_for(split, what="the two instances to share the partitions")
        a, b = (_owned(r) for r in routers)
        assert len(every) > 20
        assert abs(len(a) - len(b)) <= 1, (len(a), len(b))
        # The first gave up only what the second took.
        revoked: set[str] = set()
        for line in ex.router.log_text().splitlines():
            if '"partitions_revoked"' in line:
                revoked |= set(json.loads(line)["partitions"])
        assert revoked == b
        for r in routers:
            ready = _last(r, "producer_ready")
            assert ready is not None
            assert ready["transactional_id"] == f"{kafka_ns.topics.group('router')}.{r.name}"
            assert len(re.findall('"producer_ready"', r.log_text())) == 1


async def test_two_routers_under_one_name_fence_each_other_and_say_so(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """A second instance started under the first one's name takes its transactional id: the
    first one's next transaction is refused, nothing is routed twice, and the log says what to
    change."""
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        twin = ex.add_router(instance=ex.router.instance)
        routers = [ex.router, twin]
        await _both_own_partitions(ex, routers)
        kent, force = ex.connectors[KENT], ex.connectors[LANCS_POLICE]
        await kent.send("PlacementNotified", placement_body(), case_ref=CASE, sharing=SHARING)
        await ex.wait_registered(LANCS_POLICE, CASE)
        sent = 0
        # The group's assignor decides which instance owns which partitions (the broker's, with
        # the consumer protocol, may give one instance whole topics that nobody writes to): one
        # unreadable record on every outbound partition a round gives each a transaction.
        outbound = {
            kafka_ns.topics.outbound(a): await kafka.partitions(
                kafka_ns, kafka_ns.topics.outbound(a)
            )
            for a in ALL
        }
        junk = kafka.producer(kafka_ns)
        await junk.start()

        async def fenced() -> bool:
            nonlocal sent
            for topic, parts in outbound.items():
                for p in parts:
                    await junk.send(topic, b"\x00not an envelope", key=b"junk", partition=p)
            await junk.flush()
            places = [
                kent.prepare(
                    "PlacementNotified",
                    placement_body(),
                    case_ref=f"KCC-LAC-{sent:04d}{j}",
                    sharing=SHARING,
                )
                for j in range(6)
            ]
            report = force.prepare(
                "ChildMissingReported",
                body_of("ChildMissingReported"),
                case_ref=CASE,
                sharing=SHARING,
                urgency="IMMEDIATE",
            )
            await asyncio.gather(kent.publish(places), force.publish([report]))
            sent += 1
            await asyncio.sleep(0.5)
            return any('"router_instance_fenced"' in r.log_text() for r in routers)

        try:
            await ex.wait_for(fenced, within_s=90, what="an instance to say it was fenced")
        finally:
            await junk.stop()
        line = next(
            json.loads(x)
            for r in routers
            for x in r.log_text().splitlines()
            if '"router_instance_fenced"' in x
        )
        assert line["instance"] == ex.router.instance
        assert "CBX_ROUTER_INSTANCE" in line["hint"]
        for agency in ALL:
            ids = await ex.inbox_ids(agency)
            assert {i: n for i, n in ids.items() if n != 1} == {}, f"{agency} got repeats"


async def test_a_message_published_again_after_its_partition_moved_is_routed_once(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """The router that routed a message is killed; its sender publishes it again (a retry after a
    lost acknowledgement). The instance that takes the partition over started before the message
    was routed, so only following the routed ids tells it the message is done."""
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        second = ex.add_router()
        await _both_own_partitions(ex, [ex.router, second])
        first = await _placed(ex, "the placement routed")
        mid = str(first.header.message_id)
        kent = ex.connectors[KENT]
        n = len(await kafka.partitions(kafka_ns, kafka_ns.topics.outbound(KENT)))
        partition = lanes.partition_for(first.key, n, urgent=False)
        owner = ex.owner_of(f"{kafka_ns.topics.outbound(KENT)}/{partition}")
        owner.kill()

        await kent.publish([first])  # the same message again
        later = kent.prepare("PlacementNotified", placement_body(), case_ref=CASE, sharing=SHARING)
        await kent.publish([later])

        async def later_routed() -> bool:
            return str(later.header.message_id) in await ex.inbox_ids(LANCS)

        await ex.wait_for(later_routed, within_s=90, what="the surviving instance to route")
        ids = await ex.inbox_ids(LANCS)
        assert ids[mid] == 1, f"routed {ids[mid]} times"
        assert (await ex.dead_letters()) == []


async def _router_offsets(settings: KafkaSettings) -> dict[str, int]:
    """The router group's committed offsets ("topic/n" -> offset)."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        got = await admin.list_consumer_group_offsets(settings.topics.group("router"))
    finally:
        await admin.close()
    return {f"{tp.topic}/{tp.partition}": m.offset for tp, m in got.items() if m.offset >= 0}


async def test_a_takeover_asks_no_broker_where_a_partition_begins(
    kafka_ns: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition nothing was routed from has no committed offset, and whoever is given it must
    first ask the broker where it begins: one ListOffsets request a partition, answered in order
    ahead of the next fetch, the urgent lanes' too (some 2,000 of them after a takeover at
    national size). Once idle, the router commits each such partition's log start offset, so
    the instance that takes it over asks nothing and fetches at once. Where retention has removed
    a partition's first records, that is after them; a message sent later is routed, once."""
    monkeypatch.setenv("CBX_ROUTER_KAFKA_DEBUG", "protocol")  # every request, in the log
    async with exchange(kafka_ns, tmp_path, start_router=False) as ex:
        await ex.agencies(ALL)
        out = kafka_ns.topics.outbound(KENT)
        # Three records on a bulk partition, gone (as retention removes them) before any router
        # ran: the partition now begins at 3.
        producer = kafka.producer(kafka_ns)
        await producer.start()
        try:
            for _ in range(3):
                await producer.send_and_wait(out, b"expired", partition=0)
        finally:
            await producer.stop()
        admin = kafka.admin(kafka_ns)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(out, 0): RecordsToDelete(3)})
        finally:
            await admin.close()
        every: set[str] = set()
        for agency in ALL:
            topic = kafka_ns.topics.outbound(agency)
            every |= {f"{topic}/{p}" for p in await kafka.partitions(kafka_ns, topic)}
        ex.router.start()

        async def started() -> bool:
            try:
                return every <= set(await _router_offsets(kafka_ns))
            except GroupCoordinatorNotAvailableError:  # the group is not there yet
                return False

        await ex.wait_for(started, within_s=90, what="a committed offset for every partition")
        offsets = await _router_offsets(kafka_ns)
        assert offsets[f"{out}/0"] == 3
        assert {offsets[p] for p in every - {f"{out}/0"}} == {0}  # nothing sent on them yet
        first_start = ex.router.log_text()
        assert "Sent ListOffsetsRequest" in first_start  # the first owner did have to ask
        assert '"starting_offsets_committed"' in first_start

        second = ex.add_router()
        await _both_own_partitions(ex, [ex.router, second])
        assert ex.router.terminate() == 0

        async def took_over() -> bool:
            return every <= _owned(second)

        await ex.wait_for(took_over, what="the second instance to own every partition")
        msg = await _placed(ex, "the placement routed by the second instance")
        assert (await ex.inbox_ids(LANCS))[str(msg.header.message_id)] == 1
        assert "Sent FetchRequest" in second.log_text()  # the debug log is there to be read
        assert "Sent ListOffsetsRequest" not in second.log_text()
        assert (await ex.dead_letters()) == []


#: Messages in the two-instance crash test: routine placements over every bulk partition of the
#: placing council and IMMEDIATE missing reports on the host force's urgent lane.
PLACEMENTS = 6_000
MISSING = 4_000


async def test_two_routers_sigkilled_at_random_points_lose_and_repeat_nothing(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """The crash test with two router instances: at four random points of a 10,000-message stream
    one instance, chosen at random, is SIGKILLed and started again; at the last, both are. Its
    partitions move to the other instance and back, and every message reaches each recipient
    once."""
    rng = random.Random(20261128)
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        routers = [ex.router, ex.add_router()]
        await _both_own_partitions(ex, routers)
        kent, host_force = ex.connectors[KENT], ex.connectors[LANCS_POLICE]
        await kent.send("PlacementNotified", placement_body(), case_ref=CASE, sharing=SHARING)
        await ex.wait_registered(LANCS_POLICE, CASE)
        missing_body = body_of("ChildMissingReported")
        placed: set[str] = set()
        missing: set[str] = set()
        kills_done = asyncio.Event()
        total = PLACEMENTS + MISSING

        async def produce() -> None:
            step, p_step, m_step = 250, 150, 100
            for i in range(total // step):
                if i * step >= total * 0.9:
                    await kills_done.wait()  # every kill comes mid-stream
                places = [
                    kent.prepare(
                        "PlacementNotified",
                        placement_body(),
                        case_ref=f"KCC-LAC-{i:04d}{j:03d}",
                        sharing=SHARING,
                    )
                    for j in range(p_step)
                ]
                reports = [
                    host_force.prepare(
                        "ChildMissingReported",
                        missing_body,
                        case_ref=CASE,
                        sharing=SHARING,
                        urgency="IMMEDIATE",
                    )
                    for _ in range(m_step)
                ]
                await asyncio.gather(kent.publish(places), host_force.publish(reports))
                placed.update(str(o.header.message_id) for o in places)
                missing.update(str(o.header.message_id) for o in reports)
                await asyncio.sleep(0.05)

        kills: list[tuple[int, int, int, str]] = []

        async def chaos() -> None:
            # One instance at random at each point; both at the last.
            def victims(k: int) -> list[RouterProcess]:
                return routers if k == KILLS - 1 else [rng.choice(routers)]

            produced = lambda: len(placed) + len(missing)  # noqa: E731
            kills.extend(await kill_at_points(ex, rng, total, victims, produced))
            kills_done.set()

        await asyncio.gather(produce(), chaos())
        assert len(placed) == PLACEMENTS
        assert len(missing) == MISSING

        drain_s = await drain(ex)

        dead = await ex.dead_letters()
        assert dead == [], {d.reason for d in dead}
        told_missing = {KENT, KENT_POLICE, LANCS, PROVIDER}
        for agency in ALL:
            ids = await ex.inbox_ids(agency)
            dupes = {i: n for i, n in ids.items() if n != 1}
            assert dupes == {}, f"{agency} got {len(dupes)} messages more than once"
            got_missing = missing & set(ids)
            if agency in told_missing:
                assert got_missing == missing, f"{agency} lost {len(missing - got_missing)}"
            else:
                assert not got_missing, f"{agency} was told of a missing episode"
            got_placed = placed & set(ids)
            # A placement reaches a party in full or not at all; the host council is one.
            assert got_placed in (set(), placed), f"{agency} lost {len(placed - got_placed)}"
            if agency == LANCS:
                assert got_placed == placed
        # Both instances routed; each kill came at its random point, mid-stream.
        for r in routers:
            assert '"batch_committed"' in r.log_text(), f"{r.name} routed nothing"
        assert sum(r.starts for r in routers) == 2 + KILLS + 1
        assert all(t <= done < total and made < total for t, done, made, _ in kills), kills
        print(f"\nkills (target, routed, produced, victims): {kills}; drained in {drain_s:.1f}s")
