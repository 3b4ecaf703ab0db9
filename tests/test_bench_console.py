"""The console's view benchmark runs and measures what it says, on a small scale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parent.parent


def test_bench_console_small_run(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    out = f"console-smoke-{os.getpid()}.json"
    env = {**os.environ, **kafka_settings.to_env(), "CBX_HOME": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_console",
            "--entries",
            "4000",
            "--queries",
            "3",
            "--out",
            out,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    path = ROOT / "benchmarks" / "results" / out
    try:
        result = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    assert result["entries"] >= 4000
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
