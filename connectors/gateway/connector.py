"""The connector runtime: an agency's gateway onto the exchange.

Outbound: take an event of the agency's system, choose the statutory recipients (routing rules plus
the placement registry), seal, sign and publish it on the agency's outbound topic with an idempotent
producer. Inbound: read the agency's inbox, verify and open each message, hand it to the agency's
system (a sink), and answer route-gap notices from the router by re-sending to the missing
recipients, without the agency's system doing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from broker.crypto.keys import AgencyKeys
from broker.crypto.sealing import BodyForms, KeyReuse, Sealer
from broker.crypto.signing import Verifier
from broker.delivery_log import LogCodec
from broker.directory import Directory, DirectoryCodec, apply
from broker.envelope import Header, Outgoing, Protector, SharingDecision
from broker.errors import CbxError, PolicyError, ProtectionError, UnknownCaseError
from broker.kafka import clients as kafka
from broker.kafka.follow import TopicFollower
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger
from broker.model import RECEIPT, ROUTE_GAP_NOTICE, ROUTER, Recipient, Role
from broker.policy.profiles import Profile, profile_for
from broker.policy.registry import PlacementRegistry, placement_follower
from broker.policy.routing import Rules
from broker.policy.sharing import SharingPolicy
from broker.schema.catalogue import Catalogue
from broker.schema.json_to_avro import JsonToAvro
from broker.schema.store import SchemaStore
from broker.tracker.service import DeliveryView

log = get_logger("connector")
RECEIPT_SHARING = SharingDecision(
    purpose="record that a safeguarding notification was received and acted on",
    lawful_basis=("UK_GDPR_6_1_E_PUBLIC_TASK",),
    consent="NOT_SOUGHT",
    consent_not_sought_reason="no personal data: delivery metadata only",
    decision_maker_role="cbx connector",
)


@dataclass
class Delivered:
    """A message opened for this agency: header, and body with withheld fields marked."""

    header: Header
    body: dict[str, Any]
    topic: str
    partition: int
    offset: int


Sink = Callable[[Delivered], Awaitable[None]]


@dataclass
class ConnectorStats:
    published: int = 0
    delivered: int = 0
    repaired: int = 0
    rejected: int = 0
    repairs: list[tuple[str, str, list[str]]] = field(default_factory=list)


class Connector:
    """One agency's gateway. ``start`` before use; ``stop`` when done."""

    def __init__(
        self,
        settings: KafkaSettings,
        keys: AgencyKeys,
        *,
        catalogue: Catalogue | None = None,
        rules: Rules | None = None,
        reuse: KeyReuse | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.keys = keys
        self.agency = keys.agency
        self.profile: Profile = profile_for(self.agency)
        self.catalogue = catalogue or Catalogue.load()
        self.forms = BodyForms(self.catalogue)
        self.rules = rules or Rules.load()
        self.directory = Directory()
        self.registry = PlacementRegistry()
        self.protector = Protector(
            self.catalogue,
            self.forms,
            Sealer(keys, self.directory, SharingPolicy.load(), self.forms, reuse),
            Verifier(self.directory),
        )
        self.converters = {
            n: JsonToAvro(self.catalogue.latest(n).parsed) for n in self.catalogue.event_types()
        }
        self.stats = ConnectorStats()
        self._dcodec = DirectoryCodec(self.catalogue)
        self._placement_v = self.catalogue.latest("PlacementRecord")
        self._store = SchemaStore(self.catalogue)
        self._followers: list[TopicFollower] = []
        self._producer: Any = None
        self._inbox_task: asyncio.Task[None] | None = None
        self._inbox_consumer: Any = None
        self._delivered: dict[str, Header] = {}
        # What became of the messages this agency sent (the tracker mirrors the delivery log).
        self.statuses = DeliveryView()
        self._logs = LogCodec(self.catalogue)

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # Topics and ACLs come from provisioning (cbx agency add); a connector creates nothing.
        async with kafka.access(self.settings):
            self._followers = [
                TopicFollower(
                    self.settings,
                    self.topics.directory,
                    lambda r: apply(self.directory, self._dcodec, r),
                ),
                placement_follower(self.settings, self.catalogue, self.registry),
                TopicFollower(
                    self.settings,
                    self.topics.status(self.agency),
                    lambda r: self.statuses.apply(self._logs.decode(r.value)),
                ),
            ]
            for f in self._followers:
                await f.start()
            self._producer = kafka.producer(self.settings, client_id=f"cbx-connector-{self.agency}")
            await self._producer.start()

    async def stop(self) -> None:
        if self._inbox_task is not None:
            self._inbox_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._inbox_task
        if self._inbox_consumer is not None:
            with contextlib.suppress(Exception):
                await self._inbox_consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        for f in self._followers:
            await f.stop()

    async def sync(self) -> None:
        """Catch up with the directory and the placement registry."""
        for f in self._followers:
            await f.sync()

    # --- outbound -----------------------------------------------------------------------------

    def route(
        self,
        event_type: str,
        case_ref: str,
        body: dict[str, Any],
        extra: list[Recipient] | None = None,
    ) -> tuple[Role, list[Recipient]]:
        """This agency's role in the case and the recipients the rules require."""
        rule = self.rules.rule(event_type)
        if rule.registers_placement:
            parties = self.rules.placement_parties(
                self.agency, body["host_authority"], body.get("provider")
            )
        else:
            case = self.registry.get(case_ref)
            if case is None:
                raise UnknownCaseError(
                    f"case {case_ref} is not in the placement registry: name the recipients"
                )
            parties = case.parties
        roles = [
            role
            for role, agency in parties.items()
            if agency == self.agency and role in rule.senders
        ]
        if not roles:
            raise PolicyError(
                f"{self.agency} has no role in case {case_ref} that may send {event_type}"
            )
        return roles[0], self.rules.recipients(event_type, self.agency, parties, extra)

    def prepare(
        self,
        event_type: str,
        body: dict[str, Any],
        *,
        case_ref: str,
        sharing: SharingDecision,
        urgency: str = "ROUTINE",
        occurred_at: dt.datetime | None = None,
        recipients: list[Recipient] | None = None,
        sender_role: Role | None = None,
        extra: list[Recipient] | None = None,
        message_id: uuid.UUID | None = None,
        related_message_id: uuid.UUID | None = None,
    ) -> Outgoing:
        """Choose recipients (unless given), build the header, seal. Not yet signed or sent."""
        if recipients is None or sender_role is None:
            role, chosen = self.route(event_type, case_ref, body, extra)
            sender_role = sender_role or role
            recipients = chosen if recipients is None else recipients
        now = dt.datetime.now(dt.UTC)
        header = Header(
            message_id=message_id or uuid.uuid4(),
            event_type=event_type,
            sender=self.agency,
            sender_role=sender_role,
            recipients=tuple(recipients),
            case_ref=case_ref,
            urgency=urgency,
            occurred_at=occurred_at or now,
            recorded_at=now,
            schema_fingerprint=self.forms.latest[event_type].plain.fingerprint,
            sharing=sharing,
            related_message_id=related_message_id,
        )
        return self.protector.seal(header, body)

    def convert(self, event_type: str, payload: Any) -> dict[str, Any]:
        """Agency JSON to a body record (JsonConversionError lists every bad field)."""
        try:
            conv = self.converters[event_type]
        except KeyError:
            raise PolicyError(f"unknown message type {event_type}") from None
        return dict(conv.convert(payload))

    async def publish(self, batch: list[Outgoing]) -> list[Outgoing]:
        """Sign a batch with one signature and publish it (idempotent producer, acks=all)."""
        self.protector.sign(batch)
        topic = self.topics.outbound(self.agency)
        async with kafka.access(self.settings):
            await self._send(topic, batch)
        self.stats.published += len(batch)
        return batch

    async def _send(
        self, topic: str, batch: list[Outgoing], key: Callable[[Outgoing], bytes] | None = None
    ) -> None:
        """Publish signed messages; returns when Kafka has them all."""
        futures = [
            await self._producer.send(
                topic, o.value, key=key(o) if key else o.key, headers=o.headers
            )
            for o in batch
        ]
        await asyncio.gather(*futures)

    async def send(self, event_type: str, body: dict[str, Any], **kwargs: Any) -> Outgoing:
        """Prepare and publish one message."""
        out = self.prepare(event_type, body, **kwargs)
        await self.publish([out])
        return out

    def delivery_status(self, message_id: str) -> dict[str, Any] | None:
        """Each recipient's state of a message this agency sent, from its status topic."""
        m = self.statuses.messages.get(message_id)
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

    # --- inbound ------------------------------------------------------------------------------

    def open(self, value: bytes, headers: Any) -> tuple[Header, dict[str, Any]]:
        return self.protector.open(value, headers)

    async def repair(self, notice: dict[str, Any]) -> Outgoing | None:
        """Re-send a message of ours to the recipients a route-gap notice says it missed."""
        original = bytes(notice["original"])
        header, body_bytes = self.protector.envelopes.decode(original)
        if header.sender != self.agency:
            raise ProtectionError("route-gap notice about a message this agency did not send")
        _, body = self.protector.opener.open(
            body_bytes, header.message_id, header.schema_fingerprint
        )
        missing = [Recipient(m["agency"], Role(m["role"])) for m in notice["missing"]]
        out = self.prepare(
            header.event_type,
            body,
            case_ref=header.case_ref,
            sharing=header.sharing,
            urgency=header.urgency,
            occurred_at=header.occurred_at,
            recipients=missing,
            sender_role=header.sender_role,
            related_message_id=header.message_id,
        )
        await self.publish([out])
        self.stats.repaired += 1
        self.stats.repairs.append(
            (str(header.message_id), str(out.header.message_id), [m.agency for m in missing])
        )
        log.info(
            "route_gap_repaired",
            message_id=str(header.message_id),
            repair_message_id=str(out.header.message_id),
            missing=[m.agency for m in missing],
        )
        return out

    def make_receipt(self, subject: Header, status: str, reason: str | None = None) -> Outgoing:
        """A receipt about ``subject``, sealed but not yet signed or sent."""
        now = dt.datetime.now(dt.UTC)
        my_role = next(
            (r.role for r in subject.recipients if r.agency == self.agency), subject.sender_role
        )
        header = Header(
            message_id=uuid.uuid4(),
            event_type=RECEIPT,
            sender=self.agency,
            sender_role=my_role,
            recipients=(Recipient(subject.sender, subject.sender_role),),
            case_ref=subject.case_ref,
            urgency=subject.urgency,
            occurred_at=now,
            recorded_at=now,
            schema_fingerprint=self.forms.latest[RECEIPT].plain.fingerprint,
            sharing=RECEIPT_SHARING,
            related_message_id=subject.message_id,
        )
        body = {
            "subject_message_id": str(subject.message_id),
            "status": status,
            "at": now,
            "recipient": self.agency,
            "reason": reason,
        }
        return self.protector.seal(header, body)

    async def send_receipts(self, receipts: list[Outgoing]) -> None:
        """Sign receipts with one signature and publish them; returns when Kafka has them all."""
        if not receipts:
            return
        self.protector.sign(receipts)
        async with kafka.access(self.settings):
            # Keyed by the message they are about, so a message's receipts stay in order.
            await self._send(
                self.topics.receipts,
                receipts,
                key=lambda o: str(o.header.related_message_id).encode(),
            )

    async def receipt(self, subject: Header, status: str, reason: str | None = None) -> Outgoing:
        """Tell the sender (and the tracker) what became of a message this agency received."""
        out = self.make_receipt(subject, status, reason)
        await self.send_receipts([out])
        return out

    async def acknowledge(self, message_id: str | uuid.UUID) -> Outgoing:
        """The agency's system confirms it has seen and acted on a message."""
        subject = self._delivered.get(str(message_id))
        if subject is None:
            raise PolicyError(f"message {message_id} was not delivered to {self.agency}")
        return await self.receipt(subject, "ACKNOWLEDGED")

    async def handle(
        self, record: Any, sink: Sink | None, receipts: list[Outgoing] | None = None
    ) -> None:
        """Verify, open and dispatch one inbox record.

        Receipts are sent at once, or added to ``receipts`` for the caller to send as a batch
        (the inbox loop sends a batch's receipts, with one signature, before committing it).
        """

        async def answer(subject: Header, status: str, reason: str | None = None) -> None:
            out = self.make_receipt(subject, status, reason)
            if receipts is None:
                await self.send_receipts([out])
            else:
                receipts.append(out)

        try:
            header, body = self.open(record.value, list(record.headers))
        except CbxError as exc:
            self.stats.rejected += 1
            log.warning(
                "inbox_message_rejected",
                offset=record.offset,
                error=str(exc),
                error_class=type(exc).__name__,
            )
            return
        if not self.profile.may_receive(header.event_type):
            self.stats.rejected += 1
            log.warning(
                "message_outside_profile",
                message_id=str(header.message_id),
                event_type=header.event_type,
                profile=self.profile.kind,
            )
            await answer(
                header, "REJECTED", f"a {self.profile.kind} does not take {header.event_type}"
            )
            return
        if header.event_type == ROUTE_GAP_NOTICE:
            if header.sender != ROUTER:
                log.warning("notice_not_from_router", sender=header.sender)
                return
            await self.repair(body)
            return
        if sink is not None:
            try:
                await sink(Delivered(header, body, record.topic, record.partition, record.offset))
            except Exception as exc:  # the agency's system refused it: say so, keep going
                self.stats.rejected += 1
                log.warning(
                    "delivery_failed",
                    message_id=str(header.message_id),
                    error_class=type(exc).__name__,
                )
                await answer(header, "REJECTED", f"agency system refused it ({type(exc).__name__})")
                return
        self.stats.delivered += 1
        self._delivered[str(header.message_id)] = header
        if len(self._delivered) > 100_000:
            self._delivered.pop(next(iter(self._delivered)))
        await answer(header, "DELIVERED")

    async def run_inbox(self, sink: Sink | None = None, group: str | None = None) -> None:
        """Consume the inbox until cancelled (committing after each handled batch)."""
        consumer = kafka.consumer(
            self.settings,
            self.topics.inbox(self.agency),
            group_id=group or self.topics.agency_group(self.agency, "inbox"),
        )
        self._inbox_consumer = consumer
        try:
            async with kafka.access(self.settings):
                await consumer.start()
                await self._inbox_loop(consumer, sink)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            self._inbox_consumer = None

    async def _inbox_loop(self, consumer: Any, sink: Sink | None) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            receipts: list[Outgoing] = []
            for records in batch.values():
                for r in records:
                    await self.handle(r, sink, receipts)
            await self.send_receipts(receipts)
            if batch:
                await consumer.commit()

    def start_inbox(self, sink: Sink | None = None) -> None:
        self._inbox_task = asyncio.create_task(self.run_inbox(sink), name=f"inbox {self.agency}")
