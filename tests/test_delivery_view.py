"""Delivery states folded from the delivery log, with no broker: every state and transition.

:class:`DeliveryView` is what the tracker escalates from and what a sender's ``GET
/v1/messages/{id}`` answers from; the tracker service around it is tested on the real broker in
``test_tracker.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from broker.delivery_log import LogEntry, Status
from broker.tracker.view import DeliveryView

T0 = dt.datetime(2026, 4, 11, 22, 0, tzinfo=dt.UTC)
MID = "6f1c5c2e-3b7a-4e0f-9a52-1d2c3b4a5f60"
A, B = "la-e10000016", "pf-e23000032"


def entry(status: Status, minutes: float = 0, **kw: Any) -> LogEntry:
    base: dict[str, Any] = {
        "message_id": MID,
        "status": status,
        "at": T0 + dt.timedelta(minutes=minutes),
        "event_type": "ChildMissingReported",
        "sender": "pf-e23000003",
        "urgency": "IMMEDIATE",
    }
    return LogEntry(**{**base, **kw})


def routed_view(deadline_min: float | None = 15) -> DeliveryView:
    v = DeliveryView()
    deadline = T0 + dt.timedelta(minutes=deadline_min) if deadline_min is not None else None
    v.apply(entry(Status.ACCEPTED, ack_deadline=deadline))
    v.apply(entry(Status.ROUTED, recipient=A, role="PLACING_AUTHORITY", ack_deadline=deadline))
    v.apply(entry(Status.ROUTED, recipient=B, role="HOME_FORCE", ack_deadline=deadline))
    return v


def status(v: DeliveryView) -> str:
    s = v.summary(MID)
    assert s is not None
    return str(s["status"])


def test_unknown_message_has_no_summary() -> None:
    assert DeliveryView().summary(MID) is None


def test_accepted_then_routed() -> None:
    v = DeliveryView()
    v.apply(entry(Status.ACCEPTED, ack_deadline=T0 + dt.timedelta(minutes=15)))
    assert status(v) == "ACCEPTED"
    assert v.messages[MID].ack_deadline == T0 + dt.timedelta(minutes=15)
    v.apply(entry(Status.ROUTED, 0.1, recipient=A, role="PLACING_AUTHORITY"))
    assert status(v) == "ROUTED"
    assert v.messages[MID].recipients[A].status == Status.ROUTED


def test_delivered_only_when_every_recipient_has_it() -> None:
    v = routed_view()
    v.apply(entry(Status.DELIVERED, 1, recipient=A))
    assert status(v) == "ROUTED"
    v.apply(entry(Status.DELIVERED, 1, recipient=B))
    assert status(v) == "DELIVERED"


def test_acknowledged_only_when_every_recipient_confirmed() -> None:
    v = routed_view()
    for r in (A, B):
        v.apply(entry(Status.DELIVERED, 1, recipient=r))
    v.apply(entry(Status.ACKNOWLEDGED, 2, recipient=A))
    assert status(v) == "DELIVERED"
    v.apply(entry(Status.ACKNOWLEDGED, 3, recipient=B))
    assert status(v) == "ACKNOWLEDGED"
    summary = v.summary(MID)
    assert summary is not None
    times = {r["agency"]: r for r in summary["recipients"]}
    assert times[A]["acknowledged_at"] == (T0 + dt.timedelta(minutes=2)).isoformat()


def test_states_never_move_backwards() -> None:
    v = routed_view()
    v.apply(entry(Status.ACKNOWLEDGED, 2, recipient=A))
    v.apply(entry(Status.DELIVERED, 1, recipient=A))  # a late receipt folds in, state stays
    assert v.messages[MID].recipients[A].status == Status.ACKNOWLEDGED
    assert set(v.messages[MID].recipients[A].at) == {"ROUTED", "ACKNOWLEDGED", "DELIVERED"}


def test_the_same_entry_twice_changes_nothing() -> None:
    v = routed_view()
    e = entry(Status.DELIVERED, 1, recipient=A)
    v.apply(e)
    before = repr(v.messages[MID])
    v.apply(e)
    assert repr(v.messages[MID]) == before


def test_rejected_by_the_router() -> None:
    v = DeliveryView()
    v.apply(entry(Status.REJECTED, reason="bad-signature: ..."))
    assert status(v) == "REJECTED"
    summary = v.summary(MID)
    assert summary is not None
    assert summary["rejected_reason"] == "bad-signature: ..."


def test_rejected_by_a_recipient() -> None:
    v = routed_view()
    v.apply(entry(Status.RECIPIENT_REJECTED, 1, recipient=A, reason="undecodable: ..."))
    assert status(v) == "RECIPIENT_REJECTED"


def test_route_gap_then_repaired() -> None:
    v = routed_view()
    v.apply(entry(Status.ROUTE_GAP, 0.1, recipient="la-e10000017", role="HOST_AUTHORITY"))
    assert status(v) == "ROUTE_GAP"
    v.apply(entry(Status.REPAIRED, 0.5, recipient="la-e10000017", role="HOST_AUTHORITY"))
    assert v.messages[MID].recipients["la-e10000017"].status == Status.REPAIRED
    assert status(v) == "ROUTED"


@pytest.mark.parametrize("late", [Status.OVERDUE, Status.ESCALATED])
def test_overdue_and_escalated_outrank_delivery(late: Status) -> None:
    v = routed_view()
    for r in (A, B):
        v.apply(entry(Status.DELIVERED, 1, recipient=r))
    v.apply(entry(late, 16, recipient=B))
    assert status(v) == str(late)
    if late == Status.ESCALATED:
        assert v.messages[MID].escalated == {B}


def test_overdue_lists_each_unacknowledged_recipient_once() -> None:
    v = routed_view(deadline_min=15)
    v.apply(entry(Status.DELIVERED, 1, recipient=A))
    v.apply(entry(Status.ACKNOWLEDGED, 2, recipient=A))
    assert v.overdue(T0 + dt.timedelta(minutes=14)) == []
    due = v.overdue(T0 + dt.timedelta(minutes=16))
    assert [(m.message_id, agency) for m, agency in due] == [(MID, B)]
    v.apply(entry(Status.ESCALATED, 16, recipient=B))
    assert v.overdue(T0 + dt.timedelta(minutes=17)) == []


def test_routine_messages_have_no_deadline_and_are_never_overdue() -> None:
    v = routed_view(deadline_min=None)
    assert v.overdue(T0 + dt.timedelta(days=365)) == []


def test_a_recipient_that_rejected_is_still_escalated_when_the_deadline_passes() -> None:
    v = routed_view()
    v.apply(entry(Status.RECIPIENT_REJECTED, 1, recipient=B, reason="sink-refused: HTTP 400"))
    assert [a for _, a in v.overdue(T0 + dt.timedelta(minutes=16))] == [A, B]


def test_entries_without_a_message_id_are_ignored() -> None:
    v = DeliveryView()
    v.apply(entry(Status.REJECTED, message_id=None, reason="malformed"))
    assert v.messages == {}


def test_a_replayed_message_is_judged_again_by_what_follows() -> None:
    v = DeliveryView()
    v.apply(entry(Status.REJECTED, reason="bad-signature: unknown key"))
    assert status(v) == "REJECTED"
    v.apply(entry(Status.REPLAYED, 60))
    assert status(v) == "PUBLISHED"
    v.apply(entry(Status.ACCEPTED, 60.1))
    v.apply(entry(Status.ROUTED, 60.1, recipient=A, role="PLACING_AUTHORITY"))
    assert status(v) == "ROUTED"
