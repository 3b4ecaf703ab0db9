"""Statutory clocks on the real broker: a return interview never held produces a routed,
acknowledged ObligationOverdue to the host and placing authorities; one held in time produces none;
and a restarted tracker rebuilds every clock from the delivery log without announcing one twice."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker import model
from broker.delivery_log import LogCodec, LogEntry, Status
from broker.kafka import clients as kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.policy.obligations import ClockStatus, shortened
from broker.schema.catalogue import Catalogue
from broker.tracker.service import TrackerService
from cbx.scenarios import runner, spec

pytestmark = pytest.mark.kafka

CATALOGUE = Catalogue.load()
SCENARIO = spec.scenarios_dir() / "return-interview-clock.yaml"
KENT, LANCS = "la-e10000016", "la-e10000017"


async def _log(ns: KafkaSettings) -> list[LogEntry]:
    codec = LogCodec(CATALOGUE)
    out: list[LogEntry] = []
    await kafka.read_to_end(
        ns, ns.topics.delivery_log, lambda r: out.extend(codec.entries(r.value))
    )
    return out


async def _count(ns: KafkaSettings, topic: str) -> int:
    seen: list[Any] = []
    await kafka.read_to_end(ns, topic, seen.append)
    return len(seen)


@pytest.fixture(scope="module")
def played(kafka_settings: KafkaSettings) -> dict[str, Any]:
    report = asyncio.run(runner.run(kafka_settings, spec.load(SCENARIO)))
    assert report["ok"], report["failures"]
    return report


def test_the_interview_held_in_time_meets_its_clock_and_nobody_is_reminded(
    played: dict[str, Any],
) -> None:
    steps = {m["step"]: m for m in played["messages"]}
    clocks = {
        c["started_by"]: c for c in played["clocks"] if c["obligation"] == "return-home-interview"
    }
    met = clocks[steps["found-a"]["message_id"]]
    assert met["status"] == "MET"
    assert met["met_by"] == steps["rhi-a"]["message_id"]
    assert met["met_by_type"] == "ReturnInterviewCompleted"
    assert met["margin_s"] > 0  # early, by almost the whole (shortened) limit
    assert met["reminded"] == []


def test_the_interview_never_held_is_reminded_to_the_host_and_placing_authorities(
    played: dict[str, Any], kafka_settings: KafkaSettings
) -> None:
    steps = {m["step"]: m for m in played["messages"]}
    clocks = {
        c["started_by"]: c for c in played["clocks"] if c["obligation"] == "return-home-interview"
    }
    overdue = clocks[steps["found-b"]["message_id"]]
    assert overdue["status"] == "OVERDUE"
    assert overdue["met_by"] is None
    assert overdue["reminded"] == [KENT, LANCS]

    # The delivery log proves it: the router accepted the exchange's reminder, routed it to
    # both councils in their roles, and each acknowledged it. Only the overdue clock has one.
    ns = kafka_settings.with_prefix(played["namespace"])
    entries = asyncio.run(_log(ns))
    reminders = [
        e
        for e in entries
        if e.event_type == model.OBLIGATION_OVERDUE and e.status == Status.ACCEPTED
    ]
    assert len(reminders) == 1
    accepted = reminders[0]
    assert accepted.sender == model.TRACKER
    assert accepted.facts == {"clock_id": overdue["clock"], "obligation": "return-home-interview"}
    assert accepted.case_ref == overdue["case_ref"]
    mine = [e for e in entries if e.message_id == accepted.message_id]
    routed = {(e.recipient, e.role) for e in mine if e.status == Status.ROUTED}
    assert routed == {(KENT, "PLACING_AUTHORITY"), (LANCS, "HOST_AUTHORITY")}
    acknowledged = {e.recipient for e in mine if e.status == Status.ACKNOWLEDGED}
    assert acknowledged == {KENT, LANCS}
    assert not [e for e in mine if e.status == Status.REJECTED]


def test_a_restarted_tracker_rebuilds_the_clocks_and_announces_none_again(
    played: dict[str, Any], kafka_settings: KafkaSettings
) -> None:
    ns = kafka_settings.with_prefix(played["namespace"])
    outbound = ns.topics.outbound(model.TRACKER)
    assert asyncio.run(_count(ns, outbound)) == 1
    case = spec.load(SCENARIO)

    async def restart() -> TrackerService:
        tracker = TrackerService(
            principals.settings_for(ns, model.TRACKER),
            check_every_s=0.2,
            obligations=shortened(case.limits),
        )
        task = asyncio.create_task(tracker.run())
        await asyncio.sleep(4)
        tracker.stop_event.set()
        await task
        return tracker

    tracker = asyncio.run(restart())
    clocks = {
        c.started_by: c
        for c in tracker.obligations.clocks.clocks.values()
        if c.obligation.id == "return-home-interview"
    }
    steps = {m["step"]: m for m in played["messages"]}
    assert clocks[steps["found-a"]["message_id"]].status == ClockStatus.MET
    b = clocks[steps["found-b"]["message_id"]]
    assert b.status == ClockStatus.OVERDUE
    assert b.id in tracker.obligations.notified
    # Its reminder is in the log already: nothing more was written to the tracker's outbound.
    assert asyncio.run(_count(ns, outbound)) == 1
