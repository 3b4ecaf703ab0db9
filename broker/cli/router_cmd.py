"""``cbx router``: run the router."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from broker.cli.output import fail
from broker.errors import CbxError


def router(
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT.")
    ] = None,
    group: Annotated[
        str, typer.Option(help="Consumer group name, prefixed by the namespace.")
    ] = "router",
) -> None:
    """Route every agency's outbound messages to their recipients' inboxes, exactly once."""
    from broker.router_service import serve
    from broker.settings import resolve_settings

    try:
        settings = resolve_settings()
        asyncio.run(serve(settings, metrics_port, group))
    except CbxError as exc:
        fail(str(exc))
