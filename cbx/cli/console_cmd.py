"""``cbx console``: the operators' web console, and its accounts."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from broker import model
from broker.console.auth import Accounts, Role
from broker.errors import CbxError
from cbx.cli.output import console, fail, print_json

app = typer.Typer(
    help="The operators' web console: board, escalations, search, cases, dead letters.",
    invoke_without_command=True,
)
user_app = typer.Typer(help="Console accounts (local, argon2-hashed passwords).")
app.add_typer(user_app, name="user")


@app.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8490,
    namespace: Annotated[
        str | None,
        typer.Option(help="Topic namespace to show (default: CBX_TOPIC_PREFIX, or cbx)."),
    ] = None,
    idle_minutes: Annotated[
        float, typer.Option(help="Sign operators out after this long without a request.")
    ] = 30,
    secure_cookies: Annotated[
        bool,
        typer.Option(help="Mark cookies Secure (set when a TLS proxy is in front)."),
    ] = False,
    oidc_issuer: Annotated[
        str | None,
        typer.Option(help="Also sign in through this OpenID Connect provider (issuer URL)."),
    ] = None,
    oidc_client_id: Annotated[str | None, typer.Option(help="The console's client id there.")] = (
        None
    ),
    oidc_client_secret_file: Annotated[
        Path | None, typer.Option(help="A file holding the client secret.")
    ] = None,
    oidc_roles: Annotated[
        str | None,
        typer.Option(
            help="CLAIM:VALUE=ROLE,... (default roles:cbx.operator=operator,cbx.viewer=viewer)."
        ),
    ] = None,
    oidc_label: Annotated[
        str | None, typer.Option(help='The sign-in button says "Sign in with LABEL".')
    ] = None,
) -> None:
    """Serve the console (as the operator principal, holding no agency key)."""
    if ctx.invoked_subcommand is not None:
        return
    from broker.console.service import serve as run
    from cbx.cli.router_cmd import service_settings

    try:
        oidc = None
        if oidc_issuer:
            if not oidc_client_id or not oidc_client_secret_file:
                fail("--oidc-issuer needs --oidc-client-id and --oidc-client-secret-file")
            from broker.console.oidc import OidcSettings

            oidc = OidcSettings.parse(
                oidc_issuer, oidc_client_id, oidc_client_secret_file, oidc_roles, oidc_label
            )
        settings = service_settings(model.OPERATOR, namespace)
        console.print(f"cbx console on http://{host}:{port}/ (Ctrl-C stops it)", highlight=False)
        asyncio.run(run(settings, host, port, idle_minutes, secure_cookies, oidc))
    except CbxError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


def _accounts() -> Accounts:
    from broker.console.service import accounts_file

    return Accounts(accounts_file())


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="Account name (lower case).")],
    role: Annotated[Role, typer.Option(help="viewer sees; operator also notes and replays.")] = (
        Role.VIEWER
    ),
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Add an account, or set its password and role again."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        _accounts().add(name, password, role)
    except CbxError as exc:
        fail(str(exc))
    console.print(f"console account {name} ({role}) saved", highlight=False)


@user_app.command("remove")
def user_remove(name: Annotated[str, typer.Argument(help="Account name.")]) -> None:
    """Remove an account (its open sessions end at their next request)."""
    try:
        _accounts().remove(name)
    except CbxError as exc:
        fail(str(exc))
    console.print(f"console account {name} removed", highlight=False)


@user_app.command("list")
def user_list(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every account: name, role, created."""
    rows = _accounts().list()
    if json_out:
        print_json(rows)
        return
    table = Table("name", "role", "created")
    for r in rows:
        table.add_row(r["name"], r["role"], r["created"])
    console.print(table)
