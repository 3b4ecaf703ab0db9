"""aiokafka client factories and topic administration, all fed by :mod:`broker.kafka.settings`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.protocol.metadata import MetadataRequest

from broker.errors import (
    AccessDeniedError,
    AuthenticationFailedError,
    CbxError,
    KafkaUnavailableError,
)
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import TopicSpec


def c_extension_loaded() -> bool:
    """True when aiokafka's compiled record codec is in use (several times faster)."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    module: str = DefaultRecordBatchBuilder.__module__
    return module.startswith("aiokafka.record._crecords")


class KeyPartitioner:
    """Kafka's default partitioning (murmur2 of the key, as every Kafka client does it),
    remembered per key and partition count: aiokafka computes murmur2 in pure Python on every
    record, and cbx writes several records under one key (a message's log entries, a case's
    notifications)."""

    def __init__(self, size: int = 65_536) -> None:
        self._size = size
        self._cache: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        k = (key, len(all_partitions))
        p = self._cache.get(k)
        if p is None:
            if len(self._cache) >= self._size:
                self._cache.clear()
            p = self._cache[k] = all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]
        return p


def producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer (acks=all) unless overridden."""
    kwargs: dict[str, Any] = {
        **settings.aiokafka_kwargs(),
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
        "partitioner": KeyPartitioner(),
    }
    kwargs.update(overrides)
    return AIOKafkaProducer(**kwargs)


def transactional_producer(
    settings: KafkaSettings, transactional_id: str, **overrides: Any
) -> AIOKafkaProducer:
    """A transactional producer; use ``async with p.transaction():`` (aborts on exception)."""
    return producer(settings, transactional_id=transactional_id, **overrides)


async def send(producer: AIOKafkaProducer, topic: str, value: Any, **kwargs: Any) -> Any:
    """``producer.send``, with ``topic`` kept in the producer's metadata for good.

    aiokafka's client refreshes metadata only for the topics it tracks, and it tracks a topic
    only when the topic was missing from its metadata at the first send. A topic it knew from
    its first (whole-cluster) metadata is dropped by the next refresh for a tracked one; a batch
    already queued for it then waits for a leader until it expires, 40 s later, with
    NotLeaderForPartitionError. A producer that writes several topics, some created after it
    started (a new agency's inbox), meets exactly that: so every topic is tracked before its
    first send. Tracking a topic already tracked costs nothing.
    """
    await producer.client.add_topic(topic)
    return await producer.send(topic, value, **kwargs)


def consumer(settings: KafkaSettings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A ``read_committed`` consumer that commits explicitly, from the earliest offset."""
    kwargs: dict[str, Any] = {
        **settings.aiokafka_kwargs(),
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    kwargs.update(overrides)
    return AIOKafkaConsumer(*topics, **kwargs)


def admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**settings.aiokafka_kwargs())


#: Replicas of every topic on a cluster of at least this many brokers, with min ISR 2: a write
#: is acknowledged when two brokers have it, and one broker may be lost without stopping writes.
REPLICAS = 3


async def replication_for(client: AIOKafkaAdminClient) -> tuple[int, dict[str, str]]:
    """Replication factor and topic settings that follow the cluster: 3 and min ISR 2 on three
    brokers or more, else one replica per broker (development)."""
    brokers = len((await client.describe_cluster()).get("brokers", []))
    if brokers >= REPLICAS:
        return REPLICAS, {"min.insync.replicas": "2"}
    return max(1, brokers), {}


async def ensure_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec], replication: int | None = None
) -> list[str]:
    """Create the topics that do not exist yet, and give an existing one the partitions its
    spec adds (an urgent lane, say); nothing else about an existing topic changes. Returns the
    names of the topics that gained partitions. Replication follows the cluster unless given."""
    specs = list(specs)
    client = admin(settings)
    await client.start()
    try:
        # Only the topics named, not the cluster's list: at national size that list is some
        # 13,000 topics, read twice for every agency provisioned.
        existing = await _existing(client, [s.name for s in specs])
        grown = await _grow(client, [s for s in specs if s.name in existing])
        extra: dict[str, str] = {}
        if replication is None and any(s.name not in existing for s in specs):
            replication, extra = await replication_for(client)
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partitions,
                replication_factor=replication or 1,
                topic_configs={**extra, **s.config},
            )
            for s in specs
            if s.name not in existing
        ]
        if new:
            # Another process may create one between list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await client.create_topics(new)
        await _wait_for_metadata(client, [s.name for s in specs])
    finally:
        await client.close()
    return grown


async def _grow(client: AIOKafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    """Add partitions to the topics of ``specs`` that have fewer than their spec says. Partitions
    are only ever added at the end, so a key's partition among the first ones never moves."""
    if not specs:
        return []
    have = {
        t["topic"]: len(t.get("partitions", []))
        for t in await client.describe_topics([s.name for s in specs])
        if not t.get("error_code")
    }
    short = {s.name: s.partitions for s in specs if 0 < have.get(s.name, 0) < s.partitions}
    if short:
        await client.create_partitions({n: NewPartitions(total_count=c) for n, c in short.items()})
    return sorted(short)


async def _existing(client: AIOKafkaAdminClient, names: list[str]) -> set[str]:
    """Which of ``names`` the cluster's metadata has. Asked without auto-creation: on a cluster
    that allows it (Kafka's default), naming a missing topic would create it, with the cluster's
    default partitions instead of the spec's."""
    response = await client._send_request(MetadataRequest(names, allow_auto_topic_creation=False))
    return {
        t["topic"]
        for t in response.to_object()["topics"]
        if not t.get("error_code") and t.get("partitions")
    }


async def _wait_for_metadata(client: AIOKafkaAdminClient, names: list[str]) -> None:
    for _ in range(100):
        if set(names) <= await _existing(client, names):
            return
        await asyncio.sleep(0.1)


async def partitions(settings: KafkaSettings, topic: str) -> list[int]:
    """Partition ids of ``topic`` (empty when it does not exist)."""
    client = admin(settings)
    await client.start()
    try:
        described = await client.describe_topics([topic])
    finally:
        await client.close()
    for t in described:
        if t.get("topic") == topic and not t.get("error_code"):
            return sorted(p["partition"] for p in t.get("partitions", []))
    return []


def topic_ids(settings: KafkaSettings, names: list[str]) -> dict[str, str]:
    """Kafka's id of each of ``names`` that exists: a topic deleted and made again under the same
    name has a new one (blocking: run it on a thread). aiokafka's metadata request is too old to
    carry ids, so confluent-kafka's admin client asks."""
    from confluent_kafka import KafkaException, TopicCollection
    from confluent_kafka.admin import AdminClient

    client = AdminClient(settings.librdkafka_config())
    out = {}
    for name, fut in client.describe_topics(TopicCollection(names)).items():
        try:
            out[name] = str(fut.result(timeout=30).topic_id)
        except KafkaException:
            continue  # not there, or not visible to this principal
    return out


async def read_to_end(
    settings: KafkaSettings,
    topic: str,
    handle: Callable[[Any], object],
    timeout_s: float = 30.0,
) -> int:
    """Feed every record of ``topic`` (committed ones, from the start to the current end) to
    ``handle``; returns how many were read. Used to rebuild views from compacted topics.

    Fails only when reading makes no progress for ``timeout_s``: a large topic takes as long as it
    takes, so long as it moves."""
    parts = await partitions(settings, topic)
    if not parts:
        return 0
    c = consumer(settings, group_id=None)
    await c.start()
    count = 0
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        loop = asyncio.get_running_loop()
        seen, moved = -1, loop.time()
        while True:
            positions = [await c.position(tp) for tp in tps]
            if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                return count
            if sum(positions) != seen:
                seen, moved = sum(positions), loop.time()
            elif loop.time() - moved > timeout_s:
                raise KafkaUnavailableError(
                    f"reading {topic} to its end made no progress for {timeout_s:.0f}s"
                )
            for records in (await c.getmany(timeout_ms=200, max_records=5000)).values():
                for r in records:
                    handle(r)
                    count += 1
    finally:
        await c.stop()


def _principal(settings: KafkaSettings) -> str:
    return settings.sasl_username or "ANONYMOUS"


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` says Kafka cannot do it now (brokers down, a leader moving, a timeout),
    so the same step may succeed later."""
    from aiokafka import errors as ke

    if isinstance(exc, CbxError):
        return exc.retriable
    if isinstance(exc, ke.KafkaError):
        return bool(exc.retriable) or isinstance(
            exc, (ke.KafkaTimeoutError, ke.KafkaConnectionError, ke.NodeNotReadyError)
        )
    return isinstance(exc, (TimeoutError, ConnectionError))


def explain(exc: BaseException, settings: KafkaSettings) -> CbxError | None:
    """A cbx error naming the principal and the resource for Kafka's authorization errors."""
    from aiokafka import errors as ke

    name = str(exc).rsplit(": ", 1)[-1] if ": " in str(exc) else str(exc)
    if isinstance(exc, ke.TopicAuthorizationFailedError):
        return AccessDeniedError(_principal(settings), "topic", name)
    if isinstance(exc, ke.GroupAuthorizationFailedError):
        return AccessDeniedError(_principal(settings), "consumer group", name)
    if isinstance(exc, ke.TransactionalIdAuthorizationFailed):
        return AccessDeniedError(_principal(settings), "transactional id", name)
    if isinstance(exc, ke.ClusterAuthorizationFailedError):
        return AccessDeniedError(_principal(settings), "cluster", "operation")
    return None


async def diagnose_connection(settings: KafkaSettings) -> CbxError:
    """Why a client could not bootstrap: bad credentials, or the cluster is unreachable."""
    from aiokafka import errors as ke
    from aiokafka.conn import create_conn

    host, port = settings.bootstrap_servers.split(",")[0].rsplit(":", 1)
    kwargs = settings.aiokafka_kwargs()
    try:
        conn = await create_conn(
            host,
            int(port),
            security_protocol=settings.security_protocol,
            sasl_mechanism=kwargs.get("sasl_mechanism", "PLAIN"),
            sasl_plain_username=kwargs.get("sasl_plain_username"),
            sasl_plain_password=kwargs.get("sasl_plain_password"),
            ssl_context=kwargs.get("ssl_context"),
            request_timeout_ms=5000,
        )
        conn.close()
    except ke.SaslAuthenticationFailed:
        return AuthenticationFailedError(
            f"authentication failed for principal {_principal(settings)} at "
            f"{settings.bootstrap_servers}: wrong or unknown credentials"
        )
    except (OSError, ke.KafkaError) as exc:
        return KafkaUnavailableError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {type(exc).__name__}"
        )
    if not settings.security_protocol.startswith("SASL"):
        return AuthenticationFailedError(
            f"authentication failed at {settings.bootstrap_servers}: the cluster closed an "
            "unauthenticated connection (set CBX_SECURITY_PROTOCOL and CBX_SASL_* credentials)"
        )
    return KafkaUnavailableError(f"Kafka at {settings.bootstrap_servers} did not answer")


@contextlib.asynccontextmanager
async def access(settings: KafkaSettings) -> AsyncIterator[None]:
    """Turn Kafka's authentication and authorization failures into clear cbx errors."""
    from aiokafka import errors as ke

    try:
        yield
    except ke.KafkaConnectionError as exc:
        raise await diagnose_connection(settings) from exc
    except ke.KafkaError as exc:
        mapped = explain(exc, settings)
        if mapped is None:
            raise
        raise mapped from exc
