"""Ended cases leave the placement registry after a retention period: tombstones on the registry
and on every holder's view, so no process reads them at start any more."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from agencies import CATALOGUE, SHARING
from exchange import exchange
from test_router import ALL, KENT, KENT_POLICE, LANCS, LANCS_POLICE, PROVIDER, placement_body

from broker.errors import CbxError
from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.model import Role
from broker.policy.registry import Placement, PlacementRegistry, case_id
from broker.schema.json_to_avro import JsonConversionError, JsonToAvro

ENDED = "KCC-LAC-000700"
ACTIVE = "KCC-LAC-000701"


def _placement(ref: str, active: bool, updated: dt.datetime) -> Placement:
    p = Placement.new(
        case_id(KENT, ref), {Role.PLACING_AUTHORITY: KENT, Role.HOST_AUTHORITY: LANCS}
    )
    return Placement(p.case_ref, p.spans, active, uuid.uuid4(), updated)


def test_a_tombstone_removes_only_an_ended_case_no_newer_than_itself() -> None:
    now = dt.datetime.now(dt.UTC)
    reg = PlacementRegistry()
    old = _placement("R-1", active=False, updated=now - dt.timedelta(days=100))
    again = _placement("R-2", active=True, updated=now - dt.timedelta(days=100))
    newer = _placement("R-3", active=False, updated=now + dt.timedelta(seconds=5))
    for p in (old, again, newer):
        reg.put(p)
    assert reg.ended_before(now - dt.timedelta(days=90)) == [old]
    assert reg.remove(old.case_ref, now)
    assert reg.get(old.case_ref) is None
    assert reg.find("R-1") == []
    assert not reg.remove(again.case_ref, now), "a case placed again stays"
    assert not reg.remove(newer.case_ref, now), "a record newer than the tombstone stays"
    assert not reg.remove("la-e10000016/NOT-THERE", now)
    assert len(reg) == 2


def ended_body(end_date: str | None = None) -> dict[str, Any]:
    """A PlacementEnded body: the child went home."""
    return dict(
        JsonToAvro(CATALOGUE.latest("PlacementEnded").parsed).convert(
            {
                "placement_id": str(uuid.uuid4()),
                "end_date": end_date or dt.date.today().isoformat(),
                "reason": "RETURNED_HOME",
                "planned": True,
                "next_address": None,
                "reason_detail": None,
            }
        )
    )


async def _keys(settings: KafkaSettings, topic: str) -> list[tuple[str, bool]]:
    """(key, is a tombstone) for every record of ``topic``, in order per partition."""
    out: list[tuple[str, bool]] = []

    def take(r: Any) -> None:
        out.append((r.key.decode(), r.value is None))

    await kafka.read_to_end(settings, topic, take)
    return out


@pytest.mark.kafka
async def test_an_ended_case_leaves_every_view_and_can_be_placed_again(
    kafka_ns: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kept no time at all, swept every second: the sweep's rules, not its calendar, on test.
    monkeypatch.setenv("CBX_ENDED_CASE_DAYS", "0")
    monkeypatch.setenv("CBX_REGISTRY_SWEEP_S", "1")
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        kent = ex.connectors[KENT]
        for ref in (ENDED, ACTIVE):
            await kent.send("PlacementNotified", placement_body(), case_ref=ref, sharing=SHARING)
        ended_id, active_id = case_id(KENT, ENDED), case_id(KENT, ACTIVE)
        await ex.wait_registered(LANCS, ended_id)
        # The host council cannot end Kent's placement: refused before anything is sent, and the
        # case stays (an active case is never swept).
        with pytest.raises(CbxError):
            await ex.connectors[LANCS].send(
                "PlacementEnded", ended_body(), case_ref=ended_id, sharing=SHARING
            )
        # An end date at the edge of the calendar is refused, naming the field; the next valid
        # end goes through.
        with pytest.raises(JsonConversionError, match="end_date: outside the supported range"):
            ended_body("9999-12-31")
        await kent.send("PlacementEnded", ended_body(), case_ref=ENDED, sharing=SHARING)
        topics = kafka_ns.topics
        holders = [KENT, LANCS, KENT_POLICE, LANCS_POLICE, PROVIDER]

        async def removed_everywhere() -> bool:
            views = [topics.placements, *(topics.cases(a) for a in holders)]
            for topic in views:
                if (ended_id, True) not in await _keys(kafka_ns, topic):
                    return False
            return True

        await ex.wait_for(removed_everywhere, what="the ended case's tombstones")
        # Every holder's connector forgot it; the active case stays.
        for agency in holders:
            conn = ex.connectors[agency]
            await conn.sync()
            assert conn.registry.get(ended_id) is None, agency
            assert conn.registry.get(active_id) is not None, agency
        # The active case was never tombstoned.
        assert (active_id, True) not in await _keys(kafka_ns, topics.placements)
        assert '"ended_cases_removed"' in ex.router.log_text()

        # The child is placed again under the same reference: a new case record, routed as any.
        again = await kent.send(
            "PlacementNotified", placement_body(), case_ref=ENDED, sharing=SHARING
        )
        await ex.wait_registered(LANCS, ended_id)
        ids = await ex.inbox_ids(LANCS)
        assert ids[str(again.header.message_id)] == 1
        assert ex.connectors[LANCS].registry.get(ended_id).active  # type: ignore[union-attr]
