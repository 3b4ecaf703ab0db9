"""The delivery tracker (``cbx tracker``): receipts in, delivery states and escalations out.

It follows the whole delivery log (rebuilding its view at start, so it keeps no store of its own)
and consumes signed receipts from ``cbx.receipts``. For each message and recipient it knows the
latest state: ACCEPTED, ROUTED, DELIVERED, ACKNOWLEDGED, REJECTED by the recipient, OVERDUE,
ESCALATED. When an urgent notification's acknowledgement deadline passes without an
acknowledgement, it writes OVERDUE and ESCALATED for each recipient that has not acknowledged, and
logs an alert at ERROR level for the on-call operator.

It also copies each delivery-log entry to the sender's own status topic (``cbx.status.<agency>``),
which only that agency may read, so a connector can tell its agency's system what became of each
message it sent without any agency seeing the delivery metadata of others.

A separate service rather than part of the router: it scales and restarts independently, and the
router's exactly-once loop stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from broker import heap
from broker.admin.identity import ensure_identity
from broker.crypto.sealing import BodyForms, Sealer
from broker.crypto.signing import Signer, Verifier
from broker.delivery_log import LogCodec, LogEntry, Status
from broker.directory import Directory, DirectoryCodec, apply
from broker.envelope import EnvelopeCodec
from broker.errors import CbxError, KafkaUnavailableError
from broker.kafka import clients as kafka
from broker.kafka import lanes
from broker.kafka.follow import PROMPT_FETCH_WAIT_MS, TopicFollower
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger
from broker.model import OBLIGATION_OVERDUE, RECEIPT, SERVICE_PREFIX, TRACKER
from broker.policy.obligations import Obligation
from broker.policy.registry import PlacementRegistry, placement_follower
from broker.policy.routing import Rules
from broker.policy.sharing import SharingPolicy
from broker.schema import codec
from broker.schema.catalogue import Catalogue
from broker.tracker.obligations import ObligationWatch
from broker.tracker.view import DeliveryView

log = get_logger("tracker")
#: The longest a batch of receipts waits for their messages' ROUTED entries (see _after_routed).
RECEIPT_WAIT_S = 10.0
_RECEIPT_STATUS = {
    "DELIVERED": Status.DELIVERED,
    "ACKNOWLEDGED": Status.ACKNOWLEDGED,
    "REJECTED": Status.RECIPIENT_REJECTED,
}


#: What a recipient learns of a message sent to it: its own row only (routed to it, its own
#: receipts, and an escalation of its own silence), for its chronology of the case.
_RECIPIENT_STATES = frozenset(
    {
        Status.ROUTED,
        Status.DELIVERED,
        Status.ACKNOWLEDGED,
        Status.RECIPIENT_REJECTED,
        Status.OVERDUE,
        Status.ESCALATED,
    }
)


def _told(entry: LogEntry) -> list[str]:
    """The status topics an entry is copied to: its sender's, and the recipient's own row."""
    out = [entry.sender] if entry.sender else []
    if entry.recipient and entry.recipient != entry.sender and entry.status in _RECIPIENT_STATES:
        out.append(entry.recipient)
    return out


class NotARecipientError(CbxError):
    """A receipt about a message from an agency that was not one of its recipients."""


class TrackerService:
    """Receipts to delivery-log states, and deadline escalation."""

    def __init__(
        self,
        settings: KafkaSettings,
        check_every_s: float = 1.0,
        obligations: Iterable[Obligation] | None = None,
    ) -> None:
        self.settings = settings
        self.catalogue = Catalogue.load()
        self.forms = BodyForms(self.catalogue)
        self.logs = LogCodec(self.catalogue)
        self.envelopes = EnvelopeCodec(self.catalogue)
        self.directory = Directory()
        self.view = DeliveryView()
        self.check_every_s = check_every_s
        self.stop_event = asyncio.Event()
        self._receipt_form = self.forms.latest[RECEIPT]
        dcodec = DirectoryCodec(self.catalogue)
        self.registry = PlacementRegistry()
        self.obligations = ObligationWatch(Rules.load(), self.registry, obligations, self.view)
        # Prompt: a receipt that arrives before its ROUTED entries waits for this view.
        self._log_follower = TopicFollower(
            settings, settings.topics.delivery_log, self._fold, fetch_wait_ms=PROMPT_FETCH_WAIT_MS
        )
        self._followers = [
            TopicFollower(
                settings, settings.topics.directory, lambda r: apply(self.directory, dcodec, r)
            ),
            placement_follower(settings, self.catalogue, self.registry),
            self._log_follower,
        ]
        self._signer: Signer | None = None
        self._sealer: Sealer | None = None
        #: Set once its views have caught up and its producer and consumers have started.
        self.ready = asyncio.Event()
        self._verifier = Verifier(self.directory)
        self._producer: Any = None
        self._consumer: Any = None
        self._mirror_consumer: Any = None
        self._status_topics: set[str] = set()
        self._status_checked = 0.0

    def _fold(self, r: Any) -> None:
        for entry in self.logs.entries(r.value):
            self.view.apply(entry)
            self.obligations.apply(entry)

    async def check_obligations(self, now: dt.datetime | None = None) -> int:
        """Send an ObligationOverdue for each statutory clock that ran out unmet; how many."""
        now = now or dt.datetime.now(dt.UTC)
        assert self._sealer is not None
        assert self._signer is not None
        fingerprint = self.forms.latest[OBLIGATION_OVERDUE].plain.fingerprint
        topic = self.settings.topics.outbound(TRACKER)
        # Reminders are URGENT: the urgent lane, past any bulk work.
        lane = lanes.lane_of(len(await self._producer.partitions_for(topic)))
        futures = []
        for clock in self.obligations.overdue(now):
            try:
                composed = self.obligations.compose(
                    clock,
                    now,
                    self._sealer,
                    self._signer,
                    self.envelopes,
                    fingerprint,
                    self.directory.__contains__,
                )
            except Exception as exc:  # one clock's failure is its own: log, go on
                log.error(
                    "obligation_notice_failed", clock=clock.id, error_class=type(exc).__name__
                )
                continue
            if composed is None:
                continue
            value, headers, recipients = composed
            futures.append(
                await kafka.send(
                    self._producer,
                    topic,
                    value,
                    key=clock.case_ref.encode(),
                    headers=headers,
                    partition=lane,
                )
            )
            log.error(
                "obligation_overdue",
                clock=clock.id,
                obligation=clock.obligation.id,
                case_ref=clock.case_ref,
                due_at=clock.due_at.isoformat(),
                recipients=[r.agency for r in recipients],
            )
        await asyncio.gather(*futures)
        return len(futures)

    async def _patiently(self, what: str, step: Callable[[], Awaitable[Any]]) -> Any:
        """``step()``, again and again while Kafka cannot do it (brokers down, a leader moving):
        the tracker waits an outage out rather than drop a receipt or exit. Anything else is
        raised."""
        attempt = 0
        while True:
            try:
                return await step()
            except Exception as exc:
                if not kafka.transient(exc) or self.stop_event.is_set():
                    raise
                attempt += 1
                log.warning(
                    "tracker_waiting_for_kafka",
                    step=what,
                    attempt=attempt,
                    error_class=type(exc).__name__,
                )
                await asyncio.sleep(min(10.0, 0.5 * 2 ** min(attempt, 5)))

    async def _write(self, entries: list[LogEntry]) -> None:
        async def send() -> None:
            futures = [
                await kafka.send(
                    self._producer,
                    self.settings.topics.delivery_log,
                    self.logs.encode(e),
                    key=e.message_id.encode() if e.message_id else None,
                )
                for e in entries
            ]
            await asyncio.gather(*futures)

        # Sent again whole after a failure: an entry written twice reads as once in every view.
        await self._patiently("delivery-log write", send)
        for e in entries:  # seen at once; the follower will bring the same entries back
            self.view.apply(e)

    def _receipt_entry(self, value: bytes, headers: Any) -> LogEntry:
        signer = self._verifier.verify(value, headers)
        header, body = self.envelopes.decode(value)
        form = self._receipt_form
        record = codec.decode(body, lambda _fp: form.wire_parsed)
        if header.event_type != RECEIPT or record["recipient"] != signer:
            raise CbxError(f"receipt signed by {signer} is about another recipient")
        subject = str(record["subject_message_id"])
        known = self.view.messages.get(subject)
        # Only a recipient of the message may say what became of it: the router logged ROUTED
        # for each, in the transaction that wrote its inbox copy, so a genuine recipient is known.
        if known is None or signer not in known.recipients:
            raise NotARecipientError(f"{signer} is not a recipient of message {subject}")
        return LogEntry(
            message_id=subject,
            status=_RECEIPT_STATUS[record["status"]],
            at=record["at"],
            event_type=known.event_type,
            sender=known.sender,
            recipient=signer,
            role=str(header.sender_role),
            case_ref=header.case_ref,
            urgency=header.urgency,
            reason=record["reason"],
            related_message_id=str(header.message_id),
            writer="tracker",
        )

    async def _receipts(self) -> None:
        while not self.stop_event.is_set():
            batch = await self._consumer.getmany(timeout_ms=200, max_records=500)
            entries: list[LogEntry] = []
            waiting = self._take_receipts([r for rs in batch.values() for r in rs], entries)
            if waiting:
                await self._after_routed(waiting, entries)
            if entries:
                await self._write(entries)
            if batch:
                await self._patiently("receipts commit", self._consumer.commit)

    def _take_receipts(
        self, records: list[Any], entries: list[LogEntry]
    ) -> list[tuple[Any, NotARecipientError]]:
        """Add the entries of ``records`` to ``entries``; return the receipts from an agency this
        view does not know yet as a recipient (their ROUTED entries may be on their way), each
        with what was said of it."""
        waiting = []
        for r in records:
            try:
                entries.append(self._receipt_entry(r.value, list(r.headers)))
            except NotARecipientError as exc:
                waiting.append((r, exc))
            except Exception as exc:  # one receipt's failure is its own: log, go on
                self._rejected(r, exc)
        return waiting

    async def _after_routed(
        self, waiting: list[tuple[Any, NotARecipientError]], entries: list[LogEntry]
    ) -> None:
        """Judge receipts that came before their message's ROUTED entries reached this view.

        The router writes a message's inbox copies and its ROUTED entries in one transaction,
        but the commit markers reach each partition separately: the recipient may read its copy
        and answer before the delivery log's marker is written, and a catch-up at that moment
        stops short of the entries. Such receipts were rejected and lost (the message never
        showed DELIVERED or ACKNOWLEDGED). So the view catches up again, with a growing pause,
        for up to ``RECEIPT_WAIT_S`` a batch; only then is a receipt judged not a recipient's.
        The wait is per batch, not per receipt, so receipts about unknown messages cost one
        wait at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECEIPT_WAIT_S
        pause = 0.05
        while True:
            await self._patiently("delivery-log catch-up", self._log_follower.sync)
            still = self._take_receipts([r for r, _ in waiting], entries)
            if not still:
                return
            if loop.time() >= deadline:
                for r, exc in still:
                    self._rejected(r, exc)
                return
            waiting = still
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)

    def _rejected(self, record: Any, exc: BaseException) -> None:
        log.warning(
            "receipt_rejected",
            offset=record.offset,
            error_class=type(exc).__name__,
            error=str(exc) if isinstance(exc, CbxError) else "",
        )

    async def check_deadlines(self, now: dt.datetime | None = None) -> int:
        """Escalate what is overdue; returns how many recipients were escalated."""
        now = now or dt.datetime.now(dt.UTC)
        entries = []
        for m, agency in self.view.overdue(now):
            r = m.recipients[agency]
            common: dict[str, Any] = {
                "message_id": m.message_id,
                "at": now,
                "event_type": m.event_type,
                "sender": m.sender,
                "recipient": agency,
                "role": r.role,
                "case_ref": m.case_ref,
                "urgency": m.urgency,
                "ack_deadline": m.ack_deadline,
                "writer": "tracker",
            }
            due = m.ack_deadline.isoformat() if m.ack_deadline else "?"
            reason = (
                f"{m.urgency} {m.event_type} not acknowledged by {agency} "
                f"(last state {r.status}) by {due}"
            )
            entries.append(LogEntry(status=Status.OVERDUE, reason=reason, **common))
            entries.append(LogEntry(status=Status.ESCALATED, reason=reason, **common))
            log.error(
                "acknowledgement_overdue_escalated",
                message_id=m.message_id,
                event_type=m.event_type,
                recipient=agency,
                urgency=m.urgency,
                case_ref=m.case_ref,
                last_state=str(r.status),
            )
        if entries:
            await self._write(entries)
        return len(entries) // 2

    async def _known_status_topics(self, wanted: set[str]) -> set[str]:
        """Which of ``wanted`` exist (asked again at most every 10 s while some are missing)."""
        missing = wanted - self._status_topics
        now = asyncio.get_running_loop().time()
        if missing and now - self._status_checked > 10:
            self._status_checked = now
            admin = kafka.admin(self.settings)
            await admin.start()
            try:
                prefix = self.settings.topics.status_prefix
                self._status_topics = {t for t in await admin.list_topics() if t.startswith(prefix)}
            finally:
                await admin.close()
            for t in sorted(missing - self._status_topics):
                log.warning("status_topic_missing", topic=t, hint="run cbx agency add again")
        return wanted & self._status_topics

    async def _mirror(self) -> None:
        """Copy each delivery-log entry to its sender's status topic, so the sender's connector
        can tell its agency's system what became of a message (at least once; the view folds
        repeats)."""
        topics = self.settings.topics
        while not self.stop_event.is_set():
            batch = await self._mirror_consumer.getmany(timeout_ms=200, max_records=1000)
            pending: list[tuple[str, bytes | None, bytes]] = []
            for records in batch.values():
                for r in records:
                    try:
                        entries = self.logs.entries(r.value)
                    except Exception as exc:  # one entry's failure is its own
                        log.warning(
                            "log_entry_unreadable", offset=r.offset, error_class=type(exc).__name__
                        )
                        continue
                    for entry in entries:
                        # A record holding one entry is copied as it is; one holding a message's
                        # ACCEPTED and ROUTED entries is copied entry by entry, so a status
                        # topic has one entry a record, as its readers have always read it.
                        value = r.value if len(entries) == 1 else self.logs.encode(entry)
                        for agency in _told(entry):
                            if topics.is_agency_id(agency) and not agency.startswith(
                                SERVICE_PREFIX
                            ):
                                pending.append((topics.status(agency), r.key, value))

            async def copy(pending: list[tuple[str, bytes | None, bytes]] = pending) -> None:
                known = await self._known_status_topics({t for t, _, _ in pending})
                todo = [p for p in pending if p[0] in known]
                futures = [
                    await kafka.send(self._producer, t, value, key=key) for t, key, value in todo
                ]
                results = await asyncio.gather(*futures, return_exceptions=True)
                failed = [
                    p for p, res in zip(todo, results, strict=True) if isinstance(res, Exception)
                ]
                if failed:
                    # One agency's status topic refused (held off while it is moved, or made
                    # again with fewer partitions): only the copies that failed are tried again,
                    # after a fresh look at the topics, and the tracker goes on.
                    pending[:] = failed
                    await self._producer.client.force_metadata_update()
                    errors = sorted({type(r).__name__ for r in results if isinstance(r, Exception)})
                    raise KafkaUnavailableError(
                        f"{len(failed)} status copies not written ({', '.join(errors)}) to "
                        f"{', '.join(sorted({t for t, _, _ in failed}))}"
                    )

            await self._patiently("status copies", copy)
            if batch:
                await self._patiently("status commit", self._mirror_consumer.commit)

    async def _deadlines(self) -> None:
        while not self.stop_event.is_set():
            await self._patiently("escalations", self.check_deadlines)
            # A reminder sent again after a failure has the same message id: routed once.
            await self._patiently("reminders", self.check_obligations)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), self.check_every_s)

    async def run(self) -> None:
        keys = await ensure_identity(
            self.settings, TRACKER, "cbx delivery tracker", "SERVICE", publish=False
        )
        self._signer = Signer(keys)
        self._sealer = Sealer(keys, self.directory, SharingPolicy.load(), self.forms)
        async with kafka.access(self.settings):
            with heap.loading("tracker views"):
                for f in self._followers:
                    await f.start()
            self._producer = kafka.producer(self.settings)
            await self._producer.start()
            self._consumer = kafka.consumer(
                self.settings,
                self.settings.topics.receipts,
                group_id=self.settings.topics.group("tracker"),
            )
            await self._consumer.start()
            self._mirror_consumer = kafka.consumer(
                self.settings,
                self.settings.topics.delivery_log,
                group_id=self.settings.topics.group("tracker-status"),
            )
            await self._mirror_consumer.start()
        self.ready.set()
        log.info("tracker_started", messages=len(self.view.messages))
        try:
            async with kafka.access(self.settings):
                await asyncio.gather(self._receipts(), self._deadlines(), self._mirror())
        finally:
            await self._mirror_consumer.stop()
            await self._consumer.stop()
            await self._producer.stop()
            for f in self._followers:
                await f.stop()
            log.info("tracker_stopped")


async def serve(settings: KafkaSettings, health: tuple[str, int] | None = None) -> None:
    """``cbx tracker``: run until SIGTERM or SIGINT, then finish the receipts in hand, commit,
    and return (exit 0). A second signal exits at once. ``health``: serve /healthz and /readyz
    on that address."""
    from broker.health import serve_health, stop_on_signals

    service = TrackerService(settings)
    server = None
    if health is not None:
        server = await serve_health(*health, "tracker", service.ready.is_set)
    stop_on_signals(service.stop_event, "tracker")
    try:
        await service.run()
    finally:
        if server is not None:
            server.close()
