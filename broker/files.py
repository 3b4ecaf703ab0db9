"""Files cbx keeps on local disk: written whole or not at all, readable by this user only.

Keystores, credentials, quarantined records, delivered messages and reports may hold secrets or
sealed personal data. Each is written to a temporary name in the same folder (0600), flushed to
disk, and renamed over the final name, so a crash leaves the old file or the new one, never half of
either; the folder is created 0700.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_private(path: Path, data: bytes | str, *, mode: int = 0o600) -> Path:
    """Write ``data`` to ``path`` atomically, with ``mode`` (0600 unless told otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)  # the umask may have narrowed it; never widen past ``mode``
    os.replace(tmp, path)
    return path


def write_private_json(path: Path, doc: Any, *, indent: int | None = 2) -> Path:
    """``doc`` as JSON, written as :func:`write_private` writes."""
    return write_private(path, json.dumps(doc, indent=indent) + "\n")
