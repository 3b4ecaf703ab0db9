"""``cbx connector run``: an agency's gateway (HTTP ingest, file drop, inbox, delivery)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from broker import env
from broker.errors import CbxError, ConfigurationError
from broker.kafka import principals, topics
from broker.kafka.settings import KafkaSettings
from broker.paths import cbx_home
from cbx.cli.output import console, fail
from cbx.cli.token_cmd import app as token_app

app = typer.Typer(help="Run an agency's connector.")
app.add_typer(token_app, name="token")


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


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Edge:
    """How the connector's HTTP edge listens and whom it lets in."""

    host: str = "127.0.0.1"
    port: int | None = 8480
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    anonymous: bool = False
    allowed_hosts: tuple[str, ...] = ()

    def check(self) -> None:
        if self.anonymous and self.host not in LOOPBACK:
            raise ConfigurationError(
                f"--insecure-no-auth serves anyone who can reach it: refused on {self.host}; "
                "use API tokens (cbx connector token add) or listen on 127.0.0.1"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise ConfigurationError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.host in ("0.0.0.0", "::") and not self.allowed_hosts:  # noqa: S104
            raise ConfigurationError(
                f"listening on {self.host}: name the host names clients use with --allowed-host"
            )

    def hosts(self) -> list[str]:
        """Host header values accepted (DNS rebinding guard): the listen address, loopback names
        when listening on loopback, and any --allowed-host."""
        names = {self.host, *self.allowed_hosts}
        if self.host in LOOPBACK or self.host in ("0.0.0.0", "::"):  # noqa: S104
            names |= {"127.0.0.1", "localhost", "::1"}
        return sorted(names)

    def uvicorn(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "log_level": "warning"}
        if self.tls_cert is not None:
            kwargs.update(ssl_certfile=str(self.tls_cert), ssl_keyfile=str(self.tls_key))
        if self.client_ca is not None:
            kwargs.update(ssl_ca_certs=str(self.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return kwargs


@dataclass(frozen=True)
class Hook:
    """How the webhook is signed and reached."""

    secret_file: Path | None = None
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


async def _run(
    settings: KafkaSettings,
    agency: str,
    edge: Edge,
    hook: Hook,
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
    from connectors.ingest.auth import TokenStore, tokens_path
    from connectors.ingest.http import create_app
    from connectors.ingest.idempotency import IdempotencyStore
    from connectors.sinks import FolderSink, WebhookSink

    keys = keystore.load(keystore.keystore_path(agency), passphrase_from_env())
    connector = Connector(settings, keys)
    await connector.start()
    sink: Any = (
        WebhookSink(
            target,
            key=keys.current("sig").private,  # type: ignore[arg-type]
            secret=hook.secret_file.read_bytes().strip() if hook.secret_file else None,
            verify=str(hook.ca) if hook.ca else True,
            client_cert=(str(hook.client_cert), str(hook.client_key))
            if hook.client_cert and hook.client_key
            else None,
        )
        if sink_kind == "webhook"
        else FolderSink(Path(target))
    )
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
    if edge.port is not None:
        tokens = None if edge.anonymous else TokenStore(tokens_path(agency))
        if tokens is not None and not tokens.list():
            console.print(
                f"{agency}: no API tokens yet: cbx connector token add --agency {agency}",
                highlight=False,
            )
        http_app = create_app(connector, store, tokens=tokens, allowed_hosts=edge.hosts())
        server = uvicorn.Server(uvicorn.Config(http_app, **edge.uvicorn()))
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        tasks.append(asyncio.create_task(server.serve(), name="http ingest"))

        async def stop_server() -> None:
            await stop.wait()
            server.should_exit = True

        tasks.append(asyncio.create_task(stop_server()))
        scheme = "https" if edge.tls_cert else "http"
        who = "anyone (development)" if edge.anonymous else "API tokens"
        if edge.client_ca:
            who += " and client certificates"
        console.print(
            f"{agency}: ingest on {scheme}://{edge.host}:{edge.port}/v1/events/<type> ({who})",
            highlight=False,
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
    port: Annotated[int, typer.Option(help="HTTP ingest port.")] = 8480,
    host: Annotated[str, typer.Option(help="Address HTTP ingest listens on.")] = "127.0.0.1",
    http: Annotated[bool, typer.Option("--http/--no-http", help="Serve HTTP ingest.")] = True,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Server certificate (PEM) from the agency's PKI.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="CA (PEM) of client certificates: mutual TLS, clients must present one."),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="A Host name clients use to reach the connector (repeatable)."),
    ] = None,
    webhook_secret_file: Annotated[
        Path | None,
        typer.Option(help="Sign webhooks with HMAC-SHA256 and this shared secret (else Ed25519)."),
    ] = None,
    webhook_ca: Annotated[
        Path | None, typer.Option(help="CA (PEM) that signs the webhook's TLS certificate.")
    ] = None,
    webhook_client_cert: Annotated[
        Path | None, typer.Option(help="Client certificate (PEM) to present to the webhook.")
    ] = None,
    webhook_client_key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Development only: no API token needed. Refused unless on a loopback address.",
        ),
    ] = False,
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
        edge = Edge(
            host=host,
            port=port if http else None,
            tls_cert=tls_cert,
            tls_key=tls_key,
            client_ca=tls_client_ca,
            anonymous=insecure_no_auth,
            allowed_hosts=tuple(allowed_host or ()),
        )
        edge.check()
        hook = Hook(webhook_secret_file, webhook_ca, webhook_client_cert, webhook_client_key)
        sink_kind, target = choose_sink(agency, webhook, folder)
        external = KafkaSettings.from_env()
        settings = external or principals.settings_for(resolve_settings(), agency)
        asyncio.run(_run(settings, agency, edge, hook, sink_kind, target, drop, mappings))
    except CbxError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
