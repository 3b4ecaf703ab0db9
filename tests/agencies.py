"""A small network of agencies with keys and a directory, for protection and routing tests."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from broker.crypto.keys import AgencyKeys
from broker.crypto.sealing import BodyForms, KeyReuse, Sealer
from broker.crypto.signing import Verifier
from broker.directory import AgencyEntry, Directory
from broker.envelope import Header, Protector, SharingDecision
from broker.model import Recipient, Role
from broker.policy.profiles import directory_kind
from broker.policy.sharing import SharingPolicy
from broker.schema.catalogue import Catalogue

CATALOGUE = Catalogue.load()
FORMS = BodyForms(CATALOGUE)
POLICY = SharingPolicy.load()

# Kent places a child in Lancashire: two councils, two forces, the host ICB.
PLACING = "la-e10000016"  # Kent County Council
HOST = "la-e10000017"  # Lancashire County Council
HOME_FORCE = "pf-e23000032"  # Kent Police
HOST_FORCE = "pf-e23000003"  # Lancashire Constabulary
HOST_ICB = "icb-e54000048"  # NHS Lancashire and South Cumbria ICB
OUTSIDER = "pf-e23000001"  # Metropolitan Police: not a party to the case


@dataclass
class Network:
    keys: dict[str, AgencyKeys]
    directory: Directory

    def protector(self, agency: str, reuse: KeyReuse | None = None) -> Protector:
        sealer = Sealer(self.keys[agency], self.directory, POLICY, FORMS, reuse)
        return Protector(CATALOGUE, FORMS, sealer, Verifier(self.directory))

    def publish(self, agency: str) -> None:
        self.directory.put(AgencyEntry.from_keys(self.keys[agency], agency, directory_kind(agency)))


def network(*agencies: str) -> Network:
    agencies = agencies or (PLACING, HOST, HOME_FORCE, HOST_FORCE, HOST_ICB, OUTSIDER)
    net = Network({a: AgencyKeys.new(a) for a in agencies}, Directory())
    for a in agencies:
        net.publish(a)
    return net


SHARING = SharingDecision(
    purpose="locate a missing looked-after child",
    lawful_basis=("UK_GDPR_6_1_E_PUBLIC_TASK", "DPA_2018_SCH1_PARA18_SAFEGUARDING_CHILDREN"),
    consent="NOT_SOUGHT",
    consent_not_sought_reason="risk of significant harm",
    decision_maker_role="Duty inspector",
)


def header(
    event_type: str,
    sender: str,
    sender_role: Role,
    recipients: list[Recipient],
    *,
    case_ref: str = "KCC-LAC-000123",
    urgency: str = "IMMEDIATE",
    message_id: uuid.UUID | None = None,
) -> Header:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return Header(
        message_id=message_id or uuid.uuid4(),
        event_type=event_type,
        sender=sender,
        sender_role=sender_role,
        recipients=tuple(recipients),
        case_ref=case_ref,
        urgency=urgency,
        occurred_at=now,
        recorded_at=now,
        schema_fingerprint=CATALOGUE.latest(event_type).fingerprint,
        sharing=SHARING,
    )


MISSING_RECIPIENTS = [
    Recipient(PLACING, Role.PLACING_AUTHORITY),
    Recipient(HOST, Role.HOST_AUTHORITY),
    Recipient(HOME_FORCE, Role.HOME_FORCE),
]


def body_of(event_type: str, **overrides: Any) -> dict[str, Any]:
    from benchmarks.samples import PAYLOADS
    from broker.schema.json_to_avro import JsonToAvro

    payload = {**PAYLOADS[event_type], **overrides}
    return dict(JsonToAvro(CATALOGUE.latest(event_type).parsed).convert(payload))
