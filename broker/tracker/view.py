"""What became of each message: delivery-log entries folded into states, with no Kafka in sight.

:class:`DeliveryView` is the tracker's memory (rebuilt from the delivery log at start) and each
connector's view of the messages its agency sent (from its status topic). Both fold entries the
same way: a recipient's state only moves forward (ROUTED, DELIVERED, ..., ACKNOWLEDGED), and an
entry read twice changes nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from broker.delivery_log import LogEntry, Status

_ORDER = [Status.ROUTED, Status.DELIVERED, Status.ACKNOWLEDGED]


@dataclass
class RecipientState:
    status: Status
    role: str | None = None
    at: dict[str, dt.datetime] = field(default_factory=dict)


@dataclass
class MessageState:
    """What is known of one message, from the delivery log."""

    message_id: str
    event_type: str | None = None
    sender: str | None = None
    case_ref: str | None = None
    urgency: str | None = None
    accepted_at: dt.datetime | None = None
    ack_deadline: dt.datetime | None = None
    recipients: dict[str, RecipientState] = field(default_factory=dict)
    escalated: set[str] = field(default_factory=set)
    rejected_reason: str | None = None


class DeliveryView:
    """The latest state of every message and recipient, folded from delivery-log entries."""

    def __init__(self) -> None:
        self.messages: dict[str, MessageState] = {}

    def apply_all(self, entries: list[LogEntry]) -> None:
        for e in entries:
            self.apply(e)

    def apply(self, e: LogEntry) -> None:
        if e.message_id is None:
            return
        m = self.messages.setdefault(e.message_id, MessageState(e.message_id))
        for attr in ("event_type", "sender", "case_ref", "urgency"):
            if getattr(m, attr) is None and getattr(e, attr) is not None:
                setattr(m, attr, getattr(e, attr))
        if e.status == Status.ACCEPTED:
            m.accepted_at = e.at
            m.ack_deadline = e.ack_deadline
        elif e.status == Status.REJECTED:
            m.rejected_reason = e.reason
        elif e.status == Status.REPLAYED:
            m.rejected_reason = None  # checked again from scratch: what follows decides
        elif e.recipient:
            r = m.recipients.get(e.recipient)
            if r is None:
                r = m.recipients[e.recipient] = RecipientState(e.status, e.role)
            r.at.setdefault(str(e.status), e.at)
            if e.role and not r.role:
                r.role = e.role
            if e.status == Status.ESCALATED:
                m.escalated.add(e.recipient)
            if _rank(e.status) >= _rank(r.status):
                r.status = e.status

    def overdue(self, now: dt.datetime) -> list[tuple[MessageState, str]]:
        """(message, recipient) pairs past their deadline, unacknowledged, not yet escalated."""
        out = []
        for m in self.messages.values():
            if m.ack_deadline is None or m.ack_deadline > now:
                continue
            for agency, r in m.recipients.items():
                if Status.ACKNOWLEDGED.value in r.at or agency in m.escalated:
                    continue
                if r.status in (
                    Status.ROUTED,
                    Status.DELIVERED,
                    Status.OVERDUE,
                    Status.RECIPIENT_REJECTED,
                    Status.ROUTE_GAP,
                ):
                    out.append((m, agency))
        return out

    def summary(self, message_id: str) -> dict[str, Any] | None:
        """A message's overall status and each recipient's state, as senders are told it."""
        m = self.messages.get(message_id)
        if m is None:
            return None
        recipients = [
            {
                "agency": agency,
                "role": r.role,
                "status": str(r.status),
                **{f"{k.lower()}_at": at.isoformat() for k, at in sorted(r.at.items())},
            }
            for agency, r in sorted(m.recipients.items())
        ]
        states = {str(r.status) for r in m.recipients.values()}
        if m.rejected_reason is not None:
            overall = "REJECTED"
        elif states & {"ESCALATED", "OVERDUE", "RECIPIENT_REJECTED", "ROUTE_GAP"}:
            overall = next(
                s
                for s in ("ESCALATED", "RECIPIENT_REJECTED", "OVERDUE", "ROUTE_GAP")
                if s in states
            )
        elif states and states <= {"ACKNOWLEDGED"}:
            overall = "ACKNOWLEDGED"
        elif states and states <= {"DELIVERED", "ACKNOWLEDGED"}:
            overall = "DELIVERED"
        elif states:
            overall = "ROUTED"
        else:
            overall = "ACCEPTED" if m.accepted_at else "PUBLISHED"
        return {
            "status": overall,
            "accepted_at": m.accepted_at.isoformat() if m.accepted_at else None,
            "ack_deadline": m.ack_deadline.isoformat() if m.ack_deadline else None,
            "rejected_reason": m.rejected_reason,
            "recipients": recipients,
        }


def _rank(s: Status) -> int:
    order = {
        Status.ROUTE_GAP: 0,
        Status.ROUTED: 1,
        Status.REPAIRED: 1,
        Status.DELIVERED: 2,
        Status.RECIPIENT_REJECTED: 3,
        Status.OVERDUE: 3,
        Status.ESCALATED: 4,
        Status.ACKNOWLEDGED: 5,
    }
    return order.get(s, 0)
