"""Which Kafka cluster this process uses: an external one named in the environment, or the
embedded development broker (started here when asked to)."""

from __future__ import annotations

from broker.errors import ConfigurationError
from broker.kafka import embedded
from broker.kafka.settings import KafkaSettings


def resolve_settings(*, start_embedded: bool = True) -> KafkaSettings:
    """Settings for the cluster this process should use.

    An external cluster from the environment wins; otherwise the embedded broker, started here when
    ``start_embedded`` is true and it is not running yet.
    """
    external = KafkaSettings.from_env()
    if external is not None:
        return external
    state = embedded.status()
    if state is None:
        if not start_embedded:
            raise ConfigurationError(
                "no Kafka: set CBX_BOOTSTRAP_SERVERS or start the embedded broker (cbx kafka start)"
            )
        state = embedded.start()
    return state.settings()
