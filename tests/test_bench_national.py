"""The national simulation runs and measures what it says, on a small scale: six public bodies
and three providers instead of the nation, a twentieth of a day in a few seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import benchmark

from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_bench_national_small_run(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    args = ["--public", "6", "--providers", "3", "--cases", "200", "--day-s", "4"]
    result, printed = benchmark(
        kafka_settings, tmp_path, "bench_national", *args, "--fraction", "0.05", name="national"
    )
    assert "warm-up after a restart" in printed
    assert result["agencies"] == 9
    assert result["routers"] == 2  # one restarted while the other routes
    last = result["growth"][-1]
    assert last["agencies"] == 9
    # Two councils and two forces (14 each), two ICBs (10 each), three providers (4 each).
    assert last["partitions"] == 2 * 14 + 2 * 14 + 2 * 10 + 3 * 4
    assert last["acl_entries"] > 9 * 10
    day = result["day"]
    assert day["not_arrived"] == 0
    assert day["immediate"]["count"] == 11  # a twentieth of 220
    assert day["immediate_during_router_warm_up"]["count"] >= 1
    assert day["router_warm_up_s"] > 0
    assert day["small_connector"]["cases_held"] == 10
    assert day["police_connector"]["cases_held"] >= 200
