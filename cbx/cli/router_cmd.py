"""``cbx router``: run the router."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from broker import model
from broker.errors import CbxError
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from cbx.cli.output import fail


def service_settings(principal: str, namespace: str | None = None) -> KafkaSettings:
    """Settings for a service: its own principal (set up on first use on the embedded broker).

    ``namespace`` selects another topic namespace than the deployment's (a scenario's, say).
    Call it before any event loop runs: setting up the principal runs one of its own.
    """
    from broker.admin.provision import ensure_service
    from broker.kafka.cluster import resolve_settings

    external = KafkaSettings.from_env()
    if external is not None:
        return external.with_prefix(namespace) if namespace else external
    admin = resolve_settings()
    if namespace:
        admin = admin.with_prefix(namespace)
    asyncio.run(ensure_service(admin, principal, grant=namespace is not None))
    return principals.settings_for(admin, principal)


HealthPort = Annotated[
    int | None,
    typer.Option(help="Serve /healthz and /readyz (ready: able to do its work) on this port."),
]
HealthHost = Annotated[str, typer.Option(help="Address for /healthz and /readyz.")]


def router(
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT.")
    ] = None,
    group: Annotated[
        str, typer.Option(help="Consumer group name, prefixed by the namespace.")
    ] = "router",
    health_port: HealthPort = None,
    health_host: HealthHost = "127.0.0.1",
) -> None:
    """Route every agency's outbound messages to their recipients' inboxes, exactly once."""
    from broker.router.service import serve

    try:
        settings = service_settings(model.ROUTER)
        health = (health_host, health_port) if health_port is not None else None
        asyncio.run(serve(settings, metrics_port, group, health))
    except CbxError as exc:
        fail(str(exc))
