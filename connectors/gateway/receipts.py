"""Receipts: what a recipient's connector tells the sender and the tracker about a message.

A receipt is a signed message like any other (type ``Receipt``) addressed to the sender, about one
message (``related_message_id``): DELIVERED once the agency's system has it, ACKNOWLEDGED when that
system confirms it, REJECTED with a reason code when it could not be delivered. Receipts carry
delivery metadata only, never a field of the message.
"""

from __future__ import annotations

import datetime as dt
import uuid

from broker.crypto.sealing import BodyForms
from broker.envelope import Header, Outgoing, Protector, system_sharing
from broker.model import RECEIPT, Recipient

RECEIPT_SHARING = system_sharing(
    "record that a safeguarding notification was received and acted on",
    "cbx connector",
    "no personal data: delivery metadata only",
)


def make_receipt(
    protector: Protector,
    forms: BodyForms,
    agency: str,
    subject: Header,
    status: str,
    reason: str | None = None,
) -> Outgoing:
    """A receipt from ``agency`` about ``subject``, sealed but not yet signed or sent."""
    now = dt.datetime.now(dt.UTC)
    my_role = next((r.role for r in subject.recipients if r.agency == agency), subject.sender_role)
    header = Header(
        message_id=uuid.uuid4(),
        event_type=RECEIPT,
        sender=agency,
        sender_role=my_role,
        recipients=(Recipient(subject.sender, subject.sender_role),),
        case_ref=subject.case_ref,
        urgency=subject.urgency,
        occurred_at=now,
        recorded_at=now,
        schema_fingerprint=forms.latest[RECEIPT].plain.fingerprint,
        sharing=RECEIPT_SHARING,
        related_message_id=subject.message_id,
    )
    body = {
        "subject_message_id": str(subject.message_id),
        "status": status,
        "at": now,
        "recipient": agency,
        "reason": reason,
    }
    return protector.seal(header, body)
