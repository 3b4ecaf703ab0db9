"""The case registry: who is who in each child's case, and since when (``cbx.placements``).

The router writes it (from the cleartext headers of placement messages, the clear party fields of
``CasePartiesChanged`` and the missing episodes it routes); the router and every connector follow it
with :func:`placement_follower`, so both apply the same precedence rule and the same lifecycle.

A case's parties are *spans*: one agency in one role from ``since`` until ``until``. The first
placement's spans run from the case's beginning; a later placement supersedes the earlier one's host
parties at its event time; ``PlacementEnded`` ends the host parties (host council, force and ICB,
care provider) and keeps the placing side and the parties the placing authority registered. Routing
asks for the parties in force at a message's event time (:meth:`Placement.parties_at`).

An open missing episode remembers everyone who heard of it, so the find reaches them all even when
the placement ended in between (:class:`Episode`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from broker.kafka.follow import PROMPT_FETCH_WAIT_MS, TopicFollower
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger
from broker.model import Recipient, Role
from broker.schema import codec
from broker.schema.catalogue import Catalogue
from broker.schema.store import SchemaStore

CASE_SEPARATOR = "/"
_OWNER = re.compile(r"^[a-z]+-[a-z0-9]+$")
log = get_logger("registry")

#: The host side of a placement: these parties end with it.
HOST_ROLES = frozenset({Role.HOST_AUTHORITY, Role.HOST_FORCE, Role.HOST_ICB, Role.CARE_PROVIDER})
#: Roles a placement message sets (the placing authority registers the others one by one).
PLACEMENT_ROLES = HOST_ROLES | {Role.PLACING_AUTHORITY, Role.HOME_FORCE, Role.PLACING_ICB}


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _uuid(value: Any) -> uuid.UUID:
    """A UUID as the decoder gives it (fastavro makes one of a uuid logical type) or as text."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@dataclass(frozen=True)
class Party:
    """One agency in one role in a case, for a period (``since`` None: from the beginning)."""

    agency: str
    role: Role
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    source_message_id: uuid.UUID | None = None
    ended_by: str | None = None

    def in_force(self, at: dt.datetime) -> bool:
        return (self.since is None or self.since <= at) and (self.until is None or at < self.until)

    @property
    def current(self) -> bool:
        return self.until is None

    def to_record(self) -> dict[str, Any]:
        return {
            "agency": self.agency,
            "role": str(self.role),
            "since": self.since,
            "until": self.until,
            "source_message_id": str(self.source_message_id) if self.source_message_id else None,
            "ended_by": self.ended_by,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Party:
        source = r.get("source_message_id")
        return cls(
            agency=r["agency"],
            role=Role(r["role"]),
            since=_utc(r.get("since")),
            until=_utc(r.get("until")),
            source_message_id=_uuid(source) if source else None,
            ended_by=r.get("ended_by"),
        )


@dataclass(frozen=True)
class Episode:
    """An open missing episode: when it began and who heard of it (with the role they heard in)."""

    message_id: uuid.UUID
    began_at: dt.datetime
    heard: tuple[Recipient, ...]

    def to_record(self) -> dict[str, Any]:
        return {
            "message_id": str(self.message_id),
            "began_at": self.began_at,
            "heard": [{"agency": r.agency, "role": str(r.role)} for r in self.heard],
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Episode:
        return cls(
            message_id=uuid.UUID(str(r["message_id"])),
            began_at=_utc(r["began_at"]) or dt.datetime.now(dt.UTC),
            heard=tuple(Recipient(h["agency"], Role(h["role"])) for h in r["heard"]),
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Placement:
    """One child's case: its parties over time, whether a placement is in force, its open episode.

    (The name is the registry record's; a case outlives its placements.)
    """

    case_ref: str
    spans: list[Party]
    active: bool = True
    source_message_id: uuid.UUID | None = None
    updated_at: dt.datetime = field(default_factory=_now)
    episode: Episode | None = None

    @classmethod
    def new(
        cls, case_ref: str, parties: dict[Role, str], source: uuid.UUID | None = None
    ) -> Placement:
        """A case's first placement: its parties in force from the case's beginning."""
        spans = [Party(a, r, None, None, source) for r, a in parties.items()]
        return cls(case_ref, spans, True, source)

    # --- who, when ------------------------------------------------------------------------------

    @property
    def parties(self) -> dict[Role, str]:
        """The parties in force now (one agency per role)."""
        return {p.role: p.agency for p in self.spans if p.current}

    def parties_at(self, at: dt.datetime) -> list[Recipient]:
        """Every (agency, role) in force at ``at``."""
        return [Recipient(p.agency, p.role) for p in self.spans if p.in_force(at)]

    def former(self, agency: str, role: Role, at: dt.datetime) -> Party | None:
        """The span in which ``agency`` last held ``role``, if it had ended by ``at``."""
        ended = [
            p
            for p in self.spans
            if p.agency == agency and p.role == role and p.until is not None and p.until <= at
        ]
        return max(ended, key=lambda p: p.until or at) if ended else None

    def everyone(self) -> set[str]:
        """Every agency that has been a party to the case, or heard of its open episode: the
        holders of a copy in their own view."""
        return self._with_episode({p.agency for p in self.spans})

    def agencies(self) -> set[str]:
        """Agencies that are parties now, or heard of the open episode."""
        return self._with_episode({p.agency for p in self.spans if p.current})

    def _with_episode(self, agencies: set[str]) -> set[str]:
        if self.episode is not None:
            agencies |= {r.agency for r in self.episode.heard}
        return agencies

    # --- lifecycle (each returns a new case; the registry's copy is never changed in place) -----

    def _changed(self, source: uuid.UUID, **kw: Any) -> Placement:
        return replace(self, source_message_id=source, updated_at=_now(), **kw)

    def superseded(self, parties: dict[Role, str], at: dt.datetime, source: uuid.UUID) -> Placement:
        """A new placement for the case from ``at``: parties that change are ended, others kept."""
        at = max([at, *(p.since for p in self.spans if p.since is not None)])
        wanted = {(a, r) for r, a in parties.items()}
        spans: list[Party] = []
        kept: set[tuple[str, Role]] = set()
        for p in self.spans:
            if p.current and p.role in PLACEMENT_ROLES and (p.agency, p.role) not in wanted:
                spans.append(replace(p, until=at, ended_by=f"superseded by placement {source}"))
                continue
            spans.append(p)
            if p.current:
                kept.add((p.agency, p.role))
        spans += [Party(a, r, at, None, source) for a, r in sorted(wanted - kept)]
        return self._changed(source, spans=spans, active=True)

    def ended(self, at: dt.datetime, source: uuid.UUID) -> Placement:
        """The placement ends at ``at``: its host parties leave the case."""
        spans = [
            replace(p, until=max(at, p.since or at), ended_by=f"placement ended ({source})")
            if p.current and p.role in HOST_ROLES
            else p
            for p in self.spans
        ]
        return self._changed(source, spans=spans, active=False)

    def with_parties(
        self,
        added: Iterable[Recipient],
        removed: Iterable[Recipient],
        at: dt.datetime,
        source: uuid.UUID,
    ) -> Placement:
        """Parties the placing authority registers (from ``at``) or removes (ended at ``at``)."""
        gone = set(removed)
        spans = [
            replace(
                p,
                until=max(at, p.since or at),
                ended_by=f"removed by the placing authority ({source})",
            )
            if p.current and Recipient(p.agency, p.role) in gone
            else p
            for p in self.spans
        ]
        current = {(p.agency, p.role) for p in spans if p.current}
        for r in added:
            for i, p in enumerate(spans):  # one agency per role at a time
                if p.current and p.role == r.role and p.agency != r.agency:
                    spans[i] = replace(p, until=at, ended_by=f"replaced by {r.agency} ({source})")
            if (r.agency, r.role) not in current:
                spans.append(Party(r.agency, r.role, at, None, source))
        return self._changed(source, spans=spans)

    def with_episode(self, episode: Episode | None, source: uuid.UUID) -> Placement:
        return self._changed(source, episode=episode)

    # --- records --------------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return {
            "case_ref": self.case_ref,
            "status": "ACTIVE" if self.active else "ENDED",
            "parties": [{"agency": a, "role": str(r)} for r, a in self.parties.items()],
            "source_message_id": str(self.source_message_id or uuid.UUID(int=0)),
            "updated_at": self.updated_at,
            "spans": [p.to_record() for p in self.spans],
            "episode": self.episode.to_record() if self.episode else None,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Placement:
        spans = [Party.from_record(s) for s in r.get("spans") or []]
        if not spans:  # written before spans were kept: the parties, in force from the beginning
            spans = [Party(p["agency"], Role(p["role"])) for p in r["parties"]]
        episode = r.get("episode")
        return cls(
            case_ref=r["case_ref"],
            spans=spans,
            active=r["status"] == "ACTIVE",
            source_message_id=_uuid(r["source_message_id"]),
            updated_at=r["updated_at"],
            episode=Episode.from_record(episode) if episode else None,
        )

    def view(self, name_of: Any) -> dict[str, Any]:
        """Whom a message about the case reaches now (``parties``: in force), and who was a party
        before (``former_parties``, with until when and why): metadata, no content."""

        def stamp(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value else None

        def row(p: Party) -> dict[str, Any]:
            out = {
                "agency": p.agency,
                "name": name_of(p.agency),
                "role": str(p.role),
                "since": stamp(p.since),
                "until": stamp(p.until),
            }
            if p.ended_by:
                out["ended_by"] = p.ended_by
            return out

        def order(p: Party) -> tuple[str, str, str]:
            return (str(p.role), p.agency, stamp(p.since) or "")

        return {
            "case_ref": self.case_ref,
            "status": "ACTIVE" if self.active else "ENDED",
            "parties": [row(p) for p in sorted(self.spans, key=order) if p.current],
            "former_parties": [row(p) for p in sorted(self.spans, key=order) if not p.current],
            "open_missing_episode": (
                {
                    "since": stamp(self.episode.began_at),
                    "heard": [
                        {"agency": r.agency, "role": str(r.role)} for r in self.episode.heard
                    ],
                }
                if self.episode
                else None
            ),
        }


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

    Records read from the log are kept as they came (:meth:`put_encoded`) and decoded when their
    case is first asked for, or a chunk at a time by :meth:`settle`: decoding is most of what
    reading a national registry costs (about 100 µs a case), and a process that starts asks for
    a handful of cases, not all of them. Decoding a case's records in their log order through
    :meth:`put` gives exactly the registry that decoding each on arrival would have given.
    """

    def __init__(self) -> None:
        self._cases: dict[str, Placement] = {}
        #: Records of a case read but not decoded yet, in log order.
        self._encoded: dict[str, list[bytes]] = {}
        #: Set by the follower that feeds :meth:`put_encoded` (its schema and catalogue).
        self._decode: Callable[[bytes], Placement] | None = None
        self._by_reference: dict[str, set[str]] = {}

    def get(self, case_ref: str) -> Placement | None:
        found = self._settled(case_ref)
        if found is not None:
            return found
        matches = self.find(case_ref)
        return matches[0] if len(matches) == 1 else None

    def find(self, reference: str) -> list[Placement]:
        """Every case registered under a bare ``reference``, whichever council placed it."""
        found = (self._settled(i) for i in sorted(self._by_reference.get(reference, ())))
        return [p for p in found if p is not None]

    def put(self, placement: Placement) -> bool:
        """Keep ``placement`` unless the registry holds a newer record of the case.

        Newer by the record's own ``updated_at``, never by arrival: several routers write the
        registry, and a follower may read an older record after a newer one was applied locally.
        """
        old = self._settled(placement.case_ref)
        if old is not None and old.updated_at > placement.updated_at:
            return False
        self._cases[placement.case_ref] = placement
        self._index(placement.case_ref)
        return True

    def decode_with(self, decode: Callable[[bytes], Placement]) -> None:
        """How records kept encoded are decoded (the follower's schema and catalogue)."""
        if self._decode is None:
            self._decode = decode

    def put_encoded(self, case_ref: str, value: bytes) -> None:
        """Keep a record read from the log, to be decoded when its case is asked for."""
        if self._decode is None:
            raise TypeError("this registry decodes nothing: give it a decoder")
        self._encoded.setdefault(case_ref, []).append(value)
        self._index(case_ref)

    def remove(self, case_ref: str, at: dt.datetime) -> bool:
        """Forget a case (its tombstone was read) if its placement has ended and its record is
        no newer than ``at``, the tombstone's time: a case placed again stays."""
        old = self._settled(case_ref)
        if old is None or old.active or old.updated_at > at:
            return False
        del self._cases[case_ref]
        _, reference = split_case_id(case_ref)
        left = self._by_reference.get(reference, set())
        left.discard(case_ref)
        if not left:
            self._by_reference.pop(reference, None)
        return True

    def settle(self, limit: int) -> int:
        """Decode the records of up to ``limit`` cases; how many cases are left undecoded."""
        for case_ref in list(itertools.islice(self._encoded, limit)):
            self._settled(case_ref)
        return len(self._encoded)

    def ended_before(self, cutoff: dt.datetime) -> list[Placement]:
        """Decoded cases whose placement ended and which have not changed since before
        ``cutoff`` (:meth:`settle` first for all of them)."""
        return [p for p in self._cases.values() if not p.active and p.updated_at < cutoff]

    def __len__(self) -> int:
        return len(self._cases.keys() | self._encoded.keys())

    def _index(self, case_ref: str) -> None:
        _, reference = split_case_id(case_ref)
        self._by_reference.setdefault(reference, set()).add(case_ref)

    def _settled(self, case_ref: str) -> Placement | None:
        """The case, its records read since it was last asked for decoded first (in log order,
        newer record wins). A record that does not decode is skipped, as on arrival."""
        pending = self._encoded.pop(case_ref, None)
        if pending and self._decode is not None:
            for value in pending:
                try:
                    self.put(self._decode(value))
                except Exception as exc:  # one bad record must not cost the case
                    log.warning("placement_record_skipped", error_class=type(exc).__name__)
        return self._cases.get(case_ref)


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

    def decode(value: bytes) -> Placement:
        return Placement.from_record(codec.decode(value, store.writer_for, version.parsed))

    registry.decode_with(decode)

    def apply(r: Any) -> None:
        if r.value is not None:
            if r.key is not None:  # decoded when the case is asked for
                registry.put_encoded(r.key.decode(), r.value)
            else:
                registry.put(decode(r.value))
        elif r.key is not None:  # a tombstone: the case ended long enough ago to leave
            at = dt.datetime.fromtimestamp(r.timestamp / 1000, dt.UTC)
            registry.remove(r.key.decode(), at)

    # Prompt: a connector waits on it before routing a message about a case it has just heard of.
    return TopicFollower(
        settings, topic or settings.topics.placements, apply, fetch_wait_ms=PROMPT_FETCH_WAIT_MS
    )
