"""The envelope: a cleartext routing header and a sealed body, as one single-object Avro record.

This is where a message is put together (connectors) and taken apart (router, recipients). The
router decodes only the envelope, whose schema is fixed; the body stays opaque bytes to it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from broker.crypto.sealing import BodyForms, Opener, Sealer, SealResult
from broker.crypto.signing import Headers, Signer, Verifier
from broker.errors import ProtectionError, SerializationError
from broker.model import Recipient, Role
from broker.schema import codec
from broker.schema.catalogue import ENVELOPE, Catalogue
from broker.schema.store import SchemaStore


@dataclass(frozen=True)
class SharingDecision:
    """The information-sharing decision recorded with every message."""

    purpose: str
    lawful_basis: tuple[str, ...]
    consent: str
    decision_maker_role: str
    consent_not_sought_reason: str | None = None
    withheld: tuple[tuple[str, str], ...] = ()

    def to_record(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "lawful_basis": list(self.lawful_basis),
            "consent": self.consent,
            "consent_not_sought_reason": self.consent_not_sought_reason,
            "decision_maker_role": self.decision_maker_role,
            "withheld": [{"item": i, "reason": r} for i, r in self.withheld],
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> SharingDecision:
        return cls(
            purpose=r["purpose"],
            lawful_basis=tuple(r["lawful_basis"]),
            consent=r["consent"],
            decision_maker_role=r["decision_maker_role"],
            consent_not_sought_reason=r["consent_not_sought_reason"],
            withheld=tuple((w["item"], w["reason"]) for w in r["withheld"]),
        )


@dataclass(frozen=True)
class Header:
    """The cleartext routing header (metadata only, never personal data)."""

    message_id: uuid.UUID
    event_type: str
    sender: str
    sender_role: Role
    recipients: tuple[Recipient, ...]
    case_ref: str
    urgency: str
    occurred_at: dt.datetime
    recorded_at: dt.datetime
    schema_fingerprint: bytes
    sharing: SharingDecision
    related_message_id: uuid.UUID | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "message_id": str(self.message_id),
            "event_type": self.event_type,
            "sender": self.sender,
            "sender_role": str(self.sender_role),
            "recipients": [
                {"agency": r.agency, "role": str(r.role), "reason": r.reason}
                for r in self.recipients
            ],
            "case_ref": self.case_ref,
            "urgency": self.urgency,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "schema_fingerprint": self.schema_fingerprint,
            "sharing": self.sharing.to_record(),
            "related_message_id": (
                str(self.related_message_id) if self.related_message_id else None
            ),
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Header:
        related = r["related_message_id"]
        return cls(
            message_id=_uuid(r["message_id"]),
            event_type=r["event_type"],
            sender=r["sender"],
            sender_role=Role(r["sender_role"]),
            recipients=tuple(
                Recipient(x["agency"], Role(x["role"]), x.get("reason")) for x in r["recipients"]
            ),
            case_ref=r["case_ref"],
            urgency=r["urgency"],
            occurred_at=r["occurred_at"],
            recorded_at=r["recorded_at"],
            schema_fingerprint=bytes(r["schema_fingerprint"]),
            sharing=SharingDecision.from_record(r["sharing"]),
            related_message_id=_uuid(related) if related is not None else None,
        )

    def recipient_agencies(self) -> list[str]:
        return [r.agency for r in self.recipients]


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


class EnvelopeCodec:
    """Encode and decode envelopes (the router needs nothing more)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._version = catalogue.latest(ENVELOPE)
        self._store = SchemaStore(catalogue)

    @property
    def fingerprint(self) -> bytes:
        return self._version.fingerprint

    def encode(self, header: Header, body: bytes) -> bytes:
        return codec.encode(
            self._version.parsed,
            self._version.fingerprint,
            {"header": header.to_record(), "body": body},
        )

    def decode(self, value: bytes) -> tuple[Header, bytes]:
        record = codec.decode(value, self._store.writer_for, self._version.parsed)
        try:
            return Header.from_record(record["header"]), bytes(record["body"])
        except (KeyError, ValueError, TypeError) as exc:
            raise SerializationError(f"envelope header is malformed: {type(exc).__name__}") from exc


def system_sharing(purpose: str, decided_by: str, why_no_consent: str) -> SharingDecision:
    """The sharing decision of a message the exchange itself sends (a receipt, a notice):
    public task, consent not sought because it carries metadata only."""
    return SharingDecision(
        purpose=purpose,
        lawful_basis=("UK_GDPR_6_1_E_PUBLIC_TASK",),
        consent="NOT_SOUGHT",
        consent_not_sought_reason=why_no_consent,
        decision_maker_role=decided_by,
    )


@dataclass
class Outgoing:
    """A message ready to publish: key, value and signature headers."""

    header: Header
    value: bytes
    readers: dict[str, list[str]] = field(default_factory=dict)
    headers: Headers = field(default_factory=list)

    @property
    def key(self) -> bytes:
        return self.header.case_ref.encode()


class Protector:
    """A connector's view: seal and sign outgoing messages, verify and open incoming ones."""

    def __init__(
        self,
        catalogue: Catalogue,
        forms: BodyForms,
        sealer: Sealer,
        verifier: Verifier,
    ) -> None:
        self.catalogue = catalogue
        self.forms = forms
        self.sealer = sealer
        self.signer = Signer(sealer.keys)
        self.opener = Opener(sealer.keys, forms)
        self.verifier = verifier
        self.envelopes = EnvelopeCodec(catalogue)

    @property
    def agency(self) -> str:
        return self.sealer.keys.agency

    def seal(self, header: Header, body: dict[str, Any]) -> Outgoing:
        """Seal ``body`` for the header's recipients and wrap it in an envelope (not yet signed)."""
        if header.sender != self.agency:
            raise ProtectionError(f"{self.agency} cannot send as {header.sender}")
        form = self.forms.latest[header.event_type]
        if header.schema_fingerprint != form.plain.fingerprint:
            raise ProtectionError("header schema fingerprint is not the current body schema")
        sealed: SealResult = self.sealer.seal(
            header.event_type, header.message_id, body, list(header.recipients)
        )
        value = self.envelopes.encode(header, sealed.body)
        return Outgoing(header, value, {str(k): v for k, v in sealed.readers.items()})

    def sign(self, batch: list[Outgoing]) -> list[Outgoing]:
        """Sign a batch with one signature; each message keeps its own proof."""
        for out, headers in zip(
            batch, self.signer.sign_batch([o.value for o in batch]), strict=True
        ):
            out.headers = headers
        return batch

    def open(self, value: bytes, headers: Headers | None) -> tuple[Header, dict[str, Any]]:
        """Verify the signature, check the sender, and unseal what this agency may read."""
        signer = self.verifier.verify(value, headers)
        header, body = self.envelopes.decode(value)
        if signer != header.sender:
            raise ProtectionError(f"signed by {signer} but the header names {header.sender}")
        if self.agency != header.sender and self.agency not in header.recipient_agencies():
            raise ProtectionError(f"{self.agency} is not a recipient of this message")
        _, record = self.opener.open(body, header.message_id, header.schema_fingerprint)
        return header, record
