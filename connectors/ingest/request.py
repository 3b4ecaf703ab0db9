"""What every ingest path shares: reading an agency's request into a message to send.

A request is agency JSON: the case reference, the urgency, when it happened, the
information-sharing decision, and the event itself::

    {"case_ref": "KCC-LAC-000123", "urgency": "IMMEDIATE",
     "sharing": {"purpose": ..., "lawful_basis": [...], "consent": "NOT_SOUGHT",
                 "consent_not_sought_reason": ..., "decision_maker_role": ...},
     "also_notify": [{"agency": "pf-e23000001", "role": "OTHER_FORCE",
                      "reason": "child believed to be travelling to Kent"}],
     "event": { ...fields of the message type... }}

``also_notify`` (optional) names recipients beyond the statutory set, each in a role the message
type's rule allows and the agency's kind can hold, with the reason written in the delivery log.

HTTP ingest, file drop and scenarios all read requests here, so a payload that one accepts the
others accept, and field errors read the same everywhere (path, problem, expected, kind of value
given; never the value).
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.schema import expand_schema

from broker.envelope import Outgoing, SharingDecision
from broker.model import SYSTEM_TYPES, Recipient, Role
from broker.schema.catalogue import ENVELOPE, Catalogue
from broker.schema.json_to_avro import FieldError, JsonToAvro
from connectors.gateway.connector import Connector


def wrapper_schema(catalogue: Catalogue) -> dict[str, Any]:
    """The request wrapper as an Avro record, built from the envelope's own named types."""
    envelope: Any = expand_schema(catalogue.latest(ENVELOPE).raw)
    header = envelope["fields"][0]["type"]
    fields = {f["name"]: f for f in header["fields"]}
    recipient = fields["recipients"]["type"]["items"]
    role_type = next(f["type"] for f in recipient["fields"] if f["name"] == "role")
    return {
        "type": "record",
        "name": "IngestRequest",
        "namespace": "cbx.http",
        "doc": "What an agency posts: the case, the urgency, the sharing decision and the event.",
        "fields": [
            {"name": "case_ref", "type": "string", "doc": fields["case_ref"]["doc"]},
            {
                "name": "urgency",
                "type": copy.deepcopy(fields["urgency"]["type"]),
                "default": "ROUTINE",
                "doc": fields["urgency"]["doc"],
            },
            {
                "name": "occurred_at",
                "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}],
                "default": None,
                "doc": "When the event happened (defaults to now).",
            },
            {
                "name": "sharing",
                "type": copy.deepcopy(fields["sharing"]["type"]),
                "doc": fields["sharing"]["doc"],
            },
            {
                "name": "also_notify",
                "type": {
                    "type": "array",
                    "items": {
                        "type": "record",
                        "name": "AlsoNotify",
                        "namespace": "cbx.http",
                        "doc": "A recipient beyond the statutory set.",
                        "fields": [
                            {"name": "agency", "type": "string", "doc": "Its agency id."},
                            {
                                "name": "role",
                                "type": copy.deepcopy(role_type),
                                "doc": "A role the message type's rule allows, that the agency's "
                                "kind can hold.",
                            },
                            {
                                "name": "reason",
                                "type": "string",
                                "doc": "Why it is told (written in the delivery log; never "
                                "personal data).",
                            },
                        ],
                    },
                },
                "default": [],
                "doc": "Further recipients, each with its role and the reason it is told.",
            },
        ],
    }


@dataclass(frozen=True)
class Request:
    """A checked request: everything ``Connector.prepare`` needs."""

    event_type: str
    case_ref: str
    urgency: str
    occurred_at: dt.datetime | None
    sharing: SharingDecision
    body: dict[str, Any]
    also_notify: tuple[Recipient, ...] = ()

    def prepare(self, connector: Connector, message_id: uuid.UUID | None = None) -> Outgoing:
        """Route and seal this request for ``connector`` (PolicyError when it cannot be routed)."""
        return connector.prepare(
            self.event_type,
            self.body,
            case_ref=self.case_ref,
            sharing=self.sharing,
            urgency=self.urgency,
            occurred_at=self.occurred_at,
            message_id=message_id,
            extra=list(self.also_notify) or None,
        )


class RequestReader:
    """Checks requests against the wrapper and the event's schema, for one catalogue."""

    def __init__(self, catalogue: Catalogue, converters: dict[str, JsonToAvro]) -> None:
        self.catalogue = catalogue
        self.wrapper_raw = wrapper_schema(catalogue)
        self.wrapper = JsonToAvro(fastavro.parse_schema(copy.deepcopy(self.wrapper_raw)))
        self.converters = converters

    def read(self, event_type: str, payload: Any) -> Request | list[FieldError]:
        """The request, or every field error (paths of the event start with ``event.``)."""
        if event_type not in self.converters or event_type in SYSTEM_TYPES:
            return [FieldError("", f"unknown message type {event_type}", "a message type", "")]
        if not isinstance(payload, dict):
            return [FieldError("", "wrong type", "a JSON object", type(payload).__name__)]
        meta_in = {k: v for k, v in payload.items() if k != "event"}
        event = payload.get("event")
        errors = self.wrapper.errors(meta_in)
        errors += [
            FieldError(f"event.{e.path}" if e.path else "event", e.problem, e.expected, e.got)
            for e in self.converters[event_type].errors(event)
        ]
        for i, extra in enumerate(meta_in.get("also_notify") or []):
            if isinstance(extra, dict) and isinstance(extra.get("reason"), str):
                if not extra["reason"].strip():
                    errors.append(
                        FieldError(f"also_notify[{i}].reason", "empty", "why it is told", "string")
                    )
                elif len(extra["reason"]) > 500:
                    errors.append(
                        FieldError(
                            f"also_notify[{i}].reason",
                            "too long",
                            "at most 500 characters",
                            "string",
                        )
                    )
        if errors:
            return errors
        meta = self.wrapper.convert(meta_in)
        s = meta["sharing"]
        return Request(
            event_type=event_type,
            case_ref=meta["case_ref"],
            urgency=meta["urgency"],
            occurred_at=meta["occurred_at"],
            sharing=SharingDecision(
                purpose=s["purpose"],
                lawful_basis=tuple(s["lawful_basis"]),
                consent=s["consent"],
                decision_maker_role=s["decision_maker_role"],
                consent_not_sought_reason=s["consent_not_sought_reason"],
                withheld=tuple((w["item"], w["reason"]) for w in s["withheld"]),
            ),
            body=dict(self.converters[event_type].convert(event)),
            also_notify=tuple(
                Recipient(x["agency"], Role(x["role"]), x["reason"].strip())
                for x in meta["also_notify"]
            ),
        )
