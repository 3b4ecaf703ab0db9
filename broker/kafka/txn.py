"""Consume-transform-produce with confluent-kafka, driven from asyncio.

librdkafka has what aiokafka lacks for it: KIP-447, where ``send_offsets_to_transaction`` carries
the consumer group's generation (the member's epoch), so the group fences a zombie and one
transactional producer serves every partition a process owns; offset fetches that wait for
pending transactions (``require_stable``); and incremental assignment (the consumer group
protocol of KIP-848, or the classic one's cooperative rebalancing), where only the partitions
that move stop. Its calls block, so they run on one worker thread of their own: the clients are not
thread-safe, and one thread serialises them. Rebalance callbacks run on that thread, inside a
``consume``, while the asyncio side waits for it.

Partitions are ``(topic, partition)`` pairs here, so nothing outside needs librdkafka's types.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from broker.errors import KafkaUnavailableError
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger

log = get_logger("kafka")

Part = tuple[str, int]
#: How long a transaction may stay open before the coordinator aborts it. It bounds how long the
#: partitions of a process that died mid-transaction under another instance name stay unreadable
#: (a process started again under its own name aborts its transaction at once).
TRANSACTION_TIMEOUT_MS = 20_000
#: How long a client call waits for the cluster before it fails (and the work is tried again).
CALL_TIMEOUT_S = 30.0
#: How often the whole topic list is read again (partition counts, topics created since).
METADATA_EVERY_S = 30.0
#: How long a transaction call may block in all before its producer is given up for a new one.
#: librdkafka does not bound every coordinator request by the call's timeout: after the broker
#: coordinating the router's group and transactions was killed, ``send_offsets_to_transaction``
#: was seen blocked for minutes with a 30 s timeout.
STUCK_S = CALL_TIMEOUT_S + 5


#: Consumer settings of the classic group protocol that the consumer protocol (KIP-848) moves to
#: the broker, and librdkafka refuses with it.
CLASSIC_ONLY = ("partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms")


class CallStuck(KafkaUnavailableError):
    """A transaction call outlived :data:`STUCK_S`; its producer was given up (the next one,
    with the same transactional id, fences it)."""


class _Worker(concurrent.futures.Executor):
    """One daemon thread running the calls given to it in order. A call stuck in librdkafka for
    good must not hold the process at exit, as a ThreadPoolExecutor's thread (joined at exit)
    would: the router would log that it stopped and never end."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # the caller's to see
                future.set_exception(exc)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._calls.put(None)
        if wait:
            self._thread.join()


def kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


class Pipe:
    """One consumer in a group and one transactional producer, both confluent-kafka.

    ``on_assigned``, ``on_revoked`` are called (on the worker thread, inside :meth:`consume`)
    with the partitions that came and went; a lost partition counts as revoked. The producer's
    transactional id names the process, not the partitions: one per instance, stable across its
    restarts, so a process started again aborts what it left open.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group: str,
        transactional_id: str,
        pattern: str,
        on_assigned: Callable[[list[Part]], None],
        on_revoked: Callable[[list[Part]], None],
        consumer_conf: dict[str, Any] | None = None,
        producer_conf: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.group = group
        self.transactional_id = transactional_id
        self.pattern = pattern
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._consumer_conf = consumer_conf or {}
        self._producer_conf = producer_conf or {}
        self._thread = self._new_thread()
        self.consumer: Any = None
        self.producer: Any = None
        self._in_transaction = False
        self._meta: dict[str, int] = {}
        self._meta_read = 0.0
        self._asked: dict[str, float] = {}
        self._refreshing = False
        self._background: asyncio.Task[None] | None = None
        self._meta_thread = _Worker("kafka-meta")

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _bounded(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """A transaction call that must not block the pipe for good. Past :data:`STUCK_S` the
        worker thread is left to it, with the producer it is using: the pipe goes on with a new
        thread and no producer (the caller makes one, whose InitProducerId fences the stuck one
        and settles its transaction)."""
        future = asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), STUCK_S)
        except TimeoutError:
            # Whatever the stuck call ends with, nobody waits for it any more.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            stuck, self._thread = self._thread, self._new_thread()
            stuck.shutdown(wait=False)
            self.producer = None  # the stuck call holds it; never used again
            self._in_transaction = False
            log.error("transaction_call_stuck", call=what, seconds=STUCK_S)
            raise CallStuck(f"{what} blocked for more than {STUCK_S:.0f} s") from None

    @staticmethod
    def _new_thread() -> _Worker:
        return _Worker("kafka")

    def _log_error(self, err: KafkaError) -> None:
        # librdkafka reports connection trouble here and retries by itself.
        log.info("kafka_client_error", error=err.name(), fatal=err.fatal(), detail=err.str())

    # --- start and stop ----------------------------------------------------------------------

    def _new_producer(self) -> Any:
        conf = {
            **self.settings.librdkafka_config(),
            "transactional.id": self.transactional_id,
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            # Keyed records are placed by the caller; this is Kafka's own partitioner otherwise.
            "partitioner": "murmur2_random",
            "error_cb": self._log_error,
            **self._producer_conf,
        }
        producer = Producer(conf)
        producer.init_transactions(CALL_TIMEOUT_S)
        return producer

    async def renew_producer(self) -> None:
        """(Re)make the producer: InitProducerId with this process's transactional id completes
        or aborts the transaction a previous producer of it left open, and fences that one.
        Should that fail, the pipe is left without a producer (``producer`` is None)."""
        old, self.producer = self.producer, None
        self._in_transaction = False
        if old is not None:
            await self._call(old.flush, 0)
        self.producer = await self._bounded("init_transactions", self._new_producer)

    def _new_consumer(self) -> Any:
        conf = {
            **self.settings.librdkafka_config(),
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "error_cb": self._log_error,
            **self._consumer_conf,
        }
        if conf.get("group.protocol") == "consumer":
            # The broker assigns and times the group (KIP-848): these are its settings.
            for name in CLASSIC_ONLY:
                conf.pop(name, None)
        consumer = Consumer(conf)
        consumer.subscribe(
            [self.pattern],
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._revoked,
        )
        return consumer

    async def start_consumer(self) -> None:
        """Join the group (make the producer first: ready before anything is read)."""
        self.consumer = await self._call(self._new_consumer)

    async def close(self, timeout_s: float) -> None:
        """Leave the group (revoking everything), then drop the producer. A transaction still
        open is aborted by the coordinator when its producer id is next initialised or times
        out; the router never leaves one open when it stops."""
        try:
            if self.consumer is not None:
                await asyncio.wait_for(self._call(self.consumer.close), timeout_s)
            if self.producer is not None:
                await asyncio.wait_for(self._call(self.producer.flush, timeout_s), timeout_s)
        finally:
            self._thread.shutdown(wait=False)
            self._meta_thread.shutdown(wait=False)

    # --- reading -----------------------------------------------------------------------------

    def _assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._on_assigned([(p.topic, p.partition) for p in partitions])

    def _revoked(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._on_revoked([(p.topic, p.partition) for p in partitions])

    def _take(self, most: int, timeout_s: float) -> list[Message]:
        # librdkafka's consume waits until it has ``most`` records or the timeout passes, even
        # with records in hand: take what is there, and wait only for the first when there is
        # nothing (poll returns as soon as one comes).
        got: list[Message] = self.consumer.consume(most, 0)
        if not got and timeout_s > 0:
            first = self.consumer.poll(timeout_s)
            if first is not None:
                got = [first, *self.consumer.consume(most - 1, 0)]
        return got

    async def consume(self, most: int, timeout_s: float) -> list[Message]:
        """Up to ``most`` records already fetched, waiting up to ``timeout_s`` for the first.
        Records that carry an error (a topic deleted under the pattern) are logged, not
        returned."""
        got: list[Message] = await self._call(self._take, most, timeout_s)
        out = []
        for m in got:
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume_error", error=err.name(), detail=err.str())
        return out

    async def seek(self, positions: dict[Part, int]) -> None:
        def seek_all() -> None:
            for (topic, partition), offset in positions.items():
                self.consumer.seek(TopicPartition(topic, partition, offset))

        await self._call(seek_all)

    async def committed(self, parts: Iterable[Part]) -> dict[Part, int | None]:
        """The group's committed offset of each of ``parts`` (None: nothing committed), in
        one request to the group's coordinator."""
        tps = [TopicPartition(t, p) for t, p in parts]
        if not tps:
            return {}
        got = await self._call(self.consumer.committed, tps, CALL_TIMEOUT_S)
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in got}

    async def log_starts(self, parts: Iterable[Part]) -> dict[Part, int]:
        """Where each of ``parts`` begins, as the last fetch response said (each gives the
        partition's log start offset): no request is made. A partition not fetched yet is
        left out."""

        def read() -> dict[Part, int]:
            out = {}
            for t, p in parts:
                low, _ = self.consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
                if low is not None and low >= 0:
                    out[(t, p)] = low
            return out

        starts: dict[Part, int] = await self._call(read)
        return starts

    async def pause(self, parts: Iterable[Part]) -> None:
        tps = [TopicPartition(t, p) for t, p in parts]
        if tps:
            await self._call(self.consumer.pause, tps)

    async def resume(self, parts: Iterable[Part]) -> None:
        tps = [TopicPartition(t, p) for t, p in parts]
        if tps:
            await self._call(self.consumer.resume, tps)

    # --- the cluster's topics ----------------------------------------------------------------

    async def _read_topics(self, topic: str | None) -> dict[str, int]:
        """Partition counts from a metadata request (every topic, or ``topic`` alone), made on a
        thread of its own with the producer (which may be used from several threads): a read
        of every topic at national size must not hold up a consume or a commit."""
        source = self.producer if self.producer is not None else self.consumer
        meta = await asyncio.get_running_loop().run_in_executor(
            self._meta_thread, source.list_topics, topic, CALL_TIMEOUT_S
        )
        return {
            name: len(t.partitions)
            for name, t in meta.topics.items()
            if t.error is None and t.partitions
        }

    async def read_all_topics(self) -> None:
        """Every topic this principal can see, with its partition count."""
        self._meta_read = time.monotonic()
        self._meta = await self._read_topics(None)

    def _refresh_later(self) -> None:
        """Read every topic again in the background when the last read is old (partition counts
        grow; topics are made)."""
        if time.monotonic() - self._meta_read <= METADATA_EVERY_S or self._refreshing:
            return
        self._refreshing = True

        async def refresh() -> None:
            try:
                await self.read_all_topics()
            except Exception as exc:  # read again next time
                log.info("topics_not_read", error_class=type(exc).__name__)
            finally:
                self._refreshing = False

        self._background = asyncio.get_running_loop().create_task(refresh())

    async def partitions_of(self, topic: str) -> int | None:
        """``topic``'s partition count (None: it does not exist). Known topics are answered from
        the last read; a topic not among them is asked for on its own, at most once a second."""
        self._refresh_later()
        n = self._meta.get(topic)
        if n is None:
            now = time.monotonic()
            if now - self._asked.get(topic, 0.0) > 1.0:
                self._asked[topic] = now
                n = (await self._read_topics(topic)).get(topic)
                if n is not None:
                    self._meta[topic] = n
        return n

    def forget(self, names: Iterable[str]) -> None:
        """Forget the partition counts of ``names``: each is asked again when next needed."""
        for name in names:
            self._meta.pop(name, None)
            self._asked.pop(name, None)

    def known_partitions(self, topic: str) -> int | None:
        """``topic``'s partition count as last read (None: not seen yet)."""
        return self._meta.get(topic)

    # --- writing -----------------------------------------------------------------------------

    def begin(self) -> None:
        self.producer.begin_transaction()
        self._in_transaction = True

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        partition: int | None,
    ) -> None:
        kwargs: dict[str, Any] = {"value": value, "key": key}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                return
            except BufferError:  # the local queue is full: let some of it go first
                self.producer.poll(0.05)

    async def commit(self, offsets: dict[Part, int]) -> None:
        """Add the consumer's ``offsets`` (the next record to read of each partition) to the
        transaction, with the group's current generation, and commit it."""

        # Bound now: should the call be given up, what it does next is to this producer, never
        # to the one made after it.
        producer, consumer = self.producer, self.consumer

        def send_offsets() -> None:
            tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            producer.send_offsets_to_transaction(
                tps, consumer.consumer_group_metadata(), CALL_TIMEOUT_S
            )

        def commit() -> None:
            producer.commit_transaction(CALL_TIMEOUT_S)
            producer.poll(0)  # serve delivery reports, which nothing else reads

        # Each bounded on its own, so a stuck one is given up one call timeout (and a margin)
        # after it began.
        await self._bounded("send_offsets_to_transaction", send_offsets)
        await self._bounded("commit_transaction", commit)
        self._in_transaction = False

    async def abort(self) -> bool:
        """End the open transaction, if any, aborted. False when the producer cannot (fenced,
        or in a state only a new producer leaves): the caller makes a new one."""
        if not self._in_transaction or self.producer is None:
            return True
        try:
            await self._bounded(
                "abort_transaction", self.producer.abort_transaction, CALL_TIMEOUT_S
            )
        except (KafkaException, CallStuck):
            return False
        self._in_transaction = False
        return True


__all__ = ["CALL_TIMEOUT_S", "STUCK_S", "CallStuck", "Part", "Pipe", "kafka_error"]
