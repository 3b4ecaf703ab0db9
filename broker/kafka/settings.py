"""Connection settings: the one place every Kafka client gets its address and credentials.

``CBX_BOOTSTRAP_SERVERS`` names an existing cluster. Without it, commands that need Kafka use the
embedded development broker (``cbx kafka start``), starting it when asked to.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from broker import env as cbx_env
from broker.errors import ConfigurationError
from broker.kafka.topics import Topics

#: What the exchange asks of every broker for the router's group, which uses the consumer group
#: protocol (KIP-848): the broker assigns the partitions and tells each member of a change at its
#: next heartbeat, so the interval is what a partition changing hands waits (the default, 5 s,
#: would hold an urgent lane that long whenever a router instance stops or starts). A member gone
#: without leaving is dropped after 10 s (45 s by default), as the classic protocol's router did.
BROKER_GROUP_SETTINGS: dict[str, int] = {
    "group.consumer.min.heartbeat.interval.ms": 100,
    "group.consumer.heartbeat.interval.ms": 250,
    "group.consumer.min.session.timeout.ms": 6_000,
    "group.consumer.session.timeout.ms": 10_000,
}

_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach a Kafka cluster, and as whom."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "cbx"
    topic_prefix: str = "cbx"

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConfigurationError("bootstrap_servers is empty: give host:port[,host:port]")
        if self.security_protocol not in _SECURITY_PROTOCOLS:
            raise ConfigurationError(
                f"security_protocol {self.security_protocol!r} is not one of "
                f"{', '.join(_SECURITY_PROTOCOLS)}"
            )
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in _SASL_MECHANISMS:
                raise ConfigurationError(
                    f"sasl_mechanism must be one of {', '.join(_SASL_MECHANISMS)} "
                    f"with {self.security_protocol}"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigurationError(
                    f"{self.security_protocol} needs CBX_SASL_USERNAME and CBX_SASL_PASSWORD"
                )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> KafkaSettings | None:
        """Settings from ``CBX_*`` variables, or None when no external cluster is named."""

        def get(name: str, default: str | None = None) -> str | None:
            return cbx_env.get(name, default, env)

        servers = get("CBX_BOOTSTRAP_SERVERS")
        if not servers:
            return None
        return cls(
            bootstrap_servers=servers,
            security_protocol=(get("CBX_SECURITY_PROTOCOL") or "PLAINTEXT").upper(),
            sasl_mechanism=get("CBX_SASL_MECHANISM"),
            sasl_username=get("CBX_SASL_USERNAME"),
            sasl_password=cbx_env.secret("CBX_SASL_PASSWORD", env),
            ssl_cafile=get("CBX_SSL_CAFILE"),
            ssl_certfile=get("CBX_SSL_CERTFILE"),
            ssl_keyfile=get("CBX_SSL_KEYFILE"),
            topic_prefix=get("CBX_TOPIC_PREFIX", "cbx") or "cbx",
        )

    def to_env(self) -> dict[str, str]:
        """The ``CBX_*`` environment that selects this cluster, principal and namespace."""
        env = {
            "CBX_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "CBX_SECURITY_PROTOCOL": self.security_protocol,
            "CBX_TOPIC_PREFIX": self.topic_prefix,
        }
        optional = {
            "CBX_SASL_MECHANISM": self.sasl_mechanism,
            "CBX_SASL_USERNAME": self.sasl_username,
            "CBX_SASL_PASSWORD": self.sasl_password,
            "CBX_SSL_CAFILE": self.ssl_cafile,
            "CBX_SSL_CERTFILE": self.ssl_certfile,
            "CBX_SSL_KEYFILE": self.ssl_keyfile,
        }
        env.update({k: v for k, v in optional.items() if v})
        return env

    @property
    def topics(self) -> Topics:
        """Topic names of this deployment's namespace."""
        return Topics(self.topic_prefix)

    def with_prefix(self, prefix: str) -> KafkaSettings:
        """The same cluster, another topic namespace."""
        return replace(self, topic_prefix=prefix)

    def as_principal(self, username: str, password: str) -> KafkaSettings:
        """The same cluster, authenticated as another principal."""
        return replace(self, sasl_username=username, sasl_password=password)

    def librdkafka_config(self) -> dict[str, Any]:
        """The same connection for confluent-kafka (librdkafka's property names)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password
        if self.security_protocol.endswith("SSL"):
            files = {
                "ssl.ca.location": self.ssl_cafile,
                "ssl.certificate.location": self.ssl_certfile,
                "ssl.key.location": self.ssl_keyfile,
            }
            conf.update({k: v for k, v in files.items() if v})
        return conf

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by aiokafka producers, consumers and admin clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return kwargs
