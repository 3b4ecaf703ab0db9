"""The console's view benchmark runs and measures what it says, on a small scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import benchmark

from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_bench_console_small_run(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    args = ["--entries", "4000", "--queries", "3"]
    result, printed = benchmark(kafka_settings, tmp_path, "bench_console", *args, name="console")
    assert result["entries"] >= 4000
    assert "x raw read" in printed
    assert result["messages"] > 200
    assert result["recipients"] >= 3 * result["messages"]
    assert result["view_catch_up_entries_per_s"] > 0
    assert result["baseline_raw_read_entries_per_s"] > 0
    assert set(result["queries"]) >= {
        "board_hour",
        "board_week",
        "search_agency_status",
        "search_case",
        "escalations",
    }
    for q in result["queries"].values():
        assert 0 <= q["p50_ms"] <= q["p95_ms"] <= q["max_ms"]
