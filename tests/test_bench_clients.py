"""The client comparison runs and measures what it says, on a small scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import benchmark

from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_bench_clients_small_run(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    result, printed = benchmark(
        kafka_settings,
        tmp_path,
        "bench_clients",
        "--partitions",
        "200",
        "--seconds",
        "6",
        name="clients",
    )
    assert result["partitions"] == 200
    for client in ("aiokafka", "confluent-kafka"):
        side = result[client]
        assert client in printed
        # Each consumer joined, was assigned all 200 partitions and read probes from them.
        assert 0 < side["ready_s"] < 6
        lat = side["latency"]
        assert lat["count"] >= 5
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert side["cpu_share_of_a_core"] > 0
