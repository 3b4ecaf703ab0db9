"""Signatures over the exact bytes published, amortised with Merkle batch signing.

A connector signs a batch of records at once: the leaves are SHA-256 hashes of each record value,
the Ed25519 signature covers the Merkle root (with the signer and key id), and each record carries
the signature plus its own inclusion proof in Kafka headers. Every record stays verifiable on its
own by any recipient; a verifier that has already checked a root's signature (the router, for the
rest of the batch) only recomputes hashes.

Headers: ``cbx-signer`` (agency id), ``cbx-kid`` (signing key id), ``cbx-sig`` (64 bytes),
``cbx-proof`` (33 bytes a level: direction, sibling hash).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.crypto.keys import AgencyKeys
from broker.errors import SignatureError

H_SIGNER = "cbx-signer"
H_KID = "cbx-kid"
H_SIG = "cbx-sig"
H_PROOF = "cbx-proof"
_LEAF = b"\x00"
_NODE = b"\x01"
_LEFT = b"L"
_RIGHT = b"R"
_CONTEXT = b"cbx/sig/v1"

Headers = list[tuple[str, bytes]]


def _leaf(value: bytes) -> bytes:
    return hashlib.sha256(_LEAF + value).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _signed_bytes(signer: str, kid: str, root: bytes) -> bytes:
    return b"|".join([_CONTEXT, signer.encode(), kid.encode(), root])


def merkle(values: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    """The root over ``values`` and each value's proof (direction byte + sibling, per level)."""
    level = [_leaf(v) for v in values]
    proofs: list[list[bytes]] = [[] for _ in values]
    members: list[list[int]] = [[i] for i in range(len(values))]
    while len(level) > 1:
        nxt: list[bytes] = []
        nxt_members: list[list[int]] = []
        for i in range(0, len(level), 2):
            if i + 1 == len(level):  # odd one out goes up unchanged
                nxt.append(level[i])
                nxt_members.append(members[i])
                continue
            left, right = level[i], level[i + 1]
            for m in members[i]:
                proofs[m].append(_RIGHT + right)
            for m in members[i + 1]:
                proofs[m].append(_LEFT + left)
            nxt.append(_node(left, right))
            nxt_members.append(members[i] + members[i + 1])
        level, members = nxt, nxt_members
    return level[0], [b"".join(p) for p in proofs]


def root_from_proof(value: bytes, proof: bytes) -> bytes:
    if len(proof) % 33:
        raise SignatureError("malformed signature proof")
    h = _leaf(value)
    for i in range(0, len(proof), 33):
        direction, sibling = proof[i : i + 1], proof[i + 1 : i + 33]
        if direction == _RIGHT:
            h = _node(h, sibling)
        elif direction == _LEFT:
            h = _node(sibling, h)
        else:
            raise SignatureError("malformed signature proof")
    return h


class Signer:
    """Signs batches of record values for one agency with its current Ed25519 key."""

    def __init__(self, keys: AgencyKeys) -> None:
        self.keys = keys

    def sign_batch(self, values: Sequence[bytes]) -> list[Headers]:
        """Kafka headers for each value; one Ed25519 signature for the whole batch."""
        if not values:
            return []
        pair = self.keys.current("sig")
        priv = pair.private
        assert isinstance(priv, Ed25519PrivateKey)
        root, proofs = merkle(values)
        sig = priv.sign(_signed_bytes(self.keys.agency, pair.key_id, root))
        common: Headers = [
            (H_SIGNER, self.keys.agency.encode()),
            (H_KID, pair.key_id.encode()),
            (H_SIG, sig),
        ]
        return [[*common, (H_PROOF, proof)] for proof in proofs]


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for k, v in headers or ():
        if k == name:
            return bytes(v)
    return None


class SigningKeys(Protocol):
    """Where a verifier finds public signing keys (the directory)."""

    def signing_key(self, agency: str, key_id: str) -> bytes: ...


class Verifier:
    """Verifies signed records against the directory, remembering roots already verified."""

    def __init__(self, directory: SigningKeys, cache_size: int = 4096) -> None:
        self.directory = directory
        self._verified: OrderedDict[tuple[str, str, bytes, bytes], None] = OrderedDict()
        self._cache_size = cache_size
        self._keys: dict[bytes, Ed25519PublicKey] = {}

    def verify(self, value: bytes, headers: Sequence[tuple[str, bytes]] | None) -> str:
        """The signer's agency id if a valid key of it signed ``value``; else SignatureError."""
        signer_b, kid_b, sig = (header(headers, h) for h in (H_SIGNER, H_KID, H_SIG))
        proof = header(headers, H_PROOF) or b""
        if signer_b is None or kid_b is None or sig is None:
            raise SignatureError("message is not signed (cbx-signer, cbx-kid, cbx-sig headers)")
        signer, kid = signer_b.decode(errors="replace"), kid_b.decode(errors="replace")
        raw = self.directory.signing_key(signer, kid)
        root = root_from_proof(value, proof)
        cache_key = (signer, kid, root, sig)
        if cache_key in self._verified:
            self._verified.move_to_end(cache_key)
            return signer
        pub = self._keys.get(raw)
        if pub is None:
            pub = Ed25519PublicKey.from_public_bytes(raw)
            self._keys[raw] = pub
        try:
            pub.verify(sig, _signed_bytes(signer, kid, root))
        except InvalidSignature:
            raise SignatureError(
                f"signature by {signer} does not verify: the message was altered"
            ) from None
        self._verified[cache_key] = None
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return signer
