"""Handing delivered messages to the agency's system: a webhook, or a folder of JSON files.

Neither says DELIVERED until the agency's system has the message: the webhook retries with capped,
jittered backoff for as long as the agency's system is down or busy (connection failures, 5xx,
408, 425, 429: the inbox topic is the buffer, so nothing is lost and the order is kept), and the
folder sink writes each file atomically. A 4xx that would be the same on every try is a refusal of
that message: :class:`SinkRefused`, which the inbox quarantines and answers REJECTED.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import random
import uuid
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.files import write_private_json
from broker.logging import get_logger
from broker.model import Withheld
from connectors.gateway.inbox import Delivered, SinkRefused
from connectors.webhook_signing import sign

log = get_logger("sink")
#: Answers that will not change if the same POST is tried again (any other 4xx likewise).
PERMANENT = frozenset({400, 401, 403, 404, 405, 410, 411, 413, 414, 415, 422})
#: 4xx answers that mean "not now": retried like a 5xx or a connection failure.
TRANSIENT = frozenset({408, 425, 429})


def to_json(value: Any) -> Any:
    """A delivered body as agency JSON; fields the agency may not read say so."""
    if isinstance(value, Withheld):
        return value.as_json()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def document(d: Delivered) -> dict[str, Any]:
    h = d.header
    return {
        "message_id": str(h.message_id),
        "event_type": h.event_type,
        "sender": h.sender,
        "sender_role": str(h.sender_role),
        "case_ref": h.case_ref,
        "urgency": h.urgency,
        "occurred_at": h.occurred_at.isoformat(),
        "recipients": [{"agency": r.agency, "role": str(r.role)} for r in h.recipients],
        "related_message_id": str(h.related_message_id) if h.related_message_id else None,
        "event": to_json(d.body),
    }


class FolderSink:
    """One JSON file per message, written atomically (0600) into a folder the agency collects."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def __call__(self, d: Delivered) -> None:
        doc = document(d)
        final = (
            self.folder / f"{doc['occurred_at'][:10]}_{doc['event_type']}_{doc['message_id']}.json"
        )
        write_private_json(final, doc)


class WebhookSink:
    """POST each message to the agency's system, signed; retry while it is down or busy.

    Each POST is signed (:mod:`connectors.webhook_signing`) with ``secret`` (HMAC) if given, else
    with ``key`` (the connector's Ed25519 signing key); an unsigned sink needs ``unsigned=True``
    (tests of other things). TLS certificates are verified (``verify``: True, or a CA file), and a
    client certificate can be presented (``client_cert``: (certificate, key) PEM files).
    """

    def __init__(
        self,
        url: str,
        *,
        key: Ed25519PrivateKey | None = None,
        secret: bytes | None = None,
        unsigned: bool = False,
        verify: bool | str = True,
        client_cert: tuple[str, str] | None = None,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if key is None and secret is None and not unsigned:
            raise ValueError("a webhook sink signs with the connector's key or a shared secret")
        self.url = url
        self.key = key
        self.secret = secret
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.client = httpx.AsyncClient(
            timeout=timeout_s, headers=headers or {}, verify=verify, cert=client_cert
        )
        self.attempts = 0

    async def __call__(self, d: Delivered) -> None:
        doc = document(d)
        attempt = 0
        while True:
            attempt += 1
            self.attempts += 1
            try:
                body = json.dumps(doc, separators=(",", ":")).encode()
                headers = {"Idempotency-Key": doc["message_id"], "Content-Type": "application/json"}
                if self.key is not None or self.secret is not None:
                    headers |= sign(body, key=self.key, secret=self.secret)
                r = await self.client.post(self.url, content=body, headers=headers)
                if 200 <= r.status_code < 300:
                    return
                if r.status_code in PERMANENT or (
                    400 <= r.status_code < 500 and r.status_code not in TRANSIENT
                ):
                    raise SinkRefused(f"the agency's system answered HTTP {r.status_code}")
                reason = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            delay = min(self.max_delay_s, self.base_delay_s * 2 ** min(attempt - 1, 16))
            delay = random.uniform(delay / 2, delay)
            log.warning(
                "webhook_retry",
                message_id=doc["message_id"],
                attempt=attempt,
                reason=reason,
                retry_in_s=round(delay, 2),
            )
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self.client.aclose()
