"""The AsyncAPI 3.0 document of cbx's Kafka side, generated from the topic definitions and the
schema catalogue (``cbx schemas asyncapi``).

It describes every topic kind an integrator meets: an agency's own four topics (outbound, inbox,
status, cases), the shared ones (receipts, delivery log, dead letters, directory, placements,
schemas) and the router's internal marker topic, each with the Avro schema of its values, its key
and its headers, who writes it and who may read it. Payloads are the catalogue's latest schemas in
Avro form (``schemaFormat`` ``application/vnd.apache.avro+json``); a reader resolves the exact
writer schema of each record by its fingerprint in ``cbx.schemas`` (``docs/interop.md``).
"""

from __future__ import annotations

from typing import Any

from broker.crypto.signing import H_KID, H_PROOF, H_SIG, H_SIGNER
from broker.kafka.topics import Topics
from broker.model import TRACKER
from broker.router import deadletter
from broker.schema.catalogue import ENVELOPE, Catalogue

AVRO = "application/vnd.apache.avro+json;version=1.11.1"
AGENCY = {
    "description": "An agency id: la-<GSS> council, pf-<GSS> police force, icb-<GSS> ICB, "
    "cp-<Ofsted URN> care provider, gp-<ODS> GP practice, sch-<URN> school, iro-<GSS> IRO "
    "service, rhi-<number> return-interview provider.",
}


def _bytes_header(what: str) -> dict[str, Any]:
    return {"type": "string", "description": what}


SIGNATURE_HEADERS = {
    "type": "object",
    "description": "Kafka headers carrying the sender's Merkle-batch Ed25519 signature.",
    "properties": {
        H_SIGNER: _bytes_header("The signing agency's id."),
        H_KID: _bytes_header("The id of the signing key (in cbx.directory)."),
        H_SIG: _bytes_header("Ed25519 signature over the Merkle root of the batch."),
        H_PROOF: _bytes_header("This record's Merkle proof within the batch."),
    },
    "required": [H_SIGNER, H_KID, H_SIG, H_PROOF],
}

DEAD_LETTER_HEADERS = {
    "type": "object",
    "description": "The refused record's own headers, why it was refused, the router's signature.",
    "properties": {
        deadletter.H_REASON: _bytes_header(
            "Why: malformed, bad-signature, policy, short-sealed..."
        ),
        deadletter.H_STAGE: _bytes_header("Which check refused it."),
        deadletter.H_TOPIC: _bytes_header("Where it was read."),
        deadletter.H_PARTITION: _bytes_header("Its partition there."),
        deadletter.H_OFFSET: _bytes_header("Its offset there."),
        deadletter.H_CLASS: _bytes_header("The class of the error."),
        deadletter.H_MESSAGE: _bytes_header("The error, without personal data."),
        deadletter.H_MESSAGE_ID: _bytes_header("The message id its header names, if it decoded."),
        deadletter.H_AT: _bytes_header("When it was refused."),
        deadletter.H_WRITER: _bytes_header("Who refused it (the router)."),
    },
    "patternProperties": {
        "^cbx\\.errors\\.sig\\.": _bytes_header(
            "The router's signature over key, value and every header (replay checks it)."
        )
    },
}


def _avro_message(
    catalogue: Catalogue, name: str, title: str, key: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    v = catalogue.latest(name)
    message: dict[str, Any] = {
        "name": name,
        "title": title,
        "summary": v.raw.get("doc", ""),
        "contentType": "application/vnd.apache.avro+binary",
        "payload": {"schemaFormat": AVRO, "schema": v.raw},
        "bindings": {"kafka": {"key": {"type": "string", "description": key}}},
        "x-cbx-encoding": "Avro single-object encoding: C3 01, the writer schema's 8-byte "
        "CRC-64-AVRO fingerprint (little-endian), the binary record.",
        "x-cbx-fingerprint": v.fingerprint.hex(),
    }
    if headers is not None:
        message["headers"] = headers
    return message


def document(catalogue: Catalogue, topics: Topics | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document for the namespace of ``topics`` (``cbx`` by default)."""
    t = topics or Topics()
    case_key = "The case id (<placing authority>/<reference>): one case, one partition, in order."
    laned_key = (
        "The case id (<placing authority>/<reference>). On outbound and inbox topics the last "
        "partition is the urgent lane: IMMEDIATE and URGENT messages and every message of a "
        "missing episode go there; any other goes to murmur2(key) modulo the number of the "
        "other partitions. One case, one partition per lane, in order."
    )
    messages = {
        "Envelope": _avro_message(
            catalogue, ENVELOPE, "A message between agencies", laned_key, SIGNATURE_HEADERS
        ),
        "Receipt": _avro_message(
            catalogue,
            ENVELOPE,
            "A recipient's receipt (an envelope whose body is cbx.events.Receipt)",
            "The subject message id.",
            SIGNATURE_HEADERS,
        ),
        "DeliveryLogEntry": _avro_message(
            catalogue, "DeliveryLogEntry", "A delivery-log entry", "The message id."
        ),
        "PlacementRecord": _avro_message(
            catalogue, "PlacementRecord", "A case record: parties over time", case_key
        ),
        "DirectoryEntry": _avro_message(
            catalogue, "DirectoryEntry", "An agency's public keys", "The agency id."
        ),
        "OperatorAction": _avro_message(
            catalogue,
            "OperatorAction",
            "What an operator did or tried at the console",
            "The operator's account name.",
        ),
        "DeadLetter": {
            "name": "DeadLetter",
            "title": "A refused record, kept whole",
            "summary": "The value exactly as it was read (usually a cbx.Envelope), with the reason "
            "in the headers.",
            "contentType": "application/octet-stream",
            "payload": {"type": "string", "contentEncoding": "binary"},
            "headers": DEAD_LETTER_HEADERS,
            "bindings": {"kafka": {"key": {"type": "string", "description": "As read."}}},
        },
        "Schema": {
            "name": "Schema",
            "title": "An Avro schema",
            "summary": "A schema cbx writes with (plain or the wire form of a body), as JSON.",
            "contentType": "application/json",
            "payload": {"type": "object", "description": "The schema's JSON."},
            "bindings": {
                "kafka": {
                    "key": {
                        "type": "string",
                        "pattern": "^[0-9a-f]{16}$",
                        "description": "The hex of its CRC-64-AVRO fingerprint (little-endian).",
                    }
                }
            },
        },
        "Routed": {
            "name": "Routed",
            "title": "The router's marker that a message was routed",
            "contentType": "text/plain",
            "payload": {"type": "string", "description": "What was routed under the id."},
            "bindings": {"kafka": {"key": {"type": "string", "description": "The message id."}}},
        },
    }

    def channel(
        address: str, message: str, description: str, writer: str, readers: str, per_agency: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "address": address,
            "description": description,
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            "x-cbx-writer": writer,
            "x-cbx-readers": readers,
        }
        if per_agency:
            out["parameters"] = {"agency": AGENCY}
        return out

    a = "{agency}"
    channels = {
        "outbound": channel(
            t.outbound_prefix + a, "Envelope",
            "What an agency sends. The router reads every outbound topic.",
            "the agency", "the router", per_agency=True,
        ),
        "trackerOutbound": channel(
            t.outbound(TRACKER), "Envelope",
            "The exchange's own reminders (ObligationOverdue), routed like any message.",
            "the tracker", "the router", per_agency=False,
        ),
        "inbox": channel(
            t.inbox_prefix + a, "Envelope",
            "What an agency receives, sealed for it.", "the router", "the agency", per_agency=True,
        ),
        "status": channel(
            t.status_prefix + a, "DeliveryLogEntry",
            "What became of the messages the agency sent, and its own row of each message sent "
            "to it.", "the tracker", "the agency",
            per_agency=True,
        ),
        "cases": channel(
            t.cases_prefix + a, "PlacementRecord",
            "The records of the cases the agency is, or was until this record, a party to "
            "(compacted).", "the router", "the agency", per_agency=True,
        ),
        "receipts": channel(
            t.receipts, "Receipt", "Every recipient's receipts.", "each agency", "the tracker",
            per_agency=False,
        ),
        "deliveryLog": channel(
            t.delivery_log, "DeliveryLogEntry",
            "Who was told what and when: ACCEPTED, ROUTED, ROUTE_GAP, DELIVERED, ACKNOWLEDGED, "
            "OVERDUE, ESCALATED, REJECTED and more.", "the router and the tracker",
            "the tracker and operators", per_agency=False,
        ),
        "deadletter": channel(
            t.deadletter, "DeadLetter", "Records the router refused, kept whole with the reason.",
            "the router", "operators", per_agency=False,
        ),
        "audit": channel(
            t.audit, "OperatorAction",
            "Every sign-in, note, export and replay at the console, refused attempts included.",
            "the console", "operators", per_agency=False,
        ),
        "directory": channel(
            t.directory, "DirectoryEntry", "Every agency's public keys (compacted).",
            "administrators", "everyone", per_agency=False,
        ),
        "placements": channel(
            t.placements, "PlacementRecord", "The whole case registry (compacted).",
            "the router", "the router, police forces (by policy) and operators", per_agency=False,
        ),
        "schemas": channel(
            t.schemas, "Schema", "Every schema cbx writes with, by fingerprint (compacted).",
            "administrators", "everyone", per_agency=False,
        ),
        "routed": channel(
            t.routed, "Routed", "The router's own record of what it routed (internal).",
            "the router", "the router", per_agency=False,
        ),
    }  # fmt: skip
    operations: dict[str, Any] = {}
    for name, ch in channels.items():
        for action in ("send", "receive"):
            operations[f"{action}{name[0].upper()}{name[1:]}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{name}"},
                "summary": f"{ch['x-cbx-writer'] if action == 'send' else ch['x-cbx-readers']} "
                f"{'writes' if action == 'send' else 'reads'} {ch['address']}",
                "messages": [{"$ref": f"#/channels/{name}/messages/{m}"} for m in ch["messages"]],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "cbx, the Cross-Boundary Exchange: Kafka topics",
            "version": "1",
            "description": "The topics of one cbx namespace, their records and who may use them "
            "(Kafka ACLs, schemas/policy/acls.yaml). Generated by `cbx schemas asyncapi`.",
        },
        "defaultContentType": "application/vnd.apache.avro+binary",
        "servers": {
            "exchange": {
                "host": "kafka.exchange.example:9093",
                "protocol": "kafka-secure",
                "description": "The partnership's cluster (SASL_SSL); every principal is an agency "
                "id or a cbx service.",
                "security": [{"$ref": "#/components/securitySchemes/scram"}],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "securitySchemes": {
                "scram": {
                    "type": "scramSha512",
                    "description": "SASL/SCRAM-SHA-512; the user name is the agency id.",
                }
            },
        },
    }
