"""Running the `cbx` command line as a person would, against the test broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from broker.kafka.settings import KafkaSettings


def cbx(
    settings: KafkaSettings | None, home: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``cbx ARGS`` in a child process with ``home`` as CBX_HOME and the cluster of ``settings``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CBX_BOOTSTRAP", "CBX_SASL"))}
    full["CBX_HOME"] = str(home)
    if settings is not None:
        full.update(settings.to_env())
        # A named cluster: keystores made by the command are encrypted, with a test passphrase.
        full.setdefault("CBX_KEYSTORE_PASSPHRASE", "test passphrase")
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "cbx.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
    )


def benchmark(
    settings: KafkaSettings, home: Path, module: str, *args: str, name: str
) -> tuple[dict[str, Any], str]:
    """Run ``benchmarks.MODULE ARGS`` as ``make bench`` would, against the test cluster; its JSON
    result (written under a name of its own, then removed) and what it printed."""
    root = Path(__file__).resolve().parent.parent
    out = f"{name}-smoke-{os.getpid()}.json"
    env = {
        **os.environ,
        **settings.to_env(),
        "CBX_HOME": str(home),
        "CBX_KEYSTORE_PASSPHRASE": "bench-passphrase",  # a named cluster: keystores encrypted
    }
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args, "--out", out],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    path = root / "benchmarks" / "results" / out
    try:
        result: dict[str, Any] = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    return result, done.stdout
