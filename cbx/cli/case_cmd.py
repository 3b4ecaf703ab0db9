"""``cbx case show``: a case's parties, as the registry holds them (metadata only)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.table import Table

from broker import model
from broker.errors import CbxError
from broker.kafka import clients as kafka
from broker.policy.reference import reference
from broker.policy.registry import PlacementRegistry, placement_follower
from broker.schema.catalogue import Catalogue
from cbx.cli.output import console, fail, print_json
from cbx.cli.router_cmd import service_settings

app = typer.Typer(help="Cases: who is who in each child's case (no content).")


async def _registry(settings: Any) -> PlacementRegistry:
    registry = PlacementRegistry()
    follower = placement_follower(settings, Catalogue.load(), registry)
    async with kafka.access(settings):
        await kafka.read_to_end(settings, settings.topics.placements, follower.handle)
    return registry


@app.command()
def show(
    case_ref: Annotated[
        str, typer.Argument(help="<placing authority>/<reference>, or a reference.")
    ],
    namespace: Annotated[
        str | None, typer.Option(help="Topic namespace (default: CBX_TOPIC_PREFIX, or cbx).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """The parties of a case and their roles, from the placement registry (as the operator)."""
    try:
        registry = asyncio.run(_registry(service_settings(model.OPERATOR, namespace)))
    except CbxError as exc:
        fail(str(exc))
    found = registry.get(case_ref)
    if found is None:
        matches = registry.find(case_ref)
        if matches:
            fail(
                f"{case_ref} names {len(matches)} cases: " + ", ".join(m.case_ref for m in matches)
            )
        fail(f"no case {case_ref} in the placement registry")
    view = found.view(reference().name_of)
    if json_out:
        print_json(view)
        return
    table = Table(
        "agency",
        "name",
        "role",
        "since",
        "until",
        "ended by",
        title=f"{view['case_ref']} ({view['status']})",
    )
    for p in [*view["parties"], *view["former_parties"]]:
        table.add_row(
            p["agency"],
            p["name"],
            p["role"],
            (p["since"] or "the beginning")[:19],
            (p["until"] or "")[:19],
            p.get("ended_by", ""),
        )
    console.print(table)
    episode = view["open_missing_episode"]
    if episode:
        heard = ", ".join(f"{h['agency']} ({h['role']})" for h in episode["heard"])
        console.print(f"open missing episode since {episode['since'][:19]}; heard: {heard}")
