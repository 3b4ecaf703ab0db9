"""The handover benchmark runs and measures what it says, on a small scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import benchmark

from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_bench_handover_small_run(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    result, printed = benchmark(
        kafka_settings, tmp_path, "bench_handover", "--sizes", "100,200", name="handover"
    )
    rows = result["rows"]
    assert [r["partitions_moved"] + r["partitions_kept"] for r in rows] == [200, 400]
    for row in rows:
        # Both members held a share, the one that stayed was given the leaver's, and a record
        # written to them reached it only once it had been told of them.
        assert row["partitions_moved"] > 0
        assert row["partitions_kept"] > 0
        assert 0 < row["heard_s"] <= row["first_record_s"] < 60
        assert row["assign_s"] >= 0
        assert f"{row['partitions_moved']:5} moved" in printed
    # The first size is the baseline of the ratios.
    assert rows[0]["first_record_s_x_baseline"] == 1.0
    assert rows[1]["first_record_s_x_baseline"] == round(
        rows[1]["first_record_s"] / rows[0]["first_record_s"], 2
    )
