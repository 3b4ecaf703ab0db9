"""``cbx kafka``: the embedded development broker."""

from __future__ import annotations

from typing import Annotated

import typer

from broker.errors import EmbeddedKafkaError
from broker.kafka import embedded as local_kafka
from cbx.cli.output import console, fail, print_json

app = typer.Typer(
    help="Run Apache Kafka (KRaft) for development and tests: one broker, or a cluster of three."
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@app.command()
def install(
    version: Annotated[str, typer.Option(help="Apache Kafka version.")] = local_kafka.KAFKA_VERSION,
) -> None:
    """Resolve the Kafka jars from Maven Central into the local cache (once)."""
    try:
        libs = local_kafka.install(version)
    except EmbeddedKafkaError as exc:
        fail(exc.reason, exc.log_tail)
    console.print(f"Kafka {version} jars in {libs}", highlight=False)


@app.command()
def start(
    brokers: Annotated[
        int,
        typer.Option(
            help="1, or 3 for a cluster (three broker and controller nodes, replication 3, "
            "min ISR 2; about 0.6 GiB of memory each)."
        ),
    ] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Start the embedded broker (or reuse the running one) and print its bootstrap address."""
    try:
        state = local_kafka.start(brokers=brokers)
    except EmbeddedKafkaError as exc:
        log = f"--- broker log (last lines) ---\n{exc.log_tail}" if exc.log_tail else ""
        fail(exc.reason, log)
    if json_out:
        print_json(
            {
                "status": "up",
                "bootstrap": state.bootstrap,
                "pid": state.pid,
                "brokers": state.brokers,
                "pids": list(state.node_pids()),
            }
        )
    else:
        typer.echo(state.bootstrap)


@app.command()
def status(json_out: JsonOpt = False) -> None:
    """Say whether the embedded broker is up, with its address and pid."""
    state = local_kafka.status()
    if json_out:
        if state is None:
            print_json({"status": "down"})
        else:
            print_json(
                {
                    "status": "up",
                    "bootstrap": state.bootstrap,
                    "pid": state.pid,
                    "version": state.version,
                    "data_dir": state.data_dir,
                    "tls_bootstrap": state.tls_bootstrap,
                    "ca_file": state.ca_file,
                    "brokers": state.brokers,
                    "pids": list(state.node_pids()),
                }
            )
    elif state is None:
        console.print("down")
    else:
        pids = ",".join(str(p) for p in state.node_pids())
        console.print(
            f"up  {state.bootstrap}  pid {pids}  Kafka {state.version}  {state.data_dir}",
            highlight=False,
        )
    if state is None:
        raise typer.Exit(3)


@app.command()
def stop(
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the broker's data.")] = False,
) -> None:
    """Stop the embedded broker cleanly (no JVM is left behind)."""
    try:
        state = local_kafka.stop(purge=purge)
    except EmbeddedKafkaError as exc:
        fail(exc.reason)
    console.print("stopped" if state else "not running", highlight=False)
