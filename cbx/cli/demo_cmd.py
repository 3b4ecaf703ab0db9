"""``cbx demo`` and ``cbx scenario run``: cases played through the whole exchange."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.errors import CbxError, EmbeddedKafkaError
from broker.kafka import embedded as local_kafka
from broker.kafka.cluster import resolve_settings
from broker.kafka.settings import KafkaSettings
from broker.policy.reference import reference
from cbx.cli.output import console, err_console, fail, log_file, print_json

scenario_app = typer.Typer(help="Play scenario files through the whole exchange.")


@dataclass(frozen=True)
class ConsoleOptions:
    port: int
    stay_s: float | None
    """How long the console stays up after the case is played (None: until Ctrl-C)."""


async def _with_console(
    settings: KafkaSettings, case: Any, progress: Callable[[str], None], opts: ConsoleOptions
) -> dict[str, Any]:
    """Play ``case`` with the operators' console serving its namespace from the start."""
    import secrets

    import uvicorn

    from broker import model
    from broker.admin import provision
    from broker.console.auth import Accounts, Role
    from broker.console.service import running
    from broker.kafka import principals
    from broker.paths import cbx_home
    from cbx.scenarios import runner as scenario

    runner = scenario.Runner(settings, case, progress)
    ns = runner.ns
    await provision.setup(ns)
    await provision.ensure_service(ns, model.OPERATOR, grant=True)
    folder = cbx_home() / "console"
    accounts = Accounts(folder / "demo-accounts.json")
    password = secrets.token_urlsafe(12)
    await asyncio.to_thread(accounts.add, "demo", password, Role.OPERATOR)
    operator = principals.settings_for(ns, model.OPERATOR)
    async with running(operator, folder / f"view-{ns.topic_prefix}.sqlite", accounts) as r:
        server = uvicorn.Server(
            uvicorn.Config(r.app, host="127.0.0.1", port=opts.port, log_level="warning")
        )
        serving = asyncio.create_task(server.serve())
        progress(
            f"console: http://127.0.0.1:{opts.port}/ (sign in as demo, password {password});"
            " the case starts in 10 s"
        )
        await asyncio.sleep(10)
        report = await runner.run()
        if opts.stay_s is None:
            progress("the console stays up to look around: Ctrl-C stops it")
        else:
            progress(f"the console stays up for {opts.stay_s:.0f} s")
            await asyncio.sleep(opts.stay_s)
            server.should_exit = True
        await serving
    return report


async def _with_chronologies(
    settings: KafkaSettings, case: Any, progress: Callable[[str], None], folder: Path
) -> dict[str, Any]:
    from cbx.scenarios import runner as scenario

    runner = scenario.Runner(settings, case, progress)
    report = await runner.run()
    await runner.export_chronologies(folder)
    return report


def _play(
    path: Path | None,
    keep: bool,
    json_out: bool,
    with_console: ConsoleOptions | None = None,
    chronology: Path | None = None,
) -> None:
    from cbx.scenarios import runner as scenario
    from cbx.scenarios import spec

    started_here = local_kafka.status() is None and KafkaSettings.from_env() is None

    def progress(text: str) -> None:
        if not json_out:
            console.print(f"[dim]•[/] {text}", highlight=False)
        elif with_console is not None and "console:" in text:
            err_console.print(text, highlight=False)  # the address and password, off stdout

    report: dict[str, Any] = {}
    try:
        case = spec.load(path or spec.demo())
        settings = resolve_settings(start_embedded=True)
        progress(f"Kafka at {settings.bootstrap_servers} (SASL/SCRAM, ACLs on)")
        if with_console is not None:
            report = asyncio.run(_with_console(settings, case, progress, with_console))
        elif chronology is not None:
            report = asyncio.run(_with_chronologies(settings, case, progress, chronology))
        else:
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
        console.print(
            f"[dim]service log lines: {log_file('demo' if path is None else 'scenario')}[/]",
            highlight=False,
        )
    if not report["ok"]:
        raise typer.Exit(1)


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the embedded broker running.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    with_console: Annotated[
        bool,
        typer.Option("--console", help="Serve the operators' console while the case plays."),
    ] = False,
    console_port: Annotated[int, typer.Option(help="The console's port.")] = 8490,
    console_seconds: Annotated[
        float | None,
        typer.Option(help="Stop the console this long after the case (default: on Ctrl-C)."),
    ] = None,
    chronology: Annotated[
        Path | None,
        typer.Option(help="Write each agency's chronology of the case, and the merged one, here."),
    ] = None,
) -> None:
    """Play an out-of-area placement, a missing episode and its aftermath through cbx."""
    if with_console and chronology is not None:
        fail("--console and --chronology are one at a time")
    _play(
        None,
        keep,
        json_out,
        ConsoleOptions(console_port, console_seconds) if with_console else None,
        chronology,
    )


@scenario_app.command("run")
def scenario_run(
    file: Annotated[Path, typer.Argument(help="Scenario file (YAML), see docs/scenarios.md.")],
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the embedded broker running.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    chronology: Annotated[
        Path | None,
        typer.Option(help="Write each agency's chronology of each case, and the merged one, here."),
    ] = None,
) -> None:
    """Play a scenario; exit 1 if a required recipient was not reached or a deadline passed."""
    _play(file, keep, json_out, chronology=chronology)


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
    if report.get("clocks"):
        clocks = Table(
            "statutory clock",
            "started by",
            "due",
            "status",
            "met by",
            "reminder to",
            title="Statutory clocks",
        )
        for c in report["clocks"]:
            late = c["margin_s"] is not None and c["margin_s"] < 0
            clocks.add_row(
                c["title"],
                c["started_by_type"],
                c["due_at"][:16].replace("T", " "),
                f"{c['status']}{' (late)' if late else ''}",
                c["met_by_type"] or "-",
                ", ".join(ref.name_of(a) for a in c["reminded"]) or "-",
            )
        console.print(clocks)
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
