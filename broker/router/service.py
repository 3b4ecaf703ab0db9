"""``cbx router``: the router as a Kafka service, exactly once.

Consume-transform-produce runs in Kafka transactions with ``read_committed`` consumers. aiokafka's
``send_offsets_to_transaction`` uses the TxnOffsetCommit version without consumer-group fencing
(KIP-447), so a producer's transactional id alone must fence a zombie. Outbound partitions fall into
a fixed number of buckets (:mod:`broker.router.buckets`), the group assigns whole buckets, and the
router keeps one transactional producer per bucket it owns, with the id ``cbx-router.bucket.<n>``.
Whoever owns a bucket next initialises the same id, which aborts (or completes) the previous owner's
open transaction and fences it, and only then reads the committed offsets of the bucket's
partitions. The producers a router holds are bounded by the bucket count, not by the partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError
from prometheus_client import Counter, Histogram, start_http_server

from broker import env
from broker.admin.identity import ensure_identity
from broker.crypto.sealing import BodyForms, Sealer
from broker.directory import Directory, DirectoryCodec, apply
from broker.health import stop_on_signals
from broker.kafka import clients as kafka
from broker.kafka import lanes
from broker.kafka.follow import TopicFollower
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger
from broker.model import ROUTER
from broker.policy.deadlines import Windows
from broker.policy.registry import placement_follower
from broker.policy.routing import Rules
from broker.policy.sharing import SharingPolicy
from broker.router import buckets as buckets_mod
from broker.router.core import InRecord, Outcome, RouterCore
from broker.router.state import RouterState
from broker.schema.catalogue import Catalogue

log = get_logger("router")
#: Producers initialised at once when partitions are assigned (each is one InitProducerId).
WARM_CONCURRENCY = 32
#: Records of a bulk partition routed in one transaction; urgent lanes are routed between chunks.
BULK_CHUNK = 50
#: How long a stop waits for each client to close.
CLOSE_TIMEOUT_S = 10.0
#: Ended cases removed per sweep step; routing goes on between steps.
SWEEP_CHUNK = 500
#: Cases decoded per step before a sweep (about 50 ms of work; routing goes on between steps).
SETTLE_CHUNK = 500
#: The first sweep after a start waits this long (or the sweep interval, if shorter): the
#: registry is decoded for it, and a restart should route first.
FIRST_SWEEP_S = 60.0

MESSAGES = Counter(
    "cbx_router_messages_total", "Messages read by the router, by outcome", ["outcome"]
)
ROUTED = Counter("cbx_router_routed_total", "Inbox copies written (one per recipient)")
GAPS = Counter("cbx_router_route_gaps_total", "Required recipients left out by senders")
DEAD = Counter("cbx_router_dead_letters_total", "Messages dead-lettered, by reason", ["reason"])
LATENCY = Histogram(
    "cbx_router_latency_seconds",
    "From the record's append to the outbound topic to the commit of its routing",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: RouterService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.service.release(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.service.acquire(list(assigned))


class RouterService:
    """Reads every ``cbx.outbound.*`` topic and routes it through :class:`RouterCore`."""

    def __init__(
        self,
        settings: KafkaSettings,
        group: str = "router",
        windows: Windows | None = None,
        buckets: int | None = None,
    ) -> None:
        self.windows = windows
        #: Transactional producers shared by every router of the group, one per bucket.
        self.buckets = buckets or buckets_mod.configured()
        self.settings = settings
        self.group = settings.topics.group(group)
        self.catalogue = Catalogue.load()
        self.forms = BodyForms(self.catalogue)
        self.rules = Rules.load()
        self.directory = Directory()
        self.dcodec = DirectoryCodec(self.catalogue)
        self.follower = TopicFollower(
            settings, settings.topics.directory, lambda r: apply(self.directory, self.dcodec, r)
        )
        self._last_sync = 0.0
        self.placement_follower: TopicFollower | None = None
        self.state = RouterState()
        self.routed_follower = TopicFollower(settings, settings.topics.routed, self._note_routed)
        #: Partitions rewound since the routed ids were last caught up with.
        self._unsynced: set[TopicPartition] = set()
        self.producers: dict[int, AIOKafkaProducer] = {}  # by bucket
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.lock = asyncio.Lock()
        self.assigned: set[TopicPartition] = set()
        self.generation = 0
        self.stop_event = asyncio.Event()
        self.core: RouterCore | None = None
        self.consumer: Any = None
        self._case_topics: set[str] = set()
        self._case_topics_checked = 0.0
        #: Set once every partition first assigned has its producer (the first message after a
        #: start pays no warm-up).
        self.ready = asyncio.Event()
        self.ended_case_kept = dt.timedelta(days=float(env.get("CBX_ENDED_CASE_DAYS", "90")))
        self.sweep_every_s = float(env.get("CBX_REGISTRY_SWEEP_S", "3600"))
        self._next_sweep = time.monotonic() + min(FIRST_SWEEP_S, self.sweep_every_s)
        self._sweeper: AIOKafkaProducer | None = None
        #: Producers of buckets gone to another instance, being closed.
        self._closing: set[asyncio.Task[None]] = set()

    # --- start-up -----------------------------------------------------------------------------

    def _note_routed(self, record: Any) -> None:
        """A routed-id marker, written by this router or another instance."""
        if record.key is not None:
            value = record.value.decode() if record.value else ""
            # Older markers hold the source position, not an identity: "" (unknown).
            self.state.routed[record.key.decode()] = "" if "/" in value else value

    async def _load_state(self) -> None:
        # Other router instances write here too: the registry keeps the newer record.
        self.placement_follower = placement_follower(
            self.settings, self.catalogue, self.state.registry
        )
        started = time.monotonic()
        # Read side by side. The routed ids are followed, not read once: a partition taken over
        # from another instance must be routed knowing every id its previous owner routed (see
        # _route_batch).
        await asyncio.gather(
            self.placement_follower.start(), self.routed_follower.start(), self.follower.start()
        )
        log.info(
            "router_state_loaded",
            placements=len(self.state.registry),
            routed_ids=len(self.state.routed),
            agencies=len(self.directory.agencies()),
            seconds=round(time.monotonic() - started, 3),
        )

    async def start(self) -> None:
        keys = await ensure_identity(self.settings, ROUTER, "cbx router", "SERVICE", publish=False)
        await self._load_state()
        sealer = Sealer(keys, self.directory, SharingPolicy.load(), self.forms)
        self.core = RouterCore(
            self.catalogue,
            self.forms,
            self.rules,
            self.directory,
            sealer,
            self.state,
            self.settings.topics,
            self.windows,
        )
        self.consumer = kafka.consumer(
            self.settings,
            group_id=self.group,
            metadata_max_age_ms=3000,
            max_poll_records=500,
            session_timeout_ms=10000,
            # Another instance leaving or joining reaches this one at its next heartbeat, and
            # routing pauses from then until the buckets are shared out again: a quarter of a
            # second, not a second, is what an urgent report waits for it.
            heartbeat_interval_ms=250,
            partition_assignment_strategy=(buckets_mod.assignor(self.buckets),),
        )
        self.consumer.subscribe(
            pattern=self.settings.topics.outbound_pattern, listener=_Listener(self)
        )
        await self.consumer.start()

    # --- partition ownership -----------------------------------------------------------------

    def bucket(self, tp: TopicPartition) -> int:
        return buckets_mod.bucket_of(tp.topic, tp.partition, self.buckets)

    def _in_bucket(self, bucket: int) -> list[TopicPartition]:
        """The assigned partitions of ``bucket``."""
        return sorted(t for t in self.assigned if self.bucket(t) == bucket)

    async def _new_producer(self, bucket: int) -> None:
        """(Re)create the transactional producer of ``bucket``.

        InitProducerId with the bucket's transactional id completes or aborts whatever
        transaction a previous owner (or a failed attempt of ours) left open, and fences it.
        """
        old = self.producers.pop(bucket, None)
        if old is not None:
            await self._close_quietly(old)
        producer = kafka.transactional_producer(
            self.settings, f"{self.group}.bucket.{bucket}", linger_ms=2
        )
        await producer.start()
        self.producers[bucket] = producer

    async def _warm(self) -> None:
        """Make the producers of every assigned bucket that has none yet, all at once and
        before their first record: the first message after a start or a rebalance then costs what
        the hundredth does. Each new producer fences the bucket's previous owner, so the bucket's
        partitions are read again from their committed offsets, and anything fetched before that
        is dropped (the generation moves on)."""
        missing = sorted({self.bucket(t) for t in self.assigned} - set(self.producers))
        if not missing:
            if self.generation > 0:  # assigned (perhaps nothing) and every producer made
                self.ready.set()
            return
        started = time.monotonic()
        limit = asyncio.Semaphore(WARM_CONCURRENCY)

        async def one(bucket: int) -> None:
            async with limit:
                await self._new_producer(bucket)

        # Made outside the lock, so a rebalance's callbacks never wait for them (a slow broker
        # would otherwise hold the group past its timeouts). Batches are routed by this same
        # task, so none runs meanwhile; a partition revoked meanwhile keeps its producer, as on
        # any revocation.
        results = await asyncio.gather(*(one(b) for b in missing), return_exceptions=True)
        async with self.lock:
            self.generation += 1
        # Rewound outside the lock: reading committed offsets needs the group coordinator, which
        # may be in a rebalance whose callbacks wait for this lock. Nothing is routed meanwhile
        # (batches are routed by this same task), and what was fetched before is stale by the
        # generation; a partition moved meanwhile is rewound by its new assignment instead.
        made: list[TopicPartition] = []
        failed = 0
        for bucket, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                # Made again on the next round (or the bucket's first batch).
                failed += 1
                log.warning(
                    "producer_warm_up_failed", bucket=bucket, error_class=type(result).__name__
                )
            else:
                made.extend(self._in_bucket(bucket))
        # Together: a seek waits for the consumer's fetch in flight, once for all of them. A
        # rewind that fails drops the producer, so the next round does both again.
        await self._rewind_all(made)
        if failed:
            # The cluster cannot make them now (brokers down): try again in a moment, without
            # saying ready; the router itself carries on and recovers when the brokers return.
            await asyncio.sleep(1.0)
            return
        self.ready.set()
        log.info(
            "producers_ready",
            buckets=len(missing),
            partitions=len(made),
            seconds=round(time.monotonic() - started, 3),
        )

    async def acquire(self, tps: list[TopicPartition]) -> None:
        """Own ``tps``. Producers are made on first use, outside the rebalance callback: making
        dozens here would outlast the session timeout and start the rebalance again."""
        async with self.lock:
            self.generation += 1
            self.assigned |= set(tps)
            # A bucket given to another instance is fenced by its producer there: this one's is
            # closed, so that were the bucket to come back, it is made again (and rewound)
            # before its first transaction rather than failing it.
            ours = {self.bucket(t) for t in self.assigned}
            gone = [self.producers.pop(b) for b in sorted(set(self.producers) - ours)]
            await self._rewind_all([tp for tp in tps if self.bucket(tp) in self.producers])
        for producer in gone:
            task = asyncio.create_task(self._close_quietly(producer))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        log.info("partitions_assigned", partitions=[f"{t.topic}/{t.partition}" for t in tps])

    async def _close_quietly(self, producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            await producer.stop()

    async def _rewind_all(self, tps: list[TopicPartition]) -> None:
        """Rewind ``tps`` with one OffsetFetch for all of them: at national size a router owns
        thousands of partitions, and a request each is thousands of round trips after every
        start and rebalance. Should it fail, each is rewound on its own (which drops a bucket's
        producer when its offset cannot be read)."""
        if not tps:
            return
        try:
            found = await self.consumer._coordinator.fetch_committed_offsets(set(tps))
        except Exception as exc:
            log.info("committed_offsets_not_read_together", error_class=type(exc).__name__)
            await asyncio.gather(*(self._rewind(tp) for tp in tps))
            return

        def offset(tp: TopicPartition) -> int | None:
            meta = found.get(tp)
            return meta.offset if meta is not None and meta.offset >= 0 else None

        await asyncio.gather(*(self._rewind(tp, offset(tp), known=True) for tp in tps))

    async def _rewind(
        self, tp: TopicPartition, committed: int | None = None, known: bool = False
    ) -> None:
        """Position ``tp`` at the next record not yet routed.

        The group's committed offset can lag a transaction this process committed a moment ago
        (its markers are written after EndTxn returns, and aiokafka cannot ask for stable
        offsets), so what this process itself committed wins when it is further on. When the
        committed offset cannot be read (brokers down), the partition's bucket loses its producer:
        the next round makes it again and rewinds the bucket again, and nothing of the bucket is
        routed meanwhile.
        """
        try:
            if not known:  # else ``committed`` was read already (``_rewind_all``)
                committed = await self.consumer.committed(tp)
            ours = self.committed_offsets.get(tp)
            if ours is not None and (committed is None or ours > committed):
                committed = ours
            if committed is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
            self._unsynced.add(tp)
        except IllegalStateError:
            # The assignment changed again while we were here; the next rebalance handles it.
            log.info("partition_moved_during_assignment", partition=f"{tp.topic}/{tp.partition}")
        except Exception as exc:
            log.warning(
                "partition_rewind_failed",
                partition=f"{tp.topic}/{tp.partition}",
                error_class=type(exc).__name__,
            )
            await self._drop_producer(self.bucket(tp))

    async def _drop_producer(self, bucket: int) -> None:
        producer = self.producers.pop(bucket, None)
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), CLOSE_TIMEOUT_S)

    async def _renew(self, bucket: int, rewind: list[TopicPartition]) -> None:
        """Make ``bucket``'s producer (again), which fences any earlier one and ends its open
        transaction, then read ``rewind`` from what was committed. Without brokers to do it, the
        bucket is left without a producer and is tried again on the next round."""
        try:
            await self._new_producer(bucket)
        except Exception as exc:
            log.warning("producer_not_made", bucket=bucket, error_class=type(exc).__name__)
            await self._drop_producer(bucket)
        await self._rewind_all(rewind)

    async def release(self, tps: list[TopicPartition]) -> None:
        # Under the lock: a transaction in progress finishes before its partition is given up.
        # Producers are kept: if the partition comes back, its producer is reused (and if someone
        # else owned it meanwhile and fenced it, the first failed transaction replaces it).
        async with self.lock:
            self.generation += 1
            self.assigned -= set(tps)
        if tps:
            log.info("partitions_revoked", partitions=[f"{t.topic}/{t.partition}" for t in tps])

    async def _writable(self, topic: str) -> bool:
        """False for an agency's cases topic that does not exist (an agency provisioned before
        cases topics existed): its view is skipped, with a warning, rather than the transaction
        waiting for a topic that will not come. Every other topic is written."""
        if not topic.startswith(self.settings.topics.cases_prefix):
            return True
        if topic in self._case_topics:
            return True
        now = time.monotonic()
        if now - self._case_topics_checked > 10:
            self._case_topics_checked = now
            admin = kafka.admin(self.settings)
            await admin.start()
            try:
                prefix = self.settings.topics.cases_prefix
                self._case_topics = {t for t in await admin.list_topics() if t.startswith(prefix)}
            finally:
                await admin.close()
        if topic not in self._case_topics:
            log.warning("cases_topic_missing", topic=topic, hint="run cbx agency add again")
            return False
        return True

    async def _catch_up_directory(self) -> bool:
        """Wait for the directory to include everything published so far (once a second)."""
        now = time.monotonic()
        if now - self._last_sync < 1.0:
            return False
        self._last_sync = now
        await self.follower.sync()
        return True

    # --- ended cases leave the registry ----------------------------------------------------------

    async def _sweep(self) -> int:
        """Remove from the registry the cases whose placement ended more than
        ``CBX_ENDED_CASE_DAYS`` ago: a tombstone on ``cbx.placements`` and on the view of every
        agency that held a copy, which compaction then drops, so no process reads them at start
        any more. At most ``SWEEP_CHUNK`` a step; the next step follows at once when more are due.

        A case placed again while its tombstones were written is active again: followers keep
        it, and its record is written again after them so compaction keeps it too. Several
        router instances may sweep the same case: a tombstone twice is one.
        """
        assert self.core is not None
        assert self.placement_follower is not None
        if self.state.registry.settle(SETTLE_CHUNK):
            return 0  # cases still encoded: decoded a step at a time, then swept
        cutoff = dt.datetime.now(dt.UTC) - self.ended_case_kept
        due = self.state.registry.ended_before(cutoff)
        if not due:
            self._next_sweep = time.monotonic() + self.sweep_every_s
            return 0
        chunk = due[:SWEEP_CHUNK]
        if self._sweeper is None:
            self._sweeper = kafka.producer(self.settings)
            await self._sweeper.start()
        futures = []
        for case in chunk:
            key = case.case_ref.encode()
            views = [self.settings.topics.cases(a) for a in sorted(case.everyone())]
            for topic in [self.settings.topics.placements, *views]:
                if await self._writable(topic):
                    futures.append(await kafka.send(self._sweeper, topic, None, key=key))
        await asyncio.gather(*futures)
        await self.placement_follower.sync()
        again = []
        for case in chunk:
            # Still here once its tombstones were read: placed again meanwhile (followers keep
            # an active case). Its record goes after the tombstones, for compaction to keep.
            current = self.state.registry.get(case.case_ref)
            if current is not None and current.case_ref == case.case_ref:
                again += self.core.placement_outs(current, case)
        for out in again:
            await (await kafka.send(self._sweeper, out.topic, out.value, key=out.key))
        log.info(
            "ended_cases_removed",
            cases=len(chunk),
            tombstones=len(futures),
            placed_again=len({o.key for o in again}),
            remaining=len(due) - len(chunk),
        )
        if len(due) == len(chunk):
            self._next_sweep = time.monotonic() + self.sweep_every_s
        return len(chunk)

    # --- the loop ------------------------------------------------------------------------------

    async def _route_partition(self, tp: TopicPartition, records: list[Any]) -> None:
        assert self.core is not None
        producer = self.producers[self.bucket(tp)]
        outcomes: list[tuple[Outcome, Any]] = []
        try:
            async with producer.transaction():
                futures = []
                for r in records:
                    rec = InRecord(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers))
                    outcome = self.core.process(rec)
                    # A bad signature may be a key published a moment ago: catch up, try again.
                    if (
                        outcome.status == "rejected"
                        and outcome.reason == "bad-signature"
                        and await self._catch_up_directory()
                    ):
                        self.state.unstage(rec.source)
                        outcome = self.core.process(rec)
                    outcomes.append((outcome, r))
                    for out in outcome.outputs:
                        if not await self._writable(out.topic):
                            continue
                        partition = None
                        if out.urgent is not None:  # an inbox copy: its lane
                            n = len(await producer.partitions_for(out.topic))
                            partition = lanes.partition_for(out.key, n, out.urgent)
                        futures.append(
                            await kafka.send(
                                producer,
                                out.topic,
                                out.value,
                                key=out.key,
                                headers=out.headers,
                                partition=partition,
                            )
                        )
                await asyncio.gather(*futures)
                await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group)
        except BaseException:
            self.state.rollback()
            raise
        self.state.commit()
        self.committed_offsets[tp] = records[-1].offset + 1
        now = time.time()
        log.info(
            "batch_committed",
            partition=f"{tp.topic}/{tp.partition}",
            records=len(records),
            next_offset=records[-1].offset + 1,
        )
        for outcome, r in outcomes:
            MESSAGES.labels(outcome.status).inc()
            if outcome.status == "routed":
                ROUTED.inc(outcome.recipients)
                GAPS.inc(outcome.gaps)
                LATENCY.observe(max(0.0, now - r.timestamp / 1000))
                log.debug(
                    "message_routed",
                    message_id=outcome.message_id,
                    event_type=outcome.event_type,
                    sender=outcome.sender,
                    recipients=outcome.recipients,
                    route_gaps=outcome.gaps,
                )
            elif outcome.status == "rejected":
                DEAD.labels(outcome.reason or "unknown").inc()

    def _is_lane(self, tp: TopicPartition) -> bool:
        """Routed first: an urgent lane, or a small agency's only partition."""
        partitions = self.consumer.partitions_for_topic(tp.topic) or ()
        return lanes.read_first(tp.partition, len(partitions))

    async def _route_fetched(self, batch: dict[TopicPartition, list[Any]], generation: int) -> None:
        """Route what one fetch returned: urgent lanes first, then bulk partitions in chunks of
        ``BULK_CHUNK`` records, one transaction each, with whatever reached an urgent lane
        meanwhile routed between chunks. An IMMEDIATE report waits for one chunk at most."""
        fetched = [(tp, records) for tp, records in batch.items() if records]
        fetched.sort(key=lambda item: not self._is_lane(item[0]))
        for tp, records in fetched:
            if self._is_lane(tp):
                await self._route_batch(tp, records, generation)
                continue
            for start in range(0, len(records), BULK_CHUNK):
                if start:
                    await self._route_waiting_lanes()
                if not await self._route_batch(tp, records[start : start + BULK_CHUNK], generation):
                    break  # not routed: the partition was rewound, the rest is read again

    async def _route_waiting_lanes(self) -> None:
        """Route what the urgent lanes hold already (fetched meanwhile), waiting for nothing."""
        assigned = [tp for tp in self.assigned if self._is_lane(tp)]
        if not assigned:
            return
        generation = self.generation
        waiting = await self.consumer.getmany(*assigned, timeout_ms=0)
        for tp, records in waiting.items():
            if records:
                await self._route_batch(tp, records, generation)

    async def _route_batch(self, tp: TopicPartition, records: list[Any], generation: int) -> bool:
        """Route ``records`` of ``tp`` in one transaction; False when they were not routed (they
        will be read again)."""
        async with self.lock:
            if tp not in self.assigned:
                return False  # no longer ours: its new owner reads it from the committed offset
            if generation != self.generation:
                # A rebalance came while these were fetched. They may be stale, or they may be
                # the first records read after the rebalance's rewind: either way the consumer's
                # position is now past them, so put it back to what was committed, or they would
                # not be read again until the next rebalance.
                await self._rewind(tp)
                return False
            if self.bucket(tp) not in self.producers:
                # First batch of a bucket without a producer (its warm-up failed): fence the
                # previous owner (InitProducerId completes or aborts its transaction), then read
                # the bucket's partitions from their committed offsets, stable only now. What
                # was fetched of them before is stale: this batch and the rest are read again.
                self.generation += 1
                await self._renew(self.bucket(tp), self._in_bucket(self.bucket(tp)))
                return False
            try:
                if tp in self._unsynced:
                    behind = set(self._unsynced)
                    # Read from its committed offset after this process fenced the previous
                    # owner (or after a failure of its own): everything that owner routed is
                    # committed or aborted by now, so catch up with its routed ids before
                    # deciding, or a message it routed and its sender published again would be
                    # routed a second time.
                    await self.routed_follower.sync()
                    self._unsynced -= behind
                    log.info(
                        "routed_ids_caught_up",
                        partitions=len(behind),
                        routed_ids=len(self.state.routed),
                    )
                await self._route_partition(tp, records)
                return True
            except Exception as exc:
                # The transaction did not commit. The producer may be unusable (fenced, out of
                # sequence, closed): replace it, which aborts the transaction for good, then read
                # the partition again from what was committed.
                log.error(
                    "transaction_aborted",
                    partition=f"{tp.topic}/{tp.partition}",
                    error=str(exc),
                    error_class=type(exc).__name__,
                )
                await asyncio.sleep(0.5)
                # Only this partition's transaction was open (they run one at a time), so only
                # it is read again; the bucket's others are committed as far as they were routed.
                await self._renew(self.bucket(tp), [tp])
                return False

    async def run(self) -> None:
        """Route until stopped; a stop finishes the transaction in progress, then closes."""
        await self.start()
        log.info("router_started", bootstrap=self.settings.bootstrap_servers, group=self.group)
        try:
            while not self.stop_event.is_set():
                await self._warm()
                if self.ready.is_set() and time.monotonic() >= self._next_sweep:
                    try:
                        await self._sweep()
                    except Exception as exc:  # the registry keeps them; tried again later
                        self._next_sweep = time.monotonic() + min(60.0, self.sweep_every_s)
                        log.warning("sweep_failed", error_class=type(exc).__name__)
                generation = self.generation
                batch = await self.consumer.getmany(timeout_ms=200, max_records=2000)
                await self._route_fetched(batch, generation)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close every client, each within ``CLOSE_TIMEOUT_S``. Every routing transaction has
        committed or aborted by now, so a client that does not close in time (aiokafka's fetcher
        has been seen to wait for ever in its close) is left for the process's exit: a stop
        must end the process, not hang it."""

        async def bounded(what: str, closing: Any) -> None:
            try:
                await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("close_timed_out", client=what, seconds=CLOSE_TIMEOUT_S)
            except Exception as exc:  # closing anyway
                log.info("close_failed", client=what, error_class=type(exc).__name__)

        # The group first: leaving it is what lets another instance take these partitions over,
        # and nothing of them is routed here any more. The views can close after.
        if self.consumer is not None:
            await bounded("consumer", self.consumer.stop())
        for follower in (self.follower, self.placement_follower, self.routed_follower):
            if follower is not None:
                await bounded(f"follower {follower.topic}", follower.stop())
        for bucket, producer in list(self.producers.items()):
            await bounded(f"producer of bucket {bucket}", producer.stop())
        if self._sweeper is not None:
            await bounded("sweeper", self._sweeper.stop())
        if self._closing:
            await bounded("producers of buckets given up", asyncio.gather(*self._closing))
        self.producers.clear()
        log.info("router_stopped")

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT: finish the open transaction and stop. Second: exit at once."""
        stop_on_signals(self.stop_event, "router")
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)


def dump_tasks() -> None:
    """SIGUSR1: write every asyncio task's await chain to stderr (to chase a hang)."""
    import sys

    for task in asyncio.all_tasks():
        lines = [f"--- task {task.get_name()} ---"]
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                lines.append(
                    f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
                )
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


async def serve(
    settings: KafkaSettings,
    metrics_port: int | None = None,
    group: str = "router",
    health: tuple[str, int] | None = None,
) -> None:
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1")
        log.info("metrics_listening", port=metrics_port)
    service = RouterService(settings, group)
    service.install_signal_handlers()
    server = None
    if health is not None:
        from broker.health import serve_health

        server = await serve_health(*health, "router", service.ready.is_set)
    try:
        await service.run()
    finally:
        if server is not None:
            server.close()
