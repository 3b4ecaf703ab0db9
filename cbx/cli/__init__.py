"""The ``cbx`` command line: one entry point, one sub-app per area."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from broker.logging import configure_logging
from cbx.cli import (
    agency_cmd,
    case_cmd,
    chronology_cmd,
    connector_cmd,
    console_cmd,
    deadletter_cmd,
    deliveries_cmd,
    demo_cmd,
    deploy_cmd,
    kafka_cmd,
    keys_cmd,
    router_cmd,
    schemas_cmd,
)
from cbx.cli.output import log_file

app = typer.Typer(
    name="cbx",
    help="Cross-Boundary Exchange: safeguarding notifications between agencies, over Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


#: Commands that tell a person what happens: the services they run log to a file.
NARRATED = ("demo", "scenario")


@app.callback()
def _setup(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show every log line on the terminal.")
    ] = False,
) -> None:
    if ctx.invoked_subcommand in NARRATED:
        configure_logging(
            file=log_file(ctx.invoked_subcommand),
            shown=logging.DEBUG if verbose else logging.WARNING,
        )
    else:
        configure_logging()


app.add_typer(kafka_cmd.app, name="kafka")
app.add_typer(schemas_cmd.app, name="schemas")
app.add_typer(keys_cmd.keys_app, name="keys")
app.add_typer(keys_cmd.directory_app, name="directory")
app.add_typer(deadletter_cmd.app, name="deadletter")
app.add_typer(agency_cmd.app, name="agency")
app.add_typer(connector_cmd.app, name="connector")
app.add_typer(case_cmd.app, name="case")
app.add_typer(console_cmd.app, name="console")
app.add_typer(demo_cmd.scenario_app, name="scenario")
app.add_typer(deploy_cmd.app, name="deploy")
app.command("setup")(agency_cmd.setup)
app.command("tracker")(deliveries_cmd.tracker)
app.command("deliveries")(deliveries_cmd.deliveries)
app.command("trace")(deliveries_cmd.trace)
app.command("demo")(demo_cmd.demo)
app.command("router")(router_cmd.router)
app.command("chronology")(chronology_cmd.chronology)


def main() -> None:
    """Console-script entry point."""
    app()
