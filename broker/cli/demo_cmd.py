"""``cbx demo``: one child's case through the whole exchange, on the embedded broker."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.table import Table

from broker import local_kafka
from broker.cli.output import console, fail, print_json
from broker.errors import CbxError, EmbeddedKafkaError
from broker.reference import reference
from broker.settings import KafkaSettings, resolve_settings


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the embedded broker running.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Play an out-of-area placement, a missing episode and its aftermath through cbx."""
    from connectors.demo import run

    started_here = local_kafka.status() is None and KafkaSettings.from_env() is None

    def progress(text: str) -> None:
        if not json_out:
            console.print(f"[dim]•[/] {text}", highlight=False)

    try:
        settings = resolve_settings(start_embedded=True)
        progress(f"Kafka at {settings.bootstrap_servers} (SASL/SCRAM, ACLs on)")
        report = asyncio.run(run(settings, progress))
    except EmbeddedKafkaError as exc:
        fail(exc.reason, exc.log_tail)
    except (CbxError, TimeoutError) as exc:
        fail(str(exc))
    finally:
        if started_here and not keep:
            local_kafka.stop()
    if json_out:
        print_json(report)
    else:
        _table(report)
    if report["plaintext_found"]:
        raise typer.Exit(1)


def _table(report: dict[str, Any]) -> None:
    ref = reference()
    table = Table(
        "message",
        "from",
        "to",
        "status",
        "delivered ms",
        "acknowledged ms",
        title=report["case_ref"],
    )
    for m in report["messages"]:
        first = True
        for r in m["recipients"]:
            table.add_row(
                m["event_type"] if first else "",
                ref.name_of(m["sender"]) if first else "",
                f"{ref.name_of(r['agency'])} ({r['role']})",
                r["status"],
                f"{r['delivered_ms']:.0f}" if r["delivered_ms"] is not None else "-",
                f"{r['acknowledged_ms']:.0f}" if r["acknowledged_ms"] is not None else "-",
            )
            first = False
    console.print(table)
    console.print(
        f"raw bytes of {report['records_scanned']} records on every topic searched for the case's "
        f"sensitive values: {report['plaintext_found']} found",
        highlight=False,
    )
