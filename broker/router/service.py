"""``cbx router``: the router as a Kafka service, exactly once.

Consume-transform-produce runs in Kafka transactions with confluent-kafka (:mod:`broker.kafka.txn`):
one consumer in the router group, which uses the consumer group protocol (KIP-848: the broker
assigns, and only the partitions that move stop), and one transactional producer per instance.
``send_offsets_to_transaction`` carries the member's epoch (KIP-447), so the group coordinator
refuses the offsets of an instance that has lost its partitions, and its transaction
is aborted: the producer's transactional id no longer has to name the partitions, and one
producer serves all an instance owns. The id names the instance (``CBX_ROUTER_INSTANCE``, by
default the host's name), stable across its restarts, so an instance started again aborts the
transaction it left open at once. A transaction covers what one fetch returned of the urgent
lanes, or a chunk of bulk records across partitions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import signal
import socket
import time
from typing import Any

from confluent_kafka import KafkaError
from prometheus_client import Counter, Histogram, start_http_server

from broker import env, heap
from broker.admin.identity import ensure_identity
from broker.crypto.sealing import BodyForms, Sealer
from broker.directory import Directory, DirectoryCodec, apply
from broker.errors import ConfigurationError
from broker.health import stop_on_signals
from broker.kafka import clients as kafka
from broker.kafka import lanes, topics
from broker.kafka.follow import TopicFollower
from broker.kafka.settings import KafkaSettings
from broker.kafka.txn import CallStuck, Part, Pipe, kafka_error
from broker.logging import get_logger
from broker.model import ROUTER
from broker.policy.deadlines import Windows
from broker.policy.registry import placement_follower
from broker.policy.routing import Rules
from broker.policy.sharing import SharingPolicy
from broker.router.core import InRecord, Out, Outcome, RouterCore
from broker.router.state import RouterState
from broker.router.work import Work, part_of
from broker.schema.catalogue import Catalogue

log = get_logger("router")
#: Bulk records taken for one transaction, at most; what reached an urgent lane meanwhile goes
#: next.
BULK_CHUNK = 200
#: Wall time a bulk transaction routes for before it commits what it has (the rest goes back):
#: what an urgent record read meanwhile waits at most, whatever a bulk record costs (a placement
#: told to six parties writes some twenty records).
BULK_BUDGET_S = 0.04
#: How soon the client fetches again after its read-ahead queue was full (see ``start``).
FETCH_QUEUE_BACKOFF_MS = 10
#: Bulk records read and not yet routed, at most (then the bulk partitions pause).
BULK_KEPT = 5_000
#: Records taken from the client's queue at once.
CONSUME_MOST = 2_000
#: How long a stop waits for each client to close.
CLOSE_TIMEOUT_S = 10.0
#: Ended cases removed per sweep step; routing goes on between steps.
SWEEP_CHUNK = 500
#: Cases decoded per step before a sweep (about 50 ms of work; routing goes on between steps).
SETTLE_CHUNK = 500
#: The first sweep after a start waits this long (or the sweep interval, if shorter): the
#: registry is decoded for it, and a restart should route first.
FIRST_SWEEP_S = 60.0
#: A partition given to an instance without a committed offset is read from its beginning, which
#: the client first asks for, one ListOffsets request a partition; on one connection the broker
#: answers them in order, and the fetch of every other partition, the urgent lanes', waits
#: behind them (some 2,000 at national size, most of them agencies that have sent nothing yet).
#: Once this long has passed since partitions were last given and nothing waits to be routed,
#: the router commits where each such partition begins, so the next owner reads it from there.
SEED_AFTER_S = 2.0
#: How long a failed commit of starting offsets waits before it is tried again.
SEED_RETRY_S = 30.0
#: What an instance name may hold (it ends the producer's transactional id).
INSTANCE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")

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


_keyed = kafka.KeyPartitioner()
#: Errors of a producer whose transactional id another producer has taken.
FENCED = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)
#: Errors of offsets sent with a generation the group has left behind: the group rebalanced
#: while the transaction was open (a router joined or left). Nothing is wrong with the
#: partitions or the producer: the transaction is aborted and routed again at once.
MOVED_ON = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
        # The consumer protocol's words for the same (KIP-848: the member's epoch moved on).
        KafkaError.STALE_MEMBER_EPOCH,
        KafkaError.FENCED_MEMBER_EPOCH,
    }
)


def instance_name(given: str | None = None) -> str:
    """This instance's name: ``given``, else ``CBX_ROUTER_INSTANCE``, else the host's name. Two
    instances running at once must have different names (each fences the other's producer)."""
    name = given or env.get("CBX_ROUTER_INSTANCE") or socket.gethostname()
    if not INSTANCE_NAME.fullmatch(name):
        raise ConfigurationError(
            f"CBX_ROUTER_INSTANCE: {name!r} is not 1 to 100 letters, digits, '.', '_' or '-'"
        )
    return name


def group_protocol() -> str:
    """The router group's protocol: ``consumer`` (KIP-848, Kafka 4.0 and later: the broker
    assigns, and only the partitions that move stop), unless ``CBX_ROUTER_GROUP_PROTOCOL`` says
    ``classic`` (a cluster older than 4.0; cooperative-sticky, assigned by a group member)."""
    protocol = env.get("CBX_ROUTER_GROUP_PROTOCOL") or "consumer"
    if protocol not in ("consumer", "classic"):
        raise ConfigurationError(
            f"CBX_ROUTER_GROUP_PROTOCOL: {protocol!r} is not 'consumer' or 'classic'"
        )
    return protocol


def _where(parts: set[Part] | list[Part]) -> list[str]:
    return [f"{t}/{p}" for t, p in sorted(parts)]


class RouterService:
    """Reads every ``cbx.outbound.*`` topic and routes it through :class:`RouterCore`."""

    def __init__(
        self,
        settings: KafkaSettings,
        group: str = "router",
        windows: Windows | None = None,
        instance: str | None = None,
    ) -> None:
        self.windows = windows
        self.settings = settings
        self.group = settings.topics.group(group)
        self.instance = instance_name(instance)
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
        self.pipe: Pipe | None = None
        #: Partitions this instance owns.
        self.assigned: set[Part] = set()
        #: Partitions taken over since the routed ids were last caught up with.
        self._unsynced: set[Part] = set()
        #: Partitions routed one to a transaction until each commits once (one of them failed
        #: a transaction shared with others; the others must not wait on it).
        self._alone: set[Part] = set()
        #: Partitions given to this instance and not known to have a committed offset.
        self._unseeded: set[Part] = set()
        self._next_seed = 0.0
        #: Bulk partitions paused while the bulk read and not routed is at its bound.
        self._paused: set[Part] = set()
        #: Transactions in a row that a rebalance caught (the first is tried again at once).
        self._moved_on = 0
        self.work = Work(self._read_first, BULK_CHUNK, BULK_KEPT)
        self.stop_event = asyncio.Event()
        self.core: RouterCore | None = None
        #: Set once the producer is ready and the group has first assigned this instance its
        #: partitions (the first message after a start pays no warm-up).
        self.ready = asyncio.Event()
        self._assigned_once = False
        self.ended_case_kept = dt.timedelta(days=float(env.get("CBX_ENDED_CASE_DAYS", "90")))
        self.sweep_every_s = float(env.get("CBX_REGISTRY_SWEEP_S", "3600"))
        self._next_sweep = time.monotonic() + min(FIRST_SWEEP_S, self.sweep_every_s)
        self._sweeper: Any = None
        self._missing_warned: set[str] = set()

    # --- start-up -----------------------------------------------------------------------------

    def _note_routed(self, record: Any) -> None:
        """A routed-id marker, written by this router or another instance."""
        if record.key is not None and record.key.startswith(topics.MOVED_KEY):
            topic, _, partition = record.key[len(topics.MOVED_KEY) :].decode().rpartition("/")
            self.state.note_moved(topic, int(partition), int(record.value or b"0"))
            log.info("topic_moved", topic=topic, partition=int(partition), copies=record.value)
        elif record.key is not None:
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
        # _route).
        with heap.loading("router state"):
            await asyncio.gather(
                self.placement_follower.start(),
                self.routed_follower.start(),
                self.follower.start(),
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
        debug = env.get("CBX_ROUTER_KAFKA_DEBUG")
        self.pipe = Pipe(
            self.settings,
            self.group,
            f"{self.group}.{self.instance}",
            self.settings.topics.outbound_pattern,
            self._acquire,
            self._release,
            consumer_conf={
                "group.protocol": group_protocol(),
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 500,
                # A new agency's outbound topic is read within seconds of its creation. Each
                # refresh reads every topic (the subscription is a pattern): at national size,
                # some 13,000, which cost an idle router a third of a core every 3 s.
                "topic.metadata.refresh.interval.ms": 10_000,
                # What the client fetches ahead is small (bounded in bytes): an urgent record
                # fetched behind it reaches the router once it is taken, and the router takes it
                # all at once. The count counts transaction markers read past too, about one a
                # partition taken over: a bound of 1,000 stopped every fetch, the lanes' too,
                # after a takeover of 2,000 partitions until the router had taken them.
                "queued.min.messages": 10_000,
                "queued.max.messages.kbytes": 8_192,
                # Once past either bound, librdkafka postpones the next fetch of every
                # partition by this long (1 s by default), the urgent lanes' too, even though
                # the router takes the whole queue each round: it held IMMEDIATE reports for a
                # second behind a bulk load. It only re-checks the bound this often; no request
                # is sent while the queue is full.
                "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
                # A fetch the broker holds until a record is committed or this passes: it
                # answers as soon as one is, so this is not a latency. Each fetch names every
                # partition of the instance (about 2,000 at national size; librdkafka has no
                # fetch sessions), which at 100 ms cost the broker half a core with nothing to
                # route.
                "fetch.wait.max.ms": 500,
                # What the client asks the brokers, on stderr (librdkafka's debug contexts).
                **({"debug": debug} if debug else {}),
            },
        )
        # The producer and the state side by side: both are needed before the first record.
        await asyncio.gather(self._load_state(), self.pipe.renew_producer())
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
        await self.pipe.start_consumer()
        await self.pipe.read_all_topics()
        log.info("producer_ready", transactional_id=self.pipe.transactional_id)

    # --- partition ownership (called on the client's thread, inside a consume) ----------------

    def _acquire(self, parts: list[Part]) -> None:
        """Own ``parts``: the client reads them from their committed offsets, which it reads
        only once no transaction writing them is open. Before routing them, the routed ids are
        caught up with (see :meth:`_route`)."""
        self.assigned |= set(parts)
        self._unsynced |= set(parts)
        self._unseeded |= set(parts)
        self._next_seed = time.monotonic() + SEED_AFTER_S
        self._assigned_once = True
        if parts:
            log.info("partitions_assigned", partitions=_where(parts))

    def _release(self, parts: list[Part]) -> None:
        """Give ``parts`` up. No transaction is open while the client runs this (each commits
        before the next consume), and what was read of them and not routed is forgotten: their
        next owner reads it from the committed offset."""
        gone = set(parts)
        self.assigned -= gone
        self._paused -= gone
        self._alone -= gone
        self._unseeded -= gone
        dropped = self.work.drop(gone)
        if parts:
            log.info("partitions_revoked", partitions=_where(parts), unrouted=dropped)

    def _read_first(self, topic: str, partition: int) -> bool:
        """Routed first: an urgent lane, or a small agency's only partition."""
        assert self.pipe is not None
        n = self.pipe.known_partitions(topic)
        return n is not None and lanes.read_first(partition, n)

    # --- the cluster's topics ------------------------------------------------------------------

    async def _writable(self, topic: str) -> bool:
        """False for an agency's cases topic that does not exist (an agency provisioned before
        cases topics existed): its view is skipped, with a warning, rather than the transaction
        waiting for a topic that will not come. Every other topic is written."""
        if not topic.startswith(self.settings.topics.cases_prefix):
            return True
        assert self.pipe is not None
        if await self.pipe.partitions_of(topic) is not None:
            return True
        if topic not in self._missing_warned:
            self._missing_warned.add(topic)
            log.warning("cases_topic_missing", topic=topic, hint="run cbx agency add again")
        return False

    async def _partition_of(self, out: Out) -> int | None:
        """Where ``out`` goes: an inbox copy to its lane or its case's bulk partition, any
        other keyed record to Kafka's own partition for its key (what every other client of
        the exchange computes), a record without a key wherever the client puts it."""
        if out.urgent is None and out.key is None:
            return None
        assert self.pipe is not None
        n = await self.pipe.partitions_of(out.topic)
        if n is None:
            return None  # not visible yet: the client waits for it, and fails the transaction
        if out.urgent is not None:
            return lanes.partition_for(out.key, n, out.urgent)
        return _keyed(out.key, list(range(n)), [])

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
            heap.keep("registry decoded")
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

    async def _route(self, records: list[Any], budget_s: float | None = None) -> None:
        """Route ``records`` (each partition's in order) in transactions: one for them all, or,
        for a partition whose last transaction failed, one for it alone. With ``budget_s``
        (bulk), a transaction that has routed for that long commits what it has, and the rest
        goes back to the front of the bulk."""
        live = [r for r in records if part_of(r) in self.assigned]
        alone = {part_of(r) for r in live} & self._alone
        together = [r for r in live if part_of(r) not in alone]
        if together:
            await self._transaction(together, budget_s)
        for part in sorted(alone):
            if part in self.assigned:  # still: a failure above does not give it up
                await self._transaction([r for r in live if part_of(r) == part], budget_s)

    async def _transaction(self, records: list[Any], budget_s: float | None = None) -> bool:
        """Route ``records`` in one transaction, with the consumer's offsets. On failure, the
        transaction is aborted, the records' partitions are read again from the first of them,
        and False is returned."""
        assert self.core is not None
        assert self.pipe is not None
        parts = {part_of(r) for r in records}
        if self.pipe.producer is None:
            # The producer could not be made again after a failure: try now, and read these
            # again either way (what was fetched of them after is dropped with them).
            try:
                await self.pipe.renew_producer()
            except Exception as exc:
                log.warning("producer_not_made", error_class=type(exc).__name__)
                await asyncio.sleep(1.0)
            await self._read_again(records)
            return False
        if parts & self._unsynced:
            behind = set(self._unsynced)
            # Read from its committed offset, which the client reads only once the previous
            # owner's transactions are committed or aborted: catch up with the routed ids they
            # wrote before deciding, or a message that owner routed and its sender published
            # again would be routed a second time.
            syncing = time.monotonic()
            await self.routed_follower.sync()
            self._unsynced -= behind
            log.info(
                "routed_ids_caught_up",
                partitions=len(behind),
                routed_ids=len(self.state.routed),
                seconds=round(time.monotonic() - syncing, 3),
                end_offsets_s=round(self.routed_follower.asked_s, 3),
            )
        outcomes: list[tuple[Outcome, Any]] = []
        offsets: dict[Part, int] = {}
        written: set[str] = set()
        committing = False
        began = time.monotonic()
        routed_at = began
        try:
            self.pipe.begin()
            for i, r in enumerate(records):
                if budget_s is not None and i and time.monotonic() - began > budget_s:
                    self.work.put_back(records[i:])
                    records = records[:i]
                    parts = {part_of(r) for r in records}
                    break
                rec = InRecord(
                    r.topic(), r.partition(), r.offset(), r.key(), r.value(), r.headers() or []
                )
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
                    written.add(out.topic)
                    if await self._writable(out.topic):
                        partition = await self._partition_of(out)
                        self.pipe.produce(out.topic, out.value, out.key, out.headers, partition)
                offsets[part_of(r)] = r.offset() + 1
            routed_at = time.monotonic()
            committing = True
            await self.pipe.commit(offsets)
        except Exception as exc:
            self.state.rollback()
            err = kafka_error(exc)
            if err is not None and err.code() in MOVED_ON:
                # Another instance joined or left: its partitions, not these, are the news.
                log.info(
                    "transaction_retried_after_rebalance",
                    partitions=_where(parts),
                    error_class=err.name(),
                )
                self.pipe.forget(written)
                if not await self.pipe.abort():
                    await self._renew_quietly()
                    self._unsynced |= parts  # see below: the commit's outcome is not known
                await self._read_again(records)
                if self._moved_on:  # again: the rebalance is not over yet
                    await asyncio.sleep(0.1)
                self._moved_on += 1
                return False
            log.error(
                "transaction_aborted",
                partitions=_where(parts),
                error=str(exc),
                error_class=err.name() if err is not None else type(exc).__name__,
            )
            if err is not None and err.code() in FENCED:
                log.error(
                    "router_instance_fenced",
                    instance=self.instance,
                    hint="another router runs under this name (CBX_ROUTER_INSTANCE): give "
                    "each instance its own, the same across its restarts",
                )
            aborted = await self.pipe.abort()
            if not aborted:
                await self._renew_quietly()
            if committing and (not aborted or isinstance(exc, CallStuck)):
                # Whether the commit went through is not known: the next producer's
                # InitProducerId settles it, and before these partitions are routed again the
                # routed ids are caught up with, so what it did commit is not routed twice.
                self._unsynced |= parts
            # A topic made again with fewer partitions (cbx agency migrate) fails the write
            # to a partition it no longer has: its count is asked again before the next try.
            self.pipe.forget(written)
            if len(parts) > 1:
                self._alone |= parts
            await self._read_again(records)
            await asyncio.sleep(0.5)
            return False
        self.state.commit()
        self._alone -= parts
        self._unseeded -= parts
        self._moved_on = 0
        now = time.time()
        log.info(
            "batch_committed",
            partitions=_where(parts),
            records=len(records),
            next_offsets={f"{t}/{p}": o for (t, p), o in sorted(offsets.items())},
            route_ms=round((routed_at - began) * 1000, 1),
            commit_ms=round((time.monotonic() - routed_at) * 1000, 1),
        )
        for outcome, r in outcomes:
            MESSAGES.labels(outcome.status).inc()
            if outcome.status == "routed":
                ROUTED.inc(outcome.recipients)
                GAPS.inc(outcome.gaps)
                LATENCY.observe(max(0.0, now - r.timestamp()[1] / 1000))
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
        return True

    async def _seed(self) -> None:
        """Commit where each partition given without a committed offset begins (see
        :data:`SEED_AFTER_S`). Nothing routes meanwhile, and a partition's first routed batch
        commits its offset, so a partition the group has no offset for has had nothing of it
        routed: starting it at its log start offset is what reading it from the beginning
        does. Where it begins comes from the fetch responses (no request); a partition not
        fetched yet (a bulk partition paused) waits for the next round."""
        assert self.pipe is not None
        self._next_seed = time.monotonic() + SEED_AFTER_S
        parts = self._unseeded & self.assigned
        if not parts or self.pipe.producer is None:
            return  # without a producer: made again by the next transaction
        try:
            committed = await self.pipe.committed(parts)
            self._unseeded -= {p for p, o in committed.items() if o is not None}
            starts = await self.pipe.log_starts(p for p, o in committed.items() if o is None)
        except Exception as exc:
            log.info("offsets_not_read", error_class=type(exc).__name__)
            self._next_seed = time.monotonic() + SEED_RETRY_S
            return
        if not starts:
            return
        began = time.monotonic()
        try:
            self.pipe.begin()
            await self.pipe.commit(starts)
        except Exception as exc:
            err = kafka_error(exc)
            log.info(
                "starting_offsets_not_committed",
                partitions=len(starts),
                error_class=err.name() if err is not None else type(exc).__name__,
            )
            if not await self.pipe.abort():
                await self._renew_quietly()
            self._next_seed = time.monotonic() + SEED_RETRY_S
            return
        self._unseeded -= set(starts)
        log.info(
            "starting_offsets_committed",
            partitions=len(starts),
            left=len(self._unseeded),
            commit_ms=round((time.monotonic() - began) * 1000, 1),
        )

    async def _renew_quietly(self) -> bool:
        """Make the producer again after a transaction it cannot abort. On failure the pipe is
        left without one, and the next transaction tries again."""
        assert self.pipe is not None
        try:
            await self.pipe.renew_producer()
        except Exception as exc:
            log.warning("producer_not_made", error_class=type(exc).__name__)
            return False
        return True

    async def _read_again(self, records: list[Any]) -> None:
        """Put the partitions of ``records`` back to the first of them (everything before is
        committed), forgetting what was read of them after."""
        assert self.pipe is not None
        first: dict[Part, int] = {}
        for r in records:
            first.setdefault(part_of(r), r.offset())
        self.work.drop(set(first))
        mine = {p: o for p, o in first.items() if p in self.assigned}
        try:
            await self.pipe.seek(mine)
        except Exception as exc:
            # The partition is no longer assigned (or the client is closing): its next owner,
            # or the next assignment, reads it from the committed offset.
            log.info("partition_not_rewound", partitions=_where(set(mine)), error=str(exc))

    async def _bound_bulk(self) -> None:
        """Pause the bulk partitions while the bulk read ahead is at its bound; resume them
        when half of it is routed. Urgent lanes are never paused."""
        assert self.pipe is not None
        if self.work.full():
            bulk = {p for p in self.assigned if not self._read_first(*p)} - self._paused
            if bulk:
                await self.pipe.pause(bulk)
                self._paused |= bulk
        elif self._paused and self.work.low():
            paused, self._paused = self._paused & self.assigned, set()
            await self.pipe.resume(paused)

    async def _fetch(self) -> None:
        """Take what the client has read (waiting a little only when there is nothing to do)."""
        assert self.pipe is not None
        records = await self.pipe.consume(CONSUME_MOST, 0 if len(self.work) else 0.2)
        if not records:
            return
        for topic in {r.topic() for r in records}:
            await self.pipe.partitions_of(topic)  # a new agency's topic: is it laned?
        self.work.add(r for r in records if part_of(r) in self.assigned)

    async def run(self) -> None:
        """Route until stopped; a stop finishes the transaction in progress, then closes."""
        await self.start()
        log.info(
            "router_started",
            bootstrap=self.settings.bootstrap_servers,
            group=self.group,
            instance=self.instance,
        )
        try:
            while not self.stop_event.is_set():
                await self._bound_bulk()
                await self._fetch()
                if self._assigned_once and not self.ready.is_set():
                    self.ready.set()
                    log.info("router_ready", partitions=len(self.assigned))
                urgent = bool(self.work.first)
                batch = self.work.take()
                if batch:
                    await self._route(batch, None if urgent else BULK_BUDGET_S)
                elif self._unseeded and time.monotonic() >= self._next_seed:
                    await self._seed()
                elif self.ready.is_set() and time.monotonic() >= self._next_sweep:
                    try:
                        await self._sweep()
                    except Exception as exc:  # the registry keeps them; tried again later
                        self._next_sweep = time.monotonic() + min(60.0, self.sweep_every_s)
                        log.warning("sweep_failed", error_class=type(exc).__name__)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close every client, each within ``CLOSE_TIMEOUT_S``. Every routing transaction has
        committed or aborted by now, so a client that does not close in time is left for the
        process's exit: a stop must end the process, not hang it."""

        async def bounded(what: str, closing: Any) -> None:
            try:
                await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("close_timed_out", client=what, seconds=CLOSE_TIMEOUT_S)
            except Exception as exc:  # closing anyway
                log.info("close_failed", client=what, error_class=type(exc).__name__)

        # The group first: leaving it is what lets another instance take these partitions over,
        # and nothing of them is routed here any more. The views can close after.
        if self.pipe is not None:
            await bounded("consumer and producer", self.pipe.close(CLOSE_TIMEOUT_S))
        for follower in (self.follower, self.placement_follower, self.routed_follower):
            if follower is not None:
                await bounded(f"follower {follower.topic}", follower.stop())
        if self._sweeper is not None:
            await bounded("sweeper", self._sweeper.stop())
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
