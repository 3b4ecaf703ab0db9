"""``cbx deadletter``: what was refused, why, and replaying it after a fix."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from broker.errors import CbxError
from broker.kafka.settings import KafkaSettings
from broker.router import deadletter
from cbx.cli.output import console, fail, print_json

app = typer.Typer(help="List and replay dead-lettered messages (metadata only).")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NamespaceOpt = Annotated[
    str | None,
    typer.Option(help="Topic namespace to read (default: CBX_TOPIC_PREFIX, or cbx)."),
]


def _admin(namespace: str | None) -> KafkaSettings:
    from broker.kafka.cluster import resolve_settings

    settings = resolve_settings()
    return settings.with_prefix(namespace) if namespace else settings


@app.command("list")
def list_(namespace: NamespaceOpt = None, json_out: JsonOpt = False) -> None:
    """Every dead letter: id, when, where it came from, the stage and the reason."""
    try:
        entries = asyncio.run(deadletter.list_dead_letters(_admin(namespace)))
    except CbxError as exc:
        fail(str(exc))
    rows = [e.as_json() for e in entries]
    if json_out:
        print_json(rows)
        return
    table = Table("id", "at", "from", "stage", "reason", "message id", "error")
    for e in entries:
        table.add_row(e.id, e.at, e.topic, e.stage, e.reason, e.message_id or "-", e.error)
    console.print(table)


@app.command()
def replay(
    dead_letter_id: Annotated[str, typer.Argument(help="The id shown by cbx deadletter list.")],
    namespace: NamespaceOpt = None,
) -> None:
    """Put a dead letter back on the topic it came from, to be checked and routed again."""
    try:
        entry = asyncio.run(deadletter.replay(_admin(namespace), dead_letter_id))
    except CbxError as exc:
        fail(str(exc))
    console.print(f"replayed {dead_letter_id} to {entry.topic}", highlight=False)
