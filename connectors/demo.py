"""The demonstration: one child's case played through the whole exchange, on a real broker.

Kent County Council places a child in Lancashire, another police force area. Six agencies run
their connectors as their own Kafka principals; the router runs as its own. The case goes through
placement, a Philomena profile, a missing report graded high and regraded, the child found, a return
interview, a CSE risk assessment and a trigger plan. Every agency's connector opens what reaches
it; at the end every topic's raw bytes are searched for the case's sensitive values.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker import kafka, principals, provision
from broker.crypto.keys import AgencyKeys
from broker.delivery_log import LogCodec, Status
from broker.envelope import SharingDecision
from broker.router_service import RouterService
from broker.settings import KafkaSettings
from broker.tracker import TrackerService
from connectors.runtime import Connector, Delivered

KENT, LANCS = "la-e10000016", "la-e10000017"
KENT_POLICE, LANCS_POLICE = "pf-e23000032", "pf-e23000003"
KENT_ICB, LANCS_ICB = "icb-e54000032", "icb-e54000048"
AGENCIES = [KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB]

SAFEGUARDING = SharingDecision(
    purpose="safeguard a looked-after child placed out of area",
    lawful_basis=("UK_GDPR_6_1_E_PUBLIC_TASK", "DPA_2018_SCH1_PARA18_SAFEGUARDING_CHILDREN"),
    consent="NOT_SOUGHT",
    consent_not_sought_reason="risk of significant harm; seeking consent would increase it",
    decision_maker_role="Team manager, children in care",
)
POLICING = SharingDecision(
    purpose="locate a missing looked-after child",
    lawful_basis=("DPA_2018_SCH8_PARA4_SAFEGUARDING", "UK_GDPR_6_1_E_PUBLIC_TASK"),
    consent="NOT_SOUGHT",
    consent_not_sought_reason="child missing at risk",
    decision_maker_role="Duty inspector",
)
EPISODE = str(uuid.uuid4())


@dataclass(frozen=True)
class Step:
    title: str
    sender: str
    event_type: str
    payload: dict[str, Any]
    urgency: str = "ROUTINE"
    sharing: SharingDecision = SAFEGUARDING


def steps() -> list[Step]:
    """The case, as each agency's system would post it (agency JSON)."""
    return [
        Step(
            "Kent places the child in a Lancashire children's home",
            KENT,
            "PlacementNotified",
            {
                "placement_id": str(uuid.uuid4()),
                "legal_status": "C2",
                "placement_type": "CHILDRENS_HOME",
                "start_date": "2026-03-02",
                "host_authority": LANCS,
                "distant_placement": True,
                "approved_by_role": "Director of Children's Services",
                "host_consulted": True,
                "identity": {
                    "given_names": "Jordan Alex",
                    "family_name": "Whitcombe",
                    "date_of_birth": "2011-07-19",
                    "nhs_number": "9434765919",
                },
                "address": {
                    "lines": ["Larch House", "14 Orchard Rise"],
                    "town": "Chorley",
                    "postcode": "PR7 3QX",
                },
                "risk_summary": {
                    "previous_missing_episodes": 4,
                    "cse_risk_level": "MEDIUM",
                    "known_risks": ["goes missing after family contact"],
                },
                "care_plan_summary": "Weekly contact with grandmother; Brookfield Academy",
            },
        ),
        Step(
            "Kent lodges the Philomena profile with Lancashire Constabulary",
            KENT,
            "MissingProfileLodged",
            {
                "profile_id": str(uuid.uuid4()),
                "lodged_date": "2026-03-02",
                "review_date": "2026-06-02",
                "previous_episode_count": 4,
                "identity": {
                    "given_names": "Jordan Alex",
                    "family_name": "Whitcombe",
                    "date_of_birth": "2011-07-19",
                },
                "description": {
                    "height_cm": 152,
                    "build": "slim",
                    "hair": "short, dyed red",
                    "distinguishing_features": "scar above left eyebrow",
                },
                "associates": [
                    {
                        "name": "Dean Harrow",
                        "relationship": "older male, 'uncle'",
                        "phone": "07700 900461",
                    }
                ],
                "places": [{"description": "Preston bus station", "postcode": "PR1 1YT"}],
                "phones": ["07700 900982"],
                "medical_needs": "Asthma: carries a blue reliever inhaler",
            },
        ),
        Step(
            "Lancashire Constabulary: the child is missing",
            LANCS_POLICE,
            "ChildMissingReported",
            {
                "episode_id": EPISODE,
                "status": "MISSING",
                "reported_at": "2026-04-11T22:40:00+01:00",
                "police_reference": "LC-20260411-1187",
                "cse_flag": True,
                "last_seen": {
                    "seen_at": "2026-04-11T20:15:00+01:00",
                    "place": "Chorley Interchange, stand 4",
                    "with_whom": "two older males in a grey hatchback",
                },
                "clothing": "grey hoodie, black joggers, white trainers",
                "circumstances": "left after a phone call from a withheld number",
            },
            urgency="IMMEDIATE",
            sharing=POLICING,
        ),
        Step(
            "Lancashire Constabulary grades the risk HIGH",
            LANCS_POLICE,
            "MissingRiskGraded",
            {
                "episode_id": EPISODE,
                "grade": "HIGH",
                "legacy_grade": "HIGH",
                "graded_at": "2026-04-11T23:05:00+01:00",
                "reviewing_officer_role": "Duty inspector",
                "next_review_at": "2026-04-12T01:05:00+01:00",
                "rationale": "CSE marker; older associates; vehicle seen; no phone contact",
            },
            urgency="IMMEDIATE",
            sharing=POLICING,
        ),
        Step(
            "...and regrades it MEDIUM after a sighting",
            LANCS_POLICE,
            "MissingRiskGraded",
            {
                "episode_id": EPISODE,
                "grade": "MEDIUM",
                "legacy_grade": "MEDIUM",
                "graded_at": "2026-04-12T01:10:00+01:00",
                "regrade": True,
                "reviewing_officer_role": "Duty inspector",
                "rationale": "seen with a school friend, phone back on",
            },
            urgency="URGENT",
            sharing=POLICING,
        ),
        Step(
            "Lancashire Constabulary: the child is found",
            LANCS_POLICE,
            "ChildFound",
            {
                "episode_id": EPISODE,
                "found_at": "2026-04-12T09:30:00+01:00",
                "returned_to_placement": True,
                "location": "friend's flat, Leyland",
                "prevention_interview": "says met 'Dean' in Preston; no injuries",
            },
            urgency="URGENT",
            sharing=POLICING,
        ),
        Step(
            "Lancashire County Council: return home interview",
            LANCS,
            "ReturnInterviewCompleted",
            {
                "episode_id": EPISODE,
                "outcome": "ACCEPTED",
                "offered_at": "2026-04-12T14:00:00+01:00",
                "interview_date": "2026-04-13",
                "within_72_hours": True,
                "conducted_by_role": "Independent RHI worker",
                "disclosures": "was given cannabis and a phone by an older male",
                "associates": [{"name": "Dean Harrow", "relationship": "older male"}],
            },
        ),
        Step(
            "Kent assesses the CSE risk",
            KENT,
            "CSERiskAssessed",
            {
                "assessment_id": str(uuid.uuid4()),
                "tool": "CSE screening tool v3",
                "level": "HIGH",
                "category": "CATEGORY_2_OPPORTUNISTIC",
                "assessed_date": "2026-04-14",
                "review_date": "2026-07-14",
                "indicators": ["gifts from older males", "going missing", "new phone"],
            },
        ),
        Step(
            "Kent issues the trigger plan",
            KENT,
            "TriggerPlanIssued",
            {
                "plan_id": str(uuid.uuid4()),
                "version": 1,
                "issued_date": "2026-04-15",
                "review_date": "2026-05-15",
                "reporting": {"report_after_minutes": 30, "reported_by": "CARE_PROVIDER"},
                "actions": ["call the child's phone", "check Preston bus station"],
                "places": [{"description": "Preston bus station", "postcode": "PR1 1YT"}],
                "associates": [{"name": "Dean Harrow", "relationship": "older male"}],
                "vehicles": [{"registration": "PX19 KDF", "description": "grey Vauxhall Astra"}],
            },
        ),
    ]


SENSITIVE_FIELDS = {
    "identity",
    "address",
    "risk_summary",
    "care_plan_summary",
    "description",
    "associates",
    "places",
    "phones",
    "medical_needs",
    "last_seen",
    "clothing",
    "circumstances",
    "rationale",
    "location",
    "prevention_interview",
    "disclosures",
    "indicators",
    "actions",
    "vehicles",
}


def sensitive_values(all_steps: list[Step]) -> set[str]:
    """Every string inside a sealed field of the case (what must never travel in clear)."""
    out: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, str) and len(v) >= 6:
            out.add(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for s in all_steps:
        for k, v in s.payload.items():
            if k in SENSITIVE_FIELDS:
                walk(v)
    return out


@dataclass
class Received:
    agency: str
    at: float


@dataclass
class Tracked:
    step: Step
    message_id: str
    sent_at: float
    recipients: list[tuple[str, str]]
    received: dict[str, float] = field(default_factory=dict)
    acknowledged: dict[str, float] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)


async def plaintext_scan(settings: KafkaSettings, values: set[str]) -> tuple[int, int]:
    """(matches, records scanned) of ``values`` in the raw bytes of every topic in the namespace."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix + ".")]
    finally:
        await admin.close()
    needles = [v.encode() for v in values]
    found = 0
    scanned = 0

    def check(r: Any) -> None:
        nonlocal found, scanned
        scanned += 1
        blob = (r.key or b"") + (r.value or b"") + b"".join(v for _, v in r.headers)
        found += sum(1 for n in needles if n in blob)

    for name in names:
        await kafka.read_to_end(settings, name, check)
    return found, scanned


async def run(
    admin: KafkaSettings, progress: Callable[[str], None] = lambda _s: None
) -> dict[str, Any]:
    """Play the case; return the demo report (same shape as ``cbx demo --json``)."""
    ns = admin.with_prefix(f"demo{uuid.uuid4().hex[:6]}")
    progress(f"setting up namespace {ns.topic_prefix}: topics, principals, ACLs")
    await provision.setup(ns)
    tracked: dict[str, Tracked] = {}

    def sink_for(agency: str) -> Any:
        async def sink(d: Delivered) -> None:
            t = tracked.get(str(d.header.message_id))
            if t is not None:
                t.received[agency] = time.perf_counter()
                # The agency's system confirms at once (in life, a person reads it first).
                acks.append((agency, d.header.message_id))

        return sink

    acks: list[tuple[str, Any]] = []

    async def acknowledger() -> None:
        while True:
            while acks:
                agency, message_id = acks.pop(0)
                await connectors[agency].acknowledge(message_id)
                t = tracked.get(str(message_id))
                if t is not None:
                    t.acknowledged[agency] = time.perf_counter()
            await asyncio.sleep(0.01)

    connectors: dict[str, Connector] = {}
    for agency in AGENCIES:
        await provision.add_agency(ns, agency)
        keys = AgencyKeys.new(agency)
        await provision.publish_agency_keys(ns, keys)
        conn = Connector(principals.settings_for(ns, agency), keys)
        connectors[agency] = conn
    for conn in connectors.values():
        await conn.start()
        conn.start_inbox(sink_for(conn.agency))
    progress(f"{len(connectors)} agencies connected, each as its own Kafka principal")

    router = RouterService(principals.settings_for(ns, principals.ROUTER))
    router_task = asyncio.create_task(router.run())
    tracker = TrackerService(principals.settings_for(ns, principals.TRACKER))
    tracker_task = asyncio.create_task(tracker.run())
    ack_task = asyncio.create_task(acknowledger())
    case_ref = f"KCC-LAC-{uuid.uuid4().hex[:6].upper()}"
    all_steps = steps()
    try:
        for step in all_steps:
            conn = connectors[step.sender]
            await conn.sync()
            if step.event_type != "PlacementNotified":
                await _wait(_registered(conn, case_ref), 30)
            body = conn.convert(step.event_type, step.payload)
            sent_at = time.perf_counter()
            out = await conn.send(
                step.event_type,
                body,
                case_ref=case_ref,
                sharing=step.sharing,
                urgency=step.urgency,
            )
            t = Tracked(
                step,
                str(out.header.message_id),
                sent_at,
                [(r.agency, str(r.role)) for r in out.header.recipients],
            )
            tracked[t.message_id] = t
            await _wait(_all_acknowledged(t), 60)
            progress(
                f"{step.title}: delivered to and acknowledged by "
                f"{len(t.acknowledged)}/{len(t.recipients)}"
            )
    finally:
        ack_task.cancel()
        router.stop_event.set()
        await router_task
        for conn in connectors.values():
            await conn.stop()

    # The tracker has written the acknowledgements to the delivery log when it has caught up.
    await _wait_async(lambda: _log_has_acks(ns, router.catalogue, tracked), 30)
    tracker.stop_event.set()
    await tracker_task
    log = LogCodec(router.catalogue)
    entries: list[Any] = []
    await kafka.read_to_end(
        ns, ns.topics.delivery_log, lambda r: entries.append(log.decode(r.value))
    )
    for e in entries:
        if e.status == Status.ROUTE_GAP and e.message_id in tracked:
            tracked[e.message_id].gaps.append(e.recipient or "")
    progress("searching the raw bytes of every topic for the case's sensitive values")
    found, scanned = await plaintext_scan(ns, sensitive_values(all_steps))
    return {
        "namespace": ns.topic_prefix,
        "case_ref": case_ref,
        "messages": [
            {
                "message_id": t.message_id,
                "event_type": t.step.event_type,
                "sender": t.step.sender,
                "recipients": [
                    {
                        "agency": agency,
                        "role": role,
                        "status": "ACKNOWLEDGED"
                        if agency in t.acknowledged
                        else ("DELIVERED" if agency in t.received else "ROUTED"),
                        "delivered_ms": round((t.received[agency] - t.sent_at) * 1000, 1)
                        if agency in t.received
                        else None,
                        "acknowledged_ms": round((t.acknowledged[agency] - t.sent_at) * 1000, 1)
                        if agency in t.acknowledged
                        else None,
                    }
                    for agency, role in t.recipients
                ],
                "route_gaps": t.gaps,
            }
            for t in tracked.values()
        ],
        "records_scanned": scanned,
        "plaintext_found": found,
    }


def _registered(conn: Connector, case_ref: str) -> Callable[[], bool]:
    return lambda: conn.registry.get(case_ref) is not None


def _all_acknowledged(t: Tracked) -> Callable[[], bool]:
    return lambda: len(t.acknowledged) >= len(t.recipients)


async def _log_has_acks(ns: KafkaSettings, catalogue: Any, tracked: dict[str, Tracked]) -> bool:
    log = LogCodec(catalogue)
    acked: set[tuple[str | None, str | None]] = set()

    def take(r: Any) -> None:
        e = log.decode(r.value)
        if e.status == Status.ACKNOWLEDGED:
            acked.add((e.message_id, e.recipient))

    await kafka.read_to_end(ns, ns.topics.delivery_log, take)
    wanted = {(t.message_id, a) for t in tracked.values() for a, _ in t.recipients}
    return wanted <= acked


async def _wait_async(predicate: Callable[[], Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the tracker did not record every acknowledgement in time")
        await asyncio.sleep(0.3)


async def _wait(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo step did not complete in time")
        await asyncio.sleep(0.05)
