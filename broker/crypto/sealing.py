"""Field sealing: where a message's sensitive fields are encrypted, and opened again.

The wire schema of a body is derived deterministically from its plain schema: every top-level
field tagged with a sensitivity class becomes a ``cbx.SealedValue``, and a ``cbx_sealing`` field
(``cbx.Sealing``) carrying the wrapped data keys is appended. A body published in its plain schema
cannot carry a tagged field in clear past the router, because only wire fingerprints are accepted.

Each sealed value is AES-256-GCM over the field's Avro binary encoding, under the data key of its
class, with additional authenticated data binding it to the message id, the plain schema
fingerprint, the field name and the class: moved to another field or another message, it fails.

Data keys are reused for a bounded time and number of uses per (class, recipient key set), with
their wrapped form cached (as Kroxylicious does), so a steady stream costs one AES-GCM per field
rather than one X25519 agreement per recipient per message. Openers cache unwrapped keys by id.
"""

from __future__ import annotations

import copy
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import fastavro
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastavro.schema import expand_schema

from broker.crypto.keys import AgencyKeys
from broker.crypto.wrap import RecipientKey, unwrap, wrap
from broker.errors import ProtectionError, SerializationError
from broker.model import Recipient, Role, SensitivityClass, Withheld
from broker.policy.sharing import SharingPolicy
from broker.schema import codec
from broker.schema.catalogue import Catalogue, SchemaVersion, schema_fingerprint

SEALING_FIELD = "cbx_sealing"
WIRE_NAMESPACE = "cbx.wire"
_AAD = b"cbx/seal/v1"


def _dedupe(schema: Any) -> Any:
    """First occurrence of each named type keeps its definition; later ones become references."""
    seen: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed") and "name" in node:
                name = node["name"]
                if name in seen:
                    return name
                seen.add(name)
            out = dict(node)
            if out.get("type") in ("record", "error"):
                out["fields"] = [dict(f, type=walk(f["type"])) for f in out["fields"]]
            for key in ("items", "values"):
                if key in out:
                    out[key] = walk(out[key])
            if isinstance(out.get("type"), dict | list):
                out["type"] = walk(out["type"])
            return out
        return node

    return walk(copy.deepcopy(schema))


@dataclass(frozen=True)
class SealedField:
    name: str
    sensitivity: SensitivityClass
    parsed: Any  # wrapper record {"v": <field type>} for the plaintext encoding


@dataclass(frozen=True)
class BodyForm:
    """A body schema's plain and wire forms and its sealed fields."""

    plain: SchemaVersion
    wire_raw: dict[str, Any]
    wire_parsed: Any
    wire_fingerprint: bytes
    sealed: tuple[SealedField, ...]
    prefix_parsed: Any  # the wire schema without its last field, cbx_sealing
    sealing_parsed: Any  # cbx.Sealing on its own

    @property
    def event_type(self) -> str:
        return self.plain.name


def derive(plain: SchemaVersion, sealed_value: dict[str, Any], sealing: dict[str, Any]) -> BodyForm:
    """The wire form of ``plain``; the same plain schema always gives the same wire schema."""
    expanded: Any = expand_schema(copy.deepcopy(plain.raw))
    tags = plain.sensitive_fields
    sealed: list[SealedField] = []
    fields = []
    for f in expanded["fields"]:
        if f["name"] in tags:
            cls = tags[f["name"]]
            wrapper = _dedupe(
                {
                    "type": "record",
                    "name": f"{WIRE_NAMESPACE}.{plain.name}_{f['name']}",
                    "fields": [{"name": "v", "type": f["type"]}],
                }
            )
            sealed.append(SealedField(f["name"], cls, fastavro.parse_schema(wrapper)))
            fields.append(
                {
                    "name": f["name"],
                    "type": copy.deepcopy(sealed_value),
                    "doc": f"Sealed ({cls}): {f.get('doc', '')}",
                    "sensitivity": str(cls),
                }
            )
        else:
            fields.append(f)
    fields.append(
        {"name": SEALING_FIELD, "type": copy.deepcopy(sealing), "doc": "Wrapped data keys."}
    )
    wire_raw = _dedupe(
        {
            "type": "record",
            "name": f"{WIRE_NAMESPACE}.{plain.name}",
            "doc": f"Wire form of {plain.full_name} v{plain.version}: sensitive fields sealed.",
            "fields": fields,
        }
    )
    wire_parsed = fastavro.parse_schema(copy.deepcopy(wire_raw))
    # Avro encodes a record as its fields one after another, and cbx_sealing is the last field, so
    # a body is the encoding of the other fields followed by the sealing block's own encoding,
    # which is the same for every message sealed under the same data keys (and so cached).
    prefix = _dedupe(dict(wire_raw, fields=wire_raw["fields"][:-1]))
    return BodyForm(
        plain,
        wire_raw,
        wire_parsed,
        schema_fingerprint(wire_parsed),
        tuple(sealed),
        fastavro.parse_schema(prefix),
        fastavro.parse_schema(copy.deepcopy(sealing)),
    )


@dataclass(frozen=True)
class SealingBlock:
    """A body's decoded sealing block: its data keys by id, and whom each class is wrapped for."""

    by_id: dict[bytes, dict[str, Any]]
    wrapped: dict[str, frozenset[str]]


#: Sealing blocks kept decoded, by their bytes, per process (a connector reuses a data key for many
#: messages, so most bodies carry a block already seen): at most this many bytes of blocks, and
#: none bigger than BLOCK_KEPT_MAX, so that an agency writing large blocks of its own making into
#: its outbound topic cannot make the router hold them (a block for three recipients is 1.4 KB).
BLOCKS_KEPT_BYTES = 4 * 1024 * 1024
BLOCK_KEPT_MAX = 64 * 1024


class BodyForms:
    """Plain and wire forms of every body schema version in a catalogue."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._blocks: dict[bytes, SealingBlock] = {}
        self._blocks_bytes = 0
        sealed_value: Any = expand_schema(catalogue.latest("SealedValue").raw)
        sealing: Any = expand_schema(catalogue.latest("Sealing").raw)
        self.by_plain: dict[bytes, BodyForm] = {}
        self.by_wire: dict[bytes, BodyForm] = {}
        self.latest: dict[str, BodyForm] = {}
        for name in catalogue.event_types():
            for v in catalogue.versions[name]:
                form = derive(v, sealed_value, sealing)
                self.by_plain[v.fingerprint] = form
                self.by_wire[form.wire_fingerprint] = form
            self.latest[name] = self.by_plain[catalogue.latest(name).fingerprint]

    def split(self, body: bytes) -> tuple[BodyForm, dict[str, Any], SealingBlock]:
        """A wire body's form, its fields (sealed ones still sealed) and its sealing block.

        The block is decoded once per distinct bytes: while a sender reuses its data keys, every
        body it seals ends in the same block (1.4 KB of wraps for three recipients), and decoding
        it cost more than the rest of the body.
        """
        wire_fp = codec.read_fingerprint(body)
        self.wire_writer(wire_fp)  # raises: a plain body, or an unknown schema
        form = self.by_wire[wire_fp]
        record, rest = codec.decode_head(body, form.prefix_parsed)
        block = self._blocks.get(rest)
        if block is None:
            sealing = codec.decode_whole(rest, form.sealing_parsed, "sealing block")
            keys = sealing["keys"]
            block = SealingBlock(
                {bytes(k["key_id"]): k for k in keys},
                {
                    str(k["sensitivity"]): frozenset(w["recipient"] for w in k["wrapped"])
                    for k in keys
                },
            )
            if len(rest) <= BLOCK_KEPT_MAX:
                if self._blocks_bytes + len(rest) > BLOCKS_KEPT_BYTES:
                    self._blocks.clear()
                    self._blocks_bytes = 0
                self._blocks[rest] = block
                self._blocks_bytes += len(rest)
        return form, record, block

    def wire_writer(self, fp: bytes) -> Any:
        try:
            return self.by_wire[fp].wire_parsed
        except KeyError:
            if fp in self.by_plain:
                raise ProtectionError(
                    "body is in its plain schema: sensitive fields would travel in clear"
                ) from None
            raise ProtectionError(f"body schema {fp.hex()} is not a known wire schema") from None


def _aad(message_id: uuid.UUID, plain_fp: bytes, field_name: str, cls: str) -> bytes:
    return b"|".join([_AAD, message_id.bytes, plain_fp, field_name.encode(), cls.encode()])


def _encode_value(parsed: Any, value: Any) -> bytes:
    buf = BytesIO()
    try:
        fastavro.schemaless_writer(buf, parsed, {"v": value})
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise SerializationError(f"field {parsed['name']} does not match its schema") from exc
    return buf.getvalue()


@dataclass
class _CachedKey:
    key_id: bytes
    aead: AESGCM
    class_key: dict[str, Any]
    created: float
    uses: int = 0


@dataclass
class KeyReuse:
    """How long a data key may be reused (per class and recipient key set)."""

    max_age_s: float = 3600.0
    max_uses: int = 1_000_000  # far below the 2**32 random-nonce limit for AES-GCM

    @classmethod
    def never(cls) -> KeyReuse:
        return cls(max_age_s=0.0, max_uses=1)


@dataclass
class SealResult:
    """A sealed body: the wire bytes and, per class, who can open it."""

    body: bytes
    readers: dict[SensitivityClass, list[str]] = field(default_factory=dict)


class Sealer:
    """Seals bodies for one sending agency."""

    def __init__(
        self,
        keys: AgencyKeys,
        directory: Any,  # broker.directory.Directory (import cycle avoided)
        policy: SharingPolicy,
        forms: BodyForms,
        reuse: KeyReuse | None = None,
    ) -> None:
        self.keys = keys
        self.directory = directory
        self.policy = policy
        self.forms = forms
        self.reuse = reuse or KeyReuse()
        self._cache: dict[tuple[str, tuple[tuple[str, str], ...]], _CachedKey] = {}
        self._sealing_bytes: dict[tuple[bytes, ...], bytes] = {}

    def _recipient_keys(self, agencies: Iterable[str]) -> list[RecipientKey]:
        out = []
        for agency in sorted(set(agencies)):
            info = self.directory.encryption_key(agency)
            if info is None:
                raise ProtectionError(
                    f"no valid encryption key for recipient {agency} in the directory: "
                    "the message cannot be sealed for it"
                )
            out.append(RecipientKey(agency, info.key_id, info.public_key))
        return out

    def _data_key(self, cls: SensitivityClass, readers: list[RecipientKey]) -> _CachedKey:
        own = self.keys.current("enc")
        wrap_for = [*readers, RecipientKey(self.keys.agency, own.key_id, own.public_bytes)]
        cache_key = (str(cls), tuple(sorted((r.agency, r.key_id) for r in wrap_for)))
        now = time.monotonic()
        hit = self._cache.get(cache_key)
        if hit and hit.uses < self.reuse.max_uses and now - hit.created < self.reuse.max_age_s:
            hit.uses += 1
            return hit
        data_key = AESGCM.generate_key(256)
        key_id = os.urandom(16)
        entry = _CachedKey(
            key_id, AESGCM(data_key), wrap(data_key, key_id, str(cls), own.key_id, wrap_for), now, 1
        )
        self._cache[cache_key] = entry
        return entry

    def seal(
        self,
        event_type: str,
        message_id: uuid.UUID,
        body: dict[str, Any],
        recipients: list[Recipient],
    ) -> SealResult:
        """Seal ``body`` (a record of the current ``event_type`` schema) for ``recipients``."""
        form = self.forms.latest[event_type]
        plain_fp = form.plain.fingerprint
        wire = dict(body)
        class_keys: dict[SensitivityClass, dict[str, Any]] = {}
        readers: dict[SensitivityClass, list[str]] = {}
        for sf in form.sealed:
            cls = sf.sensitivity
            if cls not in class_keys:
                roles = self.policy.audience(event_type, cls)
                entitled = [
                    r.agency for r in recipients if r.role in roles and r.agency != self.keys.agency
                ]
                keys = self._recipient_keys(entitled)
                cached = self._data_key(cls, keys)
                class_keys[cls] = {"cached": cached}
                readers[cls] = sorted({k.agency for k in keys} | {self.keys.agency})
            cached = class_keys[cls]["cached"]
            nonce = os.urandom(12)
            plaintext = _encode_value(sf.parsed, body.get(sf.name))
            wire[sf.name] = {
                "sensitivity": str(cls),
                "key_id": cached.key_id,
                "nonce": nonce,
                "ciphertext": cached.aead.encrypt(
                    nonce, plaintext, _aad(message_id, plain_fp, sf.name, str(cls))
                ),
            }
        used = [v["cached"] for v in class_keys.values()]
        ids = tuple(c.key_id for c in used)
        block = self._sealing_bytes.get(ids)
        if block is None:
            buf = BytesIO()
            fastavro.schemaless_writer(
                buf, form.sealing_parsed, {"keys": [c.class_key for c in used]}
            )
            block = buf.getvalue()
            if len(self._sealing_bytes) > 1024:
                self._sealing_bytes.clear()
            self._sealing_bytes[ids] = block
        prefix = codec.encode(form.prefix_parsed, form.wire_fingerprint, wire)
        return SealResult(prefix + block, readers)


class Opener:
    """Opens sealed bodies for one receiving agency (or for the sender, its own messages)."""

    def __init__(self, keys: AgencyKeys, forms: BodyForms) -> None:
        self.keys = keys
        self.forms = forms
        self._keys: dict[bytes, AESGCM] = {}

    def open(
        self, body: bytes, message_id: uuid.UUID, plain_fp: bytes
    ) -> tuple[str, dict[str, Any]]:
        """Decode and unseal; fields this agency may not read come back as :class:`Withheld`."""
        form = self.forms.by_wire.get(codec.read_fingerprint(body))
        if form is not None and form.plain.fingerprint != plain_fp:
            raise ProtectionError(
                "the header's schema fingerprint does not match the body's wire schema"
            )
        form, record, block = self.forms.split(body)
        by_id = block.by_id
        for sf in form.sealed:
            sealed = record[sf.name]
            cls = str(sf.sensitivity)
            if sealed["sensitivity"] != cls:
                raise ProtectionError(f"field {sf.name} is sealed under the wrong class")
            key_id = bytes(sealed["key_id"])
            aead = self._keys.get(key_id)
            if aead is None:
                class_key = by_id.get(key_id)
                if class_key is None or class_key["sensitivity"] != cls:
                    raise ProtectionError(f"field {sf.name}: its data key is not in the message")
                data_key = unwrap(class_key, self.keys)
                if data_key is None:
                    record[sf.name] = Withheld(sf.sensitivity)
                    continue
                aead = AESGCM(data_key)
                self._keys[key_id] = aead
            try:
                plaintext = aead.decrypt(
                    bytes(sealed["nonce"]),
                    bytes(sealed["ciphertext"]),
                    _aad(message_id, plain_fp, sf.name, cls),
                )
            except InvalidTag:
                raise ProtectionError(
                    f"field {sf.name} fails authentication: tampered, or moved from another "
                    "field or message"
                ) from None
            try:
                value: Any = fastavro.schemaless_reader(BytesIO(plaintext), sf.parsed, None)
            except Exception as exc:  # the sealed value does not decode: the record's failure
                raise SerializationError(
                    f"field {sf.name} does not decode: {type(exc).__name__}"
                ) from exc
            record[sf.name] = value["v"]
        return form.event_type, record


def unsealed_for(
    policy: SharingPolicy,
    event_type: str,
    recipients: Iterable[Recipient],
    form: BodyForm,
    block: SealingBlock,
) -> dict[str, list[str]]:
    """Recipients named in a header that the body's data keys are not wrapped for, although one of
    their roles may read the class: agency -> classes. Reads only the sealing block (no key)."""
    wrapped = block.wrapped
    roles: dict[str, set[Role]] = {}
    for r in recipients:
        roles.setdefault(r.agency, set()).add(r.role)
    gaps: dict[str, list[str]] = {}
    for cls in sorted({str(sf.sensitivity) for sf in form.sealed}):
        audience = policy.audience(event_type, SensitivityClass(cls))
        for agency, held in roles.items():
            if held & audience and agency not in wrapped.get(cls, frozenset()):
                gaps.setdefault(agency, []).append(cls)
    return gaps
