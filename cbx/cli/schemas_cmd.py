"""``cbx schemas``: the message catalogue, its compatibility gate, and publication to Kafka."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.errors import CbxError, SchemaError
from broker.schema.catalogue import Catalogue
from broker.schema.compat import check_catalogue
from cbx.cli.output import console, fail, print_json

app = typer.Typer(help="List, show, check and publish the Avro schemas.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _load() -> Catalogue:
    try:
        return Catalogue.load()
    except SchemaError as exc:
        fail(str(exc))


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """Every schema with its current version, fingerprint and sensitive fields."""
    cat = _load()
    rows: list[dict[str, Any]] = []
    for name in cat.names():
        v = cat.latest(name)
        rows.append(
            {
                "name": name,
                "full_name": v.full_name,
                "version": v.version,
                "versions": [x.version for x in cat.versions[name]],
                "fingerprint": v.fingerprint.hex(),
                "fields": len(v.raw.get("fields", [])),
                "sensitive_fields": {k: str(c) for k, c in v.sensitive_fields.items()},
            }
        )
    if json_out:
        print_json(rows)
        return
    table = Table("schema", "version", "fingerprint", "fields", "sensitive fields (class)")
    for r in rows:
        table.add_row(
            r["name"],
            str(r["version"]),
            r["fingerprint"],
            str(r["fields"]),
            ", ".join(f"{k} ({c})" for k, c in r["sensitive_fields"].items()) or "-",
        )
    console.print(table)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Schema name, for example ChildMissingReported.")],
    version: Annotated[int | None, typer.Option(help="Version (default: current).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print one schema: its fields with types, docs and sensitivity classes (or the raw JSON)."""
    cat = _load()
    try:
        v = cat.get(name, version) if version is not None else cat.latest(name)
    except SchemaError as exc:
        fail(str(exc))
    if json_out:
        print_json(v.raw)
        return
    console.print(f"[bold]{v.full_name}[/] v{v.version}  fingerprint {v.fingerprint.hex()}")
    console.print(v.raw.get("doc", ""))
    table = Table("field", "type", "sensitivity", "doc")
    for f in v.raw.get("fields", []):
        table.add_row(f["name"], _type_label(f["type"]), f.get("sensitivity", ""), f.get("doc", ""))
    console.print(table)


def _type_label(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        return " | ".join(_type_label(x) for x in t)
    if "logicalType" in t:
        return str(t["logicalType"])
    if t.get("type") == "array":
        return f"array<{_type_label(t['items'])}>"
    return str(t.get("name", t.get("type")))


@app.command()
def check(json_out: JsonOpt = False) -> None:
    """Parse every schema file and check FULL_TRANSITIVE compatibility of every version."""
    try:
        report = check_catalogue(_load())
    except SchemaError as exc:
        fail(str(exc))
    if json_out:
        print_json(
            {
                "ok": report.ok,
                "schemas": report.schemas,
                "versions": report.versions,
                "problems": [p.as_dict() for p in report.problems],
                "accepted_exceptions": [
                    {**p.as_dict(), "reason": why} for p, why in report.accepted
                ],
            }
        )
    elif report.ok:
        for p, why in report.accepted:
            console.print(f"[yellow]accepted exception:[/] {p}\n  reason: {why}", highlight=False)
        console.print(
            f"{report.schemas} schemas, {report.versions} versions: FULL_TRANSITIVE compatible"
            + (f" but for {len(report.accepted)} reviewed exception(s)" if report.accepted else "")
        )
    else:
        for p in report.problems:
            console.print(f"[red]incompatible:[/] {p}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def readers(
    write: Annotated[
        bool, typer.Option("--write", help="Replace the table in docs/architecture.md.")
    ] = False,
) -> None:
    """Which roles can read each sealed field of each message type (from the sharing policy)."""
    from broker.paths import project_root
    from broker.policy.sharing import readers_markdown, sharing_policy

    table = readers_markdown(_load(), sharing_policy())
    if not write:
        print(table, end="")
        return
    doc = project_root() / "docs" / "architecture.md"
    text = doc.read_text()
    start, end = "<!-- readers:start -->\n", "<!-- readers:end -->"
    if start not in text or end not in text:
        fail(f"{doc} has no {start.strip()} ... {end} markers")
    head, rest = text.split(start, 1)
    doc.write_text(head + start + table + end + rest.split(end, 1)[1])
    console.print(f"wrote the readers table to {doc}")


@app.command()
def asyncapi(
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """The AsyncAPI 3.0 document of the Kafka topics: channels, records, keys, headers, security."""
    import json
    from pathlib import Path

    from cbx.asyncapi import document

    text = json.dumps(document(_load()), indent=2) + "\n"
    if output is None:
        print(text, end="")
        return
    Path(output).write_text(text)
    console.print(f"wrote {output}")


@app.command()
def publish(json_out: JsonOpt = False) -> None:
    """Publish every schema version, and the wire form of every body version, to cbx.schemas
    (keyed by the hex of each schema's CRC-64-AVRO fingerprint)."""
    from broker.crypto.sealing import BodyForms
    from broker.kafka.cluster import resolve_settings
    from broker.schema.store import SchemaStore

    cat = _load()
    wire = [(f.wire_fingerprint, f.wire_raw) for f in BodyForms(cat).by_wire.values()]
    try:
        settings = resolve_settings()
        count = asyncio.run(SchemaStore(cat).publish(settings, cat.all_versions(), wire))
    except CbxError as exc:
        fail(str(exc))
    if json_out:
        print_json({"published": count, "wire_forms": len(wire)})
    else:
        console.print(
            f"published {count} schemas to cbx.schemas ({len(wire)} of them wire forms of bodies)"
        )
