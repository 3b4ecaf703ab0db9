"""Connection settings: environment parsing and validation (no broker needed)."""

from __future__ import annotations

import pytest

from broker.errors import ConfigurationError
from broker.kafka.settings import KafkaSettings


def test_no_bootstrap_means_no_external_cluster() -> None:
    assert KafkaSettings.from_env({}) is None


def test_plaintext_from_env() -> None:
    s = KafkaSettings.from_env({"CBX_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
    assert s is not None
    assert s.aiokafka_kwargs()["bootstrap_servers"] == "k1:9092,k2:9092"
    assert s.aiokafka_kwargs()["security_protocol"] == "PLAINTEXT"
    assert "sasl_plain_password" not in s.aiokafka_kwargs()


def test_sasl_settings_reach_aiokafka() -> None:
    s = KafkaSettings.from_env(
        {
            "CBX_BOOTSTRAP_SERVERS": "k1:9093",
            "CBX_SECURITY_PROTOCOL": "sasl_plaintext",
            "CBX_SASL_MECHANISM": "SCRAM-SHA-512",
            "CBX_SASL_USERNAME": "agency-e10000016",
            "CBX_SASL_PASSWORD": "pw",
        }
    )
    assert s is not None
    kw = s.aiokafka_kwargs()
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "agency-e10000016"
    assert "pw" not in repr(s)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CBX_SECURITY_PROTOCOL": "TLS"}, "security_protocol"),
        ({"CBX_SECURITY_PROTOCOL": "SASL_SSL", "CBX_SASL_MECHANISM": "GSSAPI"}, "sasl_mechanism"),
        (
            {"CBX_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CBX_SASL_MECHANISM": "SCRAM-SHA-512"},
            "CBX_SASL_USERNAME",
        ),
    ],
)
def test_bad_settings_name_the_problem(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        KafkaSettings.from_env({"CBX_BOOTSTRAP_SERVERS": "k:1", **env})
