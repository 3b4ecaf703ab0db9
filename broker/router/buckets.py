"""Buckets of outbound partitions: one transactional producer each, owned whole by one router.

A router fences a zombie with a producer's transactional id (aiokafka has no KIP-447 group
fencing), which used to mean one producer per outbound partition: at national size several
thousand producers, each an InitProducerId at start and two sockets for ever. Instead each
partition belongs to one of ``CBX_ROUTER_BUCKETS`` buckets, by a hash of its topic and number that
every process computes alike, and each bucket has one transactional id. Whoever makes a bucket's
producer fences the bucket's previous owner, so a bucket must move between routers whole: the
group's assignor (:func:`assignor`) hands out buckets, never loose partitions. Should a bucket ever
be split (a router with another bucket count), fencing still holds and only progress suffers: the
two owners fence each other in turn. So the leader assigns nothing to a member that counts buckets
differently, and says so.

The count is fixed for an exchange: a partition's bucket is its transactional id, and a router
that counted differently would not fence the owner of the partition before it. To change it, stop
every router, then start them all with the new count.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Iterable, Mapping

from aiokafka import TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from broker import env
from broker.errors import ConfigurationError
from broker.logging import get_logger

log = get_logger("router")
DEFAULT_BUCKETS = 32
MAX_BUCKETS = 1024


def configured() -> int:
    """``CBX_ROUTER_BUCKETS``: how many transactional producers the routers share in all."""
    text = env.get("CBX_ROUTER_BUCKETS", str(DEFAULT_BUCKETS))
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_BUCKETS:
        raise ConfigurationError(
            f"CBX_ROUTER_BUCKETS: {text!r} is not a whole number from 1 to {MAX_BUCKETS}"
        )
    return n


def bucket_of(topic: str, partition: int, buckets: int) -> int:
    """The bucket of a partition: the same in every process and every run."""
    return zlib.crc32(f"{topic}/{partition}".encode()) % buckets


def assign_buckets(
    partitions: Iterable[TopicPartition], members: list[str], buckets: int
) -> dict[str, list[TopicPartition]]:
    """Whole buckets to members, the fullest bucket first to the member with fewest partitions
    (ties by name): the same answer for the same input, whoever leads the group."""
    by_bucket: dict[int, list[TopicPartition]] = collections.defaultdict(list)
    for tp in partitions:
        by_bucket[bucket_of(tp.topic, tp.partition, buckets)].append(tp)
    out: dict[str, list[TopicPartition]] = {m: [] for m in sorted(members)}
    if not out:
        return out
    for _, tps in sorted(by_bucket.items(), key=lambda item: (-len(item[1]), item[0])):
        member = min(out, key=lambda m: (len(out[m]), m))
        out[member].extend(tps)
    return out


def assignor(buckets: int) -> type[AbstractPartitionAssignor]:
    """The group's assignor for ``buckets`` buckets (aiokafka's assignors are classes)."""

    class BucketAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
        name = "cbx-buckets"
        version = 0

        @classmethod
        def assign(
            cls,
            cluster: ClusterMetadata,
            members: Mapping[str, ConsumerProtocolMemberMetadata],
        ) -> dict[str, ConsumerProtocolMemberAssignment]:
            agreeing = [m for m, meta in members.items() if _count(meta.user_data) == buckets]
            for m, meta in members.items():
                if m not in agreeing:
                    log.error(
                        "router_bucket_count_differs",
                        member=m,
                        theirs=_count(meta.user_data),
                        ours=buckets,
                    )
            topics = {t for m in agreeing for t in members[m].subscription}
            partitions = [
                TopicPartition(t, p)
                for t in sorted(topics)
                for p in sorted(cluster.partitions_for_topic(t) or ())
            ]
            given = assign_buckets(partitions, agreeing, buckets)
            result = {}
            for m, meta in members.items():
                per_topic: dict[str, list[int]] = collections.defaultdict(list)
                for tp in given.get(m, []):
                    # A topic its owner has not seen yet (just created) waits for the rebalance
                    # that its owner's next metadata refresh starts: a consumer refuses a topic
                    # it does not subscribe to, and the bucket may not go to another member.
                    if tp.topic in meta.subscription:
                        per_topic[tp.topic].append(tp.partition)
                result[m] = ConsumerProtocolMemberAssignment(
                    cls.version, sorted((t, sorted(ps)) for t, ps in per_topic.items()), b""
                )
            return result

        @classmethod
        def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
            return ConsumerProtocolMemberMetadata(cls.version, list(topics), str(buckets).encode())

        @classmethod
        def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
            pass

    return BucketAssignor


def _count(user_data: bytes | None) -> int | None:
    try:
        return int((user_data or b"").decode())
    except ValueError:
        return None
