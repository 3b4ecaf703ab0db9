"""File-drop ingest on the real broker: reports, processed/failed, a kill in mid-file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from exchange import exchange
from test_router import KENT, KENT_ICB, KENT_POLICE, LANCS, LANCS_ICB, LANCS_POLICE

from broker.crypto import keys as keystore
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from connectors.filedrop.folder import FileDrop
from connectors.ingest.idempotency import IdempotencyStore

pytestmark = pytest.mark.kafka

PARTIES = [KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB]
PLACEMENT_RECIPIENTS = {LANCS, LANCS_POLICE, KENT_POLICE, LANCS_ICB, KENT_ICB}
HEADER = [
    "case_ref",
    "placement_id",
    "legal_status",
    "placement_type",
    "start_date",
    "host_authority",
    "approved_by_role",
    "distant_placement",
    "given_names",
    "family_name",
    "date_of_birth",
    "nhs_number",
    "address_line1",
    "address_line2",
    "town",
    "postcode",
    "previous_missing_episodes",
    "known_risks",
]


def placement_row(i: int, **changes: str) -> dict[str, str]:
    row = {
        "case_ref": f"KCC-FD-{i:05d}",
        "placement_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"placement/{i}")),
        "legal_status": "C2",
        "placement_type": "CHILDRENS_HOME",
        "start_date": "2026-03-02",
        "host_authority": LANCS,
        "approved_by_role": "Director of Children's Services",
        "distant_placement": "yes",
        "given_names": f"Robin{i}",
        "family_name": f"Ashdown{i}",
        "date_of_birth": "2011-07-19",
        "nhs_number": "9434765919",
        "address_line1": f"{i} Orchard Rise",
        "address_line2": "",
        "town": "Chorley",
        "postcode": "PR7 3QX",
        "previous_missing_episodes": "2",
        "known_risks": "older associates; goes missing after contact",
    }
    row.update(changes)
    return row


def write_csv(path: Path, rows: list[dict[str, str]], header: list[str] = HEADER) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    tmp = path.with_name(path.name + ".part")  # the exporter's write-then-rename
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def sensitive(rows: list[dict[str, str]]) -> set[str]:
    keys = ("given_names", "family_name", "address_line1", "nhs_number", "postcode")
    return {r[k] for r in rows for k in keys if r.get(k)}


async def test_csv_with_good_and_bad_rows_gets_a_report_listing_both(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(PARTIES)
        kent = ex.connectors[KENT]
        drop_dir = tmp_path / "drop"
        store = IdempotencyStore(tmp_path / "kent-sent.jsonl")
        drop = FileDrop(kent, drop_dir, store, settle_s=0)
        good = [placement_row(i) for i in (1, 2, 4)]
        bad_dob = placement_row(3, date_of_birth="19/07/2011")
        bad_status = placement_row(5, legal_status="C9", family_name="")
        rows = [good[0], good[1], bad_dob, good[2], bad_status]
        write_csv(drop_dir / "placements-2026-04-01.csv", rows)
        (report,) = await drop.scan()

        assert report["read_as"] == "placement-register"
        assert report["outcome"] == "failed"
        assert [a["row"] for a in report["accepted"]] == [2, 3, 5]
        assert all(uuid.UUID(a["message_id"]) for a in report["accepted"])
        for a in report["accepted"]:
            assert {r["agency"] for r in a["recipients"]} == PLACEMENT_RECIPIENTS
        rejected = {r["row"]: r["errors"] for r in report["rejected"]}
        assert set(rejected) == {4, 6}
        assert [(e["column"], e["path"]) for e in rejected[4]] == [
            ("date_of_birth", "event.identity.date_of_birth")
        ]
        assert {(e["column"], e["path"]) for e in rejected[6]} == {
            ("legal_status", "event.legal_status"),
            ("family_name", "event.identity.family_name"),
        }
        assert not (drop_dir / "placements-2026-04-01.csv").exists()
        assert (drop_dir / "failed" / "placements-2026-04-01.csv").exists()
        saved = json.loads(
            (drop_dir / "failed" / "placements-2026-04-01.csv.report.json").read_text()
        )
        assert saved["accepted"] == report["accepted"]
        report_text = json.dumps(saved)
        leaked = [v for v in sensitive(rows) if v in report_text]
        assert leaked == []

        # The accepted rows reach the host council, once each.
        ids = {a["message_id"] for a in report["accepted"]}

        async def arrived() -> bool:
            return set(await ex.inbox_ids(LANCS)) >= ids

        await ex.wait_for(arrived, what="the accepted rows in Lancashire's inbox")
        assert {k: v for k, v in (await ex.inbox_ids(LANCS)).items() if k in ids} == {
            i: 1 for i in ids
        }

        # The council fixes the two rows and sends the whole register again: only they go.
        fixed = [good[0], good[1], placement_row(3), good[2], placement_row(5)]
        write_csv(drop_dir / "placements-2026-04-01.csv", fixed)
        (again,) = await drop.scan()
        assert again["outcome"] == "processed"
        assert again["rejected"] == []
        by_row = {a["row"]: a for a in again["accepted"]}
        assert [r for r in by_row if by_row[r].get("already_sent")] == [2, 3, 5]
        assert {by_row[r]["message_id"] for r in (2, 3, 5)} == ids
        assert (drop_dir / "processed" / "placements-2026-04-01.csv").exists()

        # A missing-episode log from the host force: one child known, one not in the registry.
        await ex.wait_registered(LANCS_POLICE, "KCC-FD-00001")
        police_drop = FileDrop(
            ex.connectors[LANCS_POLICE],
            tmp_path / "police-drop",
            IdempotencyStore(tmp_path / "police-sent.jsonl"),
            settle_s=0,
        )
        missing_header = [
            "case_ref",
            "episode_id",
            "status",
            "reported_at",
            "initial_risk_grade",
            "last_seen_at",
            "last_seen_place",
            "clothing",
        ]
        episodes = [
            {
                "case_ref": case,
                "episode_id": str(uuid.uuid4()),
                "status": "MISSING",
                "reported_at": "2026-04-11T22:40:00+01:00",
                "initial_risk_grade": "HIGH",
                "last_seen_at": "2026-04-11T20:15:00+01:00",
                "last_seen_place": "Chorley Interchange",
                "clothing": "grey hoodie",
            }
            for case in ("KCC-FD-00001", "KCC-UNKNOWN-1")
        ]
        write_csv(police_drop.root / "missing-log.csv", episodes, missing_header)
        (missing,) = await police_drop.scan()
        assert [a["row"] for a in missing["accepted"]] == [2]
        assert {r["agency"] for r in missing["accepted"][0]["recipients"]} == {
            KENT,
            LANCS,
            KENT_POLICE,
        }
        (problem,) = missing["rejected"][0]["errors"]
        assert missing["rejected"][0]["row"] == 3
        assert problem["column"] == "case_ref"
        assert "not in the placement registry" in problem["problem"]

        # A file the mappings do not know, a header without required columns, JSON lines.
        write_csv(drop_dir / "caseload.csv", [good[0]])
        write_csv(
            drop_dir / "placements-short.csv",
            [good[0]],
            [h for h in HEADER if h != "date_of_birth"],
        )
        jsonl = [
            json.dumps(
                {
                    "event_type": "CSERiskAssessed",
                    "case_ref": "KCC-FD-00001",
                    "sharing": report_sharing(),
                    "event": {
                        "assessment_id": str(uuid.uuid4()),
                        "tool": "CSE screening tool v3",
                        "level": "HIGH",
                        "assessed_date": "2026-04-14",
                        "review_date": "2026-07-14",
                    },
                }
            ),
            "{not json",
            json.dumps({"case_ref": "KCC-FD-00001"}),
        ]
        (drop_dir / "kent-events.jsonl").write_text("\n".join(jsonl) + "\n")
        reports = {r["file"]: r for r in await drop.scan()}
        assert "no column mapping matches" in reports["caseload.csv"]["error"]
        assert "date_of_birth" in reports["placements-short.csv"]["error"]
        lines = reports["kent-events.jsonl"]
        assert [a["row"] for a in lines["accepted"]] == [1], lines["rejected"]
        assert [(r["row"], r["errors"][0]["problem"]) for r in lines["rejected"]] == [
            (2, "not valid JSON"),
            (3, "missing event_type"),
        ]
        assert sorted(p.name for p in (drop_dir / "failed").iterdir() if p.suffix != ".json") == [
            "caseload.csv",
            "kent-events.jsonl",
            "placements-2026-04-01.csv",
            "placements-short.csv",
        ]


def report_sharing() -> dict[str, Any]:
    return {
        "purpose": "safeguard a looked-after child placed out of area",
        "lawful_basis": ["UK_GDPR_6_1_E_PUBLIC_TASK"],
        "consent": "NOT_SOUGHT",
        "consent_not_sought_reason": "risk of significant harm",
        "decision_maker_role": "Team manager",
    }


def start_connector(
    ex: Any, agency: str, drop_dir: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **principals.settings_for(ex.settings, agency).to_env(),
        "CBX_HOME": str(ex.home),
        "CBX_LOG_FORMAT": "json",
    }
    args = [sys.executable, "-m", "cbx.cli", "connector", "run", "--agency", agency]
    args += ["--no-http", "--drop", str(drop_dir), "--folder", str(ex.home / "kent-inbox")]
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def sent_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


async def test_a_kill_in_the_middle_of_a_file_loses_and_repeats_no_row(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    rows_n = 3000
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(PARTIES)
        keystore.save(ex.connectors[KENT].keys, keystore.keystore_path(KENT))
        drop_dir = tmp_path / "drop"
        drop_dir.mkdir()
        rows = [placement_row(i) for i in range(rows_n)]
        write_csv(drop_dir / "placements-full.csv", rows)
        sent = tmp_path / "connectors" / KENT / "sent.jsonl"
        log_path = tmp_path / "connector.log"

        proc = start_connector(ex, KENT, drop_dir, log_path)
        deadline = time.monotonic() + 120
        kill_after = random.randrange(200, 2400, 200)  # batches of 200 rows
        while sent_lines(sent) < kill_after:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        at_kill = sent_lines(sent)
        assert at_kill < rows_n, "the file finished before the kill: make it longer"
        assert (drop_dir / "placements-full.csv").exists()

        proc = start_connector(ex, KENT, drop_dir, log_path)
        try:
            report_path = drop_dir / "processed" / "placements-full.csv.report.json"
            deadline = time.monotonic() + 180
            while not report_path.exists():
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                await asyncio.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log_path.read_text()[-4000:]

        report = json.loads(report_path.read_text())
        assert report["rejected"] == []
        assert [a["row"] for a in report["accepted"]] == list(range(2, rows_n + 2))
        ids = {a["message_id"] for a in report["accepted"]}
        assert len(ids) == rows_n
        assert not any(a.get("already_sent") for a in report["accepted"])

        async def all_arrived() -> bool:
            return len(await ex.inbox_ids(LANCS_POLICE)) >= rows_n

        await ex.wait_for(all_arrived, within_s=180, what="every row at the host force")
        for agency in (LANCS_POLICE, LANCS):
            counts = await ex.inbox_ids(agency)
            assert set(counts) == ids
            assert set(counts.values()) == {1}, "a row reached a recipient twice"
        leaked = [v for v in sensitive(rows) if v in log_path.read_text()]
        assert leaked == [], "sensitive values in the connector's log"
        outbound = await ex.uncommitted_count(ex.settings.topics.outbound(KENT))
        print(f"killed after {at_kill} of {rows_n} rows recorded; {outbound} records on outbound")
        assert outbound >= rows_n
