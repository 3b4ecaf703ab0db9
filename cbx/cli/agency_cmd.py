"""``cbx setup`` and ``cbx agency``: the exchange's topics, principals and ACLs (administrators)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from broker.admin import provision
from broker.errors import CbxError
from broker.kafka import principals
from broker.kafka.acls import AccessControl, grants
from cbx.cli.output import console, fail, print_json

app = typer.Typer(help="Add, remove and show agencies on the exchange (administrators).")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def setup(
    passwords_dir: Annotated[
        Path | None,
        typer.Option(
            help="A folder of <principal>.password files: the services' passwords from the "
            "deployment's secrets, instead of generated ones."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the shared topics and the router, tracker and operator principals; on an existing
    exchange, also give every agency's topics what this version adds (run it after an upgrade)."""
    from broker.kafka.cluster import resolve_settings

    async def both() -> tuple[list[provision.Provisioned], list[str]]:
        settings = resolve_settings()
        done = await provision.setup(settings, passwords_dir)
        return done, await provision.upgrade_topics(settings)

    try:
        done, grown = asyncio.run(both())
    except CbxError as exc:
        fail(str(exc))
    if json_out:
        rows = [{"principal": d.principal, "role": d.role, "acls": len(d.grants)} for d in done]
        print_json({"principals": rows, "topics_upgraded": grown})
    else:
        for d in done:
            console.print(f"{d.principal}: role {d.role}, {len(d.grants)} ACLs", highlight=False)
        for name in grown:
            console.print(f"{name}: urgent lane added", highlight=False)


@app.command()
def add(
    agency: Annotated[str, typer.Argument(help="Agency id, for example la-e10000016.")],
    password_file: Annotated[
        Path | None,
        typer.Option(help="Its password, from the deployment's secrets (else one is generated)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the agency's principal and credentials, its topics, and its ACLs."""
    from broker.kafka.cluster import resolve_settings

    try:
        password = provision.read_password(password_file) if password_file else None
        done = asyncio.run(provision.add_agency(resolve_settings(), agency, password))
    except CbxError as exc:
        fail(str(exc))
    path = principals.credentials_path(agency)
    if json_out:
        print_json(
            {
                "agency": agency,
                "principal": f"User:{agency}",
                "credentials": str(path) if path.exists() else None,
                "topics": done.topics,
                "acls": [g.as_json() for g in done.grants],
            }
        )
        return
    console.print(f"added {agency}: principal User:{agency}, topics {', '.join(done.topics)}")
    if path.exists():
        console.print(f"credentials (SCRAM-SHA-512) in {path}", highlight=False)


@app.command()
def remove(agency: Annotated[str, typer.Argument(help="Agency id.")]) -> None:
    """Revoke the agency's ACLs and credentials (refused at once) and mark it revoked."""
    from broker.kafka.cluster import resolve_settings

    try:
        asyncio.run(provision.remove_agency(resolve_settings(), agency))
    except CbxError as exc:
        fail(str(exc))
    console.print(f"removed {agency}: ACLs and credentials revoked", highlight=False)


@app.command()
def show(
    agency: Annotated[str, typer.Argument(help="Agency id, or a service principal.")],
    json_out: JsonOpt = False,
    live: Annotated[bool, typer.Option(help="Also list the ACLs the cluster holds.")] = False,
) -> None:
    """Print an agency's ACL set (schemas/policy/acls.yaml), optionally the live one too."""
    from broker.kafka.cluster import resolve_settings

    role = {p: r for p, (r, _) in provision.SERVICES.items()}.get(agency, "agency")
    try:
        admin = resolve_settings()
        policy = grants(role, admin.topic_prefix, agency)
        actual = AccessControl(admin).describe(agency) if live else None
    except CbxError as exc:
        fail(str(exc))
    if json_out:
        print_json(
            {
                "principal": f"User:{agency}",
                "role": role,
                "acls": [g.as_json() for g in policy],
                "live": [g.as_json() for g in actual] if actual is not None else None,
            }
        )
        return
    table = Table("resource", "name", "pattern", "operation")
    for g in policy:
        table.add_row(g.resource, g.name, g.pattern, g.operation)
    console.print(f"User:{agency} (role {role})")
    console.print(table)
    if actual is not None:
        missing = set(policy) - set(actual)
        console.print(f"live: {len(actual)} ACLs; missing from the cluster: {len(missing)}")
