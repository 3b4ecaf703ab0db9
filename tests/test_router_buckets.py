"""Buckets of outbound partitions, with no broker: stable, whole, balanced, and refused to a router
that counts them differently."""

from __future__ import annotations

import zlib

import pytest
from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from broker.errors import ConfigurationError
from broker.router import buckets

TOPICS = {f"cbx.outbound.la-e1000{i:04d}": 4 for i in range(30)} | {"cbx.outbound.cp-sc1": 2}


class Cluster:
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = TOPICS.get(topic)
        return set(range(n)) if n else None


def _all() -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, n in TOPICS.items() for p in range(n)]


def test_a_partitions_bucket_is_the_same_everywhere() -> None:
    # Every process and every run: a hash of the name, not Python's salted hash().
    expected = zlib.crc32(b"cbx.outbound.la-e10000016/2") % 32
    assert buckets.bucket_of("cbx.outbound.la-e10000016", 2, 32) == expected
    assert {buckets.bucket_of(tp.topic, tp.partition, 8) for tp in _all()} == set(range(8))


@pytest.mark.parametrize("members", [1, 2, 3, 7])
def test_members_get_whole_buckets_and_every_partition_once(members: int) -> None:
    names = [f"router-{i}" for i in range(members)]
    given = buckets.assign_buckets(_all(), names, 16)
    owned = [tp for tps in given.values() for tp in tps]
    assert sorted(owned) == sorted(_all())  # each partition once
    owner_of: dict[int, str] = {}
    for member, tps in given.items():
        for tp in tps:
            b = buckets.bucket_of(tp.topic, tp.partition, 16)
            assert owner_of.setdefault(b, member) == member  # a bucket is never split
    sizes = sorted(len(tps) for tps in given.values())
    biggest = max(
        sum(1 for tp in _all() if buckets.bucket_of(tp.topic, tp.partition, 16) == b)
        for b in range(16)
    )
    assert sizes[-1] - sizes[0] <= biggest  # balanced to within one bucket
    # The same answer whoever leads the group and in whatever order it lists the members.
    again = buckets.assign_buckets(reversed(_all()), list(reversed(names)), 16)
    assert {m: sorted(t) for m, t in again.items()} == {m: sorted(t) for m, t in given.items()}


def test_the_assignor_gives_nothing_to_a_router_counting_buckets_differently() -> None:
    ours = buckets.assignor(16)
    topics = sorted(TOPICS)
    members = {
        "a": ours.metadata(topics),
        "b": buckets.assignor(8).metadata(topics),
        # Subscribed to all but one topic (its metadata is behind): never handed that topic.
        "c": ConsumerProtocolMemberMetadata(0, topics[1:], b"16"),
    }
    result = ours.assign(Cluster(), members)
    assert result["b"].assignment == []
    got = {m: {(t, p) for t, ps in result[m].assignment for p in ps} for m in ("a", "c")}
    assert got["a"]
    assert got["c"]
    assert not any(t == topics[0] for t, _ in got["c"])
    assert not got["a"] & got["c"]


@pytest.mark.parametrize("value", ["0", "-3", "many", "2000"])
def test_a_bad_bucket_count_is_refused_naming_the_setting(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBX_ROUTER_BUCKETS", value)
    with pytest.raises(ConfigurationError, match="CBX_ROUTER_BUCKETS"):
        buckets.configured()
    monkeypatch.setenv("CBX_ROUTER_BUCKETS", "64")
    assert buckets.configured() == 64
