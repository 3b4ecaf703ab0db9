"""``cbx connector token add|list|revoke``: the API tokens of an agency's connector."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from broker.errors import CbxError
from broker.kafka import topics
from cbx.cli.output import console, fail, print_json
from connectors.ingest.auth import Scope, TokenStore, parse_duration, tokens_path

app = typer.Typer(help="API tokens of an agency's connector (shown once, stored hashed).")
AgencyOpt = Annotated[str, typer.Option("--agency", help="Agency id, for example la-e10000016.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _store(agency: str) -> TokenStore:
    topics.check_agency_id(agency)
    return TokenStore(tokens_path(agency))


@app.command()
def add(
    agency: AgencyOpt,
    scope: Annotated[
        list[Scope] | None,
        typer.Option(help="submit, read, acknowledge (repeatable; default all three)."),
    ] = None,
    label: Annotated[str, typer.Option(help="Which system holds it.")] = "",
    expires: Annotated[str, typer.Option(help="Lifetime: 90d, 12h, 30m.")] = "365d",
    json_out: JsonOpt = False,
) -> None:
    """Make a token; it is printed once and only its digest is kept."""
    try:
        token, record = _store(agency).add(
            scope or list(Scope), label=label, expires_in=parse_duration(expires)
        )
    except CbxError as exc:
        fail(str(exc))
    if json_out:
        print_json({"token": token, **record.public(dt.datetime.now(dt.UTC))})
        return
    console.print(
        f"token {record.token_id} for {agency} ({', '.join(record.scopes)}), "
        f"expires {record.expires_at}:",
        highlight=False,
    )
    console.print(token, highlight=False, soft_wrap=True)
    console.print("It is shown once: store it in the agency system's secret store now.")


@app.command("list")
def list_(agency: AgencyOpt, json_out: JsonOpt = False) -> None:
    """Every token of the connector (never the secret): scopes, expiry, state."""
    try:
        records = _store(agency).list()
    except CbxError as exc:
        fail(str(exc))
    now = dt.datetime.now(dt.UTC)
    rows = [r.public(now) for r in records]
    if json_out:
        print_json(rows)
        return
    table = Table("id", "label", "scopes", "created", "expires", "state")
    for r in rows:
        table.add_row(
            r["token_id"],
            r["label"],
            ", ".join(r["scopes"]),
            r["created_at"][:19],
            (r["expires_at"] or "never")[:19],
            r["state"],
        )
    console.print(table)


@app.command()
def revoke(
    agency: AgencyOpt,
    token_id: Annotated[str, typer.Argument(help="The id shown by cbx connector token list.")],
) -> None:
    """Revoke a token: a running connector refuses it from its next request."""
    try:
        _store(agency).revoke(token_id)
    except CbxError as exc:
        fail(str(exc))
    console.print(f"revoked {token_id}", highlight=False)
