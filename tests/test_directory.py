"""Keys and the directory through the command line and a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from agencies import CATALOGUE, FORMS, MISSING_RECIPIENTS, POLICY, body_of, header
from cli import cbx

from broker import directory
from broker.crypto import keys as keystore
from broker.crypto.sealing import Sealer
from broker.crypto.signing import Verifier
from broker.envelope import Protector
from broker.kafka.settings import KafkaSettings
from broker.model import Role

pytestmark = pytest.mark.kafka
SECRET = "a passphrase from the agency's secret store"


def _cbx(home: Path, settings: KafkaSettings, *args: str, **env: str) -> Any:
    return cbx(settings, home, *args, **env)


async def test_keys_new_publish_and_messages_between_agencies(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    agencies = ["la-e10000016", "la-e10000017", "pf-e23000032", "pf-e23000003"]
    # Against a named cluster a keystore is never written in clear.
    plain = _cbx(
        tmp_path, kafka_settings, "keys", "new", "--agency", agencies[0], CBX_KEYSTORE_PASSPHRASE=""
    )
    assert plain.returncode != 0
    assert "CBX_KEYSTORE_PASSPHRASE is not set" in plain.stderr
    # Nothing was written: the first `keys new` below for the same agency would say "exists".
    assert "keystore" not in plain.stdout
    for agency in agencies:
        made = _cbx(
            tmp_path,
            kafka_settings,
            "keys",
            "new",
            "--agency",
            agency,
            "--json",
            CBX_KEYSTORE_PASSPHRASE=SECRET,
        )
        assert made.returncode == 0, made.stderr
        info = json.loads(made.stdout)
        stored = await asyncio.to_thread(Path(info["keystore"]).read_text)
        assert "ENCRYPTED PRIVATE KEY" in stored
        assert {k["kind"] for k in info["keys"]} == {"enc", "sig"}
        assert stat.S_IMODE(os.stat(info["keystore"]).st_mode) == 0o600
        assert "PRIVATE" not in made.stdout
        published = _cbx(
            tmp_path,
            kafka_settings,
            "directory",
            "publish",
            "--agency",
            agency,
            CBX_KEYSTORE_PASSPHRASE=SECRET,
        )
        assert published.returncode == 0, published.stderr

    again = _cbx(
        tmp_path,
        kafka_settings,
        "keys",
        "new",
        "--agency",
        agencies[0],
        CBX_KEYSTORE_PASSPHRASE=SECRET,
    )
    assert again.returncode != 0
    assert "exists" in again.stderr

    listed = json.loads(_cbx(tmp_path, kafka_settings, "directory", "list", "--json").stdout)
    by_id = {r["agency"]: r for r in listed}
    assert set(agencies) <= set(by_id)
    assert by_id["pf-e23000032"]["name"] == "Kent"
    assert by_id["pf-e23000032"]["kind"] == "POLICE"

    # Every service reads the directory from the topic: seal and open with what it says.
    found = await directory.load(kafka_settings)
    os.environ["CBX_HOME"], saved = str(tmp_path), os.environ.get("CBX_HOME")
    try:
        sender_keys = keystore.load(keystore.keystore_path("pf-e23000003"), SECRET.encode())
        reader_keys = keystore.load(keystore.keystore_path("la-e10000016"), SECRET.encode())
    finally:
        if saved is None:
            del os.environ["CBX_HOME"]
        else:
            os.environ["CBX_HOME"] = saved
    sender = Protector(CATALOGUE, FORMS, Sealer(sender_keys, found, POLICY, FORMS), Verifier(found))
    reader = Protector(CATALOGUE, FORMS, Sealer(reader_keys, found, POLICY, FORMS), Verifier(found))
    out = sender.sign(
        [
            sender.seal(
                header("ChildMissingReported", "pf-e23000003", Role.HOST_FORCE, MISSING_RECIPIENTS),
                body_of("ChildMissingReported"),
            )
        ]
    )[0]
    _, opened = reader.open(out.value, out.headers)
    assert opened["clothing"] == "grey hoodie, black joggers, white trainers"


def test_rotate_keeps_old_keys_and_passphrase_is_enforced(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    secret = tmp_path / "pass"
    secret.write_text("s3cret words\n")
    agency = "icb-e54000048"
    made = _cbx(
        tmp_path,
        kafka_settings,
        "keys",
        "new",
        "--agency",
        agency,
        "--passphrase-file",
        str(secret),
        "--json",
    )
    assert made.returncode == 0, made.stderr
    first = {k["key_id"] for k in json.loads(made.stdout)["keys"]}
    rotated = _cbx(
        tmp_path,
        kafka_settings,
        "keys",
        "rotate",
        "--agency",
        agency,
        "--passphrase-file",
        str(secret),
        "--json",
    )
    assert rotated.returncode == 0, rotated.stderr
    after = {k["key_id"] for k in json.loads(rotated.stdout)["keys"]}
    assert first < after
    assert len(after) == 4

    wrong = _cbx(
        tmp_path,
        kafka_settings,
        "keys",
        "show",
        "--agency",
        agency,
        CBX_KEYSTORE_PASSPHRASE="not it",
    )
    assert wrong.returncode != 0
    assert "wrong passphrase" in wrong.stderr
    none = _cbx(
        tmp_path, kafka_settings, "keys", "show", "--agency", agency, CBX_KEYSTORE_PASSPHRASE=""
    )
    assert none.returncode != 0
    assert "passphrase-protected" in none.stderr
