"""``cbx connector run``: an agency's gateway (HTTP ingest, inbox, delivery to its system)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from broker import principals, topics
from broker.cli.output import console, fail
from broker.errors import CbxError
from broker.settings import KafkaSettings, cbx_home

app = typer.Typer(help="Run an agency's connector.")


async def _run(
    settings: KafkaSettings, agency: str, port: int, webhook: str | None, folder: Path
) -> None:
    import uvicorn

    from broker.crypto import keys as keystore
    from broker.identity import passphrase_from_env
    from connectors.http_ingest import create_app
    from connectors.idempotency import IdempotencyStore
    from connectors.runtime import Connector
    from connectors.sinks import FolderSink, WebhookSink

    keys = keystore.load(keystore.keystore_path(agency), passphrase_from_env())
    connector = Connector(settings, keys)
    await connector.start()
    sink = WebhookSink(webhook) if webhook else FolderSink(folder)
    connector.start_inbox(sink)
    store = IdempotencyStore(cbx_home() / "connectors" / agency / "sent.jsonl")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(connector, store), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    console.print(
        f"{agency}: ingest on http://127.0.0.1:{port}/v1/events/<type>, delivering to "
        f"{webhook or folder}",
        highlight=False,
    )
    try:
        await server.serve()
    finally:
        await connector.stop()
        if isinstance(sink, WebhookSink):
            await sink.close()


@app.command()
def run(
    agency: Annotated[str, typer.Option("--agency", help="Agency id, for example la-e10000016.")],
    port: Annotated[int, typer.Option(help="HTTP ingest port on 127.0.0.1.")] = 8480,
    webhook: Annotated[str | None, typer.Option(help="Deliver by POST to this URL.")] = None,
    folder: Annotated[Path | None, typer.Option(help="Deliver as JSON files here.")] = None,
) -> None:
    """Ingest the agency's events over HTTP and deliver its inbox to its system."""
    from broker.settings import resolve_settings

    try:
        topics.check_agency_id(agency)
        external = KafkaSettings.from_env()
        settings = external or principals.settings_for(resolve_settings(), agency)
        target = folder or cbx_home() / "connectors" / agency / "inbox"
        asyncio.run(_run(settings, agency, port, webhook, target))
    except CbxError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
