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
def migrate(
    agencies: Annotated[
        list[str] | None, typer.Argument(help="Agency ids (or --all).", show_default=False)
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every agency with more partitions than its kind has.")
    ] = False,
    spool: Annotated[
        Path | None,
        typer.Option(help="Folder for the spool files (default: <CBX_HOME>/migrations)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only list what would move.")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Finish a move that stopped after deleting the topics, from its spool file."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Move agencies' topics to the partitions their kind has now (a children's home provisioned
    with a council's partitions gets one), keeping every record. Stop the agency's connector
    first; the router and tracker go on running (writes to the agency wait for the move)."""
    from broker.admin import migrate as moving
    from broker.kafka.cluster import resolve_settings
    from broker.paths import cbx_home

    if resume is not None and (agencies or every or dry_run):
        fail("--resume takes the spool file alone (no agencies, --all or --dry-run)")
    if resume is None and bool(agencies) == every:
        fail("name the agencies to move, or give --all (not both)")
    folder = spool or cbx_home() / "migrations"

    async def run() -> list[dict[str, object]]:
        settings = resolve_settings()
        if resume is not None:
            return [(await moving.resume(settings, resume)).as_json()]
        names = await moving.agencies_to_move(settings) if every else list(agencies or [])
        out: list[dict[str, object]] = []
        for agency in names:
            if dry_run:
                moves = await moving.plan(settings, agency)
                out.append(
                    {
                        "agency": agency,
                        "topics": [
                            {
                                "topic": m.name,
                                "partitions_before": m.now,
                                "partitions_after": m.spec.partitions,
                            }
                            for m in moves
                        ],
                    }
                )
            else:
                out.append((await moving.migrate(settings, agency, folder)).as_json())
        return out

    try:
        done = asyncio.run(run())
    except CbxError as exc:
        fail(str(exc))
    if json_out:
        print_json({"dry_run": dry_run, "agencies": done})
        return
    if not done:
        console.print("nothing to move: every agency's topics have its kind's partitions")
    for a in done:
        moved = a["topics"]
        assert isinstance(moved, list)
        if not moved:
            console.print(f"{a['agency']}: nothing to move", highlight=False)
        for t in moved:
            verb = "would move" if dry_run else "moved"
            n = "" if dry_run else f", {t['records']} records"
            console.print(
                f"{a['agency']}: {verb} {t['topic']} from {t['partitions_before']} to "
                f"{t['partitions_after']} partition(s){n}",
                highlight=False,
            )
        if a.get("spool"):
            console.print(f"{a['agency']}: every record kept in {a['spool']}", highlight=False)


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
