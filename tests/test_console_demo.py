"""``cbx demo --console``: a newcomer opens the console and sees the demo case fill it in."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from browser import free_port
from console_harness import csrf_of

from broker.admin import provision
from broker.kafka.settings import KafkaSettings
from cbx.scenarios import spec

pytestmark = pytest.mark.kafka


def _start(settings: KafkaSettings, home: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CBX_BOOTSTRAP", "CBX_SASL"))}
    env.update(settings.to_env(), CBX_HOME=str(home), CBX_KEYSTORE_PASSPHRASE="test passphrase")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cbx.cli",
            "demo",
            "--console",
            "--console-port",
            str(port),
            "--console-seconds",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


async def test_the_demo_fills_the_console_in(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    port = free_port()
    proc = await asyncio.to_thread(_start, kafka_settings, tmp_path, port)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        password = None
        while password is None:
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line, "".join(lines)
            lines.append(line)
            found = re.search(r"sign in as demo, password (\S+)\)", line)
            password = found.group(1) if found else None
        steps = len(spec.load(spec.demo()).steps)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            form = await client.get("/sign-in")
            signed = await client.post(
                "/sign-in",
                data={"username": "demo", "password": password, "csrf_token": csrf_of(form.text)},
            )
            assert signed.status_code == 303
            seen = []
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                total = (await client.get("/api/messages")).json()["total"]
                if not seen or seen[-1] != total:
                    seen.append(total)
                if total >= steps:
                    break
                await asyncio.sleep(0.5)
            # The page filled in while the case played: it was seen with fewer messages first.
            assert seen[0] < steps <= seen[-1], seen
            board = (await client.get("/api/board")).json()
            assert sum(r["sent"] for r in board["rows"]) == steps
        rest, _ = await asyncio.to_thread(proc.communicate, timeout=300)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
        # The demo ran with a home of its own, so it gave the exchange's service principals new
        # passwords; set back the ones this test session holds, for the tests after this one.
        await provision.setup(kafka_settings)
    out = "".join(lines)
    assert proc.returncode == 0, out[-3000:]
    assert "every required recipient reached" in out
    # The story, not the services' log lines: those are in the log file.
    assert not re.search(r'^\{"', out, re.MULTILINE)
    log = tmp_path / "logs" / "cbx-demo.log"
    assert '"event": "router_started"' in log.read_text()
