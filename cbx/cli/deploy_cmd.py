"""``cbx deploy``: deployment artefacts generated from the policies the tests prove."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from broker import env
from broker.admin import strimzi
from broker.errors import ConfigurationError
from broker.kafka.embedded import KAFKA_VERSION
from cbx.cli.output import fail

app = typer.Typer(help="Deployment artefacts (administrators).")


def _agencies(given: list[str], file: Path | None) -> list[str]:
    agencies = list(given)
    if file is not None:
        for line in file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                agencies.append(line)
    return agencies


@app.command("strimzi")
def strimzi_cmd(
    agency: Annotated[
        list[str] | None,
        typer.Option("--agency", help="An agency on the exchange (repeatable)."),
    ] = None,
    agencies_file: Annotated[
        Path | None,
        typer.Option(help="A file of agency ids, one a line (# starts a comment)."),
    ] = None,
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "cbx",
    cluster: Annotated[str, typer.Option(help="Name of the Kafka resource.")] = "cbx",
    storage_gi: Annotated[int, typer.Option(help="Disk of each Kafka node, in GiB.")] = 100,
    out: Annotated[
        Path | None, typer.Option(help="Write the YAML here instead of to standard output.")
    ] = None,
) -> None:
    """Strimzi resources for the exchange: the Kafka and its node pool, a KafkaTopic for each
    topic and a KafkaUser for each principal with exactly its ACLs (schemas/policy/acls.yaml)."""
    prefix = env.get("CBX_TOPIC_PREFIX", "cbx") or "cbx"
    try:
        docs = strimzi.resources(
            prefix,
            _agencies(agency or [], agencies_file),
            cluster=cluster,
            namespace=namespace,
            kafka_version=KAFKA_VERSION,
            storage_gi=storage_gi,
        )
    except (ConfigurationError, OSError) as exc:
        fail(str(exc))
    text = yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        typer.echo(f"{len(docs)} resources in {out}")
