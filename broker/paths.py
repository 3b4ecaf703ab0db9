"""Where cbx finds its own files and keeps local state."""

from __future__ import annotations

from pathlib import Path

from broker import env


def cbx_home() -> Path:
    """Where cbx keeps local state (broker data, keystores): ``CBX_HOME`` or ~/.local/share/cbx."""
    raw = env.get("CBX_HOME")
    return Path(raw) if raw else Path.home() / ".local" / "share" / "cbx"


def cbx_cache() -> Path:
    """Where downloaded artefacts (Kafka jars) are cached: ``CBX_CACHE_DIR`` or ~/.cache/cbx."""
    raw = env.get("CBX_CACHE_DIR")
    return Path(raw) if raw else Path.home() / ".cache" / "cbx"


def project_root() -> Path:
    """The folder holding ``broker/``, ``schemas/`` and ``deploy/``."""
    return Path(__file__).resolve().parent.parent


def schemas_dir() -> Path:
    """The schema folder: ``CBX_SCHEMAS_DIR`` or ``schemas/`` next to the package."""
    raw = env.get("CBX_SCHEMAS_DIR")
    return Path(raw) if raw else project_root() / "schemas"


def policy_file(name: str) -> Path:
    """A file of ``schemas/policy/``."""
    return schemas_dir() / "policy" / name
