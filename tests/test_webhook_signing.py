"""Signed webhooks: the verifier agencies copy accepts the connector's deliveries alone."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connectors.webhook_signing import SIGNATURE, TIMESTAMP, WebhookSignatureError, sign, verify

BODY = b'{"message_id":"6f1c5c2e","event_type":"ChildMissingReported"}'


def test_an_ed25519_signed_delivery_verifies_with_the_connectors_public_key() -> None:
    key = Ed25519PrivateKey.generate()
    headers = sign(BODY, key=key)
    assert headers[SIGNATURE].startswith("v1-ed25519=")
    verify(headers, BODY, public_key=key.public_key())
    verify({k.lower(): v for k, v in headers.items()}, BODY, public_key=key.public_key())


def test_an_hmac_signed_delivery_verifies_with_the_shared_secret() -> None:
    headers = sign(BODY, secret=b"s3cret")
    assert headers[SIGNATURE].startswith("v1-hmac-sha256=")
    verify(headers, BODY, secret=b"s3cret")
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify(headers, BODY, secret=b"another")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda h, b: ({}, b), "unsigned"),
        (lambda h, b: ({TIMESTAMP: h[TIMESTAMP]}, b), "unsigned"),
        (lambda h, b: (h, b + b" "), "does not match"),
        (lambda h, b: ({**h, TIMESTAMP: str(int(h[TIMESTAMP]) + 1)}, b), "does not match"),
        (lambda h, b: ({**h, SIGNATURE: "v1-ed25519=AAAA"}, b), "does not match"),
        (lambda h, b: ({**h, SIGNATURE: "v1-hmac-sha256=00"}, b), "not the one agreed"),
    ],
)
def test_anything_but_the_connectors_own_delivery_is_refused(change, problem) -> None:  # type: ignore[no-untyped-def]
    key = Ed25519PrivateKey.generate()
    headers, body = change(sign(BODY, key=key), BODY)
    with pytest.raises(WebhookSignatureError, match=problem):
        verify(headers, body, public_key=key.public_key())


def test_a_stale_or_future_delivery_is_refused_as_a_replay() -> None:
    key = Ed25519PrivateKey.generate()
    old = sign(BODY, key=key, now=time.time() - 301)
    with pytest.raises(WebhookSignatureError, match="stale"):
        verify(old, BODY, public_key=key.public_key())
    ahead = sign(BODY, key=key, now=time.time() + 301)
    with pytest.raises(WebhookSignatureError, match="stale"):
        verify(ahead, BODY, public_key=key.public_key())
    recent = sign(BODY, key=key, now=time.time() - 200)
    verify(recent, BODY, public_key=key.public_key())


def test_another_connectors_key_does_not_verify() -> None:
    headers = sign(BODY, key=Ed25519PrivateKey.generate())
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify(headers, BODY, public_key=Ed25519PrivateKey.generate().public_key())
