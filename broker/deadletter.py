"""Dead letters: what the router or a connector refused, kept whole with the reason.

A dead-letter record keeps the original key, value and headers (signature included, so a replay is
verified again like any message) and adds error headers in the Kafka Connect style. Error texts are
cbx's own messages, which never carry field values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

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


def split_headers(
    headers: Sequence[tuple[str, bytes]],
) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """Error headers (as text) and the original headers of a dead-letter record."""
    errors = {k: bytes(v).decode(errors="replace") for k, v in headers if k in ERROR_HEADERS}
    original = [(k, bytes(v)) for k, v in headers if k not in ERROR_HEADERS]
    return errors, original
