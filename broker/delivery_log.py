"""The delivery log (``cbx.delivery-log``): every state change of every message, metadata only."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from broker.schema import codec
from broker.schema.catalogue import Catalogue
from broker.schema.store import SchemaStore

SCHEMA = "DeliveryLogEntry"


class Status(StrEnum):
    """A state in a message's life (mirrors the Avro ``cbx.DeliveryStatus``)."""

    ACCEPTED = "ACCEPTED"
    """Well-formed, signed by its sender, within policy."""
    ROUTED = "ROUTED"
    """Written to the recipient's inbox."""
    ROUTE_GAP = "ROUTE_GAP"
    """Required by the rules, but the sender did not seal for this recipient."""
    REPAIRED = "REPAIRED"
    """A route gap closed by a re-send."""
    REJECTED = "REJECTED"
    """Refused by the router; in the dead-letter topic."""
    DELIVERED = "DELIVERED"
    """Handed to the recipient agency's system."""
    ACKNOWLEDGED = "ACKNOWLEDGED"
    """Confirmed by the recipient agency."""
    RECIPIENT_REJECTED = "RECIPIENT_REJECTED"
    """Refused by the recipient's connector or system."""
    OVERDUE = "OVERDUE"
    """The acknowledgement deadline passed."""
    ESCALATED = "ESCALATED"
    """An overdue urgent notification was escalated."""
    REPLAYED = "REPLAYED"
    """Replayed by an operator from the dead-letter topic."""


@dataclass(frozen=True)
class RoutedTo:
    """A recipient the router wrote a message to, carried on the message's ACCEPTED record."""

    recipient: str
    role: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class LogEntry:
    """One delivery-log record."""

    message_id: str | None
    status: Status
    at: dt.datetime
    event_type: str | None = None
    sender: str | None = None
    recipient: str | None = None
    role: str | None = None
    case_ref: str | None = None
    urgency: str | None = None
    occurred_at: dt.datetime | None = None
    ack_deadline: dt.datetime | None = None
    reason: str | None = None
    related_message_id: str | None = None
    source: str | None = None
    writer: str = "router"
    sharing: dict[str, Any] | None = None
    """The sharing decision (purpose, lawful_basis, consent, decision_maker_role), on ACCEPTED."""
    facts: dict[str, str] | None = None
    """Clear body fields statutory clocks read, as text, on ACCEPTED (obligations.yaml)."""
    routed: tuple[RoutedTo, ...] | None = None
    """On the router's ACCEPTED record: the recipients written to in the same transaction, each
    a ROUTED entry once read (:meth:`LogCodec.entries`). None on every entry a reader sees."""

    def to_record(self) -> dict[str, Any]:
        # A shallow copy (dataclasses.asdict deep-copies, and cost the router a fifth of its
        # time); only the routed list holds records.
        d = {f: getattr(self, f) for f in _FIELDS}
        d["status"] = str(self.status)
        if self.routed is not None:
            d["routed"] = [
                {"recipient": r.recipient, "role": r.role, "reason": r.reason} for r in self.routed
            ]
        return d

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> LogEntry:
        routed = r.get("routed")
        return cls(
            **{
                **r,
                "status": Status(r["status"]),
                "routed": None if routed is None else tuple(RoutedTo(**x) for x in routed),
            }
        )

    def expanded(self) -> list[LogEntry]:
        """This entry as the readers know it: an ACCEPTED record carrying its recipients is the
        ACCEPTED entry and one ROUTED entry for each, as they were once written one by one."""
        if self.routed is None:
            return [self]
        routed = [
            replace(
                self,
                status=Status.ROUTED,
                recipient=r.recipient,
                role=r.role,
                reason=r.reason,
                related_message_id=None,
                sharing=None,
                facts=None,
                routed=None,
            )
            for r in self.routed
        ]
        return [replace(self, routed=None), *routed]

    def as_json(self) -> dict[str, Any]:
        d = self.to_record()
        for k in ("at", "occurred_at", "ack_deadline"):
            if d[k] is not None:
                d[k] = d[k].isoformat()
        return d


class LogCodec:
    def __init__(self, catalogue: Catalogue) -> None:
        self._v = catalogue.latest(SCHEMA)
        self._store = SchemaStore(catalogue)

    def encode(self, entry: LogEntry) -> bytes:
        return codec.encode(self._v.parsed, self._v.fingerprint, entry.to_record())

    def entries(self, data: bytes) -> list[LogEntry]:
        """The entries one record holds: one, or an ACCEPTED and its ROUTED entries (a record
        the router writes for a routed message). Every reader reads through this."""
        return LogEntry.from_record(
            codec.decode(data, self._store.writer_for, self._v.parsed)
        ).expanded()


_FIELDS = tuple(f.name for f in fields(LogEntry))
