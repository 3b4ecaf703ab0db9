"""Running the `cbx` command line as a person would, against the test broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
