"""``cbx connector run``: an agency's gateway (HTTP ingest, file drop, inbox, delivery)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from broker import env
from broker.errors import CbxError, ConfigurationError
from broker.kafka import principals, topics
from broker.kafka.settings import KafkaSettings
from broker.paths import cbx_home
from cbx.cli.output import console, fail

app = typer.Typer(help="Run an agency's connector.")


def choose_sink(agency: str, webhook: str | None, folder: Path | None) -> tuple[str, str]:
    """(kind, target) of the delivery sink: the options given, else the agency's profile."""
    from broker.policy.profiles import profile_for

    if webhook:
        return "webhook", webhook
    if folder is not None:
        return "folder", str(folder)
    profile = profile_for(agency)
    if profile.sink == "webhook":
        url = env.get("CBX_WEBHOOK_URL")
        if not url:
            raise ConfigurationError(
                f"{agency} is a {profile.kind}, whose profile delivers by webhook: give "
                "--webhook URL (or set CBX_WEBHOOK_URL), or --folder DIR"
            )
        return "webhook", url
    return "folder", str(cbx_home() / "connectors" / agency / "inbox")


async def _run(
    settings: KafkaSettings,
    agency: str,
    port: int | None,
    sink_kind: str,
    target: str,
    drop: Path | None,
    mappings: Path | None = None,
) -> None:
    import uvicorn

    from broker.admin.identity import passphrase_from_env
    from broker.crypto import keys as keystore
    from connectors.filedrop.folder import FileDrop
    from connectors.gateway.connector import Connector
    from connectors.ingest.http import create_app
    from connectors.ingest.idempotency import IdempotencyStore
    from connectors.sinks import FolderSink, WebhookSink

    keys = keystore.load(keystore.keystore_path(agency), passphrase_from_env())
    connector = Connector(settings, keys)
    await connector.start()
    sink: Any = WebhookSink(target) if sink_kind == "webhook" else FolderSink(Path(target))
    store = IdempotencyStore(cbx_home() / "connectors" / agency / "sent.jsonl")
    stop = asyncio.Event()
    fatal: list[BaseException] = []

    def die(exc: BaseException) -> None:  # a loop that cannot go on takes the process down
        fatal.append(exc)
        stop.set()

    connector.inbox.on_fatal = die
    connector.start_inbox(sink)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[Any]] = []
    if port is not None:
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(connector, store), host="127.0.0.1", port=port, log_level="warning"
            )
        )
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        tasks.append(asyncio.create_task(server.serve(), name="http ingest"))

        async def stop_server() -> None:
            await stop.wait()
            server.should_exit = True

        tasks.append(asyncio.create_task(stop_server()))
        console.print(
            f"{agency}: ingest on http://127.0.0.1:{port}/v1/events/<type>", highlight=False
        )
    if drop is not None:
        filedrop = FileDrop(
            connector, drop, store, mapping_folders=[mappings] if mappings else None
        )
        tasks.append(asyncio.create_task(filedrop.run(stop), name="file drop"))
        console.print(f"{agency}: taking files dropped in {drop}", highlight=False)
    console.print(f"{agency}: delivering its inbox to {sink_kind} {target}", highlight=False)
    try:
        await stop.wait()
        for t in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 30)
    finally:
        await connector.stop()
        if isinstance(sink, WebhookSink):
            await sink.close()
    if fatal:
        raise ConnectorFailed(
            f"{agency}: the inbox stopped ({type(fatal[0]).__name__}); see the log"
        )


class ConnectorFailed(CbxError):
    """A loop of the connector failed in a way it cannot handle; a supervisor should restart it."""


@app.command()
def run(
    agency: Annotated[str, typer.Option("--agency", help="Agency id, for example la-e10000016.")],
    port: Annotated[int, typer.Option(help="HTTP ingest port on 127.0.0.1.")] = 8480,
    http: Annotated[bool, typer.Option("--http/--no-http", help="Serve HTTP ingest.")] = True,
    webhook: Annotated[str | None, typer.Option(help="Deliver by POST to this URL.")] = None,
    folder: Annotated[Path | None, typer.Option(help="Deliver as JSON files here.")] = None,
    drop: Annotated[
        Path | None,
        typer.Option(help="Take the agency's exports (CSV, JSON lines) dropped in this folder."),
    ] = None,
    mappings: Annotated[
        Path | None,
        typer.Option(help="Folder of the agency's own CSV column mappings (YAML), tried first."),
    ] = None,
) -> None:
    """Ingest the agency's events (HTTP, file drop) and deliver its inbox to its system.

    Without --webhook or --folder, the agency's profile chooses: councils, health bodies and
    care providers get a folder under $CBX_HOME/connectors/ID/inbox; police forces a webhook
    (CBX_WEBHOOK_URL).
    """
    from broker.kafka.cluster import resolve_settings

    try:
        topics.check_agency_id(agency)
        sink_kind, target = choose_sink(agency, webhook, folder)
        external = KafkaSettings.from_env()
        settings = external or principals.settings_for(resolve_settings(), agency)
        asyncio.run(
            _run(settings, agency, port if http else None, sink_kind, target, drop, mappings)
        )
    except CbxError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
