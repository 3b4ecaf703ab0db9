"""A case's chronology per agency on the real broker: each agency sees exactly the messages it
took part in, with exactly the fields its roles may read; the merged chronology lists every
message once; and the index and chronology are rebuilt from Kafka after the folder is deleted."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli import cbx

from broker.crypto.sealing import BodyForms
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.model import Role
from broker.policy.sharing import SharingPolicy
from broker.schema.catalogue import Catalogue
from cbx.scenarios import runner as scenario_runner
from cbx.scenarios import spec
from connectors.gateway.chronology import merge, merged_csv, to_csv, to_html
from connectors.gateway.connector import Connector
from connectors.ingest.auth import Scope, TokenStore
from connectors.ingest.http import create_app
from connectors.ingest.idempotency import IdempotencyStore

pytestmark = pytest.mark.kafka

CATALOGUE = Catalogue.load()
FORMS = BodyForms(CATALOGUE)
POLICY = SharingPolicy.load()
KENT, LANCS_POLICE = "la-e10000016", "pf-e23000003"


class Played:
    def __init__(self, run: scenario_runner.Runner, report: dict[str, Any]) -> None:
        self.run = run
        self.report = report
        self.case_ref = f"{KENT}/{report['case_refs'][0]}"  # the placing authority's case id

    def connector(self, agency: str, folder: Path) -> Connector:
        keys = self.run.connectors[agency].keys
        return Connector(principals.settings_for(self.run.ns, agency), keys, state_dir=folder)

    def chronology(self, agency: str, folder: Path) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            c = self.connector(agency, folder)
            await c.start()
            try:
                await c.sync()
                return await c.chronologies.chronology(self.case_ref)
            finally:
                await c.stop()

        return asyncio.run(go())


@pytest.fixture(scope="module")
def played(kafka_settings: KafkaSettings) -> Played:
    run = scenario_runner.Runner(kafka_settings, spec.load(spec.demo()))
    report = asyncio.run(run.run())
    assert report["ok"], report["failures"]
    return Played(run, report)


def _took_part(report: dict[str, Any], agency: str) -> set[str]:
    return {
        m["message_id"]
        for m in report["messages"]
        if m["sender"] == agency or agency in {r["agency"] for r in m["recipients"]}
    }


@pytest.mark.parametrize("agency", [KENT, LANCS_POLICE])
def test_each_agency_sees_its_messages_with_exactly_the_fields_its_roles_may_read(
    played: Played, agency: str, tmp_path: Path
) -> None:
    doc = played.chronology(agency, tmp_path / agency)
    events = doc["events"]
    assert doc["agency"] == agency
    assert doc["case_ref"] == played.case_ref
    ids = [e["message_id"] for e in events]
    assert len(ids) == len(set(ids))
    assert set(ids) == _took_part(played.report, agency)
    times = [e["occurred_at"] for e in events]
    assert times == sorted(times)
    readable = withheld = 0
    for e in events:
        assert "unavailable" not in e, e
        sent = e["sender"]["agency"] == agency
        assert e["direction"] == ("sent" if sent else "received")
        roles = {Role(r) for r in e["as_role"].split("+")}
        form = FORMS.latest[e["event_type"]]
        for sf in form.sealed:
            value = e["fields"][sf.name]
            may = sent or bool(roles & POLICY.audience(e["event_type"], sf.sensitivity))
            if may:
                assert value != {"withheld": str(sf.sensitivity)}, (e["event_type"], sf.name)
                readable += 1
            else:
                assert value == {"withheld": str(sf.sensitivity)}, (e["event_type"], sf.name)
                withheld += 1
        # Who was told, in which role, and what became of it (the agency's own row at least).
        assert e["recipients"]
        if not sent:
            (own,) = [r for r in e["recipients"] if r["agency"] == agency]
            assert own["acknowledged_at"] is not None, e["event_type"]
    assert readable > 5
    if agency == LANCS_POLICE:
        assert withheld > 0  # the police may not read the care plan summary, for one


def test_the_clocks_each_message_started_or_met_are_on_it(played: Played, tmp_path: Path) -> None:
    doc = played.chronology(KENT, tmp_path / "kent")
    by_type = {e["event_type"]: e for e in doc["events"]}
    found = {c["obligation"]: c for c in by_type["ChildFound"]["clocks"]}
    assert found["return-home-interview"]["started"] is True
    interview = {c["obligation"]: c for c in by_type["ReturnInterviewCompleted"]["clocks"]}
    assert interview["return-home-interview"]["met"] is True
    assert interview["return-home-interview"]["status"] == "MET"
    notice = {c["obligation"]: c for c in by_type["PlacementNotified"]["clocks"]}
    assert notice["placement-notice"]["status"] == "MET"
    assert notice["initial-health-assessment"]["status"] == "DUE"
    strategy = {c["obligation"]: c for c in by_type["StrategyDiscussionHeld"]["clocks"]}
    assert strategy["high-risk-strategy-discussion"]["met"] is True


def test_the_merged_chronology_lists_every_message_once_with_who_held_it(
    played: Played, tmp_path: Path
) -> None:
    kent = played.chronology(KENT, tmp_path / "kent")
    police = played.chronology(LANCS_POLICE, tmp_path / "police")
    merged = merge([kent, police])
    ids = [e["message_id"] for e in merged["events"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == _took_part(played.report, KENT) | _took_part(played.report, LANCS_POLICE)
    for e in merged["events"]:
        holders = set(e["held_by"])
        expected = {
            a for a in (KENT, LANCS_POLICE) if e["message_id"] in _took_part(played.report, a)
        }
        assert holders == expected
        for held in e["held_by"].values():
            if held["direction"] == "received":
                assert held["acknowledged_at"] is not None
    # A field one agency could not read is filled from the other that could.
    placement = next(e for e in merged["events"] if e["event_type"] == "PlacementNotified")
    assert not isinstance(placement["fields"]["care_plan_summary"], dict)

    page = to_html(merged)
    assert "Multi-agency chronology" in page
    assert "Kent council" in page
    assert page.count("<tr>") == len(ids) + 1

    # The command line merges the files the same way (no broker needed).
    files = []
    for doc in (kent, police):
        f = tmp_path / f"{doc['agency']}.json"
        f.write_text(json.dumps(doc))
        files.append(str(f))
    done = cbx(None, tmp_path, "chronology", "merge", *files, "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert sorted(r["message_id"] for r in rows) == sorted(ids)
    assert rows == list(csv.DictReader(io.StringIO(merged_csv(merged))))
    out = tmp_path / "review" / "case.html"
    written = cbx(
        None, tmp_path, "chronology", "merge", *files, "--format", "html", "--output", str(out)
    )
    assert written.returncode == 0, written.stderr
    assert out.read_text() == to_html(merged).replace(merged["generated_at"], _generated(out))
    assert out.stat().st_mode & 0o777 == 0o600  # a child's case content: the user's alone
    other = dict(kent, case_ref="la-e10000016/ANOTHER")
    (tmp_path / "other.json").write_text(json.dumps(other))
    refused = cbx(None, tmp_path, "chronology", "merge", files[0], str(tmp_path / "other.json"))
    assert refused.returncode == 1
    assert "different cases" in refused.stderr


def test_index_and_chronology_are_rebuilt_after_the_folder_is_deleted(
    played: Played, tmp_path: Path
) -> None:
    folder = tmp_path / "kent"
    first = played.chronology(KENT, folder)
    assert (folder / "chronology.sqlite").exists()
    assert (folder / "chronology.sqlite").stat().st_mode & 0o777 == 0o600  # headers at rest
    shutil.rmtree(folder)
    again = played.chronology(KENT, folder)
    assert (folder / "chronology.sqlite").exists()
    strip = [{k: v for k, v in e.items() if k != "recipients"} for e in first["events"]]
    assert [{k: v for k, v in e.items() if k != "recipients"} for e in again["events"]] == strip


@contextlib.asynccontextmanager
async def kent_edge(
    played: Played, tmp_path: Path, tokens: TokenStore
) -> AsyncIterator[httpx.AsyncClient]:
    """Kent's connector, started on the played exchange, and a client of its HTTP edge."""
    c = played.connector(KENT, tmp_path / "kent")
    await c.start()
    try:
        app = create_app(c, IdempotencyStore(tmp_path / "idem.jsonl"), tokens=tokens)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://connector"
        ) as client:
            yield client
    finally:
        await c.stop()


def test_the_http_chronology_in_each_format_and_only_with_its_scope(
    played: Played, tmp_path: Path
) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    reader, _ = tokens.add([Scope.CHRONOLOGY])
    status_only, _ = tokens.add([Scope.READ])

    async def go() -> dict[str, httpx.Response]:
        async with kent_edge(played, tmp_path, tokens) as client:
            url = f"/v1/cases/{played.case_ref}/chronology"
            auth = {"Authorization": f"Bearer {reader}"}
            return {
                "json": await client.get(url, headers=auth),
                "csv": await client.get(url + "?format=csv", headers=auth),
                "html": await client.get(url + "?format=html", headers=auth),
                "bad": await client.get(url + "?format=pdf", headers=auth),
                "scope": await client.get(url, headers={"Authorization": f"Bearer {status_only}"}),
                "none": await client.get(url),
                "other": await client.get(
                    "/v1/cases/la-e10000017/NOT-OURS/chronology", headers=auth
                ),
            }

    got = asyncio.run(go())
    assert got["json"].status_code == 200
    doc = got["json"].json()
    assert doc["case_ref"] == played.case_ref
    assert got["csv"].status_code == 200
    assert got["csv"].headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(got["csv"].text)))
    assert [r["message_id"] for r in rows] == [e["message_id"] for e in doc["events"]]
    assert got["csv"].text == to_csv(doc)
    assert got["html"].status_code == 200
    assert played.case_ref in got["html"].text
    assert "default-src 'none'" in got["html"].headers["content-security-policy"]
    assert "<script" not in to_html(doc)
    assert got["bad"].status_code == 400
    assert got["scope"].status_code == 403
    assert got["none"].status_code == 401
    assert got["other"].status_code == 404
    assert "no message about case" in got["other"].json()["error"]


def test_the_command_line_gives_an_agency_its_chronology_with_its_own_keys(
    played: Played, tmp_path: Path
) -> None:
    from broker.crypto import keys as keystore

    home = tmp_path / "home"
    kent = played.run.connectors[KENT].keys
    keystore.save(kent, keystore.keystore_path(KENT, home / "keys"), b"test passphrase")
    settings = principals.settings_for(played.run.ns, KENT)  # Kent's own Kafka credentials
    done = cbx(settings, home, "chronology", played.case_ref, "--agency", KENT, "--format", "csv")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {r["message_id"] for r in rows} == _took_part(played.report, KENT)
    assert (home / "connectors" / KENT / "chronology.sqlite").exists()
    # Without the agency's keystore there is nothing to open it with: a clear refusal.
    other = cbx(settings, tmp_path / "empty", "chronology", played.case_ref, "--agency", KENT)
    assert other.returncode == 1
    assert "keystore" in other.stderr.lower()


def _generated(page: Path) -> str:
    """The generation time printed in a page (each merge stamps its own)."""
    text = page.read_text()
    start = text.index("Generated ") + len("Generated ")
    return text[start : text.index(". OFFICIAL", start)]


def test_hostile_chronology_requests_get_clear_answers_and_the_next_one_works(
    played: Played, tmp_path: Path
) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    reader, _ = tokens.add([Scope.CHRONOLOGY])
    auth = {"Authorization": f"Bearer {reader}"}

    async def go() -> list[httpx.Response]:
        async with kent_edge(played, tmp_path, tokens) as client:
            hostile = [
                "/v1/cases/" + "A" * 20_000 + "/chronology",  # a huge reference
                "/v1/cases/la-e10000016%2F..%2F..%2Fetc/chronology",  # a path trick
                "/v1/cases/la-e10000017/KCC-LAC-1' OR '1'='1/chronology",  # SQL in the ref
                f"/v1/cases/{played.case_ref}/chronology?format=" + "x" * 5000,
            ]
            answers = [await client.get(u, headers=auth) for u in hostile]
            answers.append(
                await client.get(f"/v1/cases/{played.case_ref}/chronology", headers=auth)
            )
            return answers

    *refused, good = asyncio.run(go())
    assert [r.status_code for r in refused] == [404, 404, 404, 400]
    for r in refused:
        assert r.json()["error"]
    assert good.status_code == 200
    assert {e["message_id"] for e in good.json()["events"]} == _took_part(played.report, KENT)
