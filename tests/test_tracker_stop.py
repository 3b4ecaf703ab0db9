"""``cbx tracker`` stops cleanly on SIGTERM: it finishes what it holds and exits 0, so a
supervisor sees a stop and not a crash (a second signal exits at once)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from broker import model
from broker.admin import provision
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_sigterm_stops_the_tracker_with_exit_0(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    ns = kafka_settings.with_prefix(f"trk{uuid.uuid4().hex[:8]}")
    asyncio.run(provision.setup(ns))
    tracker = principals.settings_for(ns, model.TRACKER)
    # The session's home: the tracker signs its reminders with the keystore set up there.
    env = {**os.environ, **tracker.to_env(), "CBX_LOG_FORMAT": "json"}
    log = tmp_path / "tracker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cbx.cli", "tracker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "tracker_started" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the tracker did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(errors="replace")
    assert "tracker_stopping" in text
    assert "tracker_stopped" in text
