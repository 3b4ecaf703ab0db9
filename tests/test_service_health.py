"""``cbx router`` and ``cbx tracker`` as a supervisor sees them: /healthz while alive, /readyz
once able to do their work, and SIGTERM stopping them cleanly with exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from broker import model
from broker.admin import provision
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("command", "principal"), [("router", model.ROUTER), ("tracker", model.TRACKER)]
)
def test_health_readiness_and_a_clean_stop(
    kafka_settings: KafkaSettings, tmp_path: Path, command: str, principal: str
) -> None:
    ns = kafka_settings.with_prefix(f"hl{uuid.uuid4().hex[:8]}")
    asyncio.run(provision.setup(ns))
    asyncio.run(provision.add_agency(ns, "la-e10000016"))  # the router has a partition to own
    port = free_port()
    # The session's home: the services sign with the keystores set up there.
    env = {
        **os.environ,
        **principals.settings_for(ns, principal).to_env(),
        "CBX_LOG_FORMAT": "json",
    }
    log = tmp_path / f"{command}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cbx.cli", command, "--health-port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        states = []
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"{command} never ready: {states[-3:]}"
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            states.append(ready.status_code)
            if ready.status_code == 200:
                break
            assert ready.status_code == 503
            assert ready.json() == {"service": command, "ready": False}
            time.sleep(0.1)
        assert ready.json() == {"service": command, "ready": True}
        alive = httpx.get(f"{base}/healthz", timeout=2)
        assert alive.status_code == 200
        assert alive.json()["alive"] is True
        assert httpx.get(f"{base}/metrics", timeout=2).status_code == 404
        assert httpx.post(f"{base}/readyz", timeout=2).status_code == 405
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(errors="replace")
    assert f"{command}_stopping" in text
    assert f"{command}_stopped" in text
