"""The demonstration case through the whole exchange, as `make demo` runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.settings import KafkaSettings
from connectors.demo import run, sensitive_values, steps

pytestmark = pytest.mark.kafka


async def test_the_case_reaches_every_required_recipient_and_nothing_is_in_clear(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBX_HOME", str(tmp_path))
    report = await run(kafka_settings)
    assert len(report["messages"]) == len(steps())
    for m in report["messages"]:
        assert m["recipients"], m["event_type"]
        assert all(r["status"] == "ACKNOWLEDGED" for r in m["recipients"]), m
        assert all(r["delivered_ms"] is not None for r in m["recipients"])
        assert all(r["acknowledged_ms"] is not None for r in m["recipients"])
        assert m["route_gaps"] == []
    by_type = {m["event_type"]: m for m in report["messages"]}
    placement = {r["agency"] for r in by_type["PlacementNotified"]["recipients"]}
    assert placement == {
        "la-e10000017",
        "pf-e23000003",
        "pf-e23000032",
        "icb-e54000048",
        "icb-e54000032",
    }
    missing = {r["agency"] for r in by_type["ChildMissingReported"]["recipients"]}
    assert missing == {"la-e10000016", "pf-e23000032", "la-e10000017"}
    assert len(sensitive_values(steps())) > 30
    assert report["records_scanned"] > 50
    assert report["plaintext_found"] == 0
