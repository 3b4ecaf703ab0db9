"""Who a client is on the wire: SCRAM credentials per principal, kept beside the keystores.

Every service connects as itself: an agency's connector as ``User:<agency id>``, the router as
``User:svc-router``, administration only as the super user. On a development machine credentials
are files under ``$CBX_HOME/credentials`` (mode 0600), written by ``cbx agency add``; against an
external cluster they come from ``CBX_SASL_USERNAME`` / ``CBX_SASL_PASSWORD``.
"""

from __future__ import annotations

import json
from pathlib import Path

from broker.errors import ConfigurationError
from broker.files import write_private_json
from broker.kafka.settings import KafkaSettings
from broker.paths import cbx_home


def credentials_path(principal: str) -> Path:
    return cbx_home() / "credentials" / f"{principal}.json"


def save(principal: str, password: str) -> Path:
    return write_private_json(
        credentials_path(principal), {"username": principal, "password": password}
    )


def load(principal: str) -> str | None:
    """The stored password of ``principal``, or None."""
    try:
        return str(json.loads(credentials_path(principal).read_text())["password"])
    except (OSError, ValueError, KeyError):
        return None


def delete(principal: str) -> None:
    credentials_path(principal).unlink(missing_ok=True)


def settings_for(base: KafkaSettings, principal: str) -> KafkaSettings:
    """``base`` (the cluster) as ``principal``; unchanged on a cluster without SASL."""
    if not base.security_protocol.startswith("SASL"):
        return base
    if base.sasl_username == principal:
        return base
    password = load(principal)
    if password is None:
        raise ConfigurationError(
            f"no credentials for principal {principal}: run cbx agency add {principal} "
            "(or set CBX_SASL_USERNAME and CBX_SASL_PASSWORD)"
        )
    return base.as_principal(principal, password)
