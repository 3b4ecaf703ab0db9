"""The placement registry: who is who in each child's case, rebuilt from ``cbx.placements``.

The router writes the registry (from the cleartext headers of placement messages); the router and
every connector follow it with :class:`PlacementFollower`, so both apply the same precedence rule.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from broker.kafka.follow import TopicFollower
from broker.kafka.settings import KafkaSettings
from broker.model import Role
from broker.schema import codec
from broker.schema.catalogue import Catalogue
from broker.schema.store import SchemaStore

CASE_SEPARATOR = "/"
_OWNER = re.compile(r"^[a-z]+-[a-z0-9]+$")


@dataclass
class Placement:
    """Who is who in one child's case (a cbx.placements entry)."""

    case_ref: str
    parties: dict[Role, str]
    active: bool = True
    source_message_id: uuid.UUID | None = None
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def to_record(self) -> dict[str, Any]:
        return {
            "case_ref": self.case_ref,
            "status": "ACTIVE" if self.active else "ENDED",
            "parties": [{"agency": a, "role": str(r)} for r, a in self.parties.items()],
            "source_message_id": str(self.source_message_id or uuid.UUID(int=0)),
            "updated_at": self.updated_at,
        }

    def view(self, name_of: Any) -> dict[str, Any]:
        """The case's parties, for a sender's system or an operator: metadata, no content."""
        since = self.updated_at.isoformat()
        return {
            "case_ref": self.case_ref,
            "status": "ACTIVE" if self.active else "ENDED",
            "parties": [
                {
                    "agency": agency,
                    "name": name_of(agency),
                    "role": str(role),
                    "since": since,
                    "until": None if self.active else since,
                }
                for role, agency in sorted(self.parties.items(), key=lambda x: str(x[0]))
            ],
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Placement:
        return cls(
            case_ref=r["case_ref"],
            parties={Role(p["role"]): p["agency"] for p in r["parties"]},
            active=r["status"] == "ACTIVE",
            source_message_id=uuid.UUID(str(r["source_message_id"])),
            updated_at=r["updated_at"],
        )


def case_id(placing_authority: str, reference: str) -> str:
    """A case's identity: its placing authority and the reference that authority gave it."""
    return f"{placing_authority}{CASE_SEPARATOR}{reference}"


def split_case_id(case_ref: str) -> tuple[str | None, str]:
    """(placing authority, reference) of a case id; (None, ref) for a bare reference."""
    owner, sep, reference = case_ref.partition(CASE_SEPARATOR)
    if sep and _OWNER.match(owner):
        return owner, reference
    return None, case_ref


class PlacementRegistry:
    """Case id to placement, in memory (``cbx.placements`` is its log).

    A case is identified by its placing authority and its reference (``la-e10000016/KCC-123``),
    so no council can take another's reference: the same reference registered by two councils is
    two cases. A bare reference finds the case when exactly one council uses it.
    """

    def __init__(self) -> None:
        self._cases: dict[str, Placement] = {}
        self._by_reference: dict[str, set[str]] = {}

    def get(self, case_ref: str) -> Placement | None:
        found = self._cases.get(case_ref)
        if found is not None:
            return found
        matches = self.find(case_ref)
        return matches[0] if len(matches) == 1 else None

    def find(self, reference: str) -> list[Placement]:
        """Every case registered under a bare ``reference``, whichever council placed it."""
        return [self._cases[i] for i in sorted(self._by_reference.get(reference, ()))]

    def put(self, placement: Placement) -> bool:
        """Keep ``placement`` unless the registry holds a newer record of the case.

        Newer by the record's own ``updated_at``, never by arrival: several routers write the
        registry, and a follower may read an older record after a newer one was applied locally.
        """
        old = self._cases.get(placement.case_ref)
        if old is not None and old.updated_at > placement.updated_at:
            return False
        self._cases[placement.case_ref] = placement
        _, reference = split_case_id(placement.case_ref)
        self._by_reference.setdefault(reference, set()).add(placement.case_ref)
        return True

    def __len__(self) -> int:
        return len(self._cases)


def placement_follower(
    settings: KafkaSettings,
    catalogue: Catalogue,
    registry: PlacementRegistry,
    topic: str | None = None,
) -> TopicFollower:
    """A follower of ``cbx.placements`` (or an agency's ``cbx.cases.<agency>``) that keeps
    ``registry`` current (newer record wins)."""
    version = catalogue.latest("PlacementRecord")
    store = SchemaStore(catalogue)

    def apply(r: Any) -> None:
        if r.value is not None:
            rec = codec.decode(r.value, store.writer_for, version.parsed)
            registry.put(Placement.from_record(rec))

    return TopicFollower(settings, topic or settings.topics.placements, apply)
