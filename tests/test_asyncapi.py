"""The AsyncAPI 3.0 document of the Kafka side, validated with the AsyncAPI project's own JSON
Schema (the `@asyncapi/specs` package, fetched from the npm registry once and cached)."""

from __future__ import annotations

import copy
import io
import json
import tarfile
import urllib.request
from typing import Any

import pytest
from cli import cbx
from jsonschema import Draft7Validator

from broker.kafka.topics import Topics
from broker.paths import cbx_cache
from broker.schema.catalogue import Catalogue
from cbx.asyncapi import document

SPECS = "6.11.1"
URL = f"https://registry.npmjs.org/@asyncapi/specs/-/specs-{SPECS}.tgz"
CATALOGUE = Catalogue.load()


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    cached = cbx_cache() / "asyncapi-specs" / SPECS / "3.0.0-without-$id.json"
    if not cached.exists():
        with urllib.request.urlopen(URL, timeout=60) as r:
            data = r.read()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            member = tar.extractfile("package/schemas/3.0.0-without-$id.json")
            assert member is not None
            schema = member.read()
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(schema)
    return Draft7Validator(json.loads(cached.read_text()))


def test_the_document_is_valid_asyncapi_3(validator: Draft7Validator) -> None:
    doc = document(CATALOGUE)
    assert [e.message for e in validator.iter_errors(doc)] == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d.pop("info"),
        lambda d: d["operations"]["sendOutbound"].update(action="publish"),
        lambda d: d["servers"]["exchange"].pop("host"),
    ],
)
def test_the_validator_refuses_a_broken_document(validator: Draft7Validator, breakage: Any) -> None:
    doc = copy.deepcopy(document(CATALOGUE))
    breakage(doc)
    assert list(validator.iter_errors(doc))


def test_every_topic_kind_is_a_channel_with_its_schema() -> None:
    t = Topics()
    doc = document(CATALOGUE, t)
    addresses = {c["address"].replace("{agency}", "la-e10000016") for c in doc["channels"].values()}
    expected = {s.name for s in [*t.core(), *t.agency("la-e10000016")]}
    assert expected == addresses
    messages = doc["components"]["messages"]
    for name in ("DeliveryLogEntry", "PlacementRecord", "DirectoryEntry"):
        assert messages[name]["payload"]["schema"] == CATALOGUE.latest(name).raw
        assert messages[name]["x-cbx-fingerprint"] == CATALOGUE.latest(name).fingerprint.hex()
    assert messages["Envelope"]["payload"]["schema"] == CATALOGUE.latest("Envelope").raw
    assert set(messages["Envelope"]["headers"]["required"]) == {
        "cbx-signer",
        "cbx-kid",
        "cbx-sig",
        "cbx-proof",
    }
    assert doc["components"]["securitySchemes"]["scram"]["type"] == "scramSha512"
    for name, op in doc["operations"].items():
        assert op["channel"]["$ref"].removeprefix("#/channels/") in doc["channels"], name


def test_the_command_writes_the_same_document(tmp_path: Any) -> None:
    out = tmp_path / "asyncapi.json"
    done = cbx(None, tmp_path, "schemas", "asyncapi", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == json.loads(json.dumps(document(CATALOGUE)))
