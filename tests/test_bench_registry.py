"""The registry start-up benchmark runs and measures what it says, on a small scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import benchmark

from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_bench_registry_small_run(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    result, printed = benchmark(
        kafka_settings, tmp_path, "bench_registry", "--cases", "300", name="registry"
    )
    assert "small connector" in printed
    (row,) = result["runs"]
    assert row["cases"] == 300
    # The home holds its own ten cases; the force and the router hold all of them.
    assert row["small_connector"]["cases_held"] == 10
    assert row["police_connector"]["cases_held"] == 300
    assert row["router"]["cases_held"] == 300
    raw = row["baseline_raw_read"]
    assert raw["placements"]["records"] == 300
    assert raw["home_view"]["records"] == 10
    for side in ("small_connector", "police_connector", "router"):
        assert row[side]["start_s"] > 0
        assert row[side]["peak_rss_mib"] > 0
