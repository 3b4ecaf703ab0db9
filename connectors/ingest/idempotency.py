"""Idempotency keys for ingest: a retried request with the same key is published once.

Kept as a JSON-lines file per agency connector (``$CBX_HOME/connectors/<agency>/sent.jsonl``), so a
retry after a connector restart is still recognised. Each line records the key, a hash of the
request body, and the answer given (message id, recipients).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class IdempotencyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._answers: dict[str, dict[str, Any]] = {}
        self._by_message: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash: its batch was not recorded
                self._remember(rec)

    def _remember(self, rec: dict[str, Any]) -> None:
        if rec.get("key"):
            self._answers[rec["key"]] = rec
        self._by_message[rec["answer"]["message_id"]] = rec

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def get(self, key: str) -> dict[str, Any] | None:
        return self._answers.get(key)

    def message(self, message_id: str) -> dict[str, Any] | None:
        return self._by_message.get(message_id)

    def record(self, key: str | None, digest: str, event_type: str, answer: dict[str, Any]) -> None:
        self.record_many([(key, digest, event_type, answer)])

    def record_many(self, items: list[tuple[str | None, str, str, dict[str, Any]]]) -> None:
        """Append answers and fsync once: after this returns they survive a crash."""
        recs = [{"key": k, "hash": d, "event_type": t, "answer": a} for k, d, t, a in items]
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in recs))
            fh.flush()
            os.fsync(fh.fileno())
        for r in recs:
            self._remember(r)
