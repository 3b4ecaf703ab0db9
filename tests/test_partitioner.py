"""cbx's producers place keys exactly where every other Kafka client would."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from broker.kafka.clients import KeyPartitioner

CACHED = KeyPartitioner(size=64)


@given(st.binary(min_size=0, max_size=64), st.integers(min_value=1, max_value=48))
def test_same_partition_as_the_default_murmur2(key: bytes, n: int) -> None:
    parts = list(range(n))
    expected = DefaultPartitioner()(key, parts, parts)
    assert CACHED(key, parts, parts) == expected
    assert CACHED(key, parts, parts) == expected  # and again, from the cache


def test_a_record_without_key_goes_to_an_available_partition() -> None:
    assert KeyPartitioner()(None, [0, 1, 2], [2]) == 2
