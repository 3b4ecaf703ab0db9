"""The cold-start benchmark runs and measures what it says, on a small scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import benchmark

from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_bench_cold_small_run(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    result, printed = benchmark(
        kafka_settings, tmp_path, "bench_cold", "--messages", "5", name="cold"
    )
    assert "first message after start" in printed
    cbx, raw = result["cbx"], result["baseline_raw_aiokafka"]
    assert result["messages"] == 5
    assert cbx["router_ready_s"] > 0
    assert cbx["first_ms"] > 0
    assert raw["first_ms"] > 0
    for side in (cbx, raw):
        s = side["steady"]
        assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
    # The new case was learned by the force's connector before its report could be routed.
    assert 0 < cbx["new_case_known_to_sender_ms"] < cbx["new_case_ms"]
    assert result["first_vs_raw_first"] == pytest.approx(cbx["first_ms"] / raw["first_ms"], 0.01)
