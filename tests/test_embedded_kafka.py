"""`cbx kafka start|status|stop` on a private CBX_HOME, driven as a person would from a shell."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker.kafka import embedded as local_kafka

CBX = [sys.executable, "-m", "cbx.cli"]


def _cbx(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CBX_BOOTSTRAP")}
    base["CBX_HOME"] = str(home)
    base.update(env or {})
    return subprocess.run([*CBX, *args], capture_output=True, text=True, env=base, timeout=300)


def _kafka_pids(data_dir: Path) -> list[int]:
    """Live kafka.Kafka JVMs whose command line names this data folder."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"kafka.Kafka" in cmd and str(data_dir).encode() in cmd:
            pids.append(int(proc.name))
    return [p for p in pids if local_kafka._is_kafka_process(p)]


@pytest.mark.kafka
def test_start_status_stop_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    started = _cbx(home, "kafka", "start")
    assert started.returncode == 0, started.stderr
    address = started.stdout.strip().splitlines()[-1]
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0

    status = _cbx(home, "kafka", "status", "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["status"] == "up"
    assert info["bootstrap"] == address
    data_dir = Path(info["data_dir"])
    assert _kafka_pids(data_dir) == [info["pid"]]

    again = _cbx(home, "kafka", "start")
    assert again.returncode == 0
    assert again.stdout.strip().splitlines()[-1] == address, "second start must reuse the broker"
    assert _kafka_pids(data_dir) == [info["pid"]]

    stopped = _cbx(home, "kafka", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert _kafka_pids(data_dir) == [], "no Kafka JVM may remain after stop"
    down = _cbx(home, "kafka", "status", "--json")
    assert down.returncode != 0
    assert json.loads(down.stdout)["status"] == "down"

    restarted = _cbx(home, "kafka", "start")
    try:
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.strip().splitlines()[-1] == address, "same data, same ports"
        assert len(_kafka_pids(data_dir)) == 1
        # Headers at rest are for the broker's user alone: folders 0700, files 0600.
        exposed = [
            f"{p.relative_to(home)} {oct(p.stat().st_mode & 0o777)}"
            for p in [data_dir.parent, *data_dir.rglob("*")]
            if p.stat().st_mode & 0o077
        ]
        assert exposed == []
        segments = list(data_dir.rglob("*.log"))
        assert segments  # the check above saw the broker's own log segments
    finally:
        purge = _cbx(home, "kafka", "stop", "--purge")
    assert purge.returncode == 0
    assert _kafka_pids(data_dir) == []
    assert not data_dir.exists()


def test_start_without_java_explains_and_names_alternatives(tmp_path: Path) -> None:
    # A PATH with the Python interpreter but no java.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    assert shutil.which("java", path=str(bindir)) is None
    result = _cbx(tmp_path / "home", "kafka", "start", env={"PATH": str(bindir)})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "java" in lines[0].lower()
    assert "CBX_BOOTSTRAP_SERVERS" in lines[0]
    assert "docker-compose" in lines[0]
    assert result.stdout.strip() == ""
