"""``cbx demo`` and ``cbx scenario run``: cases played through the whole exchange."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.errors import CbxError, EmbeddedKafkaError
from broker.kafka import embedded as local_kafka
from broker.kafka.cluster import resolve_settings
from broker.kafka.settings import KafkaSettings
from broker.policy.reference import reference
from cbx.cli.output import console, fail, print_json

scenario_app = typer.Typer(help="Play scenario files through the whole exchange.")


def _play(path: Path | None, keep: bool, json_out: bool) -> None:
    from cbx.scenarios import runner as scenario
    from cbx.scenarios import spec

    started_here = local_kafka.status() is None and KafkaSettings.from_env() is None

    def progress(text: str) -> None:
        if not json_out:
            console.print(f"[dim]•[/] {text}", highlight=False)

    report: dict[str, Any] = {}
    try:
        case = spec.load(path or spec.demo())
        settings = resolve_settings(start_embedded=True)
        progress(f"Kafka at {settings.bootstrap_servers} (SASL/SCRAM, ACLs on)")
        report = asyncio.run(scenario.run(settings, case, progress))
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
    if not report["ok"]:
        raise typer.Exit(1)


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the embedded broker running.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Play an out-of-area placement, a missing episode and its aftermath through cbx."""
    _play(None, keep, json_out)


@scenario_app.command("run")
def scenario_run(
    file: Annotated[Path, typer.Argument(help="Scenario file (YAML), see docs/scenarios.md.")],
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the embedded broker running.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Play a scenario; exit 1 if a required recipient was not reached or a deadline passed."""
    _play(file, keep, json_out)


def _table(report: dict[str, Any]) -> None:
    ref = reference()
    table = Table(
        "message",
        "from",
        "to",
        "role",
        "status",
        "delivered ms",
        "acknowledged ms",
        title=f"{report['scenario']} ({', '.join(report['case_refs'])})",
    )
    for m in report["messages"]:
        first = True
        for r in m["recipients"]:
            table.add_row(
                m["event_type"] if first else "",
                ref.name_of(m["sender"]) if first else "",
                ref.name_of(r["agency"]),
                r["role"],
                r["status"],
                f"{r['delivered_ms']:.0f}" if r["delivered_ms"] is not None else "-",
                f"{r['acknowledged_ms']:.0f}" if r["acknowledged_ms"] is not None else "-",
            )
            first = False
        for gap in m["route_gaps"]:
            table.add_row("", "", ref.name_of(gap), "", "ROUTE GAP (repaired)", "", "")
    if not console.is_terminal:  # to a file or a pipe: room for agency names, not 80 columns
        console.width = 160
    console.print(table)
    for r in report["rejections"]:
        problems = "; ".join(
            f"{e.get('path') or '(request)'}: {e.get('problem')}" for e in r["errors"]
        )
        what = "refused, as expected" if r["expected"] else "REFUSED"
        console.print(
            f"{r['step']}: {r['event_type']} from {ref.name_of(r['sender'])} {what} "
            f"({r['status_code']}): {problems}",
            highlight=False,
        )
    console.print(
        f"raw bytes of {report['records_scanned']} records on every topic searched for the "
        f"case's {report['sensitive_values_searched']} sensitive values: "
        f"{report['plaintext_found']} found",
        highlight=False,
    )
    for f in report["failures"]:
        console.print(f"[red]FAILED[/] {f}", highlight=False)
    if report["ok"]:
        console.print("[green]every required recipient reached, no deadline passed[/]")
