"""The urgent-under-load benchmark runs and measures what it says, on a small scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import benchmark

from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_bench_urgent_small_run(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    result, printed = benchmark(
        kafka_settings, tmp_path, "bench_urgent", "--bulk", "1000", name="urgent"
    )
    assert "IMMEDIATE load" in printed
    cbx, raw = result["cbx"], result["baseline_raw_aiokafka"]
    assert result["bulk"] == 1000
    # Every bulk row was taken (half by file drop, half over HTTP) and routed.
    assert cbx["bulk"]["published"] == 1000
    assert cbx["bulk"]["file_drop"]["rejected"] == 0
    assert cbx["bulk"]["http"]["refused"] == 0
    # Every urgent report reached all four recipients, at idle and under load, in both.
    assert cbx["urgent_not_arrived"] == 0
    assert raw["urgent_not_arrived"] == 0
    for side in (cbx, raw):
        assert side["urgent"]["idle"]["reports"] >= 5
        assert side["urgent"]["load"]["reports"] >= 1
        for phase in side["urgent"].values():
            assert 0 < phase["p50_ms"] <= phase["p99_ms"] <= phase["max_ms"]
    # The recipients had the bulk in their inboxes too: the host councils got every placement.
    handed = cbx["handed_over"]
    assert handed["la-e10000017"] >= 500
    assert handed["la-e10000016"] >= 500
    assert handed["cp-sc482913"] >= 1000
    assert result["load_p99_vs_raw"] == pytest.approx(
        cbx["urgent"]["load"]["p99_ms"] / raw["urgent"]["load"]["p99_ms"], 0.01
    )
