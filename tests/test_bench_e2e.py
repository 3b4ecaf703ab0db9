"""The end-to-end benchmark runs and measures what it says, on a small scale (not its numbers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import benchmark

from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_bench_e2e_small_run_delivers_everything_to_three_recipients(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    args = ["--messages", "300", "--rate", "200", "--rate-seconds", "1", "--http-requests", "40"]
    result, printed = benchmark(kafka_settings, tmp_path, "bench_e2e", *args, name="e2e")
    for name, n in (("cbx", 300), ("baseline", 300), ("cbx_fixed_rate", 200)):
        phase = result[name]
        assert phase["deliveries"] == 3 * n, name
        assert phase["notifications_per_s"] > 0
        lat = phase["latency_ms"]
        assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    cpu = result["cbx"]["cpu_us_per_notification"]
    assert {"sender", "router"} <= set(cpu)
    assert sum(1 for k in cpu if k.startswith("recipient")) == 3
    assert all(v > 0 for k, v in cpu.items() if k != "broker")
    sizes = result["cbx"]["bytes_per_notification"]
    outbound = next(v for k, v in sizes.items() if k.startswith("outbound."))
    assert outbound > 1000  # sealed and signed
    assert sum(1 for k, v in sizes.items() if k.startswith("inbox.") and v == outbound) == 3
    assert result["baseline"]["payload_bytes"] == int(outbound)
    assert set(result["ratios"]) == {
        "throughput_cbx_over_baseline",
        "p99_latency_cbx_over_baseline",
        "fixed_rate_p99_cbx_over_baseline",
    }
    assert result["http_ingest"]["status_codes"] == {"202": 40}
    assert "end to end, 300 notifications" in printed
