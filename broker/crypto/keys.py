"""Agency key pairs and the keystore file that holds them.

Each agency has X25519 key pairs (encryption) and Ed25519 key pairs (signing), each with a key id
and a validity period. Rotation adds a pair; older pairs stay in the keystore (for decrypting and
being verified) until they expire. The keystore is a JSON file of PKCS#8 PEM private keys, created
with mode 0600; with a passphrase each key is encrypted by ``cryptography``'s best available PKCS#8
encryption, so a wrong passphrase fails when the key is loaded.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from broker.errors import KeystoreError
from broker.files import write_private_json
from broker.paths import cbx_home

KeyKind = Literal["enc", "sig"]
DEFAULT_VALIDITY = dt.timedelta(days=365)
KEYSTORE_VERSION = 1


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def raw_public(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class KeyPair:
    """One private key with its id and validity."""

    key_id: str
    kind: KeyKind
    private: X25519PrivateKey | Ed25519PrivateKey = field(repr=False)
    not_before: dt.datetime
    not_after: dt.datetime

    @functools.cached_property
    def public_bytes(self) -> bytes:
        # Derived once: a public key from its private key is a scalar multiplication, and the
        # sealer asks for its own on every message.
        return raw_public(self.private.public_key())

    def valid_at(self, at: dt.datetime) -> bool:
        return self.not_before <= at <= self.not_after


def new_key_id(agency: str, kind: KeyKind, at: dt.datetime) -> str:
    return f"{agency}/{kind}/{at.strftime('%Y%m%dT%H%M%S%f')}"


def generate(
    agency: str,
    kind: KeyKind,
    at: dt.datetime | None = None,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> KeyPair:
    """A fresh key pair of ``kind`` valid from ``at`` for ``validity``."""
    at = at or utcnow()
    private: X25519PrivateKey | Ed25519PrivateKey = (
        X25519PrivateKey.generate() if kind == "enc" else Ed25519PrivateKey.generate()
    )
    return KeyPair(new_key_id(agency, kind, at), kind, private, at, at + validity)


@dataclass
class AgencyKeys:
    """All key pairs of one agency, oldest first."""

    agency: str
    pairs: list[KeyPair]

    def of(self, kind: KeyKind) -> list[KeyPair]:
        return [p for p in self.pairs if p.kind == kind]

    def current(self, kind: KeyKind, at: dt.datetime | None = None) -> KeyPair:
        """The newest pair of ``kind`` valid at ``at``: the one new messages use."""
        at = at or utcnow()
        valid = [p for p in self.of(kind) if p.valid_at(at)]
        if not valid:
            raise KeystoreError(
                f"agency {self.agency} has no {kind} key valid at {at.isoformat()}: "
                f"run cbx keys rotate --agency {self.agency}"
            )
        return max(valid, key=lambda p: p.not_before)

    def by_id(self, key_id: str) -> KeyPair | None:
        for p in self.pairs:
            if p.key_id == key_id:
                return p
        return None

    @classmethod
    def new(
        cls, agency: str, at: dt.datetime | None = None, validity: dt.timedelta = DEFAULT_VALIDITY
    ) -> AgencyKeys:
        return cls(
            agency, [generate(agency, "enc", at, validity), generate(agency, "sig", at, validity)]
        )

    def rotate(
        self,
        at: dt.datetime | None = None,
        overlap: dt.timedelta = dt.timedelta(days=30),
        validity: dt.timedelta = DEFAULT_VALIDITY,
    ) -> None:
        """Add new pairs; current ones stay valid for ``overlap`` more (never past their expiry)."""
        at = at or utcnow()
        kept: list[KeyPair] = []
        for p in self.pairs:
            if p.not_after >= at:
                end = min(p.not_after, at + overlap)
                p = KeyPair(p.key_id, p.kind, p.private, p.not_before, end)
            kept.append(p)
        self.pairs = [
            *kept,
            generate(self.agency, "enc", at, validity),
            generate(self.agency, "sig", at, validity),
        ]

    def prune(self, at: dt.datetime | None = None) -> None:
        """Drop pairs that have expired (messages sealed for them can no longer be opened)."""
        at = at or utcnow()
        self.pairs = [p for p in self.pairs if p.not_after >= at]


def keystore_path(agency: str, folder: Path | None = None) -> Path:
    return (folder or cbx_home() / "keys") / f"{agency}.keystore.json"


def save(keys: AgencyKeys, path: Path, passphrase: bytes | None = None) -> Path:
    """Write the keystore atomically with mode 0600 (the folder 0700)."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    doc = {
        "version": KEYSTORE_VERSION,
        "agency": keys.agency,
        "protected": bool(passphrase),
        "keys": [
            {
                "key_id": p.key_id,
                "kind": p.kind,
                "not_before": p.not_before.isoformat(),
                "not_after": p.not_after.isoformat(),
                "private_pem": p.private.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
                ).decode(),
            }
            for p in keys.pairs
        ],
    }
    return write_private_json(path, doc)


def load(path: Path, passphrase: bytes | None = None) -> AgencyKeys:
    """Read a keystore; a wrong or missing passphrase is a KeystoreError saying so."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"no keystore at {path}: create one with cbx keys new") from None
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"keystore {path} is unreadable: {exc}") from exc
    if doc.get("protected") and not passphrase:
        raise KeystoreError(f"keystore {path} is passphrase-protected: set CBX_KEYSTORE_PASSPHRASE")
    pairs = []
    for k in doc.get("keys", []):
        try:
            private = serialization.load_pem_private_key(
                k["private_pem"].encode(), password=passphrase if doc.get("protected") else None
            )
        except ValueError:
            raise KeystoreError(f"wrong passphrase for keystore {path}") from None
        except TypeError as exc:
            raise KeystoreError(f"keystore {path}: {exc}") from exc
        expected = X25519PrivateKey if k["kind"] == "enc" else Ed25519PrivateKey
        if not isinstance(private, expected):
            raise KeystoreError(f"keystore {path}: key {k['key_id']} is not a {k['kind']} key")
        pairs.append(
            KeyPair(
                k["key_id"],
                k["kind"],
                private,
                dt.datetime.fromisoformat(k["not_before"]),
                dt.datetime.fromisoformat(k["not_after"]),
            )
        )
    return AgencyKeys(doc["agency"], pairs)
