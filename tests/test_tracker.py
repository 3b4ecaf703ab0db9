"""Receipts, acknowledgement deadlines and the operator's view, on the real broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from agencies import SHARING
from cli import cbx
from conftest import EMBEDDED
from exchange import LOGS, exchange
from test_router import ALL, CASE, KENT, KENT_POLICE, LANCS, LANCS_POLICE, PROVIDER, placement_body

from broker import model
from broker.delivery_log import Status
from broker.kafka import clients as kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.tracker.service import TrackerService
from connectors.gateway.inbox import Delivered

pytestmark = pytest.mark.kafka

SECRETS = [
    "Whitcombe",
    "Larch House",
    "grey hoodie",
    "bus station, Elwick Road",
    "older males",
    "phone call",
    "9434765919",
]


async def test_receipts_acknowledgement_and_escalation(
    kafka_ns: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deadlines = tmp_path / "deadlines.yaml"
    deadlines.write_text(
        "acknowledge_within:\n  IMMEDIATE: 3s\n  URGENT: 1h\n  PRIORITY: 8h\n  ROUTINE: null\n"
    )
    monkeypatch.setenv("CBX_DEADLINES", str(deadlines))
    delivered: list[Delivered] = []

    async def sink(d: Delivered) -> None:
        delivered.append(d)

    async with exchange(kafka_ns, tmp_path) as ex:
        for agency in ALL:
            await ex.agency(agency, inbox=True, sink=sink)
        await ex.sync_all()
        tracker = TrackerService(principals.settings_for(kafka_ns, model.TRACKER), 0.5)
        tracker_task = asyncio.create_task(tracker.run())
        try:
            await ex.connectors[KENT].send(
                "PlacementNotified", placement_body(), case_ref=CASE, sharing=SHARING
            )
            missing = await ex.report_missing(LANCS_POLICE, CASE)
            mid = str(missing.header.message_id)

            async def at_kent() -> bool:
                return any(
                    str(d.header.message_id) == mid and d.topic.endswith(KENT) for d in delivered
                )

            await ex.wait_for(at_kent, what="delivery to Kent")
            await ex.connectors[KENT].acknowledge(mid)

            async def escalated() -> dict[str, set[Any]] | None:
                states: dict[str, set[Any]] = {}
                for e in await ex.log():
                    if e.message_id == mid and e.recipient:
                        states.setdefault(e.recipient, set()).add(e.status)
                done = all(
                    Status.ESCALATED in states.get(a, set()) for a in (KENT_POLICE, LANCS, PROVIDER)
                )
                return states if done and Status.ACKNOWLEDGED in states.get(KENT, set()) else None

            states = await ex.wait_for(escalated, what="acknowledgement and escalations")
            told = {a for a, seen in states.items() if Status.ROUTED in seen}
            assert told >= {KENT, KENT_POLICE, LANCS, PROVIDER}

            # The sender's status topic: one entry a record, as its readers have always read
            # it, though the router wrote the report's ACCEPTED and ROUTED entries as one.
            async def copied() -> list[list[Any]] | None:
                records: list[list[Any]] = []
                await kafka.read_to_end(
                    kafka_ns,
                    kafka_ns.topics.status(LANCS_POLICE),
                    lambda r: records.append(LOGS.entries(r.value)),
                )
                routed = {
                    es[0].recipient
                    for es in records
                    if es[0].message_id == mid and es[0].status == Status.ROUTED
                }
                return records if routed == told else None

            status_records = await ex.wait_for(copied, what="the sender's status copies")
            assert all(len(es) == 1 for es in status_records)
            summary = ex.connectors[LANCS_POLICE].delivery_status(mid)
            assert summary is not None
            assert {r["agency"] for r in summary["recipients"] if "routed_at" in r} == told
        finally:
            tracker.stop_event.set()
            await tracker_task
        assert Status.DELIVERED in states[KENT]
        assert Status.ACKNOWLEDGED in states[KENT]
        assert Status.ESCALATED not in states[KENT]
        for late in (KENT_POLICE, LANCS, PROVIDER):
            assert {Status.ROUTED, Status.DELIVERED, Status.OVERDUE, Status.ESCALATED} <= states[
                late
            ]
        # The placement (ROUTINE) carries no acknowledgement deadline and is never escalated.
        placement = [e for e in await ex.log() if e.event_type == "PlacementNotified"]
        assert not any(e.status == Status.ESCALATED for e in placement)

        listing = cbx(kafka_ns, tmp_path, "deliveries", "--json", "--type", "ChildMissingReported")
        assert listing.returncode == 0, listing.stderr
        rows = {r["recipient"]: r for r in json.loads(listing.stdout) if r["message_id"] == mid}
        assert rows[KENT]["status"] == "ACKNOWLEDGED"
        assert rows[KENT_POLICE]["status"] == "ESCALATED"
        escalated_only = cbx(kafka_ns, tmp_path, "deliveries", "--json", "--status", "ESCALATED")
        # Everyone told but Kent, who acknowledged: the home force, the host council and the home.
        assert {r["recipient"] for r in json.loads(escalated_only.stdout)} == {
            KENT_POLICE,
            LANCS,
            PROVIDER,
        }
        traced = cbx(kafka_ns, tmp_path, "trace", mid, "--json")
        assert traced.returncode == 0, traced.stderr
        timeline = [e["status"] for e in json.loads(traced.stdout)]
        assert timeline[0] == "ACCEPTED"
        assert "ESCALATED" in timeline

        # Nothing an operator sees, nor any log, holds the case's sensitive values.
        seen = listing.stdout + escalated_only.stdout + traced.stdout + traced.stderr
        seen += ex.router.log_text() + json.dumps([d.as_json() for d in await ex.dead_letters()])
        for secret in SECRETS:
            assert secret not in seen, secret

        # The same commands as an operator runs them on the embedded broker: no cluster in the
        # environment, the broker found from CBX_HOME, the test's namespace named on the line.
        if EMBEDDED:
            home = Path(EMBEDDED[0].data_dir).parent.parent
            ns = ["--namespace", kafka_ns.topic_prefix]
            live = cbx(None, home, "deliveries", "--json", "--status", "ESCALATED", *ns)
            assert live.returncode == 0, live.stderr
            assert {r["recipient"] for r in json.loads(live.stdout)} == {
                KENT_POLICE,
                LANCS,
                PROVIDER,
            }
            live_trace = cbx(None, home, "trace", mid, "--json", *ns)
            assert live_trace.returncode == 0, live_trace.stderr
            assert [e["status"] for e in json.loads(live_trace.stdout)] == timeline
            letters = cbx(None, home, "deadletter", "list", "--json", *ns)
            assert letters.returncode == 0, letters.stderr
            assert json.loads(letters.stdout) == []
            shown = cbx(None, home, "agency", "show", KENT, "--live", "--json")
            assert shown.returncode == 0, shown.stderr
            for out in (live, live_trace, letters, shown):
                for secret in SECRETS:
                    assert secret not in out.stdout + out.stderr, secret
