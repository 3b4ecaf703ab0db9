"""The connector runtime: an agency's gateway onto the exchange.

Outbound: take an event of the agency's system, choose the statutory recipients (routing rules plus
the placement registry), seal, sign and publish it on the agency's outbound topic with an idempotent
producer. Inbound: read the agency's inbox, verify and open each message, hand it to the agency's
system (a sink), and answer route-gap notices from the router by re-sending to the missing
recipients, without the agency's system doing anything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import heap
from broker.crypto.keys import AgencyKeys
from broker.crypto.sealing import BodyForms, KeyReuse, Sealer
from broker.crypto.signing import Verifier
from broker.delivery_log import LogCodec
from broker.directory import Directory, DirectoryCodec, apply
from broker.envelope import Header, Outgoing, Protector, SharingDecision
from broker.errors import AmbiguousCaseError, CaseOwnerError, PolicyError, UnknownCaseError
from broker.kafka import clients as kafka
from broker.kafka import lanes
from broker.kafka.follow import TopicFollower
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger
from broker.model import Recipient, Role
from broker.paths import cbx_home
from broker.policy.profiles import Profile, profile_for
from broker.policy.registry import PlacementRegistry, case_id, placement_follower, split_case_id
from broker.policy.routing import Rules
from broker.policy.sharing import SharingPolicy
from broker.schema.catalogue import Catalogue
from broker.schema.json_to_avro import JsonToAvro
from broker.tracker.view import DeliveryView
from connectors.gateway.chronology import Chronologies
from connectors.gateway.inbox import Inbox, Sink
from connectors.gateway.quarantine import Quarantine
from connectors.gateway.receipts import make_receipt

log = get_logger("connector")


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
        state_dir: Path | None = None,
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
        self.policy = SharingPolicy.load()
        self.protector = Protector(
            self.catalogue,
            self.forms,
            Sealer(keys, self.directory, self.policy, self.forms, reuse),
            Verifier(self.directory),
        )
        self.converters = {
            n: JsonToAvro(self.catalogue.latest(n).parsed) for n in self.catalogue.event_types()
        }
        self.stats = ConnectorStats()
        self._dcodec = DirectoryCodec(self.catalogue)
        self._followers: list[TopicFollower] = []
        self._producer: Any = None
        #: Where this connector keeps its state on local disk.
        self.state_dir = state_dir or cbx_home() / "connectors" / self.agency
        self.quarantine = Quarantine(self.state_dir / "quarantine")
        self.inbox = Inbox(self)
        # What became of the messages this agency sent (the tracker mirrors the delivery log).
        self.statuses = DeliveryView()
        self._logs = LogCodec(self.catalogue)
        self._chronologies: Chronologies | None = None

    @property
    def chronologies(self) -> Chronologies:
        """This agency's case chronologies (the index opens on first use)."""
        if self._chronologies is None:
            self._chronologies = Chronologies(self)
        return self._chronologies

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
                # The cases this agency is a party to, or (police forces) the whole registry.
                placement_follower(
                    self.settings,
                    self.catalogue,
                    self.registry,
                    self.topics.placements
                    if self.profile.registry == "all"
                    else self.topics.cases(self.agency),
                ),
                TopicFollower(
                    self.settings,
                    self.topics.status(self.agency),
                    lambda r: self.statuses.apply_all(self._logs.entries(r.value)),
                ),
            ]
            with heap.loading("connector views"):
                for f in self._followers:
                    await f.start()
            self._producer = kafka.producer(self.settings, client_id=f"cbx-connector-{self.agency}")
            await self._producer.start()

    async def stop(self) -> None:
        await self.inbox.stop()
        if self._chronologies is not None:
            self._chronologies.index.close()
            self._chronologies = None
        if self._producer is not None:
            await self._producer.stop()
        for f in self._followers:
            await f.stop()

    async def sync(self) -> None:
        """Catch up with the directory and the placement registry."""
        for f in self._followers:
            await f.sync()

    # --- outbound -----------------------------------------------------------------------------

    def case_id(self, event_type: str, case_ref: str) -> str:
        """The case's identity for a reference as an agency's system gives it.

        A qualified id (``la-e10000016/KCC-123``) is taken as it is. A bare reference in a message
        that registers a placement is this council's own; otherwise it names the one case
        registered under it, and two councils' cases under one reference are refused as ambiguous.
        """
        owner, reference = split_case_id(case_ref)
        registers = self.rules.rule(event_type).registers_placement
        if owner is not None:
            if registers and owner != self.agency:
                raise CaseOwnerError(
                    f"case {case_ref} belongs to {owner}: a council registers placements under "
                    f"its own id ({self.agency}/{reference}, or just {reference})"
                )
            return case_ref
        if registers:
            return case_id(self.agency, reference)
        matches = self.registry.find(reference)
        if len(matches) > 1:
            owners = ", ".join(sorted(split_case_id(m.case_ref)[0] or "?" for m in matches))
            raise AmbiguousCaseError(
                f"case reference {reference} is used by more than one placing authority "
                f"({owners}): give it as <placing authority>/{reference}"
            )
        if matches:
            return matches[0].case_ref
        if Role.PLACING_AUTHORITY in self.profile.roles:  # a council's own case, not registered
            return case_id(self.agency, reference)
        return case_ref

    def route(
        self,
        event_type: str,
        case_ref: str,
        body: dict[str, Any],
        extra: list[Recipient] | None = None,
        at: dt.datetime | None = None,
    ) -> tuple[Role, list[Recipient]]:
        """This agency's role in the case and the recipients the rules require at ``at``."""
        case = self.registry.get(case_ref)
        try:
            return self.rules.choose(
                event_type, self.agency, case, body, at or dt.datetime.now(dt.UTC), extra
            )
        except UnknownCaseError:
            raise UnknownCaseError(
                f"case {case_ref} is not in the placement registry: name the recipients"
            ) from None

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
        case_ref = self.case_id(event_type, case_ref)
        if recipients is None or sender_role is None:
            role, chosen = self.route(event_type, case_ref, body, extra, occurred_at)
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
            n = len(await self._producer.partitions_for(topic))
            await self._send(topic, batch, partition=lambda o: self._partition(o, n))
        self.stats.published += len(batch)
        return batch

    def _partition(self, out: Outgoing, partitions: int) -> int:
        """Its lane: IMMEDIATE, URGENT and missing-episode messages go first, past bulk work."""
        urgent = self.rules.urgent_lane(out.header.event_type, out.header.urgency)
        return lanes.partition_for(out.key, partitions, urgent)

    async def _send(
        self,
        topic: str,
        batch: list[Outgoing],
        key: Callable[[Outgoing], bytes] | None = None,
        partition: Callable[[Outgoing], int] | None = None,
    ) -> None:
        """Publish signed messages; returns when Kafka has them all."""
        futures = [
            await self._producer.send(
                topic,
                o.value,
                key=key(o) if key else o.key,
                headers=o.headers,
                partition=partition(o) if partition else None,
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
        return self.statuses.summary(message_id)

    # --- inbound ------------------------------------------------------------------------------

    def open(self, value: bytes, headers: Any) -> tuple[Header, dict[str, Any]]:
        return self.protector.open(value, headers)

    def make_receipt(self, subject: Header, status: str, reason: str | None = None) -> Outgoing:
        """A receipt about ``subject``, sealed but not yet signed or sent."""
        return make_receipt(self.protector, self.forms, self.agency, subject, status, reason)

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
        return await self.inbox.acknowledge(message_id)

    async def repair(self, notice: dict[str, Any]) -> Outgoing | None:
        """Re-send a message of ours to the recipients a route-gap notice says it missed."""
        return await self.inbox.repair(notice)

    def start_inbox(self, sink: Sink | None = None) -> asyncio.Task[None]:
        """Consume the agency's inbox in a task, handing each message to ``sink``."""
        return self.inbox.start(sink)
