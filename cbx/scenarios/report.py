"""A played scenario's report: per message, who received it and when, what was refused, and
whether any sensitive value was found in clear. Built from what the runner saw and the delivery log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.delivery_log import LogEntry, Status
from broker.policy.deadlines import ack_windows
from cbx.scenarios.spec import Scenario, StepSpec


@dataclass
class Played:
    spec: StepSpec
    request: dict[str, Any]
    sent_at: float
    status_code: int
    answer: dict[str, Any]
    message_id: str | None = None
    recipients: list[tuple[str, str]] = field(default_factory=list)
    received: dict[str, float] = field(default_factory=dict)
    acknowledged: dict[str, float] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    escalated: set[str] = field(default_factory=set)


def _ms(at: float | None, since: float) -> float | None:
    return round((at - since) * 1000, 1) if at is not None else None


def build_report(
    scenario: Scenario,
    namespace: str,
    played: list[Played],
    entries: list[LogEntry],
    failures: list[str],
    *,
    searched: int,
    scanned: int,
    found: int,
    clocks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report of a played scenario (``failures`` gains what the log shows went wrong)."""
    by_id = {p.message_id: p for p in played if p.message_id}
    for e in entries:
        p = by_id.get(e.message_id or "")
        if p is None:
            continue
        if e.status == Status.ROUTE_GAP:
            p.gaps.append(e.recipient or "")
        elif e.status == Status.ESCALATED and e.recipient:
            p.escalated.add(e.recipient)
    windows = scenario.windows if scenario.windows is not None else ack_windows()
    messages = []
    for p in played:
        if p.message_id is None:
            continue
        window = windows.get(str(p.request.get("urgency", "ROUTINE")))
        window_ms = window.total_seconds() * 1000 if window is not None else None
        recipients = []
        roles: dict[str, list[str]] = {}
        for agency, role in p.recipients:  # an agency holding two roles is named once per role
            roles.setdefault(agency, []).append(role)
        expected_escalations = {scenario.agencies[a] for a in p.spec.escalated or ()}
        for agency, held in roles.items():
            role = "+".join(held)
            delivered = _ms(p.received.get(agency), p.sent_at)
            acked = _ms(p.acknowledged.get(agency), p.sent_at)
            status = (
                "ESCALATED"
                if agency in p.escalated
                else "ACKNOWLEDGED"
                if acked is not None
                else "DELIVERED"
                if delivered is not None
                else "NOT_REACHED"
            )
            late = agency not in expected_escalations and (
                agency in p.escalated
                or (window_ms is not None and acked is not None and acked > window_ms)
            )
            if late:
                limit = f" ({window_ms / 1000:.0f} s)" if window_ms is not None else ""
                failures.append(
                    f"{p.spec.id}: {agency} did not acknowledge {p.spec.event_type} within "
                    f"the {p.request.get('urgency')} deadline{limit}"
                )
            recipients.append(
                {
                    "agency": agency,
                    "role": role,
                    "status": status,
                    "delivered_ms": delivered,
                    "acknowledged_ms": acked,
                }
            )
        messages.append(
            {
                "step": p.spec.id,
                "title": p.spec.title,
                "message_id": p.message_id,
                "event_type": p.spec.event_type,
                "sender": scenario.agencies[p.spec.sender],
                "case_ref": p.request.get("case_ref"),
                "urgency": p.request.get("urgency", "ROUTINE"),
                "ack_deadline_ms": window_ms,
                "recipients": recipients,
                "route_gaps": p.gaps,
            }
        )
    rejections = [
        {
            "step": p.spec.id,
            "title": p.spec.title,
            "event_type": p.spec.event_type,
            "sender": scenario.agencies[p.spec.sender],
            "status_code": p.status_code,
            "expected": p.spec.outcome == "rejected",
            "errors": p.answer.get("errors") or [{"problem": p.answer.get("error")}],
        }
        for p in played
        if p.message_id is None
    ]
    if found:
        failures.append(f"{found} sensitive values found in clear on the topics")
    return {
        "scenario": scenario.name,
        "namespace": namespace,
        "case_refs": sorted({str(p.request.get("case_ref")) for p in played}),
        "messages": messages,
        "rejections": rejections,
        "sensitive_values_searched": searched,
        "records_scanned": scanned,
        "plaintext_found": found,
        "clocks": clocks or [],
        "failures": failures,
        "ok": not failures,
    }
