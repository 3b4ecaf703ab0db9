"""Dead letters: what the router or a connector refused, kept whole with the reason.

A dead-letter record keeps the original key, value and headers (signature included, so a replay is
verified again like any message) and adds error headers in the Kafka Connect style. Error texts are
cbx's own messages, which never carry field values.

The router signs each dead letter (key, value and every header) with its own key, in headers of
their own (``cbx.errors.sig.*``); ``replay`` puts back only dead letters whose signature verifies
against the router's published key, so a record forged to look like the router's is refused, even
if somebody managed to write it to the topic.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from broker.crypto.signing import Signer, Verifier
from broker.errors import CbxError, SignatureError
from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.model import ROUTER

H_TOPIC = "cbx.errors.topic"
H_PARTITION = "cbx.errors.partition"
H_OFFSET = "cbx.errors.offset"
H_STAGE = "cbx.errors.stage"
H_CLASS = "cbx.errors.class.name"
H_MESSAGE = "cbx.errors.exception.message"
H_REASON = "cbx.errors.reason"
H_MESSAGE_ID = "cbx.errors.message.id"
H_AT = "cbx.errors.at"
H_WRITER = "cbx.errors.writer"
ERROR_HEADERS = (
    H_TOPIC,
    H_PARTITION,
    H_OFFSET,
    H_STAGE,
    H_CLASS,
    H_MESSAGE,
    H_REASON,
    H_MESSAGE_ID,
    H_AT,
    H_WRITER,
)


@dataclass(frozen=True)
class Failure:
    """Why a record was refused."""

    reason: str  # a short code: malformed, unknown-schema, bad-signature, sender-mismatch, ...
    stage: str
    error_class: str
    message: str


def error_headers(
    failure: Failure,
    topic: str,
    partition: int,
    offset: int,
    message_id: str | None,
    writer: str,
) -> list[tuple[str, bytes]]:
    values = {
        H_TOPIC: topic,
        H_PARTITION: str(partition),
        H_OFFSET: str(offset),
        H_STAGE: failure.stage,
        H_CLASS: failure.error_class,
        H_MESSAGE: failure.message,
        H_REASON: failure.reason,
        H_MESSAGE_ID: message_id or "",
        H_AT: dt.datetime.now(dt.UTC).isoformat(),
        H_WRITER: writer,
    }
    return [(k, v.encode()) for k, v in values.items()]


SIG_PREFIX = "cbx.errors.sig."


def _signed_bytes(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> bytes:
    """What the router's signature covers: key, value and every header, length-prefixed."""
    h = hashlib.sha256()
    for part in (key or b"", value or b"", *(x for k, v in headers for x in (k.encode(), v))):
        h.update(len(part).to_bytes(8, "big") + bytes(part))
    return h.digest()


def sign_dead_letter(
    signer: Signer, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> list[tuple[str, bytes]]:
    """``headers`` (original and error headers) followed by the router's signature over all."""
    sig = signer.sign_batch([_signed_bytes(key, value, headers)])[0]
    return [*headers, *((SIG_PREFIX + k, bytes(v)) for k, v in sig)]


def split_headers(
    headers: Sequence[tuple[str, bytes]],
) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """Error headers (as text) and the original headers of a dead-letter record."""
    errors = {k: bytes(v).decode(errors="replace") for k, v in headers if k in ERROR_HEADERS}
    original = [
        (k, bytes(v)) for k, v in headers if k not in ERROR_HEADERS and not k.startswith(SIG_PREFIX)
    ]
    return errors, original


def signer_of(
    record_key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    verifier: Verifier,
) -> str:
    """Who signed a dead letter (SignatureError if nobody whose key is published did)."""
    signed = [(k, bytes(v)) for k, v in headers if not k.startswith(SIG_PREFIX)]
    sig = [(k.removeprefix(SIG_PREFIX), bytes(v)) for k, v in headers if k.startswith(SIG_PREFIX)]
    if not sig:
        raise SignatureError("the dead letter carries no signature")
    return verifier.verify(_signed_bytes(record_key, value, signed), sig)


@dataclass(frozen=True)
class DeadLetter:
    """A dead-letter record as operators see it: metadata and the reason, never the content."""

    id: str
    topic: str
    partition: int
    offset: int
    stage: str
    reason: str
    error_class: str
    error: str
    message_id: str | None
    at: str
    writer: str
    key: bytes | None
    value: bytes | None
    original_headers: list[tuple[str, bytes]]
    headers: list[tuple[str, bytes]]

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "stage": self.stage,
            "reason": self.reason,
            "error_class": self.error_class,
            "error": self.error,
            "message_id": self.message_id,
            "at": self.at,
            "writer": self.writer,
        }


def parse(record: Any) -> DeadLetter:
    errors, original = split_headers(list(record.headers))
    return DeadLetter(
        id=f"{record.partition}-{record.offset}",
        topic=errors.get(H_TOPIC, ""),
        partition=int(errors.get(H_PARTITION, "-1") or -1),
        offset=int(errors.get(H_OFFSET, "-1") or -1),
        stage=errors.get(H_STAGE, ""),
        reason=errors.get(H_REASON, ""),
        error_class=errors.get(H_CLASS, ""),
        error=errors.get(H_MESSAGE, ""),
        message_id=errors.get(H_MESSAGE_ID) or None,
        at=errors.get(H_AT, ""),
        writer=errors.get(H_WRITER, ""),
        key=record.key,
        value=record.value,
        original_headers=original,
        headers=[(k, bytes(v)) for k, v in record.headers],
    )


async def list_dead_letters(settings: KafkaSettings) -> list[DeadLetter]:
    out: list[DeadLetter] = []
    await kafka.read_to_end(settings, settings.topics.deadletter, lambda r: out.append(parse(r)))
    return out


async def replay(
    settings: KafkaSettings, dead_letter_id: str, by: str = "an operator"
) -> DeadLetter:
    """Write a dead letter's original record back to its topic (and say so in the delivery log)."""
    found = [d for d in await list_dead_letters(settings) if d.id == dead_letter_id]
    if not found:
        raise CbxError(f"no dead letter {dead_letter_id!r}: see cbx deadletter list")
    d = found[0]
    from broker.directory import load as load_directory

    try:
        signer = signer_of(d.key, d.value, d.headers, Verifier(await load_directory(settings)))
    except SignatureError as exc:
        raise CbxError(
            f"dead letter {dead_letter_id} does not carry a valid signature of the router "
            f"({exc}): refused, it was not written by cbx"
        ) from exc
    if signer != ROUTER:
        raise CbxError(f"dead letter {dead_letter_id} is signed by {signer}, not the router")
    if not d.topic.startswith(settings.topics.outbound_prefix):
        raise CbxError(
            f"dead letter {dead_letter_id} came from {d.topic}, which cannot be replayed"
        )
    from broker.delivery_log import LogCodec, LogEntry, Status
    from broker.schema.catalogue import Catalogue

    logs = LogCodec(Catalogue.load())
    producer = kafka.producer(settings)
    await producer.start()
    try:
        # Back to the partition it came from: its lane, and its case's bulk partition.
        await producer.send_and_wait(
            d.topic, d.value, key=d.key, headers=d.original_headers, partition=d.partition
        )
        entry = LogEntry(
            message_id=d.message_id,
            status=Status.REPLAYED,
            at=dt.datetime.now(dt.UTC),
            reason=f"dead letter {d.id} ({d.reason}) replayed by {by}",
            source=f"{settings.topics.deadletter}/{d.id}",
            writer="operator",
        )
        await producer.send_and_wait(
            settings.topics.delivery_log,
            logs.encode(entry),
            key=d.message_id.encode() if d.message_id else None,
        )
    finally:
        await producer.stop()
    return d
