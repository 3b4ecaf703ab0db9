"""The router's decisions, one record at a time, with no Kafka in sight.

:class:`RouterCore` takes a record read from an agency's outbound topic and returns everything the
router must write for it (inbox copies, delivery-log entries, placement registry updates, notices,
the routed-id marker, or a dead letter). :mod:`broker.router.service` runs it inside Kafka
transactions. State (registry, routed ids) changes tentatively per transaction and is kept only if
the transaction commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.crypto.sealing import BodyForms, Sealer, unsealed_for
from broker.crypto.signing import Signer, Verifier
from broker.delivery_log import LogCodec, LogEntry, RoutedTo, Status
from broker.envelope import EnvelopeCodec, Header, system_sharing
from broker.errors import (
    CbxError,
    PolicyError,
    ProtectionError,
    SerializationError,
    SignatureError,
    UnknownRecipientError,
    UnknownSchemaError,
)
from broker.kafka.topics import Topics
from broker.logging import get_logger
from broker.model import ROUTE_GAP_NOTICE, ROUTER, Recipient, Role
from broker.policy.deadlines import Windows, ack_deadline
from broker.policy.obligations import as_text, fact_fields
from broker.policy.registry import Placement
from broker.policy.routing import PartyChange, Rules
from broker.router.deadletter import Failure, error_headers, sign_dead_letter
from broker.router.state import RouterState, message_identity
from broker.schema import codec
from broker.schema.catalogue import Catalogue

log = get_logger("router")


@dataclass(frozen=True)
class InRecord:
    """What the router read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class Out:
    """One record to write in the routing transaction."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    #: For a copy to an inbox: whether it travels the urgent lane (None: not a laned topic,
    #: the producer's partitioner places it by key).
    urgent: bool | None = None


@dataclass
class Outcome:
    """The router's verdict on one record."""

    outputs: list[Out]
    status: str  # routed | duplicate | rejected
    message_id: str | None = None
    event_type: str | None = None
    sender: str | None = None
    reason: str | None = None
    gaps: int = 0
    recipients: int = 0
    occurred_at: dt.datetime | None = None


class _Rejected(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.header: Header | None = None


def _fail(reason: str, exc: CbxError | Exception) -> _Rejected:
    stage = exc.stage if isinstance(exc, CbxError) else "router"
    return _Rejected(Failure(reason, stage, type(exc).__name__, str(exc)))


#: Dead-letter reasons whose header claims are not proven (or whose id belongs to another message).
UNPROVEN = frozenset({"bad-signature", "sender-mismatch", "message-id-reused"})


class RouterCore:
    """Checks, routes and records one message at a time."""

    def __init__(
        self,
        catalogue: Catalogue,
        forms: BodyForms,
        rules: Rules,
        directory: Any,
        router_sealer: Sealer,
        state: RouterState | None = None,
        topic_names: Topics | None = None,
        windows: Windows | None = None,
    ) -> None:
        self.windows = windows
        self.catalogue = catalogue
        self.forms = forms
        self.rules = rules
        self.directory = directory
        self.verifier = Verifier(directory)
        self.envelopes = EnvelopeCodec(catalogue)
        self.logs = LogCodec(catalogue)
        self.placements = catalogue.latest("PlacementRecord")
        self.sealer = router_sealer
        self.signer = Signer(router_sealer.keys)
        self.state = state or RouterState()
        self.topics = topic_names or Topics()

    # --- helpers ------------------------------------------------------------------------------

    def _log(self, entry: LogEntry) -> Out:
        key = entry.message_id.encode() if entry.message_id else None
        return Out(self.topics.delivery_log, key, self.logs.encode(entry))

    def _verify(self, rec: InRecord) -> str:
        assert rec.value is not None
        return self.verifier.verify(rec.value, rec.headers)

    def _notice(self, header: Header, gaps: list[Recipient], original: bytes) -> Out:
        """A signed RouteGapNotice to the sender's inbox."""
        now = dt.datetime.now(dt.UTC)
        notice_header = Header(
            message_id=uuid.uuid4(),
            event_type=ROUTE_GAP_NOTICE,
            sender=ROUTER,
            sender_role=Role.EXCHANGE,
            recipients=(Recipient(header.sender, header.sender_role),),
            case_ref=header.case_ref,
            urgency=header.urgency,
            occurred_at=now,
            recorded_at=now,
            schema_fingerprint=self.forms.latest[ROUTE_GAP_NOTICE].plain.fingerprint,
            sharing=system_sharing(
                "tell the sender which required recipients a message left out",
                "cbx router",
                "no personal data: routing metadata only",
            ),
            related_message_id=header.message_id,
        )
        body = {
            "subject_message_id": str(header.message_id),
            "missing": [{"agency": g.agency, "role": str(g.role)} for g in gaps],
            "rule": f"{header.event_type}: required {', '.join(str(g.role) for g in gaps)}",
            "original": original,
        }
        sealed = self.sealer.seal(ROUTE_GAP_NOTICE, notice_header.message_id, body, [])
        value = self.envelopes.encode(notice_header, sealed.body)
        headers = self.signer.sign_batch([value])[0]
        return Out(
            self.topics.inbox(header.sender),
            header.case_ref.encode(),
            value,
            headers,
            self.rules.urgent_lane(header.event_type, header.urgency),
        )

    def placement_outs(self, placement: Placement, before: Placement | None) -> list[Out]:
        """The registry record, and a copy for each party to the case (its own view): the parties
        now, and those the change ended (their last record says until when they were parties)."""
        v = self.placements
        key = placement.case_ref.encode()
        value = codec.encode(v.parsed, v.fingerprint, placement.to_record())
        parties = sorted(placement.agencies() | (before.agencies() if before else set()))
        return [
            Out(self.topics.placements, key, value),
            *(Out(self.topics.cases(a), key, value) for a in parties),
        ]

    # --- the decision -----------------------------------------------------------------------

    def process(self, rec: InRecord) -> Outcome:
        """Everything to write for ``rec``: its routing, or its dead letter."""
        if self.state.copied(rec.topic, rec.partition, rec.offset):
            return Outcome([], "duplicate")  # a migration's copy of a record routed before
        try:
            return self._route(rec)
        except _Rejected as rej:
            return self._dead_letter(rec, rej.failure, rej.header)
        except Exception as exc:
            # Whatever else one record makes a check raise is that record's outcome, never the
            # router's: dead-lettered with the class of the error, and the next record routed.
            failure = Failure("unprocessable", "router", type(exc).__name__, type(exc).__name__)
            log.error("record_unprocessable", source=rec.source, error_class=type(exc).__name__)
            return self._dead_letter(rec, failure, None)

    def _route(self, rec: InRecord) -> Outcome:
        owner = rec.topic.removeprefix(self.topics.outbound_prefix)
        if rec.value is None:
            raise _fail("malformed", SerializationError("record has no value"))
        try:
            header, body = self.envelopes.decode(rec.value)
        except UnknownSchemaError as exc:
            raise _fail("unknown-schema", exc) from exc
        except SerializationError as exc:
            raise _fail("malformed", exc) from exc
        try:
            return self._route_decoded(rec, owner, header, body)
        except _Rejected as rej:
            rej.header = header
            raise

    def _route_decoded(self, rec: InRecord, owner: str, header: Header, body: bytes) -> Outcome:
        value = rec.value or b""
        if header.sender != owner:
            raise _fail(
                "sender-mismatch",
                PolicyError(
                    f"header names sender {header.sender} on the outbound topic of {owner}"
                ),
            )
        try:
            signer = self._verify(rec)
        except SignatureError as exc:
            raise _fail("bad-signature", exc) from exc
        if signer != header.sender:
            raise _fail(
                "sender-mismatch",
                PolicyError(f"signed by {signer} but the header names {header.sender}"),
            )
        try:
            wire_fp = codec.read_fingerprint(body)
            form = self.forms.by_wire.get(wire_fp)
            if form is None:
                if wire_fp in self.forms.by_plain:
                    self.forms.wire_writer(wire_fp)  # raises: sensitive fields in clear
                raise UnknownSchemaError(wire_fp)
            if (
                form.plain.fingerprint != header.schema_fingerprint
                or form.event_type != header.event_type
            ):
                raise ProtectionError("the body's schema does not match the header's event type")
        except UnknownSchemaError as exc:
            raise _fail("unknown-schema", exc) from exc
        except (ProtectionError, SerializationError) as exc:
            raise _fail("unsealed-or-malformed-body", exc) from exc
        try:
            form, clear, block = self.forms.split(body)
            short = unsealed_for(
                self.sealer.policy, header.event_type, header.recipients, form, block
            )
        except (ProtectionError, SerializationError) as exc:
            raise _fail("unsealed-or-malformed-body", exc) from exc
        if short:
            named = "; ".join(f"{a}: {', '.join(c)}" for a, c in sorted(short.items()))
            raise _fail(
                "short-sealed",
                ProtectionError(
                    f"not sealed for recipients it names, for classes they may read ({named})"
                ),
            )

        message_id = str(header.message_id)
        identity = message_identity(header)
        if self.state.seen(rec.source):
            return Outcome([], "duplicate", message_id, header.event_type, header.sender)
        before = self.state.identity_of(message_id)
        if before is not None:
            if before in ("", identity):  # the same message again (a re-send after a crash)
                log.debug("duplicate_ignored", message_id=message_id, source=rec.source)
                return Outcome([], "duplicate", message_id, header.event_type, header.sender)
            raise _fail(
                "message-id-reused",
                PolicyError(
                    f"message id {message_id} was already routed for another message "
                    "(another sender, case, type or recipients): refused, the first stands"
                ),
            )

        case = self.state.case(header.case_ref)
        repair = header.related_message_id is not None
        try:
            rule = self.rules.rule(header.event_type)
            changes = self._party_changes(clear) if rule.changes_parties else None
            decision = self.rules.check(
                header.event_type,
                header.sender,
                header.sender_role,
                list(header.recipients),
                case,
                self.directory.__contains__,
                repair=repair,
                case_ref=header.case_ref,
                at=header.occurred_at,
                message_id=header.message_id,
                changes=changes,
            )
        except UnknownRecipientError as exc:
            raise _fail("unknown-recipient", exc) from exc
        except PolicyError as exc:
            raise _fail("policy", exc) from exc

        now = dt.datetime.now(dt.UTC)
        common: dict[str, Any] = {
            "message_id": message_id,
            "at": now,
            "event_type": header.event_type,
            "sender": header.sender,
            "case_ref": header.case_ref,
            "urgency": header.urgency,
            "occurred_at": header.occurred_at,
            "source": rec.source,
        }
        deadline = ack_deadline(header.urgency, now, self.windows)
        outs: list[Out] = []
        headers = [(k, bytes(v)) for k, v in rec.headers]
        accepted_note = (
            "case not in the placement registry: required recipients not checked"
            if decision.unregistered_case
            else None
        )
        outs.append(
            self._log(
                LogEntry(
                    status=Status.ACCEPTED,
                    ack_deadline=deadline,
                    facts=self._facts(clear, header.event_type),
                    sharing={
                        "purpose": header.sharing.purpose,
                        "lawful_basis": list(header.sharing.lawful_basis),
                        "consent": header.sharing.consent,
                        "decision_maker_role": header.sharing.decision_maker_role,
                    },
                    reason=accepted_note,
                    related_message_id=(
                        str(header.related_message_id) if header.related_message_id else None
                    ),
                    # Its ROUTED entries ride on it: one record, not one a recipient. They are
                    # written in the same transaction as the inbox records either way.
                    routed=tuple(
                        RoutedTo(
                            r.agency,
                            r.role_names,
                            f"also notified: {r.reason}" if r.reason else None,
                        )
                        for r in decision.deliver
                    ),
                    **common,
                )
            )
        )
        urgent = self.rules.urgent_lane(header.event_type, header.urgency)
        for r in decision.deliver:
            outs.append(
                Out(
                    self.topics.inbox(r.agency),
                    header.case_ref.encode(),
                    rec.value,
                    headers,
                    urgent,
                )
            )
            if repair:
                outs.append(
                    self._log(
                        LogEntry(
                            **{**common, "message_id": str(header.related_message_id)},
                            status=Status.REPAIRED,
                            recipient=r.agency,
                            role=r.role_names,
                            related_message_id=message_id,
                            reason="route gap closed by a re-send from the sender",
                        )
                    )
                )
        for g in decision.gaps:
            outs.append(
                self._log(
                    LogEntry(
                        status=Status.ROUTE_GAP,
                        recipient=g.agency,
                        role=str(g.role),
                        reason=f"{header.event_type} must reach the {g.role}; not sealed for it",
                        **common,
                    )
                )
            )
        if decision.gaps and header.sender_role != Role.EXCHANGE:
            # The exchange's own senders have no inbox: the gap stays in the log for operators.
            outs.append(self._notice(header, decision.gaps, value))
        placement = decision.placement_update
        if placement is not None:
            placement.case_ref = header.case_ref
            placement.source_message_id = header.message_id
            outs.extend(self.placement_outs(placement, case))
        # One marker, keyed by message id: a routed record read again (after a crash or a
        # rebalance) carries the same message id. Dead letters, which may have none, are marked
        # by their source instead.
        outs.append(Out(self.topics.routed, message_id.encode(), identity.encode()))
        self.state.stage(message_id, placement, identity)
        return Outcome(
            outs,
            "routed",
            message_id,
            header.event_type,
            header.sender,
            gaps=len(decision.gaps),
            recipients=len(decision.deliver),
            occurred_at=header.occurred_at,
        )

    @staticmethod
    def _facts(clear: dict[str, Any], event_type: str) -> dict[str, str] | None:
        """The clear fields statutory clocks read from this message, as text (None if none)."""
        wanted = fact_fields().get(event_type)
        if not wanted:
            return None
        return {f: as_text(clear[f]) for f in wanted if clear.get(f) is not None}

    @staticmethod
    def _party_changes(clear: dict[str, Any]) -> list[PartyChange]:
        """The clear party fields of a CasePartiesChanged body (agency ids and roles only)."""
        try:
            return [
                PartyChange(c["agency"], Role(c["role"]), c["change"] == "ADDED")
                for c in clear["changes"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"the party changes cannot be read: {type(exc).__name__}") from exc

    def _dead_letter(self, rec: InRecord, failure: Failure, header: Header | None) -> Outcome:
        message_id = str(header.message_id) if header else None
        owner = rec.topic.removeprefix(self.topics.outbound_prefix)
        # Whoever wrote the record is only proven to be the owner of the topic. When the header's
        # claims are not proven (another sender named, no valid signature) or the id is taken,
        # the refusal is logged against the writer, never against the message id it names: a
        # forgery must not mark another agency's real message REJECTED.
        unproven = failure.reason in UNPROVEN
        logged_id = None if unproven else message_id
        if self.state.seen(rec.source):  # read again after a rebalance: already dead-lettered
            return Outcome([], "duplicate", message_id)
        headers = [(k, bytes(v)) for k, v in rec.headers]
        headers += error_headers(failure, rec.topic, rec.partition, rec.offset, message_id, ROUTER)
        headers = sign_dead_letter(self.signer, rec.key, rec.value, headers)
        outs = [
            Out(self.topics.deadletter, rec.key, rec.value, headers),
            self._log(
                LogEntry(
                    message_id=logged_id,
                    related_message_id=message_id if logged_id is None else None,
                    status=Status.REJECTED,
                    at=dt.datetime.now(dt.UTC),
                    event_type=header.event_type if header else None,
                    sender=header.sender if header and not unproven else owner,
                    case_ref=header.case_ref if header else None,
                    urgency=header.urgency if header else None,
                    reason=f"{failure.reason}: {failure.message}",
                    source=rec.source,
                )
            ),
        ]
        outs.append(Out(self.topics.routed, rec.source.encode(), (message_id or "").encode()))
        self.state.stage(rec.source, None)
        log.warning(
            "message_rejected",
            message_id=message_id,
            reason=failure.reason,
            error=failure.message,
            source=rec.source,
        )
        return Outcome(
            outs,
            "rejected",
            message_id,
            header.event_type if header else None,
            header.sender if header else None,
            reason=failure.reason,
        )
