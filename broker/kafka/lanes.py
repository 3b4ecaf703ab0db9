"""Lanes by urgency on an agency's outbound and inbox topics.

The last partition of a topic with two or more is its urgent lane; the partitions before it carry
everything else, a case's records always on the same one (Kafka's murmur2 of the case key over the
bulk partitions). A topic of three bulk partitions that gains a fourth keeps every case where it
was, so adding the lane to an existing exchange moves nothing. A topic of one partition has no
lane (a small agency's, ``lane: false`` in its profile): readers take it first, as they take
lanes. Producers choose the partition here; readers take the lane first.
"""

from __future__ import annotations

from collections.abc import Collection

from broker.kafka.clients import KeyPartitioner

_partitioner = KeyPartitioner()


def has_lane(partitions: int) -> bool:
    return partitions >= 2


def lane_of(partitions: int) -> int:
    """The urgent lane's partition of a topic with ``partitions`` partitions."""
    return partitions - 1 if has_lane(partitions) else 0


def is_lane(partition: int, partitions: int) -> bool:
    return has_lane(partitions) and partition == partitions - 1


def read_first(partition: int, partitions: int) -> bool:
    """Whether readers take this partition before bulk work: an urgent lane, or the only
    partition of a topic without one (a small agency's: a few messages a day, urgent or not, with
    no bulk of its own to wait behind, so nothing of it may wait behind others' bulk)."""
    return partitions == 1 or is_lane(partition, partitions)


def partition_for(key: bytes | None, partitions: int | Collection[int], urgent: bool) -> int:
    """The partition a record goes to: the lane if urgent, else its key's bulk partition."""
    n = partitions if isinstance(partitions, int) else len(partitions)
    if n < 1:
        raise ValueError("a topic has at least one partition")
    if not has_lane(n):
        return 0
    if urgent:
        return n - 1
    bulk = list(range(n - 1))
    return _partitioner(key, bulk, bulk)


__all__ = ["has_lane", "is_lane", "lane_of", "partition_for", "read_first"]
