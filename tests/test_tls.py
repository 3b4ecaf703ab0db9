"""TLS on the wire: SASL_SSL with certificates from the development CA cbx generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.admin import provision
from broker.errors import CbxError
from broker.kafka import clients as kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.kafka.tls import ensure_dev_pki

pytestmark = pytest.mark.kafka


async def test_an_agency_connects_over_sasl_ssl_with_the_dev_ca(
    kafka_tls: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBX_HOME", str(tmp_path))
    await provision.add_agency(kafka_tls, "la-e10000016")
    agency = principals.settings_for(kafka_tls, "la-e10000016")
    assert agency.security_protocol == "SASL_SSL"
    producer = kafka.producer(agency)
    async with kafka.access(agency):
        await producer.start()
        try:
            meta = await producer.send_and_wait(kafka_tls.topics.outbound("la-e10000016"), b"tls")
        finally:
            await producer.stop()
    assert meta.offset >= 0


async def test_a_client_that_does_not_trust_the_ca_is_refused(
    kafka_tls: KafkaSettings, tmp_path: Path
) -> None:
    other_ca = ensure_dev_pki(tmp_path / "other").ca_file
    from dataclasses import replace

    untrusting = replace(kafka_tls, ssl_cafile=str(other_ca))
    with pytest.raises(CbxError):
        await _connect(untrusting)


async def _connect(settings: KafkaSettings) -> None:
    producer = kafka.producer(settings, request_timeout_ms=5000)
    async with kafka.access(settings):
        try:
            await producer.start()
        finally:
            await producer.stop()
