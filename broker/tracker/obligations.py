"""Statutory clocks kept by the tracker, and the reminder it sends when one runs out unmet.

The clocks are folded from the delivery log alone: the router copies into each ACCEPTED entry the
clear body fields the obligations read (``facts``), so the tracker opens nothing and a restart
rebuilds every clock by reading the log again. An overdue clock becomes an ``ObligationOverdue``
message from the exchange itself (sender ``svc-tracker``, role EXCHANGE), signed with the
tracker's key and published on its own outbound topic: the router checks and routes it like any
other message, so the delivery log proves it reached, and was acknowledged by, the agency owing
the follow-up and the placing authority.

Its message id is derived from the clock's id, so the same clock can never be announced twice:
a notice already in the log is not sent again after a restart, and one sent twice (a restart
between the send and its ACCEPTED entry coming back) is the same message, which the router
routes once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from broker.crypto.sealing import Sealer
from broker.crypto.signing import Signer
from broker.delivery_log import LogEntry, Status
from broker.envelope import EnvelopeCodec, Header, system_sharing
from broker.logging import get_logger
from broker.model import OBLIGATION_OVERDUE, TRACKER, Recipient, Role
from broker.policy.obligations import Clock, Clocks, Obligation, Seen, from_text
from broker.policy.registry import PlacementRegistry, split_case_id
from broker.policy.routing import Rules
from broker.tracker.view import DeliveryView

log = get_logger("tracker")

#: Ids of ObligationOverdue messages: uuid5 of the clock id in this namespace.
_NAMESPACE = uuid.UUID("6f1c8f3e-2a55-4c0b-9d0e-7b1f4c2e9a11")


def notice_id(clock_id: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, clock_id)


class ObligationWatch:
    """Every statutory clock, from delivery-log entries; the notices of the overdue ones."""

    def __init__(
        self,
        rules: Rules,
        registry: PlacementRegistry,
        obligations: Iterable[Obligation] | None = None,
        view: DeliveryView | None = None,
    ) -> None:
        self.clocks = Clocks(obligations)
        self.rules = rules
        self.registry = registry
        #: Clock ids whose ObligationOverdue the router accepted (from the log).
        self.notified: set[str] = set()
        # Who was told each message, in which roles: the tracker's own view of the log, which it
        # folds itself; without one, the watch keeps its own.
        self._owns_view = view is None
        self.view = view if view is not None else DeliveryView()

    def apply(self, e: LogEntry) -> None:
        """Fold one delivery-log entry (any order a partition gives; repeats change nothing)."""
        if self._owns_view:
            self.view.apply(e)
        if (
            e.status != Status.ACCEPTED
            or e.message_id is None
            or e.case_ref is None
            or e.event_type is None
        ):
            return
        if e.event_type == OBLIGATION_OVERDUE:
            clock_id = (e.facts or {}).get("clock_id")
            if clock_id:
                self.notified.add(clock_id)
            return
        facts = {k: from_text(v) for k, v in (e.facts or {}).items()}
        self.clocks.observe(
            Seen(e.message_id, e.event_type, e.case_ref, e.occurred_at or e.at, e.at, facts)
        )

    def _routed(self, message_id: str) -> list[Recipient]:
        """The (agency, role) pairs a message was routed to, from the view."""
        m = self.view.messages.get(message_id)
        out = []
        for agency, state in (m.recipients if m else {}).items():
            for name in (state.role or "").split("+"):
                with contextlib.suppress(ValueError):
                    out.append(Recipient(agency, Role(name)))
        return out

    def overdue(self, now: dt.datetime) -> list[Clock]:
        """Clocks that ran out unmet and have no notice yet (each returned once)."""
        return [c for c in self.clocks.overdue(now) if c.id not in self.notified]

    def recipients(self, clock: Clock, at: dt.datetime) -> tuple[list[Recipient], str | None]:
        """The placing authority and the agency owing the follow-up (the first owing role that
        someone holds in the case at ``at``), and that agency."""
        case = self.registry.get(clock.case_ref)
        holders: dict[Role, str] = {}
        if case is not None:
            audience = self.rules.audience(self.rules.rule(OBLIGATION_OVERDUE), case, at)
            for m in audience.members:
                holders.setdefault(m.role, m.agency)
        else:  # not registered: who held which role in the message that started the clock
            for r in self._routed(clock.started_by):
                holders.setdefault(r.role, r.agency)
        placing = holders.get(Role.PLACING_AUTHORITY) or split_case_id(clock.case_ref)[0]
        if placing is not None:
            holders.setdefault(Role.PLACING_AUTHORITY, placing)
        owing = next(
            (
                Recipient(holders[r], r)
                for r in clock.obligation.owed_by
                if r in holders and r in self.rules.rule(OBLIGATION_OVERDUE).allowed
            ),
            None,
        )
        out: list[Recipient] = []
        if placing is not None:
            out.append(Recipient(placing, Role.PLACING_AUTHORITY))
        if owing is not None and owing.agency != placing:
            out.append(owing)
        return out, owing.agency if owing else None

    def compose(
        self,
        clock: Clock,
        now: dt.datetime,
        sealer: Sealer,
        signer: Signer,
        envelopes: EnvelopeCodec,
        fingerprint: bytes,
        on_exchange: Callable[[str], bool] = lambda _agency: True,
    ) -> tuple[bytes, list[tuple[str, bytes]], list[Recipient]] | None:
        """The signed ObligationOverdue for ``clock`` (value, headers, recipients), or None when
        nobody can be named (no placing authority: the case id is not a council's).

        ``on_exchange`` says whether an agency is in the directory: one that is not (revoked, or
        never set up) is left out, so the reminder still reaches the others rather than the
        router refusing it whole."""
        recipients, owing = self.recipients(clock, now)
        gone = [r.agency for r in recipients if not on_exchange(r.agency)]
        if gone:
            log.error("obligation_overdue_recipient_not_on_exchange", clock=clock.id, agencies=gone)
            recipients = [r for r in recipients if on_exchange(r.agency)]
            owing = owing if owing not in gone else None
        if not recipients:
            log.error("obligation_overdue_no_recipient", clock=clock.id)
            return None
        o = clock.obligation
        header = Header(
            message_id=notice_id(clock.id),
            event_type=OBLIGATION_OVERDUE,
            sender=TRACKER,
            sender_role=Role.EXCHANGE,
            recipients=tuple(recipients),
            case_ref=clock.case_ref,
            urgency="URGENT",
            occurred_at=clock.due_at,
            recorded_at=now,
            schema_fingerprint=fingerprint,
            sharing=system_sharing(
                "remind the agency owing a statutory follow-up, and the placing authority",
                "cbx tracker",
                "no personal data: the obligation, the case id and message ids only",
            ),
        )
        limit = clock.limit or o.within
        body: dict[str, Any] = {
            "clock_id": clock.id,
            "obligation": o.id,
            "title": o.title,
            "source": o.source,
            "started_by_message_id": clock.started_by,
            "started_by_type": clock.started_by_type,
            "started_at": clock.started_at,
            "due_at": clock.due_at,
            "limit": limit.text,
            "owed_by": [str(r) for r in o.owed_by],
            "owing_agency": owing,
            "met_by": list(o.met_by) or [o.starts_on],
        }
        sealed = sealer.seal(OBLIGATION_OVERDUE, header.message_id, body, [])
        value = envelopes.encode(header, sealed.body)
        headers = signer.sign_batch([value])[0]
        return value, headers, recipients
