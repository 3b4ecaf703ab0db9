"""Data-key wrapping for recipients: X25519 key agreement, HKDF-SHA256, AES key wrap (RFC 3394).

One ephemeral X25519 key per data key; for each recipient key the key-encryption key is
HKDF-SHA256 over X25519(ephemeral, recipient), salted with both public keys and bound by ``info``
to the data key id, the class, the recipient and its key id, so a wrapped key cannot be moved to
another recipient, class or data key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from broker.crypto.keys import AgencyKeys, raw_public
from broker.errors import ProtectionError

_INFO = b"cbx/wrap/v1"


@dataclass(frozen=True)
class RecipientKey:
    """A recipient's current X25519 public key, as the directory gives it."""

    agency: str
    key_id: str
    public_key: bytes


def _kek(
    shared: bytes,
    eph_pub: bytes,
    rcpt_pub: bytes,
    key_id: bytes,
    cls: str,
    agency: str,
    rcpt_kid: str,
) -> bytes:
    info = b"|".join([_INFO, key_id, cls.encode(), agency.encode(), rcpt_kid.encode()])
    return HKDF(hashes.SHA256(), 32, salt=eph_pub + rcpt_pub, info=info).derive(shared)


def wrap(
    data_key: bytes, key_id: bytes, cls: str, sender_key_id: str, recipients: list[RecipientKey]
) -> dict[str, Any]:
    """A ``cbx.ClassKey`` record: ``data_key`` wrapped for each recipient key."""
    eph = X25519PrivateKey.generate()
    eph_pub = raw_public(eph.public_key())
    wrapped = []
    for r in recipients:
        try:
            shared = eph.exchange(X25519PublicKey.from_public_bytes(r.public_key))
        except ValueError as exc:
            raise ProtectionError(f"encryption key {r.key_id} of {r.agency} is not usable") from exc
        kek = _kek(shared, eph_pub, r.public_key, key_id, cls, r.agency, r.key_id)
        wrapped.append(
            {
                "recipient": r.agency,
                "recipient_key_id": r.key_id,
                "wrapped_key": aes_key_wrap(kek, data_key),
            }
        )
    return {
        "sensitivity": cls,
        "key_id": key_id,
        "sender_key_id": sender_key_id,
        "ephemeral_public": eph_pub,
        "wrapped": wrapped,
    }


def unwrap(class_key: dict[str, Any], keys: AgencyKeys) -> bytes | None:
    """The data key of ``class_key`` if it was wrapped for one of ``keys``; None if not.

    A wrap for this agency that fails to open (tampered, or for a key it does not hold) is an
    error, never a silent "not for me".
    """
    for w in class_key["wrapped"]:
        if w["recipient"] != keys.agency:
            continue
        pair = keys.by_id(w["recipient_key_id"])
        if pair is None:
            raise ProtectionError(
                f"data key wrapped for {w['recipient_key_id']}, which {keys.agency} no longer holds"
            )
        priv = pair.private
        assert isinstance(priv, X25519PrivateKey)
        eph_pub = bytes(class_key["ephemeral_public"])
        try:
            shared = priv.exchange(X25519PublicKey.from_public_bytes(eph_pub))
            kek = _kek(
                shared,
                eph_pub,
                pair.public_bytes,
                bytes(class_key["key_id"]),
                class_key["sensitivity"],
                keys.agency,
                pair.key_id,
            )
            return aes_key_unwrap(kek, bytes(w["wrapped_key"]))
        except (InvalidUnwrap, ValueError) as exc:
            raise ProtectionError(
                f"the {class_key['sensitivity']} data key wrapped for {keys.agency} does not unwrap"
            ) from exc
    return None
