"""Shared fixtures: one real Kafka broker per test session, unique topic names per test.

Which broker: ``CBX_BOOTSTRAP_SERVERS`` (an existing cluster) if set; testcontainers' Kafka in KRaft
mode if ``CBX_TEST_KAFKA=testcontainers`` and a Docker engine answers; otherwise the embedded broker
in a private ``CBX_HOME``, so a developer's own ``cbx kafka start`` broker is left alone.
"""

from __future__ import annotations

import gc
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.errors import EmbeddedKafkaError
from broker.kafka import embedded as local_kafka
from broker.kafka.settings import KafkaSettings

EMBEDDED: list[local_kafka.BrokerState] = []


def _testcontainers_kafka() -> Iterator[KafkaSettings]:
    from testcontainers.kafka import KafkaContainer

    image = os.environ.get("CBX_TEST_KAFKA_IMAGE", "apache/kafka:4.1.1")
    with KafkaContainer(image).with_kraft() as container:
        yield KafkaSettings(bootstrap_servers=container.get_bootstrap_server())


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """Settings for the session's real Kafka broker."""
    external = KafkaSettings.from_env()
    if external is not None:
        # Keystores for an external cluster are always encrypted (a test passphrase here).
        mp = pytest.MonkeyPatch()
        if not os.environ.get("CBX_KEYSTORE_PASSPHRASE"):
            mp.setenv("CBX_KEYSTORE_PASSPHRASE", "test-passphrase-" + uuid.uuid4().hex)
        yield external
        mp.undo()
        return
    if os.environ.get("CBX_TEST_KAFKA") == "testcontainers":
        yield from _testcontainers_kafka()
        return
    home = tmp_path_factory.mktemp("cbx-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("CBX_HOME", str(home))
    try:
        state = local_kafka.start()
    except EmbeddedKafkaError as exc:
        log = Path(home, "kafka", "data", "server.log")
        sys.stderr.write(f"\nembedded Kafka failed: {exc.reason}\n{exc.log_tail}\n")
        if log.exists():
            sys.stderr.write(log.read_text(errors="replace")[-20000:])
        mp.undo()
        raise
    EMBEDDED.append(state)
    try:
        yield state.settings()
    finally:
        EMBEDDED.clear()
        local_kafka.stop(purge=True)
        mp.undo()


@pytest.fixture(autouse=True)
def _heap_given_back() -> Iterator[None]:
    """Services started in a test keep what they read out of the collector's walk
    (``broker.heap``). A service process lives as long as what it keeps; a test's services end
    with the test, so what they kept goes back to the collector, or cycles among them would
    stay for the rest of the session."""
    yield
    gc.unfreeze()


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test."""
    return f"test.{request.node.name[:40]}.{uuid.uuid4().hex[:8]}".replace("[", ".").replace(
        "]", ""
    )


@pytest.fixture
def kafka_tls(kafka_settings: KafkaSettings) -> KafkaSettings:
    """The session broker's SASL_SSL listener (embedded broker with its development CA)."""
    if not EMBEDDED:
        pytest.skip("TLS listener checks need the embedded broker (its development CA)")
    return EMBEDDED[0].settings(tls=True).with_prefix(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def kafka_ns(kafka_settings: KafkaSettings) -> KafkaSettings:
    """The session broker with a topic namespace of this test's own."""
    return kafka_settings.with_prefix(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def console_case(kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One played scenario with an escalation and a dead letter, for the console's tests."""
    from console_harness import play

    return play(kafka_settings, tmp_path_factory.mktemp("console"))
