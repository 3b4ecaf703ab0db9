"""The placement registry: who is who in each child's case, rebuilt from ``cbx.placements``.

The router writes the registry (from the cleartext headers of placement messages); the router and
every connector follow it with :class:`PlacementFollower`, so both apply the same precedence rule.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from broker.kafka.follow import TopicFollower
from broker.kafka.settings import KafkaSettings
from broker.model import Role
from broker.schema import codec
from broker.schema.catalogue import Catalogue
from broker.schema.store import SchemaStore


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

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Placement:
        return cls(
            case_ref=r["case_ref"],
            parties={Role(p["role"]): p["agency"] for p in r["parties"]},
            active=r["status"] == "ACTIVE",
            source_message_id=uuid.UUID(str(r["source_message_id"])),
            updated_at=r["updated_at"],
        )


class PlacementRegistry:
    """Case reference to placement, in memory (``cbx.placements`` is its log)."""

    def __init__(self) -> None:
        self._cases: dict[str, Placement] = {}

    def get(self, case_ref: str) -> Placement | None:
        return self._cases.get(case_ref)

    def put(self, placement: Placement) -> bool:
        """Keep ``placement`` unless the registry holds a newer record of the case.

        Newer by the record's own ``updated_at``, never by arrival: several routers write the
        registry, and a follower may read an older record after a newer one was applied locally.
        """
        old = self._cases.get(placement.case_ref)
        if old is not None and old.updated_at > placement.updated_at:
            return False
        self._cases[placement.case_ref] = placement
        return True

    def __len__(self) -> int:
        return len(self._cases)


def placement_follower(
    settings: KafkaSettings, catalogue: Catalogue, registry: PlacementRegistry
) -> TopicFollower:
    """A follower of ``cbx.placements`` that keeps ``registry`` current (newer record wins)."""
    version = catalogue.latest("PlacementRecord")
    store = SchemaStore(catalogue)

    def apply(r: Any) -> None:
        if r.value is not None:
            rec = codec.decode(r.value, store.writer_for, version.parsed)
            registry.put(Placement.from_record(rec))

    return TopicFollower(settings, settings.topics.placements, apply)
