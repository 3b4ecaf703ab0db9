"""No input can stop delivery: each record a stage cannot take is refused or kept with its reason,
and the next valid message still reaches every recipient. On the real broker.

Each test reproduces one way a single accepted request once stopped delivery for good.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from agencies import SHARING, body_of
from aiokafka import TopicPartition
from exchange import Exchange, exchange
from test_http_ingest import SHARING_JSON, serving
from test_router import (
    CASE,
    KENT,
    KENT_ICB,
    KENT_POLICE,
    LANCS,
    LANCS_ICB,
    LANCS_POLICE,
    PROVIDER,
    placement_body,
)

from benchmarks.samples import PAYLOADS
from broker import model
from broker.delivery_log import Status
from broker.envelope import Outgoing
from broker.errors import PolicyError
from broker.kafka import clients as kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.tracker.service import TrackerService
from connectors.filedrop.folder import FileDrop
from connectors.gateway.connector import Connector
from connectors.gateway.inbox import Delivered
from connectors.ingest.http import create_app
from connectors.ingest.idempotency import IdempotencyStore

pytestmark = pytest.mark.kafka

PARTIES = [KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB, PROVIDER]
# The host force's missing report: both councils, the home force and the home (its child).
MISSING_RECIPIENTS = {KENT, LANCS, KENT_POLICE, PROVIDER}
EDGE_TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


class Recorder:
    """A sink per agency that remembers which message ids reached the agency's system."""

    def __init__(self) -> None:
        self.got: dict[str, set[str]] = {}

    def sink(self, agency: str) -> Any:
        async def deliver(d: Delivered) -> None:
            self.got.setdefault(agency, set()).add(str(d.header.message_id))

        return deliver

    def reached(self, message_id: str) -> set[str]:
        return {a for a, ids in self.got.items() if message_id in ids}


async def _case(ex: Exchange, rec: Recorder) -> None:
    for agency in PARTIES:
        await ex.agency(agency, inbox=True, sink=rec.sink(agency))
    await ex.sync_all()
    await ex.connectors[KENT].send(
        "PlacementNotified", placement_body(), case_ref=CASE, sharing=SHARING
    )
    await ex.wait_registered(LANCS_POLICE, CASE)


def _report(police: Any, **kw: Any) -> Outgoing:
    """An IMMEDIATE missing report about the case, sealed, not yet published."""
    return police.prepare(  # type: ignore[no-any-return]
        "ChildMissingReported",
        kw.pop("body", None) or body_of("ChildMissingReported"),
        case_ref=CASE,
        sharing=SHARING,
        urgency="IMMEDIATE",
        **kw,
    )


async def _everyone_gets(ex: Exchange, rec: Recorder, out: Outgoing, who: set[str]) -> None:
    mid = str(out.header.message_id)

    async def arrived() -> bool:
        return rec.reached(mid) >= who

    await ex.wait_for(arrived, what=f"{out.header.event_type} {mid} at {sorted(who)}")


async def test_a_header_date_at_the_calendar_edge_is_dead_lettered_and_the_next_report_flows(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    rec = Recorder()
    async with exchange(kafka_ns, tmp_path) as ex:
        await _case(ex, rec)
        police = ex.connectors[LANCS_POLICE]
        # At the edge: refused with the field's path, nothing published.
        store = IdempotencyStore(tmp_path / "sent.jsonl")
        async with serving(create_app(police, store)) as url, httpx.AsyncClient(base_url=url) as h:
            for when in EDGE_TIMES:
                r = await h.post(
                    "/v1/events/ChildMissingReported",
                    json={
                        "case_ref": CASE,
                        "urgency": "IMMEDIATE",
                        "occurred_at": when,
                        "sharing": SHARING_JSON,
                        "event": PAYLOADS["ChildMissingReported"],
                    },
                )
                assert r.status_code == 422, r.text
                assert [e["path"] for e in r.json()["errors"]] == ["occurred_at"]
                assert "outside the supported range" in r.text
        # A connector that skips the edge: the router dead-letters the record and goes on.
        bad = [_report(police, occurred_at=_at(when)) for when in EDGE_TIMES]
        good = _report(police)
        await police.publish([*bad, good])  # one partition (one case): the good one comes last
        await _everyone_gets(ex, rec, good, MISSING_RECIPIENTS)
        letters = await ex.dead_letters()
        # The header itself does not decode, so the dead letters cannot name the message id.
        assert [d.reason for d in letters] == ["malformed", "malformed"]
        rejected = [e for e in await ex.log() if e.status == Status.REJECTED]
        assert len(rejected) == 2
        assert all(e.reason and e.reason.startswith("malformed") for e in rejected)
        assert ex.router.alive()
        for o in bad:
            assert not rec.reached(str(o.header.message_id))


async def test_a_body_date_at_the_calendar_edge_is_quarantined_by_each_recipient(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """The edge refuses it. A connector that skips the edge: in a clear field the router sees it
    and dead-letters the record; inside a sealed field (which only recipients can open) each
    recipient quarantines it and answers REJECTED. Either way what follows is delivered."""
    rec = Recorder()
    async with exchange(kafka_ns, tmp_path) as ex:
        await _case(ex, rec)
        police = ex.connectors[LANCS_POLICE]
        store = IdempotencyStore(tmp_path / "sent.jsonl")
        async with serving(create_app(police, store)) as url, httpx.AsyncClient(base_url=url) as h:
            event = PAYLOADS["ChildMissingReported"]
            for path, changed in (
                ("event.reported_at", {**event, "reported_at": EDGE_TIMES[1]}),
                (
                    "event.last_seen.seen_at",
                    {**event, "last_seen": {**event["last_seen"], "seen_at": EDGE_TIMES[1]}},
                ),
            ):
                r = await h.post(
                    "/v1/events/ChildMissingReported",
                    json={
                        "case_ref": CASE,
                        "urgency": "IMMEDIATE",
                        "sharing": SHARING_JSON,
                        "event": changed,
                    },
                )
                assert r.status_code == 422, r.text
                assert [e["path"] for e in r.json()["errors"]] == [path]
        tracker = TrackerService(principals.settings_for(kafka_ns, model.TRACKER), 0.5)
        tracker_task = asyncio.create_task(tracker.run())
        try:
            clear = body_of("ChildMissingReported")
            clear["reported_at"] = _at(EDGE_TIMES[1])
            sealed = body_of("ChildMissingReported")
            sealed["last_seen"] = {**sealed["last_seen"], "seen_at": _at(EDGE_TIMES[1])}
            in_clear = _report(police, body=clear)
            in_seal = _report(police, body=sealed)
            await police.publish([in_clear, in_seal])
            bad_id = str(in_seal.header.message_id)
            later = await ex.connectors[KENT].send(
                "CSERiskAssessed", body_of("CSERiskAssessed"), case_ref=CASE, sharing=SHARING
            )
            await _everyone_gets(ex, rec, later, {LANCS, KENT_POLICE, LANCS_POLICE})

            async def all_rejected() -> dict[str, str] | None:
                found = {
                    e.recipient: e.reason or ""
                    for e in await ex.log()
                    if e.message_id == bad_id and e.status == Status.RECIPIENT_REJECTED
                }
                return found if set(found) == MISSING_RECIPIENTS else None

            reasons = await ex.wait_for(all_rejected, what="REJECTED receipts from every recipient")
        finally:
            tracker.stop_event.set()
            await tracker_task
        (letter,) = await ex.dead_letters()
        assert letter.message_id == str(in_clear.header.message_id)
        assert letter.reason == "unsealed-or-malformed-body"
        assert all(r.startswith("undecodable") for r in reasons.values()), reasons
        assert not rec.reached(bad_id)
        for agency in MISSING_RECIPIENTS:
            conn = ex.connectors[agency]
            assert conn.inbox.running, f"{agency}'s inbox stopped"
            kept = conn.quarantine.list()
            assert [(q["message_id"], q["reason"]) for q in kept] == [(bad_id, "undecodable")]
            assert all(k not in q for q in kept for k in ("value", "key"))


async def test_a_message_id_reused_for_other_content_is_refused_and_the_first_stands(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    rec = Recorder()
    async with exchange(kafka_ns, tmp_path) as ex:
        await _case(ex, rec)
        police = ex.connectors[LANCS_POLICE]
        mid = uuid.uuid4()
        first = _report(police, message_id=mid)
        # The same message sent again after a crash (re-sealed, so other bytes): a duplicate.
        again = _report(police, message_id=mid)
        # The same id for a message to other recipients: refused.
        other = _report(police, message_id=mid, recipients=[first.header.recipients[0]])
        sentinel = police.prepare(
            "MissingRiskGraded", body_of("MissingRiskGraded"), case_ref=CASE, sharing=SHARING
        )
        await police.publish([first, again, other, sentinel])
        await _everyone_gets(ex, rec, sentinel, {KENT, LANCS, KENT_POLICE})
        await _everyone_gets(ex, rec, first, MISSING_RECIPIENTS)
        letters = [d for d in await ex.dead_letters() if d.reason == "message-id-reused"]
        assert [d.message_id for d in letters] == [str(mid)]
        log = await ex.log()
        assert not [e for e in log if e.message_id == str(mid) and e.status == Status.REJECTED]
        reused = [e for e in log if e.status == Status.REJECTED]
        assert [(e.related_message_id, e.reason.split(":")[0]) for e in reused if e.reason] == [
            (str(mid), "message-id-reused")
        ]
        routed = [e for e in log if e.message_id == str(mid) and e.status == Status.ROUTED]
        assert {e.recipient for e in routed} == MISSING_RECIPIENTS


async def test_http_ingest_answers_hostile_requests_with_4xx_and_keeps_the_connection(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    rec = Recorder()
    async with exchange(kafka_ns, tmp_path) as ex:
        await _case(ex, rec)
        police = ex.connectors[LANCS_POLICE]
        store = IdempotencyStore(tmp_path / "sent.jsonl")
        async with serving(create_app(police, store)) as url, httpx.AsyncClient(base_url=url) as h:
            path = "/v1/events/ChildMissingReported"
            good = {
                "case_ref": CASE,
                "urgency": "IMMEDIATE",
                "sharing": SHARING_JSON,
                "event": PAYLOADS["ChildMissingReported"],
            }
            deep = "[" * 1000 + "]" * 1000
            for body, status in [
                (b'{"event": ' + deep.encode() + b"}", 400),
                (b"[" * 100_000, 400),
                (json.dumps({**good, "case_ref": "KCC-\ud800"}).encode(), 422),
                (b'{"case_ref": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413),
                (b"not json", 400),
                (b"[]", 400),
            ]:
                r = await h.post(path, content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == status, (status, r.text[:300])
                assert r.json()["errors"], r.text[:300]
                assert len(r.content) < 20_000
                if status == 422:
                    assert [e["path"] for e in r.json()["errors"]] == ["case_ref"]
                    assert "surrogate" in r.text
            r = await h.post(path, content=json.dumps(good), headers={"Content-Type": "text/plain"})
            assert r.status_code == 415
            r = await h.post(
                path,
                content="case_ref=x",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert r.status_code == 415
            many = {**good, "event": {f"field{i}": i for i in range(5000)}}
            r = await h.post(path, json=many)
            assert r.status_code == 422
            assert len(r.json()["errors"]) == 100
            assert r.json()["more_errors"] > 0
            # The same keep-alive connection still takes a valid report, and it is delivered.
            ok = await h.post(path, json=good)
            assert ok.status_code == 202, ok.text
            mid = ok.json()["message_id"]

            async def arrived() -> bool:
                return rec.reached(mid) >= MISSING_RECIPIENTS

            await ex.wait_for(arrived, what="the valid report at every recipient")


def _jsonl(path: Path, requests: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in requests))
    os.replace(tmp, path)


async def test_no_file_can_jam_the_drop_folder(kafka_ns: KafkaSettings, tmp_path: Path) -> None:
    from test_filedrop import placement_row, write_csv

    rec = Recorder()
    async with exchange(kafka_ns, tmp_path) as ex:
        await _case(ex, rec)
        kent = ex.connectors[KENT]
        drop_dir = tmp_path / "drop"
        store = IdempotencyStore(tmp_path / "kent-sent.jsonl")
        drop = FileDrop(kent, drop_dir, store, settle_s=0)
        # 1. an unknown host authority in one row: that row refused, the others sent
        write_csv(
            drop_dir / "placements-a.csv",
            [placement_row(1), placement_row(2, host_authority="la-e99999999"), placement_row(3)],
        )
        # 2. a cell over the csv module's 128 KiB limit
        write_csv(drop_dir / "placements-b.csv", [placement_row(4, known_risks="r" * 140_000)])
        # 3. a row whose sealed message is over 1 MB (and a good row after it)
        huge = {
            "case_ref": CASE,
            "event_type": "CSERiskAssessed",
            "sharing": SHARING_JSON,
            "event": {**PAYLOADS["CSERiskAssessed"], "indicators": ["i" * 19_000] * 60},
        }
        fine = {
            "case_ref": CASE,
            "event_type": "CSERiskAssessed",
            "sharing": SHARING_JSON,
            "event": PAYLOADS["CSERiskAssessed"],
        }
        _jsonl(drop_dir / "c.jsonl", [huge, fine])
        # 4. a 244-character file name
        long_name = "placements-" + "x" * 229 + ".csv"
        write_csv(drop_dir / long_name, [placement_row(5)])
        # 5. a symbolic link to a file outside the folder
        outside = tmp_path / "secret.csv"
        outside.write_text("case_ref\nsomething private\n")
        (drop_dir / "placements-link.csv").symlink_to(outside)
        reports = await drop.scan()

        by_file = {r["file"][:40]: r for r in reports}
        assert len(reports) == 5
        a = by_file["placements-a.csv"]
        assert a["outcome"] == "failed"
        assert [x["row"] for x in a["accepted"]] == [2, 4]
        (row2,) = a["rejected"]
        assert row2["row"] == 3
        assert "la-e99999999" in row2["errors"][0]["problem"]
        b = by_file["placements-b.csv"]
        assert b["outcome"] == "failed"
        assert "not a readable CSV file" in b["error"]
        c = by_file["c.jsonl"]
        assert [x["row"] for x in c["accepted"]] == [2]
        (too_big,) = c["rejected"]
        assert too_big["row"] == 1
        assert "over the exchange's limit" in too_big["errors"][0]["problem"]
        long = next(r for r in reports if r["file"].startswith("placements-xxx"))
        assert long["outcome"] == "failed"
        assert "over 200 characters" in long["error"]
        link = by_file["placements-link.csv"]
        assert link["outcome"] == "failed"
        assert "symbolic link" in link["error"]
        assert link["sha256"] != hashlib.sha256(outside.read_bytes()).hexdigest()
        assert outside.exists()  # the target is left alone; the link moved to failed/
        assert not list(drop_dir.glob("*.csv"))
        assert not list(drop_dir.glob("*.jsonl"))
        for r in reports:  # every report is on disk beside the moved file
            assert (drop_dir / (r["moved_to"] + ".report.json")).exists()
        # A file dropped afterwards is taken as usual.
        write_csv(drop_dir / "placements-later.csv", [placement_row(6)])
        (later,) = await drop.scan()
        assert later["outcome"] == "processed"
        mid = later["accepted"][0]["message_id"]

        async def arrived() -> bool:
            return LANCS in rec.reached(mid)

        await ex.wait_for(arrived, what="the later file's placement at the host authority")


async def test_an_inbox_that_cannot_go_on_stops_its_process_and_loses_nothing(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """A fault of the inbox itself (here a sink with a bug) ends the loop loudly: the connector's
    fatal hook runs (``cbx connector run`` exits non-zero on it), /readyz answers 503, and the
    message is handed over once the inbox runs again, because its batch was never committed."""
    rec = Recorder()
    async with exchange(kafka_ns, tmp_path) as ex:
        for agency in (KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB, PROVIDER):
            await ex.agency(agency)
        await ex.sync_all()
        lancs = ex.connectors[LANCS]

        async def broken(d: Delivered) -> None:
            raise RuntimeError("a bug in the agency's adapter")

        died: list[BaseException] = []
        lancs.inbox.on_fatal = died.append
        lancs.start_inbox(broken)
        app = create_app(lancs, IdempotencyStore(tmp_path / "lancs.jsonl"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as h:
            assert (await h.get("/readyz")).status_code == 200
            placed = await ex.connectors[KENT].send(
                "PlacementNotified", placement_body(), case_ref=CASE, sharing=SHARING
            )

            async def stopped() -> bool:
                return bool(died)

            await ex.wait_for(stopped, what="the inbox to stop")
            assert isinstance(died[0], RuntimeError)
            ready = await h.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"ready": False, "inbox": "stopped"}
            lancs.start_inbox(rec.sink(LANCS))
            await _everyone_gets(ex, rec, placed, {LANCS})
            assert (await h.get("/readyz")).status_code == 200


async def test_a_message_delivered_before_a_restart_can_be_acknowledged_after_it(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    rec = Recorder()
    async with exchange(kafka_ns, tmp_path) as ex:
        await _case(ex, rec)
        report = await ex.report_missing(LANCS_POLICE, CASE)
        mid = str(report.header.message_id)
        await _everyone_gets(ex, rec, report, MISSING_RECIPIENTS)
        kent = ex.connectors[KENT]

        async def on_disk() -> bool:
            return kent.inbox.delivered.get(mid) is not None

        await ex.wait_for(on_disk, what="the delivery recorded")
        await kent.stop()
        # A new process: the same agency, keys and state folder, nothing in memory.
        again = Connector(kent.settings, kent.keys, state_dir=kent.state_dir)
        await again.start()
        try:
            ack = await again.acknowledge(mid)
            assert ack.header.related_message_id == report.header.message_id
            with pytest.raises(PolicyError, match="acknowledged already"):
                await again.acknowledge(mid)
        finally:
            await again.stop()
        third = Connector(kent.settings, kent.keys, state_dir=kent.state_dir)
        assert third.inbox.delivered.get(mid) is None  # the acknowledgement was kept too
        kept = [json.loads(line) for line in (kent.state_dir / "delivered.jsonl").open()]
        raw = b"".join(base64.b64decode(k["header"]) for k in kept if "header" in k)
        assert raw
        assert b"Whitcombe" not in raw  # headers only: no field of the message


async def test_a_batch_read_again_is_not_handed_to_the_agencys_system_twice(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """A batch whose commit did not happen is read again: the group moved on while a broker was
    down, or the process stopped between handing it over and committing. What the agency's system
    had already, acknowledged or not, is not handed over again (its DELIVERED receipt goes again,
    which the delivery log reads as once); what it never had is."""
    rec = Recorder()
    async with exchange(kafka_ns, tmp_path) as ex:
        await _case(ex, rec)
        acked = await ex.report_missing(LANCS_POLICE, CASE)
        open_ = await ex.report_missing(LANCS_POLICE, CASE)
        for out in (acked, open_):
            await _everyone_gets(ex, rec, out, MISSING_RECIPIENTS)
        kent = ex.connectors[KENT]

        async def on_disk() -> bool:
            return kent.inbox.delivered.get(str(open_.header.message_id)) is not None

        await ex.wait_for(on_disk, what="the deliveries recorded")
        await kent.acknowledge(str(acked.header.message_id))
        await kent.stop()
        # As if no commit had ever happened: Kent's inbox group goes back to the start.
        inbox = kent.topics.inbox(KENT)
        tps = [TopicPartition(inbox, p) for p in await kafka.partitions(kent.settings, inbox)]
        assert tps
        rewind = kafka.consumer(kent.settings, group_id=kent.topics.agency_group(KENT, "inbox"))
        rewind.assign(tps)
        await rewind.start()
        try:
            await rewind.commit({tp: 0 for tp in tps})
        finally:
            await rewind.stop()

        handed: Counter[str] = Counter()

        async def count(d: Delivered) -> None:
            handed[str(d.header.message_id)] += 1

        again = Connector(kent.settings, kent.keys, state_dir=kent.state_dir)
        await again.start()
        again.start_inbox(count)
        try:
            later = await ex.report_missing(LANCS_POLICE, CASE)
            later_id = str(later.header.message_id)

            async def read_through() -> bool:
                return handed[later_id] == 1

            await ex.wait_for(read_through, what="the new report handed over")
            assert handed[str(acked.header.message_id)] == 0
            assert handed[str(open_.header.message_id)] == 0
            assert max(handed.values()) == 1
            # Still acknowledgeable after the repeat, and the acknowledged one stays closed.
            await again.acknowledge(str(open_.header.message_id))
            with pytest.raises(PolicyError, match="acknowledged already"):
                await again.acknowledge(str(acked.header.message_id))
        finally:
            await again.stop()


async def test_a_message_sealed_for_fewer_recipients_than_it_names_is_refused_not_delivered(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """Named for three, keys wrapped for one: the router dead-letters it (short-sealed) rather
    than let two recipients get every field withheld and say DELIVERED, which would look like
    policy withholding. (Recipients refuse such a message too: ``test_inbox_checks.py``.)"""
    rec = Recorder()
    async with exchange(kafka_ns, tmp_path) as ex:
        await _case(ex, rec)
        police = ex.connectors[LANCS_POLICE]
        full = _report(police)
        only = [r for r in full.header.recipients if r.agency == KENT_POLICE]
        sealed = police.protector.sealer.seal(
            full.header.event_type,
            full.header.message_id,
            body_of("ChildMissingReported"),
            only,
        )
        short = Outgoing(full.header, police.protector.envelopes.encode(full.header, sealed.body))
        later = _report(police)
        await police.publish([short, later])
        await _everyone_gets(ex, rec, later, MISSING_RECIPIENTS)
        (letter,) = await ex.dead_letters()
        assert letter.reason == "short-sealed"
        assert letter.message_id == str(full.header.message_id)
        assert KENT in letter.error
        assert LANCS in letter.error
        assert not rec.reached(str(full.header.message_id))


async def test_the_force_that_finds_the_child_reports_it_whoever_it_is(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    """Found in a third force's area (the Met), and found by the home force: each report is
    accepted and reaches every party of the case."""
    met = "pf-e23000001"
    rec = Recorder()
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agency(met)
        await _case(ex, rec)
        await ex.wait_registered(met, CASE)  # a force follows the whole registry
        found = {
            "case_ref": CASE,
            "urgency": "IMMEDIATE",
            "sharing": SHARING_JSON,
            "event": {
                "episode_id": PAYLOADS["ChildMissingReported"]["episode_id"],
                "found_at": "2026-04-12T09:30:00+01:00",
                "returned_to_placement": False,
                "location": "Victoria coach station, London",
                "prevention_interview": "no injuries",
            },
        }
        for force, role in ((met, "OTHER_FORCE"), (KENT_POLICE, "HOME_FORCE")):
            app = create_app(ex.connectors[force], IdempotencyStore(tmp_path / f"{force}.jsonl"))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://c") as h:
                r = await h.post("/v1/events/ChildFound", json=found)
            assert r.status_code == 202, r.text
            to = {x["agency"] for x in r.json()["recipients"]}
            assert to == {KENT, LANCS, KENT_POLICE, LANCS_POLICE, PROVIDER} - {force}
            mid = r.json()["message_id"]

            async def arrived(mid: str = mid, to: set[str] = to) -> bool:
                return rec.reached(mid) >= to

            await ex.wait_for(arrived, what=f"{role}'s find at every party")
