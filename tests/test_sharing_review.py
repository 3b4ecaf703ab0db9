"""The sharing-policy review: for every message type, which roles can read each sealed field.

The expected table below is the review's outcome, written out; the policy (``sharing.yaml``, with a
reason beside every change) must give exactly it. ``docs/architecture.md`` carries the same table,
generated from the policy (``cbx schemas readers``), and a test keeps the two equal.
"""

from __future__ import annotations

import re

from broker.model import Role
from broker.paths import project_root
from broker.policy.sharing import SharingPolicy, readers, readers_markdown
from broker.schema.catalogue import Catalogue

CATALOGUE = Catalogue.load()
POLICY = SharingPolicy.load()

ABBREVIATIONS = {
    "PA": Role.PLACING_AUTHORITY,
    "HA": Role.HOST_AUTHORITY,
    "HF": Role.HOST_FORCE,
    "HoF": Role.HOME_FORCE,
    "PI": Role.PLACING_ICB,
    "HI": Role.HOST_ICB,
    "CP": Role.CARE_PROVIDER,
    "GP": Role.GP,
    "SCH": Role.SCHOOL,
    "IRO": Role.IRO,
    "RHI": Role.RHI_PROVIDER,
    "OF": Role.OTHER_FORCE,
    "OA": Role.OTHER_AUTHORITY,
}
# Who the child is: every agency addressed about the child must be able to tell.
IDENTITY_ALL = "PA HA HF HoF PI HI CP GP SCH IRO RHI OF OA"

EXPECTED: dict[str, dict[str, str]] = {
    "CAWNIssued": {
        "adult_subject": "PA HA HF HoF CP OF",
    },
    "CSERiskAssessed": {
        "indicators": "PA HA HF HoF OF",
    },
    "CasePartiesChanged": {
        "note": "PA HA CP GP SCH IRO RHI",
    },
    "ChildFound": {
        "health_concerns": "PA HA HF HoF PI HI CP GP",
        "location": "PA HA HF HoF CP OF OA",
        "prevention_interview": "PA HA HF HoF RHI OF",
    },
    "ChildMissingReported": {
        "circumstances": "PA HA HF HoF RHI OF",
        "clothing": IDENTITY_ALL,
        "last_seen": "PA HA HF HoF CP OF OA",
    },
    "HealthAssessmentRequested": {
        "health_notes": "PA PI HI GP",
        "identity": IDENTITY_ALL,
        "nhs_number": IDENTITY_ALL,
    },
    "HealthRecordTransferRequested": {
        "nhs_number": IDENTITY_ALL,
        "records_held": "PA PI HI GP",
    },
    "HomeAdmissionNotified": {
        "admission_details": "PA HA CP IRO",
        "identity": IDENTITY_ALL,
    },
    "HomeDischargeNotified": {
        "destination": "PA HA HF HoF CP OF OA",
        "discharge_details": "PA HA CP IRO",
        "identity": IDENTITY_ALL,
    },
    "MissingProfileLodged": {
        "associates": "PA HF HoF OF",
        "description": IDENTITY_ALL,
        "identity": IDENTITY_ALL,
        "medical_needs": "PA HF HoF PI HI GP",
        "phones": "PA HF HoF OF",
        "photo": IDENTITY_ALL,
        "places": "PA HA HF HoF CP OF OA",
    },
    "MissingRiskGraded": {
        "rationale": "PA HA HF HoF CP OF",
    },
    "PlacementEnded": {
        "next_address": "PA HA HF HoF CP OF OA",
        "reason_detail": "PA HA CP IRO",
    },
    "PlacementNotified": {
        "address": "PA HA HF HoF CP OF OA",
        "care_plan_summary": "PA HA CP IRO",
        "identity": IDENTITY_ALL,
        "risk_summary": "PA HA HF HoF CP OF",
    },
    "Receipt": {},
    "ReturnInterviewCompleted": {
        "associates": "PA HA HF HoF IRO RHI OF",
        "disclosures": "PA HA HF HoF IRO RHI OF",
        "places": "PA HA HF HoF CP OF OA",
    },
    "RouteGapNotice": {},
    "ObligationOverdue": {},
    "StrategyDiscussionHeld": {
        "decisions": "PA HA HF HoF CP IRO",
        "intelligence": "PA HA HF HoF OF",
    },
    "TriggerPlanIssued": {
        "actions": "PA HA HF HoF CP IRO",
        "associates": "PA HA HF HoF CP OF",
        "places": "PA HA HF HoF CP OF OA",
        "vehicles": "PA HA HF HoF CP OF",
    },
}


def test_every_sealed_field_is_readable_by_exactly_the_reviewed_roles() -> None:
    actual = readers(CATALOGUE, POLICY)
    assert set(actual) == set(EXPECTED), "a message type was added or removed: review it"
    for event_type, fields in EXPECTED.items():
        got = {f: {str(r) for r in roles} for f, (_cls, roles) in actual[event_type].items()}
        want = {f: {str(ABBREVIATIONS[a]) for a in text.split()} for f, text in fields.items()}
        assert got == want, event_type


def test_the_police_can_read_a_trigger_plans_actions() -> None:
    actions = readers(CATALOGUE, POLICY)["TriggerPlanIssued"]["actions"][1]
    assert {Role.HOST_FORCE, Role.HOME_FORCE} <= set(actions)


def test_health_and_intelligence_stay_with_those_who_act_on_them() -> None:
    table = readers(CATALOGUE, POLICY)
    for event_type, fields in table.items():
        for f, (cls, roles) in fields.items():
            if cls == "HEALTH":
                assert Role.SCHOOL not in roles, (event_type, f)
                assert Role.OTHER_AUTHORITY not in roles, (event_type, f)
            if cls == "INTELLIGENCE":
                assert Role.GP not in roles, (event_type, f)
                assert Role.SCHOOL not in roles, (event_type, f)


def test_every_change_of_the_review_carries_its_reason() -> None:
    text = (project_root() / "schemas" / "policy" / "sharing.yaml").read_text()
    additions = text[text.index("\nadditions:") :]
    reasons = re.findall(r"#\s*review 2", additions)
    assert len(reasons) >= 8


def test_the_table_in_the_architecture_document_is_generated_from_the_policy() -> None:
    doc = (project_root() / "docs" / "architecture.md").read_text()
    start, end = "<!-- readers:start -->\n", "<!-- readers:end -->"
    assert start in doc, "docs/architecture.md lost its generated readers table"
    assert end in doc
    table = doc[doc.index(start) + len(start) : doc.index(end)]
    assert table == readers_markdown(CATALOGUE, POLICY), "run: cbx schemas readers --write"
