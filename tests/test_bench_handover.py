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
    assert [(r["partitions_moved"] + r["partitions_kept"], r["offsets"]) for r in rows] == [
        (200, "committed"),
        (200, "none"),
        (400, "committed"),
        (400, "none"),
    ]
    for row in rows:
        # Both members held a share, the one that stayed was given the leaver's, and a record
        # written to them reached it only once it had been told of them.
        assert row["partitions_moved"] > 0
        assert row["partitions_kept"] > 0
        assert 0 < row["heard_s"] <= row["first_record_s"] < 60
        assert row["assign_s"] >= 0
        assert f"{row['partitions_moved']:5} moved, offsets {row['offsets']:9}" in printed
    # The first size with offsets is the baseline of the ratios; each run without offsets is
    # also set against the run with them of its size.
    assert rows[0]["first_record_s_x_baseline"] == 1.0
    assert rows[2]["first_record_s_x_baseline"] == round(
        rows[2]["first_record_s"] / rows[0]["first_record_s"], 2
    )
    for with_offsets, without in (rows[0:2], rows[2:4]):
        assert "first_record_s_x_committed" not in with_offsets
        assert without["first_record_s_x_committed"] == round(
            without["first_record_s"] / with_offsets["first_record_s"], 2
        )
