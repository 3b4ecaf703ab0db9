"""Lanes by urgency: IMMEDIATE and URGENT messages, and every message of a missing episode, travel
the last partition of the outbound and inbox topics, which the router and connectors read first."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from agencies import SHARING, body_of
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.partitioner import DefaultPartitioner
from exchange import exchange
from hypothesis import given
from hypothesis import strategies as st
from test_router_close import Read

from broker.admin import provision
from broker.kafka import clients as kafka
from broker.kafka import lanes
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import TopicSpec
from broker.policy.routing import Rules
from connectors.gateway.inbox import LANE_CHECK_EVERY

KENT, LANCS = "la-e10000016", "la-e10000017"
KENT_POLICE, LANCS_POLICE = "pf-e23000032", "pf-e23000003"
KENT_ICB, LANCS_ICB = "icb-e54000032", "icb-e54000048"
PROVIDER = "cp-sc482913"
PARTIES = [KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB, PROVIDER]
RULES = Rules.load()


@given(st.binary(min_size=1, max_size=40), st.integers(min_value=2, max_value=48))
def test_bulk_records_keep_the_partition_they_had_before_the_lane(key: bytes, n: int) -> None:
    """A topic of n-1 partitions that gains the lane keeps every key where Kafka put it."""
    bulk = list(range(n - 1))
    assert lanes.partition_for(key, n, urgent=False) == DefaultPartitioner()(key, bulk, bulk)
    assert lanes.partition_for(key, n, urgent=True) == n - 1
    assert lanes.is_lane(n - 1, n)
    assert not any(lanes.is_lane(p, n) for p in bulk)


def test_a_topic_of_one_partition_has_no_lane() -> None:
    assert lanes.partition_for(b"case", 1, urgent=True) == 0
    assert lanes.partition_for(b"case", 1, urgent=False) == 0
    assert not lanes.is_lane(0, 1)
    with pytest.raises(ValueError, match="at least one partition"):
        lanes.partition_for(b"case", 0, urgent=True)


@pytest.mark.parametrize(
    ("event_type", "urgency", "urgent"),
    [
        ("PlacementNotified", "IMMEDIATE", True),  # an emergency placement
        ("PlacementNotified", "URGENT", True),
        ("PlacementNotified", "PRIORITY", False),
        ("PlacementNotified", "ROUTINE", False),
        # A missing episode travels the lane whatever its urgency, so a found report is never
        # behind bulk work, nor ahead of its sender's missing report.
        ("ChildMissingReported", "ROUTINE", True),
        ("MissingRiskGraded", "PRIORITY", True),
        ("ChildFound", "ROUTINE", True),
        ("StrategyDiscussionHeld", "ROUTINE", True),
        ("HealthAssessmentRequested", "ROUTINE", False),
        ("NoSuchType", "ROUTINE", False),
    ],
)
def test_which_messages_travel_the_urgent_lane(event_type: str, urgency: str, urgent: bool) -> None:
    assert RULES.urgent_lane(event_type, urgency) is urgent


def test_the_router_routes_lanes_and_a_small_agencys_only_partition_before_bulk() -> None:
    """A children's home has one partition and no lane: its missing report must not wait behind
    a council's nightly export read in the same fetch, so the router takes it first, with the
    lanes, and the bulk in chunks after; a lane record read between chunks goes next."""
    from broker.router.work import Work

    council, home = "cbx.outbound.la-e10000016", "cbx.outbound.cp-sc482913"
    sizes = {council: 4, home: 1}
    work = Work(lambda t, p: lanes.read_first(p, sizes[t]), chunk=50, most=100)
    bulk = [Read(council, i % 3, i // 3) for i in range(120)]
    work.add([*bulk[:60], Read(home, 0, 0), *bulk[60:]])
    taken = work.take()
    assert [(r.topic(), r.partition()) for r in taken] == [(home, 0)]
    assert work.take() == bulk[:50]
    work.add([Read(council, 3, 0)])  # an IMMEDIATE report on the council's lane
    assert [r.partition() for r in work.take()] == [3]
    assert work.take() == bulk[50:100]
    assert work.full() is False
    assert work.low() is True
    # A partition given up: what was read of it is forgotten, the rest keep their order.
    assert work.drop({(council, 0)}) == len([r for r in bulk[100:] if r.partition() == 0])
    assert work.take() == [r for r in bulk[100:] if r.partition() != 0]
    assert work.take() == []


def test_the_bulk_read_ahead_is_bounded() -> None:
    from broker.router.work import Work

    work = Work(lambda t, p: p == 3, chunk=10, most=40)
    work.add(Read("t", 0, i) for i in range(40))
    assert work.full()
    work.take()
    work.take()
    assert not work.full()
    assert work.low()


async def test_an_existing_exchange_gains_its_lanes_and_no_case_moves(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """`cbx setup` on an exchange made before lanes adds one partition to every outbound and
    inbox topic; records keyed by case go on to the partition they went to before."""
    topics = kafka_ns.topics
    old_layout = [TopicSpec(s.name, 3, s.config) for s in topics.agency(KENT)]
    await kafka.ensure_topics(kafka_ns, [TopicSpec(topics.outbound("svc-tracker"), 1)])
    await kafka.ensure_topics(kafka_ns, [*topics.core(), *old_layout])
    keys = [f"KCC-LAC-{i:06d}".encode() for i in range(60)]
    producer = kafka.producer(kafka_ns)  # Kafka's own partitioning, as before lanes
    await producer.start()
    try:
        before = {
            k: (await producer.send_and_wait(topics.outbound(KENT), b"x", key=k)).partition
            for k in keys
        }
    finally:
        await producer.stop()
    assert set(before.values()) == {0, 1, 2}

    grown = await provision.upgrade_topics(kafka_ns)
    assert set(grown) >= {topics.outbound(KENT), topics.inbox(KENT)}
    assert topics.status(KENT) not in grown
    assert topics.cases(KENT) not in grown
    assert await kafka.partitions(kafka_ns, topics.outbound(KENT)) == [0, 1, 2, 3]
    assert await kafka.partitions(kafka_ns, topics.inbox(KENT)) == [0, 1, 2, 3]
    assert await kafka.partitions(kafka_ns, topics.status(KENT)) == [0, 1, 2]
    assert await kafka.partitions(kafka_ns, topics.outbound("svc-tracker")) == [0, 1]
    for k, p in before.items():
        assert lanes.partition_for(k, 4, urgent=False) == p
    assert await provision.upgrade_topics(kafka_ns) == []  # once is enough


async def _export(kent: Any, n: int, prefix: str) -> dict[str, Any]:
    """Kent's export of ``n`` ROUTINE placements into Lancashire, with the children's home, in
    batches of 200; returns the placement's body."""
    body = body_of("PlacementNotified", host_authority=LANCS, provider=PROVIDER)
    for start in range(0, n, 200):
        await kent.publish(
            [
                kent.prepare(
                    "PlacementNotified", body, case_ref=f"{prefix}-{i:06d}", sharing=SHARING
                )
                for i in range(start, min(n, start + 200))
            ]
        )
    return body


async def _emergency(kent: Any, body: dict[str, Any], case_ref: str) -> str:
    """Kent's emergency placement (IMMEDIATE): its message id."""
    sent = await kent.send(
        "PlacementNotified", body, case_ref=case_ref, sharing=SHARING, urgency="IMMEDIATE"
    )
    return str(sent.header.message_id)


async def _hand_over(ex: Any, agency: str, delivered: list[str], n: int) -> None:
    """Start ``agency``'s inbox, noting the id of each message handed over in ``delivered``,
    until ``n`` are."""

    async def sink(d: Any) -> None:
        delivered.append(str(d.header.message_id))

    async def handed_over() -> bool:
        return len(delivered) >= n

    ex.connectors[agency].start_inbox(sink)
    await ex.wait_for(handed_over, within_s=120, what=f"{agency}'s inbox handed over")


@pytest.mark.kafka
async def test_an_emergency_placement_overtakes_a_nightly_export(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """A council's export of placements is waiting for the router when the same council sends
    an emergency placement (IMMEDIATE). It is routed before most of the export, onto the host
    council's urgent lane, and the host council's system gets it before nearly all the export."""
    backlog = 1200
    delivered: list[str] = []

    async with exchange(kafka_ns, tmp_path, start_router=False) as ex:
        await ex.agencies(PARTIES)
        kent = ex.connectors[KENT]
        body = await _export(kent, backlog, "KCC-EXP")
        urgent_id = await _emergency(kent, body, "KCC-EMG-000001")
        ex.router.start()

        async def all_routed() -> bool:
            try:
                done, total = await ex.router_progress()
            except GroupCoordinatorNotAvailableError:  # the router's group is not there yet
                return False
            return total > 0 and done >= total

        await ex.wait_for(all_routed, within_s=180, what="the export and the emergency routed")
        inbox = await ex.inbox(LANCS)
        assert len(inbox) == backlog + 1
        (urgent_rec,) = [r for h, r in inbox if str(h.message_id) == urgent_id]
        assert urgent_rec.partition == 3, "the emergency is on the host council's urgent lane"
        assert {r.partition for h, r in inbox if str(h.message_id) != urgent_id} <= {0, 1, 2}
        # Routed before most of the export (inbox copies carry the router's send time).
        ahead = sum(1 for _, r in inbox if r.timestamp < urgent_rec.timestamp)
        assert ahead < backlog // 2, f"{ahead} of {backlog} export records routed before it"

        await _hand_over(ex, LANCS, delivered, backlog + 1)
        position = delivered.index(urgent_id)
        # Within the connector's first looks at its lane (the lane's first fetch can come a
        # moment after the bulk partitions'), not after the export.
        assert position <= 2 * LANE_CHECK_EVERY, f"handed over after {position} export records"
        assert len(set(delivered)) == backlog + 1, "nothing lost or handed over twice"
        assert all(uuid.UUID(m) for m in delivered)


@pytest.mark.kafka
async def test_a_childrens_home_without_a_lane_gets_an_emergency_before_its_backlog(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """A children's home's inbox has one partition and no lane. Its connector was down while a
    council's export of placements into the home was routed; an emergency placement was routed
    after it, so it sits behind the whole backlog. When the connector comes back it hands the
    emergency over before most of the backlog: it reads what it has fetched for urgent messages,
    not only the lanes it does not have. Nothing is lost or handed over twice."""
    backlog = 600
    delivered: list[str] = []

    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(PARTIES)
        kent = ex.connectors[KENT]
        body = await _export(kent, backlog, "KCC-HOME")

        def home_holds(n: int) -> Any:
            async def check() -> bool:
                return len(await ex.inbox(PROVIDER)) >= n

            return check

        await ex.wait_for(home_holds(backlog), within_s=180, what="the export routed")
        urgent_id = await _emergency(kent, body, "KCC-HOME-EMG-1")
        await ex.wait_for(home_holds(backlog + 1), within_s=60, what="it routed")
        inbox = await ex.inbox(PROVIDER)
        assert {r.partition for _, r in inbox} == {0}, "a children's home has one partition"
        (urgent_rec,) = [r for h, r in inbox if str(h.message_id) == urgent_id]
        assert urgent_rec.offset == max(r.offset for _, r in inbox), "behind the whole backlog"

        await _hand_over(ex, PROVIDER, delivered, backlog + 1)
        position = delivered.index(urgent_id)
        assert position < backlog // 4, f"handed over after {position} of {backlog} placements"
        assert len(set(delivered)) == backlog + 1, "nothing lost or handed over twice"
        # The rest keep their order: the backlog as it was routed.
        rest = [m for m in delivered if m != urgent_id]
        routed = [str(h.message_id) for h, r in sorted(inbox, key=lambda hr: hr[1].offset)]
        assert rest == [m for m in routed if m != urgent_id]
