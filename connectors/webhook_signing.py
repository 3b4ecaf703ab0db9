"""Signed webhooks: how an agency's system knows a delivery came from its own connector.

Every webhook POST carries two headers:

- ``Cbx-Timestamp``: when it was signed, in whole seconds since 1970 (UTC);
- ``Cbx-Signature``: ``v1-ed25519=<base64 signature>`` made with the connector's Ed25519 signing
  key (its public key is the agency's directory entry, ``cbx keys show``), or
  ``v1-hmac-sha256=<hex>`` with a secret the agency set (``--webhook-secret-file``);

over the bytes ``<timestamp>.<body>``. The receiver recomputes it over the exact body it received,
refuses a timestamp more than five minutes from its own clock (a replay), and compares in constant
time. :func:`verify` below does all of it with only the standard library and ``cryptography``: an
agency may copy it as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

TIMESTAMP = "Cbx-Timestamp"
SIGNATURE = "Cbx-Signature"
TOLERANCE_S = 300


class WebhookSignatureError(Exception):
    """The delivery is not from the connector, or is too old: do not act on it."""


def sign(
    body: bytes,
    *,
    key: Ed25519PrivateKey | None = None,
    secret: bytes | None = None,
    now: float | None = None,
) -> dict[str, str]:
    """The two headers for ``body``: HMAC when a ``secret`` is set, else Ed25519 with ``key``."""
    stamp = str(int(time.time() if now is None else now))
    signed = stamp.encode() + b"." + body
    if secret is not None:
        value = "v1-hmac-sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
    elif key is not None:
        value = "v1-ed25519=" + base64.b64encode(key.sign(signed)).decode()
    else:
        raise ValueError("a webhook is signed with a key or a secret")
    return {TIMESTAMP: stamp, SIGNATURE: value}


def verify(
    headers: Mapping[str, str],
    body: bytes,
    *,
    public_key: Ed25519PublicKey | None = None,
    secret: bytes | None = None,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> None:
    """Raise :class:`WebhookSignatureError` unless ``body`` was signed by the connector just now.

    ``headers`` as received (any case); ``body`` the raw bytes, before any JSON parsing.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    stamp = lower.get(TIMESTAMP.lower(), "")
    signature = lower.get(SIGNATURE.lower(), "")
    if not stamp.isdigit() or not signature:
        raise WebhookSignatureError("unsigned: no Cbx-Timestamp or Cbx-Signature header")
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance_s:
        raise WebhookSignatureError("stale: the timestamp is over five minutes from now")
    signed = stamp.encode() + b"." + body
    scheme, _, value = signature.partition("=")
    if scheme == "v1-hmac-sha256" and secret is not None:
        expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, value):
            raise WebhookSignatureError("the signature does not match")
        return
    if scheme == "v1-ed25519" and public_key is not None:
        try:
            public_key.verify(base64.b64decode(value, validate=True), signed)
        except (InvalidSignature, binascii.Error, ValueError):
            raise WebhookSignatureError("the signature does not match") from None
        return
    raise WebhookSignatureError(f"signature scheme {scheme!r} is not the one agreed")
