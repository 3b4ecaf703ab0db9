"""The schema store on a real broker: publish to cbx.schemas, resolve unknown fingerprints."""

from __future__ import annotations

import copy
import json

import fastavro
import pytest

from broker.errors import UnknownSchemaError
from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.schema import codec
from broker.schema.catalogue import Catalogue, schema_fingerprint
from broker.schema.store import SchemaStore

pytestmark = pytest.mark.kafka


async def test_unknown_writer_schema_is_fetched_from_cbx_schemas(
    kafka_settings: KafkaSettings,
) -> None:
    catalogue = Catalogue.load()
    # A newer version some agency published: v2 of ChildFound with an added defaulted field.
    v1 = catalogue.latest("ChildFound")
    v2_raw = copy.deepcopy(v1.raw)
    v2_raw["fields"].append(
        {"name": "found_by_role", "type": ["null", "string"], "default": None, "doc": "who"}
    )
    v2 = fastavro.parse_schema(copy.deepcopy(v2_raw))
    fp2 = schema_fingerprint(v2)
    publisher = SchemaStore(catalogue)
    publisher.register(v2_raw)
    await publisher.publish(kafka_settings, catalogue.all_versions())
    producer = kafka.producer(kafka_settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            kafka_settings.topics.schemas, json.dumps(v2_raw).encode(), key=fp2.hex().encode()
        )
        # A poisoned entry: a schema under a fingerprint that is not its own.
        await producer.send_and_wait(
            kafka_settings.topics.schemas, json.dumps(v1.raw).encode(), key=b"00" * 8
        )
    finally:
        await producer.stop()

    record = {
        "episode_id": "0f5c2b7a-3d8e-4a35-a8c1-6a2e51c1a001",
        "found_at": 1_700_000_000_000,
        "returned_to_placement": True,
        "location": None,
        "prevention_interview": None,
        "health_concerns": None,
        "found_by_role": "PC",
    }
    data = codec.encode(v2, fp2, record)

    reader = SchemaStore(catalogue)  # knows only the committed catalogue
    with pytest.raises(UnknownSchemaError):
        codec.decode(data, reader.writer_for, v1.parsed)
    await reader.resolve(kafka_settings, fp2)
    decoded = codec.decode(data, reader.writer_for, v1.parsed)
    assert "found_by_role" not in decoded
    assert decoded["returned_to_placement"] is True
    assert bytes(8) not in reader, "a schema under a wrong fingerprint must be refused"

    fresh = SchemaStore()
    added = await fresh.refresh(kafka_settings)
    assert added >= len(catalogue.all_versions()) + 1
    assert v1.fingerprint in fresh


async def test_an_outside_reader_resolves_envelope_and_body_from_the_bytes_alone(
    kafka_settings: KafkaSettings,
) -> None:
    """What `cbx schemas publish` puts in cbx.schemas is enough for a reader that knows no cbx
    code: the envelope's fingerprint names its schema, the body's fingerprint names its wire
    schema, and both are there under the hex of their fingerprints."""
    from agencies import HOST_FORCE, MISSING_RECIPIENTS, body_of, header, network

    from broker.crypto.sealing import BodyForms
    from broker.model import Role

    catalogue = Catalogue.load()
    wire = [(f.wire_fingerprint, f.wire_raw) for f in BodyForms(catalogue).by_wire.values()]
    published = await SchemaStore(catalogue).publish(kafka_settings, catalogue.all_versions(), wire)
    assert published == len(catalogue.all_versions()) + len(wire)

    net = network()
    h = header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, MISSING_RECIPIENTS)
    out = net.protector(HOST_FORCE).seal(h, body_of("ChildMissingReported"))

    outside = SchemaStore()  # no catalogue: only what the topic holds
    await outside.refresh(kafka_settings)
    envelope = codec.decode(out.value, outside.writer_for)
    assert envelope["header"]["event_type"] == "ChildMissingReported"
    body_bytes = envelope["body"]
    body = codec.decode(body_bytes, outside.writer_for)
    assert body["episode_id"]  # clear fields read as they are
    assert body["last_seen"]["sensitivity"] == "LOCATION"  # a sealed value, not the place
    assert isinstance(body["last_seen"]["ciphertext"], bytes)
    assert "cbx_sealing" in body
