"""The schema files: documented, tagged, consistent, and guarded by the compatibility gate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.model import SensitivityClass
from broker.schema.catalogue import ENVELOPE, Catalogue

CATALOGUE = Catalogue.load()
REQUIRED = {
    "PlacementNotified",
    "PlacementEnded",
    "HomeAdmissionNotified",
    "MissingProfileLodged",
    "ChildMissingReported",
    "MissingRiskGraded",
    "ChildFound",
    "ReturnInterviewCompleted",
    "CSERiskAssessed",
    "TriggerPlanIssued",
    "CAWNIssued",
    "HealthAssessmentRequested",
    "HealthRecordTransferRequested",
    "Receipt",
}

# Field names that hold personal data: names, birth dates, NHS numbers, addresses, postcodes,
# phones, descriptions of people, photos, associates, places, vehicles, free text about a person.
PERSONAL = re.compile(
    r"(^|_)(name|names|given_names|family_name|known_as|date_of_birth|dob|nhs_number|address|"
    r"postcode|phone|phones|description|clothing|photo|associates|places|place|location|"
    r"vehicles|registration|disclosures|rationale|indicators|with_whom|identity|medical_needs|"
    r"health_notes|health_concerns|circumstances|last_seen|adult_subject|details|notes|actions|"
    r"destination|records_held|prevention_interview)($|_)"
)
# Fields whose names look personal but are about organisations, never people.
NOT_PERSONAL = {
    ("DirectoryEntry", "name"),
    # A council area's official code, never a place: the header names that council anyway.
    ("ChildMissingReported", "last_seen_council"),
}


def _walk(node: Any, path: str, tagged: bool) -> Iterator[tuple[str, bool, str]]:
    """Yield (field path, covered by a sensitivity tag, leaf name) for every field, any depth."""
    if isinstance(node, list):
        for n in node:
            yield from _walk(n, path, tagged)
    elif isinstance(node, dict):
        if node.get("type") == "record":
            for f in node["fields"]:
                covered = tagged or "sensitivity" in f
                fpath = f"{path}.{f['name']}" if path else f["name"]
                yield fpath, covered, f["name"]
                yield from _walk(f["type"], fpath, covered)
        elif node.get("type") == "array":
            yield from _walk(node["items"], path + "[]", tagged)
        elif node.get("type") == "map":
            yield from _walk(node["values"], path + "{}", tagged)


def test_the_catalogue_has_every_required_message_type() -> None:
    assert set(CATALOGUE.event_types()) >= REQUIRED


def test_envelope_event_type_enum_lists_exactly_the_body_schemas() -> None:
    header = CATALOGUE.latest(ENVELOPE).raw["fields"][0]["type"]
    event_type = next(f["type"] for f in header["fields"] if f["name"] == "event_type")
    assert set(event_type["symbols"]) == set(CATALOGUE.event_types())


@pytest.mark.parametrize("name", CATALOGUE.names())
def test_every_field_and_type_is_documented(name: str) -> None:
    raw = CATALOGUE.latest(name).raw
    missing = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, list):
            for n in node:
                visit(n, path)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed") and not node.get("doc"):
                missing.append(f"type {node['name']}")
            if node.get("type") == "record":
                for f in node["fields"]:
                    if not f.get("doc"):
                        missing.append(f"{path}.{f['name']}")
                    visit(f["type"], f"{path}.{f['name']}")
            for key in ("items", "values"):
                if key in node:
                    visit(node[key], path)

    visit(raw, name)
    assert missing == []


@pytest.mark.parametrize("name", CATALOGUE.names())
def test_every_personal_data_field_is_tagged(name: str) -> None:
    raw = CATALOGUE.latest(name).raw
    untagged = [
        p
        for p, covered, leaf in _walk(raw, "", False)
        if PERSONAL.search(leaf) and not covered and (name, p) not in NOT_PERSONAL
    ]
    assert untagged == [], f"{name}: personal data without a sensitivity tag: {untagged}"


def test_the_personal_data_check_catches_an_untagged_field() -> None:
    raw = {
        "type": "record",
        "name": "Leaky",
        "fields": [
            {"name": "episode_id", "type": "string"},
            {"name": "child_address", "type": "string"},
            {
                "name": "inner",
                "type": {
                    "type": "record",
                    "name": "I",
                    "fields": [{"name": "phone", "type": "string"}],
                },
            },
        ],
    }
    flagged = [
        p for p, covered, leaf in _walk(raw, "", False) if PERSONAL.search(leaf) and not covered
    ]
    assert flagged == ["child_address", "inner.phone"]


@pytest.mark.parametrize("name", CATALOGUE.names())
def test_tags_are_valid_classes_on_top_level_fields_only(name: str) -> None:
    raw = CATALOGUE.latest(name).raw
    for f in raw["fields"]:
        if "sensitivity" in f:
            SensitivityClass(f["sensitivity"])
    nested = [p for p, _covered, _leaf in _walk(raw, "", False) if "." in p and _has_tag(raw, p)]
    assert nested == [], "sealing works per top-level field; nested tags would be ignored"


def _has_tag(raw: dict[str, Any], path: str) -> bool:
    node: Any = raw
    field: dict[str, Any] = {}
    for part in path.replace("[]", "").split("."):
        while True:  # through unions, arrays and maps, in any nesting, to the record
            if isinstance(node, list):
                node = next(n for n in node if isinstance(n, dict))
            elif isinstance(node, dict) and node.get("type") in ("array", "map"):
                node = node.get("items", node.get("values"))
            else:
                break
        field = next(f for f in node["fields"] if f["name"] == part)
        node = field["type"]
    return "sensitivity" in field


def test_infrastructure_schemas_and_receipts_carry_no_sensitive_fields() -> None:
    infrastructure = set(CATALOGUE.names()) - set(CATALOGUE.event_types())
    assert {ENVELOPE, "SealedValue", "Sealing", "DirectoryEntry"} <= infrastructure
    for name in [*infrastructure, "Receipt"]:
        assert CATALOGUE.latest(name).sensitive_fields == {}, name


def test_shared_named_types_are_identical_in_every_file() -> None:
    seen: dict[str, tuple[str, str]] = {}
    clashes = []

    def visit(node: Any, where: str) -> None:
        if isinstance(node, list):
            for n in node:
                visit(n, where)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed"):
                full = f"{node.get('namespace', '')}.{node['name']}"
                text = json.dumps(_shallow(node), sort_keys=True)
                if full in seen and seen[full][1] != text and where != seen[full][0]:
                    clashes.append(f"{full} differs between {seen[full][0]} and {where}")
                seen.setdefault(full, (where, text))
            for v in node.values():
                if isinstance(v, dict | list):
                    visit(v, where)

    for v in CATALOGUE.all_versions():
        if v.version == CATALOGUE.latest(v.name).version:
            visit(v.raw, v.name)
    assert clashes == []


def _shallow(node: Any) -> Any:
    """A named type with the named types nested in it reduced to their names."""

    def reduce(n: Any, top: bool) -> Any:
        if isinstance(n, list):
            return [reduce(x, False) for x in n]
        if isinstance(n, dict):
            if not top and n.get("type") in ("record", "enum", "fixed"):
                return f"{n.get('namespace', '')}.{n['name']}".lstrip(".")
            return {
                k: reduce(v, False) if k in ("type", "items", "values", "fields") else v
                for k, v in n.items()
            }
        return n

    return reduce(node, True)


def _cbx(*args: str, schemas: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if schemas is not None:
        env["CBX_SCHEMAS_DIR"] = str(schemas)
    return subprocess.run(
        [sys.executable, "-m", "cbx.cli", "schemas", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_schemas_check_passes_on_the_shipped_catalogue() -> None:
    result = _cbx("check", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["schemas"] == len(CATALOGUE.names())


def test_removing_a_field_without_default_fails_the_gate_naming_schema_version_field(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "CAWNIssued"
    folder.mkdir()
    v1 = CATALOGUE.latest("CAWNIssued").raw
    (folder / "v1.avsc").write_text(json.dumps(v1))
    v2 = json.loads(json.dumps(v1))
    v2["fields"] = [f for f in v2["fields"] if f["name"] != "review_date"]
    (folder / "v2.avsc").write_text(json.dumps(v2))

    result = _cbx("check", schemas=tmp_path)
    assert result.returncode == 1
    assert "CAWNIssued v2" in result.stdout
    assert "review_date" in result.stdout

    as_json = json.loads(_cbx("check", "--json", schemas=tmp_path).stdout)
    assert as_json["ok"] is False
    problem = as_json["problems"][0]
    assert (problem["schema"], problem["version"], problem["location"]) == (
        "CAWNIssued",
        2,
        "review_date",
    )


def test_adding_a_defaulted_field_passes_the_gate(tmp_path: Path) -> None:
    folder = tmp_path / "CAWNIssued"
    folder.mkdir()
    v1 = CATALOGUE.latest("CAWNIssued").raw
    (folder / "v1.avsc").write_text(json.dumps(v1))
    v2 = json.loads(json.dumps(v1))
    v2["fields"].append({"name": "court", "type": ["null", "string"], "default": None, "doc": "x"})
    (folder / "v2.avsc").write_text(json.dumps(v2))
    assert _cbx("check", schemas=tmp_path).returncode == 0


def test_changing_a_sensitivity_class_fails_the_gate(tmp_path: Path) -> None:
    folder = tmp_path / "ChildFound"
    folder.mkdir()
    v1 = CATALOGUE.latest("ChildFound").raw
    (folder / "v1.avsc").write_text(json.dumps(v1))
    v2 = json.loads(json.dumps(v1))
    for f in v2["fields"]:
        if f["name"] == "location":
            f["sensitivity"] = "CARE"
    (folder / "v2.avsc").write_text(json.dumps(v2))
    result = _cbx("check", schemas=tmp_path)
    assert result.returncode == 1
    assert "location" in result.stdout


def test_schemas_list_and_show_json() -> None:
    listed = json.loads(_cbx("list", "--json").stdout)
    by_name = {r["name"]: r for r in listed}
    assert by_name["ChildMissingReported"]["sensitive_fields"]["last_seen"] == "LOCATION"
    assert by_name["ChildMissingReported"]["fingerprint"] == (
        CATALOGUE.latest("ChildMissingReported").fingerprint.hex()
    )
    shown = json.loads(_cbx("show", "MissingRiskGraded", "--json").stdout)
    assert shown["name"] == "MissingRiskGraded"
    missing = _cbx("show", "NoSuchThing")
    assert missing.returncode != 0
    assert "NoSuchThing" in missing.stderr
