"""``cbx keys`` and ``cbx directory``: agency key pairs and their public record on the exchange."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from broker import directory as directory_mod
from broker.admin.identity import passphrase_for_new_keystore, passphrase_from_env
from broker.crypto import keys as keystore
from broker.errors import CbxError, KeystoreError
from broker.kafka import topics
from broker.policy.profiles import directory_kind
from broker.policy.reference import reference
from cbx.cli.output import console, fail, print_json

keys_app = typer.Typer(help="Create, rotate and show an agency's keys (kept in its keystore).")
directory_app = typer.Typer(help="Publish and list agency records in cbx.directory.")

AgencyOpt = Annotated[str, typer.Option("--agency", help="Agency id, for example la-e10000016.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
PassFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="File holding the keystore passphrase (else CBX_KEYSTORE_PASSPHRASE, else none).",
    ),
]


def passphrase(path: Path | None) -> bytes | None:
    if path is not None:
        return path.read_bytes().strip() or None
    return passphrase_from_env()


def _public(keys: keystore.AgencyKeys) -> list[dict[str, Any]]:
    return [
        {
            "key_id": p.key_id,
            "kind": p.kind,
            "public_key": p.public_bytes.hex(),
            "not_before": p.not_before.isoformat(),
            "not_after": p.not_after.isoformat(),
        }
        for p in keys.pairs
    ]


def _print_public(keys: keystore.AgencyKeys, path: Path, json_out: bool) -> None:
    if json_out:
        print_json({"agency": keys.agency, "keystore": str(path), "keys": _public(keys)})
        return
    table = Table("key id", "kind", "public key", "valid until")
    for k in _public(keys):
        table.add_row(k["key_id"], k["kind"], k["public_key"], k["not_after"])
    console.print(f"keystore {path}")
    console.print(table)


@keys_app.command("new")
def new(
    agency: AgencyOpt,
    passphrase_file: PassFileOpt = None,
    json_out: JsonOpt = False,
    force: Annotated[bool, typer.Option(help="Replace an existing keystore.")] = False,
) -> None:
    """Create the agency's keystore (mode 0600) and print the public keys."""
    try:
        topics.check_agency_id(agency)
        path = keystore.keystore_path(agency)
        if path.exists() and not force:
            fail(f"{path} exists: use cbx keys rotate, or --force to replace it")
        keys = keystore.AgencyKeys.new(agency)
        secret = passphrase(passphrase_file) if passphrase_file else passphrase_for_new_keystore()
        keystore.save(keys, path, secret)
    except CbxError as exc:
        fail(str(exc))
    _print_public(keys, path, json_out)


@keys_app.command()
def rotate(
    agency: AgencyOpt,
    passphrase_file: PassFileOpt = None,
    json_out: JsonOpt = False,
    overlap_days: Annotated[int, typer.Option(help="Days the old keys stay valid.")] = 30,
) -> None:
    """Add new key pairs; the old ones still decrypt and verify until the overlap ends."""
    import datetime as dt

    path = keystore.keystore_path(agency)
    secret = passphrase(passphrase_file)
    try:
        keys = keystore.load(path, secret)
        keys.rotate(overlap=dt.timedelta(days=overlap_days))
        keystore.save(keys, path, secret)
    except KeystoreError as exc:
        fail(str(exc))
    _print_public(keys, path, json_out)


@keys_app.command()
def show(agency: AgencyOpt, passphrase_file: PassFileOpt = None, json_out: JsonOpt = False) -> None:
    """Print the public part of the agency's keys."""
    path = keystore.keystore_path(agency)
    try:
        keys = keystore.load(path, passphrase(passphrase_file))
    except KeystoreError as exc:
        fail(str(exc))
    _print_public(keys, path, json_out)


def _default_name_kind(agency: str) -> tuple[str, str]:
    return reference().name_of(agency), directory_kind(agency)


@directory_app.command()
def publish(
    agency: AgencyOpt,
    name: Annotated[
        str | None, typer.Option(help="Organisation name (default: reference data).")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            help="COUNCIL, POLICE, HEALTH, CARE_PROVIDER, SCHOOL, SUPPORT_SERVICE or SERVICE."
        ),
    ] = None,
    passphrase_file: PassFileOpt = None,
) -> None:
    """Publish the agency's record (name, kind, public keys) to cbx.directory."""
    from broker.kafka.cluster import resolve_settings

    try:
        keys = keystore.load(keystore.keystore_path(agency), passphrase(passphrase_file))
        default_name, default_kind = _default_name_kind(agency)
        entry = directory_mod.AgencyEntry.from_keys(
            keys, name or default_name, kind or default_kind
        )
        asyncio.run(directory_mod.publish(resolve_settings(), entry))
    except CbxError as exc:
        fail(str(exc))
    console.print(f"published {agency} ({entry.name}) to the directory", highlight=False)


@directory_app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """Every agency in cbx.directory with its current key ids."""
    from broker.kafka.cluster import resolve_settings

    try:
        found = asyncio.run(directory_mod.load(resolve_settings()))
    except CbxError as exc:
        fail(str(exc))
    rows: list[dict[str, Any]] = [
        {
            "agency": e.agency,
            "name": e.name,
            "kind": e.kind,
            "revoked": e.revoked,
            "encryption_keys": [k.key_id for k in e.encryption_keys],
            "signing_keys": [k.key_id for k in e.signing_keys],
        }
        for e in found.agencies()
    ]
    if json_out:
        print_json(rows)
        return
    table = Table("agency", "name", "kind", "keys")
    for r in rows:
        table.add_row(
            r["agency"],
            r["name"],
            r["kind"],
            str(len(r["encryption_keys"]) + len(r["signing_keys"])),
        )
    console.print(table)
