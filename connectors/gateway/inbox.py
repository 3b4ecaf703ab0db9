"""The inbox: an agency's messages from the exchange, verified, opened and handed to its system.

Each record's failure is that record's outcome, never the inbox's: a record that cannot be
verified, decoded or opened, that the agency's profile does not take, or that the agency's system
refuses for good is quarantined (kept as it arrived, see :mod:`connectors.gateway.quarantine`)
and, when its header can be read, answered with a signed REJECTED receipt carrying a reason code
(never a value), so the sender and the tracker know at once. Then the next record is handled.

Only transient failures are retried: the agency's system being down (the webhook sink retries with
backoff) and Kafka not taking receipts or the commit (retried here with backoff, the batch is not
committed until its receipts are out). Anything else is a fault of the inbox itself: the task ends,
logs why at CRITICAL and calls ``on_fatal`` so the process exits non-zero and is restarted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiokafka.errors import CommitFailedError, KafkaError

from broker.envelope import Header, Outgoing
from broker.errors import CbxError, PolicyError, ProtectionError, SignatureError
from broker.kafka import clients as kafka
from broker.kafka import lanes
from broker.kafka.settings import KafkaSettings
from broker.kafka.stall import STALL_S, StallWatch
from broker.kafka.topics import Topics
from broker.logging import get_logger
from broker.model import ROUTE_GAP_NOTICE, ROUTER, Recipient, Role, Withheld
from broker.policy.profiles import Profile
from broker.policy.routing import Rules
from broker.policy.sharing import SharingPolicy
from connectors.gateway.delivered import DeliveredStore
from connectors.gateway.quarantine import Quarantine

log = get_logger("inbox")
#: Bulk records handed over between two looks at the urgent lane.
LANE_CHECK_EVERY = 10
#: Records (and their bytes) of an inbox without a lane handed over between two commits, at most,
#: when more are taken in to find the urgent ones among them.
UNLANED_BATCH_MOST = 5_000
UNLANED_BATCH_BYTES = 16 * 1024 * 1024
#: The longest the broker may hold an inbox fetch that finds nothing new (aiokafka's default is
#: 500 ms); each empty fetch at idle is one request: ten a second per connector.
INBOX_FETCH_WAIT_MS = 100


class SinkRefused(Exception):
    """The agency's system refused a message for good (not a passing failure): quarantine it."""


@dataclass
class Delivered:
    """A message opened for this agency: header, and body with withheld fields marked."""

    header: Header
    body: dict[str, Any]
    topic: str
    partition: int
    offset: int


Sink = Callable[[Delivered], Awaitable[None]]


class Gateway(Protocol):
    """What the inbox needs of its connector."""

    agency: str
    settings: KafkaSettings
    topics: Topics
    profile: Profile
    protector: Any
    quarantine: Quarantine
    stats: Any
    state_dir: Path
    policy: SharingPolicy
    rules: Rules

    def open(self, value: bytes, headers: Any) -> tuple[Header, dict[str, Any]]: ...
    def make_receipt(self, subject: Header, status: str, reason: str | None = None) -> Outgoing: ...
    async def receipt(
        self, subject: Header, status: str, reason: str | None = None
    ) -> Outgoing: ...
    async def send_receipts(self, receipts: list[Outgoing]) -> None: ...

    @property
    def prepare(self) -> Callable[..., Outgoing]: ...

    async def publish(self, batch: list[Outgoing]) -> list[Outgoing]: ...


#: Reason codes of a REJECTED receipt and of a quarantined record.
UNDECODABLE = "undecodable"
BAD_SIGNATURE = "bad-signature"
UNOPENABLE = "unopenable"
OUTSIDE_PROFILE = "outside-profile"
SINK_REFUSED = "sink-refused"
MISSING_KEY = "missing-key"
REPAIR_FAILED = "repair-failed"


def reason_for(exc: BaseException) -> str:
    """The reason code of a failure to open a record."""
    if isinstance(exc, SignatureError):
        return BAD_SIGNATURE
    if isinstance(exc, ProtectionError):
        return UNOPENABLE
    return UNDECODABLE


def detail_of(exc: BaseException) -> str:
    """What may be said of a failure: cbx's own messages (which never carry values), else the
    class of a foreign exception alone (its text might)."""
    return str(exc) if isinstance(exc, CbxError) else type(exc).__name__


class Inbox:
    """Consumes one agency's inbox topic for its connector."""

    def __init__(self, connector: Gateway) -> None:
        self.connector = connector
        self.delivered = DeliveredStore(
            connector.state_dir / "delivered.jsonl", connector.protector.envelopes
        )
        #: Handed over in the batch in hand, not yet recorded, by id.
        self._batch: dict[str, Header] = {}
        #: Of those, the ones not acknowledged yet (acknowledgeable before the batch is recorded).
        self._unrecorded: dict[str, Header] = {}
        self.task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None
        self.retry_base_s = 0.2
        self.retry_max_s = 10.0
        self._consumer: Any = None
        #: How long a partition may have records waiting before its consumer is replaced.
        self.stall_s = STALL_S

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    # --- one record ---------------------------------------------------------------------------

    async def handle(self, record: Any, sink: Sink | None, receipts: list[Outgoing]) -> None:
        """Verify, open and dispatch one record; its receipt is added to ``receipts``."""
        c = self.connector
        try:
            header, body = c.open(record.value, list(record.headers or []))
        except Exception as exc:  # this record's failure: keep it, say so, go on
            self._reject(record, self._header_of(record), reason_for(exc), exc, receipts)
            return
        if not c.profile.may_receive(header.event_type):
            problem = PolicyError(f"a {c.profile.kind} does not take {header.event_type}")
            self._reject(record, header, OUTSIDE_PROFILE, problem, receipts)
            return
        missing = self._missing_keys(header, body)
        if missing:
            unsealed = ProtectionError(
                f"no data key for {', '.join(missing)} fields, which this agency's role may read: "
                "the sender did not seal them for it"
            )
            self._reject(record, header, MISSING_KEY, unsealed, receipts)
            return
        if header.event_type == ROUTE_GAP_NOTICE:
            if header.sender != ROUTER:
                log.warning("notice_not_from_router", sender=header.sender)
                c.quarantine.keep(record, "notice-not-from-router", "PolicyError")
                return
            try:
                await self.repair(body)
            except CbxError as exc:
                if exc.retriable:
                    raise
                log.error("route_gap_repair_failed", error=str(exc), offset=record.offset)
                c.quarantine.keep(record, REPAIR_FAILED, type(exc).__name__, detail=str(exc))
            return
        mid = str(header.message_id)
        if self.delivered.handed(mid) or mid in self._batch:
            # Read again because its batch was not committed (the group moved on during an
            # outage, or the process stopped): the agency's system has it already. Its receipt
            # goes again, in case the first never left; the tracker reads a repeat as once.
            log.info("inbox_repeat_not_handed_again", message_id=mid, offset=record.offset)
            receipts.append(c.make_receipt(header, "DELIVERED"))
            return
        if sink is not None:
            try:
                await sink(Delivered(header, body, record.topic, record.partition, record.offset))
            except SinkRefused as exc:
                self._reject(record, header, SINK_REFUSED, exc, receipts)
                return
        c.stats.delivered += 1
        self._batch[mid] = header
        # Acknowledgeable from now on, although the batch is not recorded yet.
        self._unrecorded[mid] = header
        receipts.append(c.make_receipt(header, "DELIVERED"))

    def _missing_keys(self, header: Header, body: dict[str, Any]) -> list[str]:
        """Classes withheld from this agency although one of its roles here may read them."""
        c = self.connector
        roles = {r.role for r in header.recipients if r.agency == c.agency}
        return sorted(
            {
                str(v.sensitivity)
                for v in body.values()
                if isinstance(v, Withheld)
                and roles & c.policy.audience(header.event_type, v.sensitivity)
            }
        )

    def _header_of(self, record: Any) -> Header | None:
        """The record's header if its envelope decodes and names this agency, else None."""
        try:
            header: Header = self.connector.protector.envelopes.decode(record.value)[0]
        except Exception:
            return None
        if self.connector.agency not in header.recipient_agencies():
            return None
        return header

    def _reject(
        self,
        record: Any,
        header: Header | None,
        reason: str,
        exc: BaseException,
        receipts: list[Outgoing],
    ) -> None:
        c = self.connector
        c.stats.rejected += 1
        message_id = str(header.message_id) if header else None
        kept = c.quarantine.keep(record, reason, type(exc).__name__, message_id, detail_of(exc))
        log.warning(
            "inbox_record_quarantined",
            reason=reason,
            error_class=type(exc).__name__,
            message_id=message_id,
            source=kept.source,
        )
        if header is not None:
            receipts.append(c.make_receipt(header, "REJECTED", f"{reason}: {detail_of(exc)}"))

    # --- route-gap repair ---------------------------------------------------------------------

    async def repair(self, notice: dict[str, Any]) -> Outgoing | None:
        """Re-send a message of ours to the recipients a route-gap notice says it missed."""
        c = self.connector
        original = bytes(notice["original"])
        header, body_bytes = c.protector.envelopes.decode(original)
        if header.sender != c.agency:
            raise ProtectionError("route-gap notice about a message this agency did not send")
        _, body = c.protector.opener.open(body_bytes, header.message_id, header.schema_fingerprint)
        missing = [Recipient(m["agency"], Role(m["role"])) for m in notice["missing"]]
        out = c.prepare(
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
        await c.publish([out])
        c.stats.repaired += 1
        c.stats.repairs.append(
            (str(header.message_id), str(out.header.message_id), [m.agency for m in missing])
        )
        log.info(
            "route_gap_repaired",
            message_id=str(header.message_id),
            repair_message_id=str(out.header.message_id),
            missing=[m.agency for m in missing],
        )
        return out

    async def acknowledge(self, message_id: str | uuid.UUID) -> Outgoing:
        """The agency's system confirms it has seen and acted on a message.

        A system may acknowledge as soon as the sink has handed it a message, before the rest
        of the batch is handed over and recorded: the header is in hand then. While the sink is
        still handing it over (a webhook answered 503 and is being retried) the system has not
        taken it, and an acknowledgement is refused."""
        mid = str(message_id)
        subject = self.delivered.get(mid) or self._unrecorded.get(mid)
        if subject is None:
            raise PolicyError(
                f"message {message_id} was not delivered to {self.connector.agency}, "
                "or was acknowledged already"
            )
        out = await self.connector.receipt(subject, "ACKNOWLEDGED")
        self.delivered.acknowledged(mid)
        self._unrecorded.pop(mid, None)
        return out

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, sink: Sink | None = None, group: str | None = None) -> None:
        """Consume the inbox until cancelled (committing after each handled batch). A consumer
        that stops fetching a partition with records waiting is replaced (see
        :mod:`broker.kafka.stall`); one that cannot start while brokers are down is tried again."""
        attempt = 0
        while True:
            consumer = self._new_consumer(group)
            self._consumer = consumer
            try:
                async with kafka.access(self.connector.settings):
                    await consumer.start()
                    attempt = 0
                    stalled = await self._consume(consumer, sink)
                log.warning(
                    "inbox_consumer_renewed",
                    reason="stalled",
                    partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in stalled),
                )
            except (CbxError, KafkaError) as exc:
                # A commit refused because the group moved on (a session that outlived a long
                # outage) leaves the batch uncommitted: a new consumer reads it again.
                if not (kafka.transient(exc) or isinstance(exc, CommitFailedError)):
                    raise
                attempt += 1
                await self._back_off("inbox_start_retry", attempt, exc)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                self._consumer = None

    def _new_consumer(self, group: str | None) -> Any:
        c = self.connector
        return kafka.consumer(
            c.settings,
            c.topics.inbox(c.agency),
            group_id=group or c.topics.agency_group(c.agency, "inbox"),
            # The router writes inboxes in transactions, and a read_committed fetch is answered
            # when its wait runs out, not when a commit makes records visible: the wait bounds
            # how long an urgent message sits in the lane before it is fetched.
            fetch_max_wait_ms=INBOX_FETCH_WAIT_MS,
        )

    async def _consume(self, consumer: Any, sink: Sink | None) -> list[Any]:
        """Hand over and commit batch after batch; return the stalled partitions when the
        consumer has stopped fetching some."""
        watch = StallWatch(self.stall_s)
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            receipts: list[Outgoing] = []
            await self._deliver(consumer, batch, sink, receipts)
            await self._finish(consumer, receipts, bool(batch))
            if watch.due():
                watch.stall_s = self.stall_s
                stalled = await watch.look(consumer)
                if stalled:
                    return stalled

    async def _deliver(
        self,
        consumer: Any,
        batch: dict[Any, list[Any]],
        sink: Sink | None,
        receipts: list[Outgoing],
    ) -> None:
        """Hand a fetch to the agency's system, the urgent lane first; between every
        ``LANE_CHECK_EVERY`` bulk records, whatever reached the lane meanwhile goes first. An
        inbox without a lane puts its urgent messages first instead (``_deliver_unlaned``)."""

        def partitions(tp: Any) -> int:
            return len(consumer.partitions_for_topic(tp.topic) or ())

        def lane(tp: Any) -> bool:
            return lanes.read_first(tp.partition, partitions(tp))

        for tp, records in sorted(batch.items(), key=lambda item: not lane(item[0])):
            if not lanes.has_lane(partitions(tp)):
                await self._deliver_unlaned(consumer, tp, records, sink, receipts)
                continue
            urgent = lane(tp)
            for i, r in enumerate(records):
                if not urgent and i and i % LANE_CHECK_EVERY == 0:
                    lane_tps = [t for t in consumer.assignment() if lane(t)]
                    if lane_tps:
                        waiting = await self._fetched(consumer, lane_tps)
                        for more in waiting.values():
                            for m in more:
                                await self.handle(m, sink, receipts)
                await self.handle(r, sink, receipts)
                if not urgent:
                    await asyncio.sleep(0)  # the client fetches the lane meanwhile (_fetched)

    async def _deliver_unlaned(
        self,
        consumer: Any,
        tp: Any,
        records: list[Any],
        sink: Sink | None,
        receipts: list[Outgoing],
    ) -> None:
        """Hand over a fetch of an inbox without a lane (a small agency's one partition), the
        messages that would travel a lane first. What the client has fetched of the partition
        since is taken in every ``LANE_CHECK_EVERY`` records (up to ``UNLANED_BATCH_MOST``
        records or ``UNLANED_BATCH_BYTES`` in all), so an urgent message behind a backlog of
        others' bulk goes next, not after it. Urgent messages keep their order among themselves,
        as do the others: an episode's messages all count as urgent, so a found report never
        goes before its missing report."""
        urgent: collections.deque[Any] = collections.deque()
        other: collections.deque[Any] = collections.deque()

        taken = [0, 0]  # records, bytes

        def take(more: list[Any]) -> None:
            for r in more:
                (urgent if self._travels_lane(r) else other).append(r)
                taken[0] += 1
                taken[1] += len(r.value or b"")

        take(records)
        handed = 0
        while urgent or other:
            room = taken[0] < UNLANED_BATCH_MOST and taken[1] < UNLANED_BATCH_BYTES
            if handed and handed % LANE_CHECK_EVERY == 0 and room:
                take((await self._fetched(consumer, [tp])).get(tp, []))
            await self.handle((urgent or other).popleft(), sink, receipts)
            handed += 1
            await asyncio.sleep(0)  # the client fetches meanwhile (see _fetched)

    @staticmethod
    async def _fetched(consumer: Any, tps: list[Any]) -> dict[Any, list[Any]]:
        """What the client has fetched of ``tps`` since, without waiting for more. It fetches on
        the event loop, which a run of records handed to a sink that never waits would not give
        it: let it run once first."""
        await asyncio.sleep(0)
        result: dict[Any, list[Any]] = await consumer.getmany(*tps, timeout_ms=0)
        return result

    def _travels_lane(self, record: Any) -> bool:
        """Whether ``record`` would travel an urgent lane (an inbox without one reads its
        envelope's header to know; a record whose header cannot be read is not urgent, and is
        refused in its turn)."""
        header = self._header_of(record)
        return header is not None and self.connector.rules.urgent_lane(
            header.event_type, header.urgency
        )

    async def _finish(self, consumer: Any, receipts: list[Outgoing], commit: bool) -> None:
        """Send a batch's receipts, then commit it; transient failures are retried with backoff."""
        # What was delivered is on disk before its DELIVERED receipts go out, so the agency's
        # system can acknowledge it even after a restart.
        self._record_batch()
        attempt = 0
        while True:
            try:
                await self.connector.send_receipts(receipts)
                if commit:
                    await consumer.commit()
                return
            except (CbxError, OSError, KafkaError) as exc:
                # Brokers down or failing over: wait and try again (the batch is not committed
                # until its receipts are out). Anything else stops the inbox, loudly.
                if not (kafka.transient(exc) or isinstance(exc, OSError)):
                    raise
                attempt += 1
                await self._back_off("inbox_batch_retry", attempt, exc)

    def _record_batch(self) -> None:
        """Put what the batch handed over on disk (it is then known after a restart too)."""
        self.delivered.add_many(list(self._batch.values()))
        self._batch = {}
        self._unrecorded = {}

    async def _back_off(self, event: str, attempt: int, exc: BaseException) -> None:
        """Log a retry and wait before it: exponential, capped, with jitter."""
        delay = min(self.retry_max_s, self.retry_base_s * 2 ** min(attempt, 10))
        log.warning(
            event, attempt=attempt, error_class=type(exc).__name__, retry_in_s=round(delay, 2)
        )
        await asyncio.sleep(random.uniform(delay / 2, delay))

    def start(self, sink: Sink | None = None) -> asyncio.Task[None]:
        """Run the inbox as a task; if it ever fails, log why and call ``on_fatal``."""
        self.task = asyncio.create_task(self.run(sink), name=f"inbox {self.connector.agency}")
        self.task.add_done_callback(self._done)
        return self.task

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        self.failure = exc
        log.critical(
            "inbox_stopped",
            agency=self.connector.agency,
            error_class=type(exc).__name__,
            error=detail_of(exc),
        )
        if self.on_fatal is not None:
            self.on_fatal(exc)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
