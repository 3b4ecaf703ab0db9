"""CSV column mappings: the shipped ones load, an agency's own come first, bad ones say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import ConfigurationError
from broker.schema.catalogue import Catalogue
from broker.schema.json_to_avro import JsonToAvro
from connectors.filedrop.mappings import load_mappings, row_request
from connectors.ingest.request import RequestReader

CATALOGUE = Catalogue.load()
READER = RequestReader(
    CATALOGUE, {n: JsonToAvro(CATALOGUE.latest(n).parsed) for n in CATALOGUE.event_types()}
)
OWN = """
name: kent-carefirst-placements
match: "placements*.csv"
event_type: PlacementNotified
sharing: {purpose: p, lawful_basis: [UK_GDPR_6_1_E_PUBLIC_TASK], consent: NOT_SOUGHT,
          consent_not_sought_reason: r, decision_maker_role: d}
columns:
  CaseRef: case_ref
  Surname: event.identity.family_name
  Emergency: event.emergency
  Lines: {path: event.address.lines, split: "|"}
"""


def test_an_agencys_own_mapping_is_tried_before_the_shipped_ones(tmp_path: Path) -> None:
    (tmp_path / "own.yaml").write_text(OWN)
    mappings = load_mappings(READER, [tmp_path])
    first = next(m for m in mappings if m.matches("placements-2026-05.csv"))
    assert first.name == "kent-carefirst-placements"
    assert {m.name for m in mappings} >= {"placement-register", "missing-episodes"}
    request = row_request(
        first, {"CaseRef": "KCC-9", "Surname": "Ashdown", "Emergency": "Y", "Lines": "1 A|B"}
    )
    assert request["case_ref"] == "KCC-9"
    assert request["event"] == {
        "identity": {"family_name": "Ashdown"},
        "emergency": True,
        "address": {"lines": ["1 A", "B"]},
    }
    assert first.column_for("event.address.lines[1]") == "Lines"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("event.identity.family_name", "event.identity.surname"), "has no field 'surname'"),
        (("event_type: PlacementNotified", "event_type: Placed"), "unknown message type Placed"),
        (("CaseRef: case_ref", "CaseRef: ref"), "path must start with event."),
    ],
)
def test_a_bad_mapping_names_the_file_and_the_problem(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    (tmp_path / "own.yaml").write_text(OWN.replace(*change))
    with pytest.raises(ConfigurationError) as err:
        load_mappings(READER, [tmp_path])
    assert str(err.value).startswith("own.yaml: ")
    assert message in str(err.value)
