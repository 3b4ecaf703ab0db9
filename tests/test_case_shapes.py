"""Who receives each message, and who is refused, in the case shapes that reviews are about.

The routing core only (rules, case registry, router decisions), no broker: each row sets up a case
on a fresh :class:`RouterCore`, then sends one message exactly as a connector would (its choice by
:meth:`Rules.choose`, sealed, signed) and reads who the router delivered it to, in which roles, or
why it was refused. The same shapes run on the real broker as the shipped scenarios
(``schemas/scenarios``: third-area-find, home-force-find, placement-moves, expected-escalation).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from agencies import CATALOGUE, FORMS, POLICY, SHARING, network

from broker.crypto.keys import AgencyKeys
from broker.crypto.sealing import Sealer
from broker.delivery_log import LogCodec, Status
from broker.envelope import Header
from broker.errors import PolicyError
from broker.kafka.topics import Topics
from broker.model import ROUTER, TRACKER, Recipient, Role
from broker.policy.registry import case_id
from broker.policy.routing import Rules
from broker.router.core import InRecord, RouterCore
from broker.router.state import RouterState

KENT, LANCS, MEDWAY, MANCH = "la-e10000016", "la-e10000017", "la-e06000035", "la-e08000003"
KENT_POLICE, LANCS_POLICE, GMP = "pf-e23000032", "pf-e23000003", "pf-e23000005"
KENT_ICB, LANCS_ICB, MANCH_ICB = "icb-e54000032", "icb-e54000048", "icb-e54000057"
HOME, HOME2 = "cp-sc482913", "cp-sc517204"
GP, SCHOOL, IRO, RHI = "gp-a81001", "sch-118822", "iro-e10000016", "rhi-1122334"
SCHOOL2 = "sch-140101"

NET = network(
    KENT, LANCS, MEDWAY, MANCH, KENT_POLICE, LANCS_POLICE, GMP, KENT_ICB, LANCS_ICB, MANCH_ICB,
    HOME, HOME2, GP, SCHOOL, IRO, RHI, SCHOOL2, TRACKER,
)  # fmt: skip
RULES = Rules.load()
TOPICS = Topics("shapes")
LOGS = LogCodec(CATALOGUE)
CASE = case_id(KENT, "KCC-LAC-7001")
T0 = dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.UTC)


# --- a valid body of any type, with the fields routing reads set by the row -------------------


def _value(schema: Any, named: dict[str, Any]) -> Any:
    if isinstance(schema, list):
        return None if "null" in schema else _value(schema[0], named)
    if isinstance(schema, str):
        if schema in named:
            return _value(named[schema], named)
        return {"string": "x", "boolean": False, "bytes": b"x", "double": 0.0, "float": 0.0}.get(
            schema, 0
        )
    kind = schema.get("type")
    if "name" in schema and kind in ("record", "enum", "fixed"):
        named[f"{schema.get('namespace', 'cbx')}.{schema['name']}"] = schema
        named[schema["name"]] = schema
    logical = schema.get("logicalType")
    if logical == "uuid":
        return str(uuid.uuid4())
    if logical == "timestamp-millis":
        return T0
    if logical == "date":
        return T0.date()
    if kind == "record":
        return {
            f["name"]: f["default"] if "default" in f else _value(f["type"], named)
            for f in schema["fields"]
        }
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return []
    if kind == "map":
        return {}
    if kind == "fixed":
        return b"\0" * schema["size"]
    return _value(kind, named)


def body(event_type: str, **fields: Any) -> dict[str, Any]:
    return {**_value(CATALOGUE.latest(event_type).raw, {}), **fields}


# --- the harness --------------------------------------------------------------------------------


@dataclass
class Result:
    """Delivered to (agency -> roles), or refused (by the connector's choice or the router)."""

    told: dict[str, set[str]] = field(default_factory=dict)
    refused: str | None = None
    by: str | None = None
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def to(self) -> set[str]:
        assert self.refused is None, f"refused by the {self.by}: {self.refused}"
        return set(self.told)


class Exchange:
    """One router core with its own registry; a clock that moves an hour per message."""

    def __init__(self) -> None:
        sealer = Sealer(AgencyKeys.new(ROUTER), NET.directory, POLICY, FORMS)
        self.core = RouterCore(
            CATALOGUE, FORMS, RULES, NET.directory, sealer, RouterState(), TOPICS
        )
        self.offset = 0
        self.clock = T0
        self.last: list[Any] = []

    def send(
        self,
        sender: str,
        event_type: str,
        *,
        extra: list[Recipient] | None = None,
        role: Role | None = None,
        recipients: list[Recipient] | None = None,
        **fields: Any,
    ) -> Result:
        """As a connector: choose role and recipients (unless given: a forged or stale choice),
        seal, sign; then as the router."""
        self.clock += dt.timedelta(hours=1)
        b = body(event_type, **fields)
        if role is None or recipients is None:
            try:
                role, recipients = RULES.choose(
                    event_type, sender, self.core.state.case(CASE), b, self.clock, extra
                )
            except PolicyError as exc:
                return Result(refused=str(exc), by="connector")
        h = Header(
            message_id=uuid.uuid4(),
            event_type=event_type,
            sender=sender,
            sender_role=role,
            recipients=tuple(recipients),
            case_ref=CASE,
            urgency="URGENT",
            occurred_at=self.clock,
            recorded_at=self.clock,
            schema_fingerprint=CATALOGUE.latest(event_type).fingerprint,
            sharing=SHARING,
        )
        protector = NET.protector(sender)
        out = protector.seal(h, b)
        protector.sign([out])
        self.offset += 1
        rec = InRecord(TOPICS.outbound(sender), 0, self.offset, out.key, out.value, out.headers)
        outcome = self.core.process(rec)
        self.core.state.commit()
        self.last = outcome.outputs
        entries = [
            e
            for o in outcome.outputs
            if o.topic == TOPICS.delivery_log
            for e in LOGS.entries(o.value)
        ]
        if outcome.status == "rejected":
            return Result(refused=next(e.reason for e in entries), by="router")
        assert outcome.status == "routed"
        result = Result()
        for e in entries:
            if e.status == Status.ROUTED:
                result.told[e.recipient] = set((e.role or "").split("+"))
                if e.reason:
                    result.reasons[e.recipient] = e.reason
            assert e.status != Status.ROUTE_GAP, f"route gap: {e.recipient} {e.role}"
        return result

    # --- shapes ---------------------------------------------------------------------------------

    def placed(self, host: str, provider: str | None = HOME) -> Result:
        return self.send(KENT, "PlacementNotified", host_authority=host, provider=provider)

    def register(self, *parties: tuple[str, Role], removed: bool = False) -> Result:
        change = "REMOVED" if removed else "ADDED"
        changes = [{"change": change, "agency": a, "role": str(r)} for a, r in parties]
        return self.send(KENT, "CasePartiesChanged", changes=changes)


def refused(result: Result, by: str, *phrases: str) -> None:
    """``result`` was refused by ``by`` (connector or router) with every phrase in the reason."""
    assert result.by == by, result
    assert result.refused is not None
    for phrase in phrases:
        assert phrase in result.refused


def across(registered: bool = True) -> Exchange:
    """Kent places a child in a Lancashire home (another council, force and ICB); Kent has
    registered the child's GP, school, IRO service and return-interview provider."""
    ex = Exchange()
    assert ex.placed(LANCS).to
    if registered:
        ex.register((GP, Role.GP), (SCHOOL, Role.SCHOOL), (IRO, Role.IRO), (RHI, Role.RHI_PROVIDER))
    return ex


def in_area() -> Exchange:
    """Kent places a child in a Kent home: one council, one force, one ICB, each in two roles."""
    ex = Exchange()
    assert ex.placed(KENT).to
    return ex


def shared_icb() -> Exchange:
    """Kent places a child in Medway: another council, the same force and the same ICB."""
    ex = Exchange()
    assert ex.placed(MEDWAY).to
    return ex


# --- every message type, a placement across a force boundary ------------------------------------

HOST_PARTIES = {LANCS, LANCS_POLICE, KENT_POLICE, LANCS_ICB, KENT_ICB, HOME}

ACROSS: list[tuple[str, str, dict[str, Any], set[str]]] = [
    # (sender, type, fields, exactly these recipients)
    (KENT, "PlacementNotified", {"host_authority": LANCS, "provider": HOME},
     HOST_PARTIES | {IRO, SCHOOL, GP}),
    (KENT, "PlacementEnded", {}, HOST_PARTIES | {IRO, SCHOOL, GP}),
    (KENT, "CasePartiesChanged",
     {"changes": [{"change": "ADDED", "agency": SCHOOL2, "role": "SCHOOL"}]}, {SCHOOL2}),
    (HOME, "HomeAdmissionNotified", {}, {LANCS, KENT}),
    (HOME, "HomeDischargeNotified", {}, {LANCS, KENT}),
    (KENT, "MissingProfileLodged", {}, {LANCS_POLICE}),
    (LANCS_POLICE, "ChildMissingReported", {}, {KENT_POLICE, KENT, LANCS, HOME, RHI, IRO}),
    (HOME, "ChildMissingReported", {}, {LANCS_POLICE, KENT_POLICE, KENT, LANCS, RHI, IRO}),
    (LANCS_POLICE, "MissingRiskGraded", {}, {KENT_POLICE, KENT, LANCS, HOME}),
    (LANCS_POLICE, "ChildFound", {}, {KENT_POLICE, KENT, LANCS, HOME, RHI, IRO}),
    (KENT_POLICE, "ChildFound", {}, {LANCS_POLICE, KENT, LANCS, HOME, RHI, IRO}),
    (HOME, "ChildFound", {}, {LANCS_POLICE, KENT_POLICE, KENT, LANCS, RHI, IRO}),
    (RHI, "ReturnInterviewCompleted", {}, {KENT, LANCS_POLICE, KENT_POLICE, IRO}),
    (KENT, "CSERiskAssessed", {}, {LANCS, LANCS_POLICE, KENT_POLICE, IRO}),
    (RHI, "CSERiskAssessed", {}, {KENT, LANCS, LANCS_POLICE, KENT_POLICE, IRO}),
    (GMP, "CSERiskAssessed", {}, {KENT, LANCS, LANCS_POLICE, KENT_POLICE, IRO}),
    (KENT, "TriggerPlanIssued", {}, {LANCS_POLICE, KENT_POLICE, LANCS, HOME}),
    (KENT, "StrategyDiscussionHeld", {}, {LANCS, LANCS_POLICE, KENT_POLICE, IRO}),
    (TRACKER, "ObligationOverdue", {}, {KENT}),
    (LANCS_POLICE, "CAWNIssued", {}, {KENT, LANCS, KENT_POLICE, HOME}),
    (KENT, "HealthAssessmentRequested", {}, {LANCS_ICB, GP}),
    (KENT_ICB, "HealthRecordTransferRequested", {}, {LANCS_ICB, GP}),
    (GP, "HealthRecordTransferRequested", {}, {LANCS_ICB}),
]  # fmt: skip


def test_every_message_type_is_in_the_table() -> None:
    sent = {t for _, t, _, _ in ACROSS}
    assert sent == set(RULES.rules)


@pytest.mark.parametrize(
    ("sender", "event_type", "fields", "expected"),
    ACROSS,
    ids=[f"{t}-from-{s}" for s, t, _, _ in ACROSS],
)
def test_across_a_force_boundary(
    sender: str, event_type: str, fields: dict[str, Any], expected: set[str]
) -> None:
    assert across().send(sender, event_type, **fields).to == expected


REFUSED_ACROSS: list[tuple[str, str, dict[str, Any], str]] = [
    # (sender, type, fields, a phrase of the refusal)
    (LANCS_ICB, "ChildFound", {}, "has no role in case"),
    (HOME2, "ChildMissingReported", {}, "has no role in case"),
    (GMP, "MissingRiskGraded", {}, "has no role in case"),
    (LANCS, "PlacementNotified", {"host_authority": LANCS}, "own case id"),
    (LANCS, "CasePartiesChanged",
     {"changes": [{"change": "ADDED", "agency": SCHOOL2, "role": "SCHOOL"}]},
     "not the PLACING_AUTHORITY"),
    (KENT, "CasePartiesChanged",
     {"changes": [{"change": "ADDED", "agency": HOME2, "role": "GP"}]}, "cannot be the GP"),
    (KENT_ICB, "HealthRecordTransferRequested", {}, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sender", "event_type", "fields", "because"),
    REFUSED_ACROSS[:-1],
    ids=[f"{t}-from-{s}" for s, t, _, _ in REFUSED_ACROSS[:-1]],
)
def test_who_is_refused_across_a_force_boundary(
    sender: str, event_type: str, fields: dict[str, Any], because: str
) -> None:
    result = across().send(sender, event_type, **fields)
    assert result.refused is not None, result
    assert because in result.refused


# --- one agency in two roles ------------------------------------------------------------------


def test_in_area_each_agency_is_told_once_in_every_role_it_holds() -> None:
    ex = Exchange()
    placed = ex.placed(KENT)
    assert placed.told == {
        KENT_POLICE: {"HOST_FORCE", "HOME_FORCE"},
        KENT_ICB: {"HOST_ICB", "PLACING_ICB"},
        HOME: {"CARE_PROVIDER"},
    }
    missing = ex.send(KENT_POLICE, "ChildMissingReported")
    assert missing.told == {KENT: {"PLACING_AUTHORITY", "HOST_AUTHORITY"}, HOME: {"CARE_PROVIDER"}}


def test_in_area_a_message_that_would_reach_only_its_sender_is_refused() -> None:
    result = in_area().send(KENT_ICB, "HealthRecordTransferRequested")
    assert result.by == "connector"
    assert result.refused is not None
    assert "would reach no one" in result.refused
    assert f"the HOST_ICB of this case is {KENT_ICB} itself" in result.refused


def test_the_router_refuses_it_too_when_a_connector_sends_it_anyway() -> None:
    ex = in_area()
    result = ex.send(
        KENT_ICB, "HealthRecordTransferRequested", role=Role.PLACING_ICB, recipients=[]
    )
    assert result.by == "router"
    assert result.refused is not None
    assert "would reach no one" in result.refused


def test_sharing_one_icb_and_one_force() -> None:
    ex = shared_icb()
    missing = ex.send(HOME, "ChildMissingReported")
    assert missing.told == {
        KENT_POLICE: {"HOST_FORCE", "HOME_FORCE"},
        KENT: {"PLACING_AUTHORITY"},
        MEDWAY: {"HOST_AUTHORITY"},
    }
    assert ex.send(KENT, "HealthAssessmentRequested").told == {KENT_ICB: {"HOST_ICB"}}
    nowhere = ex.send(KENT_ICB, "HealthRecordTransferRequested")
    assert nowhere.refused is not None
    assert "would reach no one" in nowhere.refused


def test_an_agency_in_two_roles_opens_what_either_role_may_read() -> None:
    """In area, Kent is placing and host authority of the missing report: the circumstances
    (police intelligence) are for the placing authority by class and for the host authority by
    addition; Kent, told once, reads them."""
    ex = in_area()
    assert ex.send(KENT_POLICE, "ChildMissingReported", circumstances="left after a phone call").to
    delivered = next(o for o in ex.last if o.topic == TOPICS.inbox(KENT))
    header, opened = NET.protector(KENT).open(delivered.value, delivered.headers)
    assert {(r.agency, r.role) for r in header.recipients if r.agency == KENT} == {
        (KENT, Role.PLACING_AUTHORITY),
        (KENT, Role.HOST_AUTHORITY),
    }
    assert opened["circumstances"] == "left after a phone call"


# --- a third area -------------------------------------------------------------------------------


def test_a_find_in_a_third_force_area_tells_that_council_and_force_with_the_reason() -> None:
    ex = across(registered=False)
    assert ex.send(LANCS_POLICE, "ChildMissingReported").to
    found = ex.send(LANCS_POLICE, "ChildFound", found_in_council="E08000003")
    assert found.told == {
        MANCH: {"OTHER_AUTHORITY"},
        GMP: {"OTHER_FORCE"},
        KENT_POLICE: {"HOME_FORCE"},
        KENT: {"PLACING_AUTHORITY"},
        LANCS: {"HOST_AUTHORITY"},
        HOME: {"CARE_PROVIDER"},
    }
    assert "in the area of la-e08000003" in found.reasons[GMP]


def test_a_third_force_may_report_a_find_and_every_party_hears() -> None:
    ex = across(registered=False)
    assert ex.send(HOME, "ChildMissingReported").to
    found = ex.send(GMP, "ChildFound", found_in_council="E08000003")
    assert found.to == {MANCH, LANCS_POLICE, KENT_POLICE, KENT, LANCS, HOME}


def test_a_third_force_told_of_the_missing_report_hears_the_find() -> None:
    ex = across(registered=False)
    missing = ex.send(LANCS_POLICE, "ChildMissingReported", last_seen_council="E08000003")
    assert {MANCH, GMP} <= missing.to
    found = ex.send(LANCS_POLICE, "ChildFound")  # found at home: no area named
    assert found.to == {MANCH, GMP, KENT_POLICE, KENT, LANCS, HOME}


def test_a_party_named_as_the_area_is_not_told_twice() -> None:
    ex = across(registered=False)
    assert ex.send(HOME, "ChildMissingReported").to
    found = ex.send(KENT_POLICE, "ChildFound", found_in_council="E10000016")  # found in Kent
    assert found.told[KENT] == {"PLACING_AUTHORITY"}
    assert found.to == {LANCS_POLICE, KENT, LANCS, HOME}


def test_also_notify_in_a_role_the_rule_allows_and_a_kind_that_fits() -> None:
    ex = across(registered=False)
    why = "child believed to be travelling to Manchester"
    told = ex.send(
        LANCS_POLICE, "ChildMissingReported", extra=[Recipient(GMP, Role.OTHER_FORCE, why)]
    )
    assert told.told[GMP] == {"OTHER_FORCE"}
    assert told.reasons[GMP] == f"also notified: {why}"
    wrong_kind = ex.send(
        LANCS_POLICE, "ChildMissingReported", extra=[Recipient(MANCH, Role.OTHER_FORCE, why)]
    )
    assert wrong_kind.refused is not None
    assert "is a council" in wrong_kind.refused
    not_allowed = ex.send(
        LANCS_POLICE, "ChildMissingReported", extra=[Recipient(MANCH_ICB, Role.HOST_ICB, why)]
    )
    assert not_allowed.refused is not None
    assert "may not be sent to a HOST_ICB" in not_allowed.refused
    impostor = ex.send(
        LANCS_POLICE, "ChildMissingReported", extra=[Recipient(HOME2, Role.CARE_PROVIDER, why)]
    )
    assert impostor.refused is not None
    assert f"which in this case is {HOME}" in impostor.refused


def test_the_router_checks_the_kind_of_an_added_recipient() -> None:
    ex = across(registered=False)
    forged = [
        Recipient(KENT, Role.PLACING_AUTHORITY),
        Recipient(LANCS, Role.HOST_AUTHORITY),
        Recipient(KENT_POLICE, Role.HOME_FORCE),
        Recipient(HOME, Role.CARE_PROVIDER),
        Recipient(MANCH_ICB, Role.OTHER_FORCE),
    ]
    result = ex.send(LANCS_POLICE, "ChildMissingReported", role=Role.HOST_FORCE, recipients=forged)
    refused(result, "router", "which cannot be notified as OTHER_FORCE")


# --- a placement ended and a new one begun; an episode open across the move --------------------


def moved(open_episode: bool) -> Exchange:
    """Kent's child in a Lancashire home (RHI provider registered); optionally reported missing;
    the placement ends; the child is placed in a Manchester home."""
    ex = Exchange()
    assert ex.placed(LANCS).to
    assert ex.register((RHI, Role.RHI_PROVIDER)).to == {RHI}
    if open_episode:
        assert ex.send(HOME, "ChildMissingReported").to == {
            LANCS_POLICE, KENT_POLICE, KENT, LANCS, RHI,
        }  # fmt: skip
    ended = ex.send(KENT, "PlacementEnded")
    assert ended.to == HOST_PARTIES  # the end notice reaches the parties of the placement it ends
    new = ex.placed(MANCH, HOME2)
    assert new.to == {MANCH, GMP, KENT_POLICE, MANCH_ICB, KENT_ICB, HOME2}
    return ex


FORMER = {LANCS, LANCS_POLICE, LANCS_ICB, HOME}


@pytest.mark.parametrize(
    ("sender", "event_type"),
    [
        (KENT, "TriggerPlanIssued"),
        (KENT, "CSERiskAssessed"),
        (GMP, "ChildMissingReported"),
        (GMP, "CAWNIssued"),
        (KENT, "HealthAssessmentRequested"),
        (KENT, "PlacementEnded"),
    ],
)
def test_after_a_move_the_former_host_parties_receive_nothing(sender: str, event_type: str) -> None:
    told = moved(open_episode=False).send(sender, event_type).to
    assert told
    assert not told & FORMER


def test_a_former_provider_may_send_nothing_naming_the_ended_placement() -> None:
    ex = moved(open_episode=False)
    result = ex.send(HOME, "ChildMissingReported")
    assert result.by == "connector"
    assert result.refused is not None
    assert f"{HOME} was the CARE_PROVIDER of case {CASE} until 2026-06-01T12:00:00+00:00" in (
        result.refused
    )
    assert "placement ended" in result.refused


def test_the_router_refuses_a_former_provider_whose_connector_did_not_know() -> None:
    ex = moved(open_episode=False)
    stale = [
        Recipient(LANCS_POLICE, Role.HOST_FORCE),
        Recipient(KENT_POLICE, Role.HOME_FORCE),
        Recipient(KENT, Role.PLACING_AUTHORITY),
        Recipient(LANCS, Role.HOST_AUTHORITY),
    ]
    result = ex.send(HOME, "ChildMissingReported", role=Role.CARE_PROVIDER, recipients=stale)
    refused(result, "router", "was the CARE_PROVIDER", "placement ended")


def test_a_router_refuses_to_send_a_former_party_anything_new() -> None:
    ex = moved(open_episode=False)
    kent_recipients, _ = RULES.choose(
        "TriggerPlanIssued", KENT, ex.core.state.case(CASE), body("TriggerPlanIssued"),
        ex.clock + dt.timedelta(hours=1),
    )[1], None  # fmt: skip
    result = ex.send(
        KENT,
        "TriggerPlanIssued",
        role=Role.PLACING_AUTHORITY,
        recipients=[*kent_recipients, Recipient(LANCS_POLICE, Role.HOST_FORCE)],
    )
    assert result.refused is not None
    assert "is addressed as HOST_FORCE" in result.refused


def test_an_episode_open_across_the_move_reaches_everyone_who_heard_of_it() -> None:
    ex = moved(open_episode=True)
    graded = ex.send(GMP, "MissingRiskGraded")  # the new host force grades the open episode
    assert graded.to == {KENT_POLICE, KENT, MANCH, HOME2, LANCS_POLICE, LANCS, HOME, RHI}
    found = ex.send(KENT_POLICE, "ChildFound")
    assert found.to == {LANCS_POLICE, LANCS, HOME, KENT, RHI, MANCH, GMP, HOME2}
    # The episode is closed: the former host parties hear nothing of the next one.
    again = ex.send(GMP, "ChildMissingReported")
    assert again.to == {KENT_POLICE, KENT, MANCH, HOME2, RHI}


def test_the_former_host_force_may_report_the_find_of_the_episode_it_knew() -> None:
    ex = moved(open_episode=True)
    found = ex.send(LANCS_POLICE, "ChildFound")
    assert found.told[KENT_POLICE] == {"HOME_FORCE"}
    assert found.to == {LANCS, HOME, KENT, KENT_POLICE, RHI, MANCH, GMP, HOME2}


def test_a_message_about_the_time_before_the_move_reaches_the_parties_of_then() -> None:
    ex = moved(open_episode=False)
    late = ex.send(KENT, "CSERiskAssessed")
    assert LANCS not in late.to
    # Routed at its event time: an assessment made while the first placement was in force.
    ex.clock = T0 + dt.timedelta(minutes=90)  # the send adds an hour: before the end
    then = ex.send(KENT, "CSERiskAssessed")
    assert then.to == {LANCS, LANCS_POLICE, KENT_POLICE}


# --- parties the placing authority registers -----------------------------------------------------


def test_registered_parties_are_told_only_of_their_own_change_and_can_be_removed() -> None:
    ex = across(registered=False)
    added = ex.register((SCHOOL, Role.SCHOOL), (GP, Role.GP))
    assert added.told == {SCHOOL: {"SCHOOL"}, GP: {"GP"}}
    assert ex.send(KENT, "HealthAssessmentRequested").to == {LANCS_ICB, GP}
    removed = ex.register((GP, Role.GP), removed=True)
    assert removed.to == {GP}
    assert ex.send(KENT, "HealthAssessmentRequested").to == {LANCS_ICB}


def test_a_new_gp_replaces_the_old_one_in_the_role() -> None:
    ex = across(registered=False)
    assert ex.register((GP, Role.GP)).to == {GP}
    other = "gp-b82005"
    NET.keys[other] = AgencyKeys.new(other)
    NET.publish(other)
    assert ex.register((other, Role.GP)).to == {other}
    assert ex.send(KENT, "HealthAssessmentRequested").to == {LANCS_ICB, other}


def test_the_case_view_shows_parties_over_time() -> None:
    ex = moved(open_episode=False)
    case = ex.core.state.case(CASE)
    assert case is not None
    view = case.view(lambda a: a)
    by = {(p["agency"], p["role"]): p for p in [*view["parties"], *view["former_parties"]]}
    assert {p["agency"] for p in view["former_parties"]} == FORMER
    assert by[(LANCS, "HOST_AUTHORITY")]["until"] is not None
    assert "placement ended" in by[(LANCS, "HOST_AUTHORITY")]["ended_by"]
    assert by[(MANCH, "HOST_AUTHORITY")]["until"] is None
    assert by[(KENT, "PLACING_AUTHORITY")]["since"] is None  # from the case's beginning
    assert by[(RHI, "RHI_PROVIDER")]["until"] is None


# --- also_notify as a request carries it ----------------------------------------------------------


def _reader() -> Any:
    from broker.schema.json_to_avro import JsonToAvro
    from connectors.ingest.request import RequestReader

    converters = {n: JsonToAvro(CATALOGUE.latest(n).parsed) for n in CATALOGUE.event_types()}
    return RequestReader(CATALOGUE, converters)


def _request(also: Any) -> dict[str, Any]:
    from benchmarks.samples import PAYLOADS

    return {
        "case_ref": "KCC-LAC-7001",
        "sharing": {
            "purpose": "locate a missing child",
            "lawful_basis": ["UK_GDPR_6_1_E_PUBLIC_TASK"],
            "consent": "NOT_SOUGHT",
            "consent_not_sought_reason": "risk",
            "decision_maker_role": "Duty inspector",
        },
        "also_notify": also,
        "event": PAYLOADS["ChildMissingReported"],
    }


def test_a_request_names_further_recipients_with_their_reasons() -> None:
    why = "  believed to be travelling to Manchester "
    read = _reader().read(
        "ChildMissingReported",
        _request([{"agency": GMP, "role": "OTHER_FORCE", "reason": why}]),
    )
    assert read.also_notify == (Recipient(GMP, Role.OTHER_FORCE, why.strip()),)
    assert read.also_notify[0].reason == why.strip()


@pytest.mark.parametrize(
    ("also", "path", "problem"),
    [
        ([{"agency": GMP, "role": "OTHER_FORCE", "reason": "  "}], "also_notify[0].reason",
         "empty"),
        ([{"agency": GMP, "role": "OTHER_FORCE", "reason": "x" * 501}], "also_notify[0].reason",
         "too long"),
        ([{"agency": GMP, "role": "CHIEF_CONSTABLE", "reason": "r"}], "also_notify[0].role", ""),
        ([{"agency": GMP, "role": "OTHER_FORCE"}], "also_notify[0].reason", ""),
        ("everyone", "also_notify", ""),
    ],
)  # fmt: skip
def test_a_bad_further_recipient_names_the_field(also: Any, path: str, problem: str) -> None:
    errors = _reader().read("ChildMissingReported", _request(also))
    assert isinstance(errors, list)
    assert path in [e.path for e in errors]
    assert problem in next(e.problem for e in errors if e.path == path)
    assert "CHIEF_CONSTABLE" not in str([e.as_dict() for e in errors])  # values never echoed


def test_a_placement_dated_in_the_far_future_takes_effect_now() -> None:
    """An odd date cannot hold the old parties in force: the move counts from when it was routed."""
    ex = Exchange()
    ex.clock = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    assert ex.placed(LANCS).to
    ex.clock = dt.datetime(2099, 12, 31, 22, tzinfo=dt.UTC)  # the send adds an hour
    assert ex.placed(MANCH, HOME2).to == {MANCH, GMP, KENT_POLICE, MANCH_ICB, KENT_ICB, HOME2}
    ex.clock = dt.datetime.now(dt.UTC)
    report = ex.send(GMP, "ChildMissingReported")
    assert report.to == {KENT_POLICE, KENT, MANCH, HOME2}


def test_a_party_change_naming_a_kind_that_cannot_hold_the_role_is_refused_by_the_connector() -> (
    None
):
    ex = across(registered=False)
    bad = [{"change": "ADDED", "agency": "xx-999", "role": "GP"}]
    refused(ex.send(KENT, "CasePartiesChanged", changes=bad), "connector", "event.changes")
    provider = [{"change": "ADDED", "agency": HOME2, "role": "SCHOOL"}]
    refused(ex.send(KENT, "CasePartiesChanged", changes=provider), "connector", "cannot be")
    refused(ex.send(KENT, "CasePartiesChanged", changes=[]), "connector", "changes no party")
