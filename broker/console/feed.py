"""Kafka to the console's view: the topics it follows, the audit topic it writes, and the
consumer lag it samples. The console connects as the operator principal and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from broker.delivery_log import LogCodec
from broker.directory import DirectoryCodec
from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger
from broker.router import deadletter
from broker.schema import codec
from broker.schema.catalogue import Catalogue
from broker.schema.store import SchemaStore

from .store import Action, DeadLetterRow, ViewStore

log = get_logger("console")

AUDIT_SCHEMA = "OperatorAction"


class ActionCodec:
    def __init__(self, catalogue: Catalogue) -> None:
        self._v = catalogue.latest(AUDIT_SCHEMA)
        self._store = SchemaStore(catalogue)

    def encode(self, a: Action) -> bytes:
        return codec.encode(self._v.parsed, self._v.fingerprint, a.to_record())

    def decode(self, data: bytes) -> Action:
        return Action.from_record(codec.decode(data, self._store.writer_for, self._v.parsed))


class AuditLog:
    """Writes every operator action to the audit topic, then into the view at once (so the page
    an operator lands on shows it); the follower reading it back changes nothing."""

    def __init__(self, settings: KafkaSettings, store: ViewStore, catalogue: Catalogue) -> None:
        self.settings = settings
        self.store = store
        self.codec = ActionCodec(catalogue)
        self._producer: Any = None

    async def start(self) -> None:
        self._producer = kafka.producer(self.settings)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def record(self, actor: str, action: str, outcome: str = "DONE", **kw: Any) -> Action:
        a = Action(
            action_id=str(uuid.uuid4()),
            at=dt.datetime.now(dt.UTC),
            actor=actor[:200],
            action=action,
            outcome=outcome,
            **kw,
        )
        await self._producer.send_and_wait(
            self.settings.topics.audit, self.codec.encode(a), key=a.actor.encode()
        )
        self.store.apply_actions([a], self.settings.topics.audit, {})
        log.info(
            "operator_action",
            actor=a.actor,
            action=action,
            outcome=outcome,
            reason=a.reason,
            message_id=a.message_id,
            target=a.target,
        )
        return a


@dataclass
class FeedState:
    """How far the view is behind its topics, for the board and /readyz."""

    caught_up: bool = False
    read: int = 0
    skipped: int = 0
    last_batch_at: float | None = None
    failing: str | None = None
    """Why the view could not store its last batch (it retries), or None."""
    lag: dict[str, int] = field(default_factory=dict)


class Feed:
    """Follows the delivery log, dead letters, the audit topic and the directory into the view,
    from the offsets the view has stored (from the beginning when the view is new)."""

    def __init__(self, settings: KafkaSettings, store: ViewStore, catalogue: Catalogue) -> None:
        self.settings = settings
        self.store = store
        t = settings.topics
        self.topics = [t.delivery_log, t.deadletter, t.audit, t.directory]
        self.logs = LogCodec(catalogue)
        self.actions = ActionCodec(catalogue)
        self.directory = DirectoryCodec(catalogue)
        self.state = FeedState()
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._tps: list[TopicPartition] = []
        self._applied: dict[TopicPartition, int] = {}
        self._progress = asyncio.Event()

    async def start(self) -> None:
        self._consumer = kafka.consumer(self.settings, group_id=None)
        await self._consumer.start()
        for topic in self.topics:
            for p in await kafka.partitions(self.settings, topic):
                self._tps.append(TopicPartition(topic, p))
        self._consumer.assign(self._tps)
        await self._rewind()
        for tp in self._tps:
            self._applied[tp] = await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name="console feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=300, max_records=20_000)
            if batch:
                try:
                    await asyncio.to_thread(self._apply, batch)
                except Exception as exc:
                    # The view could not take the batch (a full disk, a locked file): what was
                    # stored stands with its offsets, so read again from there after a pause.
                    self.state.failing = type(exc).__name__
                    log.error("console_view_write_failed", error_class=type(exc).__name__)
                    await asyncio.sleep(2)
                    await self._rewind()
                    continue
                self.state.failing = None
                self.state.last_batch_at = time.time()
            # The position, not the last record: a transaction's commit marker takes an offset.
            for tp in self._tps:
                self._applied[tp] = await self._consumer.position(tp)
            self._progress.set()

    async def _rewind(self) -> None:
        """Back to the offsets the view stored (the start, where it stored none)."""
        for topic in self.topics:
            stored = self.store.offsets(topic)
            for tp in self._tps:
                if tp.topic != topic:
                    continue
                if tp.partition in stored:
                    self._consumer.seek(tp, stored[tp.partition])
                else:
                    await self._consumer.seek_to_beginning(tp)

    def _apply(self, batch: dict[TopicPartition, list[Any]]) -> None:
        by_topic: dict[str, list[tuple[int, list[Any]]]] = defaultdict(list)
        for tp, records in batch.items():
            by_topic[tp.topic].append((tp.partition, records))
        t = self.settings.topics
        for topic, parts in by_topic.items():
            positions = {p: records[-1].offset + 1 for p, records in parts}
            records = [r for _p, rs in parts for r in rs]
            self.state.read += len(records)
            if topic == t.delivery_log:
                self.store.apply_log(
                    [e for es in self._decode(records, self.logs.entries) for e in es],
                    topic,
                    positions,
                )
            elif topic == t.audit:
                self.store.apply_actions(
                    self._decode(records, self.actions.decode), topic, positions
                )
            elif topic == t.deadletter:
                self.store.apply_dead_letters(
                    [self._dead_letter(r) for r in records], topic, positions
                )
            elif topic == t.directory:
                self.store.apply_directory(
                    self._decode(records, self._directory_row), topic, positions
                )

    def _decode(self, records: list[Any], decode: Any) -> list[Any]:
        out = []
        for r in records:
            if r.value is None:
                continue
            try:
                out.append(decode(r.value))
            except Exception as exc:  # one unreadable record must not stop the view
                self.state.skipped += 1
                log.warning(
                    "console_record_skipped",
                    topic=r.topic,
                    partition=r.partition,
                    offset=r.offset,
                    error_class=type(exc).__name__,
                )
        return out

    def _dead_letter(self, r: Any) -> DeadLetterRow:
        d = deadletter.parse(r)
        return DeadLetterRow(
            id=d.id,
            at=d.at,
            topic=d.topic,
            sender=self.settings.topics.owner_of_outbound(d.topic)
            if d.topic.startswith(self.settings.topics.outbound_prefix)
            else "",
            stage=d.stage,
            reason=d.reason,
            error_class=d.error_class,
            error=d.error,
            message_id=d.message_id,
            writer=d.writer,
        )

    def _directory_row(self, value: bytes) -> dict[str, Any]:
        e = self.directory.decode(value)
        return {
            "agency": e.agency,
            "name": e.name,
            "kind": e.kind,
            "keys": [
                {
                    "use": use,
                    "key_id": k.key_id,
                    "not_before": k.not_before.isoformat(),
                    "not_after": k.not_after.isoformat(),
                }
                for use, ks in (("encryption", e.encryption_keys), ("signing", e.signing_keys))
                for k in ks
            ],
            "updated": e.updated_at.timestamp(),
        }

    async def sync(self, timeout_s: float = 60.0) -> None:
        """Return once everything committed to the followed topics before the call is in the
        view."""
        end = await self._consumer.end_offsets(self._tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            behind = sum(max(0, end[tp] - self._applied.get(tp, 0)) for tp in self._tps)
            if behind == 0:
                self.state.caught_up = True
                return
            if loop.time() > deadline:
                raise TimeoutError(f"the console view is {behind} records behind its topics")
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), 0.5)


@dataclass
class GroupLag:
    group: str
    lag: int
    committed: int
    end: int
    progressed_at: float | None = None
    """When its committed offsets were last seen to move (None: not since the console started)."""


async def lags(settings: KafkaSettings, agencies: list[str]) -> dict[str, GroupLag]:
    """Consumer lag of each agency's inbox group, the router and the tracker (read_committed
    end offsets minus committed offsets; a partition never committed counts from its start)."""
    t = settings.topics
    admin = kafka.admin(settings)
    consumer = kafka.consumer(settings, group_id=None)
    out: dict[str, GroupLag] = {}
    try:
        await admin.start()
        await consumer.start()
        wanted: dict[str, tuple[str, list[str]]] = {
            a: (t.agency_group(a, "inbox"), [t.inbox(a)]) for a in agencies
        }
        wanted["router"] = (t.group("router"), [t.outbound(a) for a in agencies])
        wanted["tracker"] = (t.group("tracker"), [t.receipts])
        # One metadata request and one pair of offset requests for every topic, however many
        # agencies: this runs every few seconds.
        names = sorted({topic for _g, topics in wanted.values() for topic in topics})
        parts = {
            d["topic"]: [p["partition"] for p in d.get("partitions", [])]
            for d in await admin.describe_topics(names)
            if not d.get("error_code")
        }
        every = [TopicPartition(topic, p) for topic in names for p in parts.get(topic, [])]
        if not every:
            return out
        end = await consumer.end_offsets(every)
        begin = await consumer.beginning_offsets(every)
        for name, (group, topics) in wanted.items():
            tps = [TopicPartition(topic, p) for topic in topics for p in parts.get(topic, [])]
            if not tps:
                continue
            try:
                committed = await admin.list_consumer_group_offsets(group)
            except Exception as exc:
                log.warning("console_lag_unavailable", group=group, error_class=type(exc).__name__)
                continue
            done = sum(
                committed[tp].offset if tp in committed and committed[tp].offset >= 0 else begin[tp]
                for tp in tps
            )
            total = sum(end[tp] for tp in tps)
            out[name] = GroupLag(group, max(0, total - done), done, total)
    finally:
        await consumer.stop()
        await admin.close()
    return out
