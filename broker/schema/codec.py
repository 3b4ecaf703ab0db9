"""Avro single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint + body.

The writer schema travels by fingerprint only; readers resolve it (from the catalogue or from the
``cbx.schemas`` topic through :class:`broker.schema.store.SchemaStore`) and then resolve writer
against their own reader schema, so a consumer on version 1 reads version 2 and the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from broker.errors import SerializationError

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8


def encode(parsed_schema: Any, fingerprint: bytes, record: Any) -> bytes:
    """Single-object encode ``record``; the record must already match the schema."""
    buf = BytesIO()
    buf.write(MAGIC)
    buf.write(fingerprint)
    try:
        schemaless_writer(buf, parsed_schema, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise SerializationError(
            f"record does not match schema {parsed_schema.get('name', '?')}: {type(exc).__name__}"
        ) from exc
    return buf.getvalue()


def read_fingerprint(data: bytes) -> bytes:
    """The writer fingerprint of single-object encoded ``data``."""
    if len(data) < HEADER_LEN:
        raise SerializationError(
            f"message is {len(data)} bytes, shorter than the {HEADER_LEN}-byte single-object header"
        )
    if data[:2] != MAGIC:
        raise SerializationError(
            f"message does not start with the Avro single-object marker C3 01 "
            f"(found {data[:2].hex().upper()})"
        )
    return bytes(data[2:HEADER_LEN])


def _read(buf: BytesIO, fp: bytes, writer: Any, reader_schema: Any | None) -> Any:
    try:
        return schemaless_reader(buf, writer, reader_schema)
    except SchemaResolutionError as exc:
        raise SerializationError(
            f"cannot resolve writer schema {fp.hex()} against the reader schema: {exc}"
        ) from exc
    except Exception as exc:
        # Whatever the bytes make fastavro raise (a date past year 9999 is an OverflowError, a
        # hostile length a MemoryError): the record does not decode, and that is its outcome.
        raise SerializationError(
            f"message body does not decode with writer schema {fp.hex()}: {type(exc).__name__}"
        ) from exc


def decode_head(data: bytes, head_schema: Any) -> tuple[Any, bytes]:
    """Decode the leading fields of single-object ``data`` with ``head_schema`` (the writer schema
    without its last fields) and return them with the bytes that follow, undecoded."""
    fp = read_fingerprint(data)
    buf = BytesIO(data)
    buf.seek(HEADER_LEN)
    record = _read(buf, fp, head_schema, None)
    return record, data[buf.tell() :]


def decode_whole(data: bytes, schema: Any, what: str) -> Any:
    """Decode schemaless ``data`` (no single-object header) that must be exactly one record."""
    buf = BytesIO(data)
    try:
        record = schemaless_reader(buf, schema, None)
    except Exception as exc:
        raise SerializationError(f"{what} does not decode: {type(exc).__name__}") from exc
    if buf.tell() != len(data):
        raise SerializationError(f"{len(data) - buf.tell()} trailing bytes after the {what}")
    return record


def decode(
    data: bytes,
    writer_for: Callable[[bytes], Any],
    reader_schema: Any | None = None,
) -> Any:
    """Decode single-object ``data``; ``writer_for`` maps a fingerprint to a parsed writer schema.

    With ``reader_schema`` the record is resolved into the reader's shape (added fields take their
    defaults, removed ones are dropped).
    """
    fp = read_fingerprint(data)
    writer = writer_for(fp)
    buf = BytesIO(data)
    buf.seek(HEADER_LEN)
    record = _read(buf, fp, writer, reader_schema)
    if buf.tell() != len(data):
        raise SerializationError(
            f"{len(data) - buf.tell()} trailing bytes after the record (writer schema {fp.hex()})"
        )
    return record
