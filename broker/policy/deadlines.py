"""Acknowledgement deadlines by urgency (``schemas/policy/deadlines.yaml``)."""

from __future__ import annotations

import datetime as dt
import re
from functools import cache
from pathlib import Path

import yaml

from broker import env
from broker.errors import ConfigurationError
from broker.paths import schemas_dir

_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """``15m``, ``1h``, ``30s``, ``2d``."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigurationError(f"duration {text!r} is not like 15m, 1h, 30s or 2d")
    return dt.timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)])


@cache
def ack_windows(path: Path | None = None) -> dict[str, dt.timedelta | None]:
    """Windows by urgency, from ``CBX_DEADLINES`` (a file) or the shipped policy."""
    named = env.get("CBX_DEADLINES")
    path = path or (Path(named) if named else schemas_dir() / "policy" / "deadlines.yaml")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"deadlines {path} are unreadable: {exc}") from exc
    return {
        urgency: (parse_duration(str(v)) if v is not None else None)
        for urgency, v in (doc.get("acknowledge_within") or {}).items()
    }


Windows = dict[str, dt.timedelta | None]


def ack_deadline(
    urgency: str, sent_at: dt.datetime, windows: Windows | None = None
) -> dt.datetime | None:
    """When an acknowledgement is due for a message of ``urgency`` sent at ``sent_at``."""
    window = (windows if windows is not None else ack_windows()).get(urgency)
    return sent_at + window if window is not None else None
