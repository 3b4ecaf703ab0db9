"""``cbx chronology``: a case as one agency holds it, and several agencies' exports merged.

``cbx chronology CASE --agency ID`` runs with the agency's own credentials and keys (as its
connector does), so it shows only what that agency sent and received, with the fields it may read.
``cbx chronology merge FILE...`` combines the JSON exports of several agencies into the
multi-agency chronology a case review asks every agency for; it needs no broker.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.errors import CbxError
from broker.files import write_private
from broker.kafka import principals, topics
from broker.kafka.cluster import resolve_settings
from broker.kafka.settings import KafkaSettings
from cbx.cli.output import console, fail

FORMATS = ("json", "csv", "html")


def _write(text: str, output: Path | None) -> None:
    if output is None:
        console.file.write(text if text.endswith("\n") else text + "\n")
        return
    write_private(output, text)  # a child's case content: this user's alone
    console.print(f"wrote {output}", highlight=False)


async def _chronology(settings: KafkaSettings, agency: str, case_ref: str) -> dict[str, Any]:
    from broker.admin.identity import passphrase_from_env
    from broker.crypto import keys as keystore
    from connectors.gateway.connector import Connector

    keys = keystore.load(keystore.keystore_path(agency), passphrase_from_env())
    connector = Connector(settings, keys)
    await connector.start()
    try:
        await connector.sync()
        found = connector.registry.get(case_ref)
        return await connector.chronologies.chronology(found.case_ref if found else case_ref)
    finally:
        await connector.stop()


def chronology(
    args: Annotated[
        list[str],
        typer.Argument(
            help="CASE (with --agency), or: merge FILE... (JSON exports of several agencies)."
        ),
    ],
    agency: Annotated[
        str | None, typer.Option(help="Whose chronology: the agency id (its keys are used).")
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(help="json, csv or html (a printable page); json, or csv for merge."),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write here instead of printing.")] = None,
) -> None:
    """A case as one agency holds it, or several agencies' exports merged.

    cbx chronology CASE --agency ID: every message AGENCY sent or received about the case, in
    order, with the fields it may read (withheld ones say so), delivery and acknowledgement, and
    the statutory clocks each started or met.

    cbx chronology merge FILE...: one multi-agency chronology from their JSON exports: one row per
    message, which agencies held it and when each acknowledged.
    """
    if args and args[0] == "merge":
        _merge([Path(a) for a in args[1:]], format or "csv", output)
        return
    from connectors.gateway.chronology import to_csv, to_html

    if len(args) != 1 or agency is None:
        fail("give one case and --agency ID (or: cbx chronology merge FILE...)")
    format = format or "json"
    if format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}")
    try:
        topics.check_agency_id(agency)
        settings = KafkaSettings.from_env() or principals.settings_for(resolve_settings(), agency)
        doc = asyncio.run(_chronology(settings, agency, args[0]))
    except CbxError as exc:
        fail(str(exc))
    text = {"json": lambda d: json.dumps(d, indent=2), "csv": to_csv, "html": to_html}[format](doc)
    _write(text, output)


def _merge(files: list[Path], format: str, output: Path | None) -> None:
    from connectors.gateway.chronology import merge as combine
    from connectors.gateway.chronology import merged_csv, to_html

    if not files:
        fail("give the JSON exports to merge: cbx chronology merge FILE...")
    if format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}")
    docs = []
    for f in files:
        try:
            docs.append(json.loads(f.read_text()))
        except (OSError, ValueError) as exc:
            fail(f"{f}: not a readable JSON export: {type(exc).__name__}")
    try:
        merged = combine(docs)
    except CbxError as exc:
        fail(str(exc))
    text = {"json": lambda d: json.dumps(d, indent=2), "csv": merged_csv, "html": to_html}[format](
        merged
    )
    _write(text, output)
