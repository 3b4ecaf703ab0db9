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


def service_settings(principal: str) -> KafkaSettings:
    """Settings for a service: its own principal (set up on first use on the embedded broker)."""
    from broker.admin.provision import ensure_service
    from broker.kafka.cluster import resolve_settings

    external = KafkaSettings.from_env()
    if external is not None:
        return external
    admin = resolve_settings()
    asyncio.run(ensure_service(admin, principal))
    return principals.settings_for(admin, principal)


def router(
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT.")
    ] = None,
    group: Annotated[
        str, typer.Option(help="Consumer group name, prefixed by the namespace.")
    ] = "router",
) -> None:
    """Route every agency's outbound messages to their recipients' inboxes, exactly once."""
    from broker.router.service import serve

    try:
        settings = service_settings(model.ROUTER)
        asyncio.run(serve(settings, metrics_port, group))
    except CbxError as exc:
        fail(str(exc))
