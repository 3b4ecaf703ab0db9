"""`cbx scenario run` and `cbx demo` on the real broker: shipped examples, failures, the format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from cli import cbx

from broker.kafka.settings import KafkaSettings
from broker.schema.catalogue import Catalogue
from cbx.scenarios import audit, spec

CATALOGUE = Catalogue.load()

EXAMPLES = [p for p in spec.shipped() if p != spec.demo()]


def check_delivered(report: dict[str, object], case: spec.Scenario | None = None) -> None:
    """Every recipient acknowledged, but those a step expects to stay silent and be escalated."""
    assert report["ok"] is True, report["failures"]
    assert report["failures"] == []
    assert report["plaintext_found"] == 0
    assert isinstance(report["messages"], list)
    steps = {s.id: s for s in case.steps} if case else {}
    for m in report["messages"]:
        assert m["recipients"], m
        step = steps.get(m["step"])
        expected = {case.agencies[a] for a in step.escalated or ()} if case and step else set()
        for r in m["recipients"]:
            assert r["delivered_ms"] is not None
            if r["agency"] in expected:
                assert r["status"] == "ESCALATED", (m["step"], r)
                continue
            assert r["status"] == "ACKNOWLEDGED", (m["step"], r)
            assert r["acknowledged_ms"] >= r["delivered_ms"]
    assert isinstance(report["rejections"], list)
    assert all(r["expected"] for r in report["rejections"])


@pytest.mark.kafka
def test_demo_json_reaches_and_is_acknowledged_by_every_required_recipient(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    done = cbx(kafka_settings, tmp_path, "demo", "--json", "--chronology", str(tmp_path / "chr"))
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    report = json.loads(done.stdout)
    check_delivered(report)
    # Each agency's chronology of the case and the merged one: every message of the case once.
    (folder,) = (tmp_path / "chr").iterdir()
    merged = list(csv.DictReader((folder / "merged.csv").open()))
    assert sorted(r["message_id"] for r in merged) == sorted(
        m["message_id"] for m in report["messages"]
    )
    agencies = {a for a in spec.load(spec.demo()).agencies.values()}
    assert {p.stem for p in folder.glob("*.json")} == agencies
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}
    secrets = literal_sensitive_values(spec.load(spec.demo()))
    assert [v for v in secrets if v in done.stdout + done.stderr] == []
    steps = list(spec.load(spec.demo()).steps)
    assert [m["event_type"] for m in report["messages"]] == [s.event_type for s in steps]
    for m in report["messages"]:
        assert set(m) >= {"message_id", "event_type", "sender", "recipients", "route_gaps"}
        for r in m["recipients"]:
            assert set(r) >= {"agency", "status", "delivered_ms", "acknowledged_ms"}
    by_type = {m["event_type"]: m for m in report["messages"]}
    assert {r["agency"] for r in by_type["PlacementNotified"]["recipients"]} == {
        "la-e10000017",
        "pf-e23000003",
        "pf-e23000032",
        "icb-e54000048",
        "icb-e54000032",
    }
    assert {r["agency"] for r in by_type["ChildMissingReported"]["recipients"]} == {
        "la-e10000016",
        "pf-e23000032",
        "la-e10000017",
    }
    assert report["sensitive_values_searched"] > 30
    assert report["records_scanned"] > 50


def literal_sensitive_values(case: spec.Scenario) -> set[str]:
    """The sensitive values written out in a scenario file (not those made by references)."""
    requests = [(s.event_type, s.request) for s in case.steps if s.event_type]
    values = audit.sensitive_values(CATALOGUE, requests)  # type: ignore[arg-type]
    return {v for v in values if "${" not in v}


@pytest.mark.kafka
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_shipped_scenario_passes(kafka_settings: KafkaSettings, tmp_path: Path, path: Path) -> None:
    done = cbx(
        kafka_settings, tmp_path, "scenario", "run", str(path), "--json", CBX_LOG_LEVEL="DEBUG"
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    check_delivered(json.loads(done.stdout), spec.load(path))
    # Neither the report nor any log line of the router, tracker or connectors holds them.
    secrets = literal_sensitive_values(spec.load(path))
    assert len(secrets) >= 5
    assert [v for v in secrets if v in done.stdout + done.stderr] == []


def test_the_provider_scenario_shows_both_refusals() -> None:
    case = spec.load(spec.scenarios_dir() / "provider-reports-missing.yaml")
    assert [s.id for s in case.steps if s.outcome == "rejected"] == [
        "council-cannot-report",
        "found-bad-time",
    ]


FAILING = """
name: an unacknowledged high-risk report and a recipient the rules do not give
agencies:
  kent: la-e10000016
  lancs: la-e10000017
  kent_police: pf-e23000032
  lancs_police: pf-e23000003
  kent_icb: icb-e54000032
  lancs_icb: icb-e54000048
deadlines:
  IMMEDIATE: 2s
vars:
  sharing: &sharing
    purpose: locate a missing looked-after child
    lawful_basis: [DPA_2018_SCH8_PARA4_SAFEGUARDING]
    consent: NOT_SOUGHT
    consent_not_sought_reason: child missing at risk
    decision_maker_role: Duty inspector
steps:
  - id: placement
    sender: kent
    type: PlacementNotified
    request:
      case_ref: KCC-LAC-${random}
      sharing: *sharing
      event:
        placement_id: ${uuid}
        legal_status: C2
        placement_type: CHILDRENS_HOME
        start_date: "2026-03-02"
        host_authority: ${agencies.lancs}
        approved_by_role: Director
        identity: {given_names: Sam Tester, family_name: Quillfeather, date_of_birth: "2011-01-01"}
        address: {lines: [1 Test Row], town: Preston, postcode: PR1 9ZZ}
  - id: missing
    sender: lancs_police
    type: ChildMissingReported
    acknowledge: [kent]
    expect:
      recipients: [kent, kent_icb]
    request:
      case_ref: ${steps.placement.case_ref}
      urgency: IMMEDIATE
      sharing: *sharing
      event:
        episode_id: ${uuid}
        status: MISSING
        reported_at: "2026-04-11T22:40:00+01:00"
        last_seen: {seen_at: "2026-04-11T20:15:00+01:00", place: Preston docks}
  - id: let-the-deadline-pass
    pause: 4s
"""


@pytest.mark.kafka
def test_a_passed_deadline_and_a_missing_recipient_fail_the_run(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    path = tmp_path / "failing.yaml"
    path.write_text(FAILING)
    done = cbx(kafka_settings, tmp_path, "scenario", "run", str(path), "--json")
    assert done.returncode == 1, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["ok"] is False
    failures = "\n".join(report["failures"])
    assert "required recipient kent_icb" in failures
    assert "la-e10000017 did not acknowledge ChildMissingReported within the IMMEDIATE" in failures
    assert "pf-e23000032 did not acknowledge" in failures
    missing = next(m for m in report["messages"] if m["step"] == "missing")
    statuses = {r["agency"]: r["status"] for r in missing["recipients"]}
    assert statuses == {
        "la-e10000016": "ACKNOWLEDGED",
        "la-e10000017": "ESCALATED",
        "pf-e23000032": "ESCALATED",
    }
    assert missing["ack_deadline_ms"] == 2000
    # The table form says the same, and so does the exit code.
    table = cbx(kafka_settings, tmp_path, "scenario", "run", str(path))
    assert table.returncode == 1
    assert "FAILED" in table.stdout
    assert "required recipient kent_icb" in table.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("sender: kent\n    type: Placement", "sender: nobody\n    type: Placement"),
         "steps[1].sender: 'nobody' is not one of the agencies"),
        (("type: ChildMissingReported", "type: ChildVanished"),
         "steps[2].type: unknown message type 'ChildVanished'"),
        (("IMMEDIATE: 2s", "IMMEDIATE: soon"), "deadlines.IMMEDIATE: duration 'soon'"),
        (("acknowledge: [kent]", "acknowledge: [kent, mi5]"), "steps[2].acknowledge: mi5"),
    ],
)  # fmt: skip
def test_bad_scenario_files_name_the_step_and_the_problem(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = tmp_path / "bad.yaml"
    assert change[0] in FAILING
    path.write_text(FAILING.replace(*change))
    with pytest.raises(spec.ScenarioError) as err:
        spec.load(path)
    assert message in str(err.value)
    assert str(err.value).startswith("bad.yaml: ")


def test_a_reference_to_nothing_names_the_reference(tmp_path: Path) -> None:
    path = tmp_path / "ref.yaml"
    path.write_text(FAILING.replace("${steps.placement.case_ref}", "${steps.placment.case_ref}"))
    case = spec.load(path)
    context = spec.Context(case)
    context.values["steps"]["placement"] = {"case_ref": "KCC-1"}
    with pytest.raises(spec.ScenarioError, match=r"steps\.placment\.case_ref"):
        context.resolve(case.steps[1].request, "steps.missing.request")


def test_references_keep_types_and_interpolate_in_text() -> None:
    case = spec.load(spec.demo())
    context = spec.Context(case)
    assert context.values["vars"]["case"].startswith("KCC-LAC-")
    context.values["steps"]["x"] = {"n": 4, "ids": ["a", "b"]}
    assert context.resolve("${steps.x.n}", "t") == 4
    assert context.resolve("n=${steps.x.n}; ${steps.x.ids.1}", "t") == "n=4; b"
    assert context.resolve({"k": ["${agencies.kent}"]}, "t") == {"k": ["la-e10000016"]}
    assert context.resolve("${uuid}", "t") != context.resolve("${uuid}", "t")
