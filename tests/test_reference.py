"""Reference data: forces, councils, ICBs, and the lookups routing depends on."""

from __future__ import annotations

import re

import pytest

from broker.errors import ConfigurationError
from broker.policy.reference import Reference

REF = Reference.load()


def test_43_territorial_police_forces() -> None:
    assert len(REF.forces) == 43
    assert sum(f.country == "England" for f in REF.forces.values()) == 39
    assert sum(f.country == "Wales" for f in REF.forces.values()) == 4


def test_153_councils_with_childrens_services() -> None:
    assert len(REF.councils) == 153
    kinds = {
        k: sum(c.kind == k for c in REF.councils.values())
        for k in ("county", "metropolitan_district", "london_borough", "unitary")
    }
    assert kinds == {"county": 21, "metropolitan_district": 36, "london_borough": 33, "unitary": 63}


def test_every_council_maps_to_exactly_one_force_and_one_icb() -> None:
    for council in REF.councils.values():
        force = REF.force_for_council(council.agency_id)
        icb = REF.icb_for_council(council.agency_id)
        assert force.country == "England", council.name
        assert icb.agency_id in REF.icbs
        for other in council.other_icb_codes:
            assert f"icb-{other.lower()}" in REF.icbs, council.name
            assert other != council.icb_code


def test_every_english_force_and_every_icb_covers_a_council() -> None:
    forces = {REF.force_for_council(c).agency_id for c in REF.councils}
    english = {f.agency_id for f in REF.forces.values() if f.country == "England"}
    assert forces == english
    icbs = {REF.icb_for_council(c).agency_id for c in REF.councils}
    assert len(REF.icbs) == 42
    assert icbs == set(REF.icbs)


def test_agency_ids_follow_the_convention() -> None:
    pattern = {"la": r"e(06|08|09|10)\d{6}", "pf": r"(e23|w15)\d{6}", "icb": r"e54\d{6}"}
    for table, prefix in ((REF.councils, "la"), (REF.forces, "pf"), (REF.icbs, "icb")):
        for agency_id, item in table.items():
            assert agency_id == f"{prefix}-{item.code.lower()}"
            assert re.fullmatch(f"{prefix}-{pattern[prefix]}", agency_id)


@pytest.mark.parametrize(
    ("council", "force", "icb"),
    [
        ("la-e10000016", "Kent", "NHS Kent and Medway Integrated Care Board"),
        ("la-e08000025", "West Midlands", "NHS Birmingham and Solihull Integrated Care Board"),
        ("la-e09000001", "City of London", "NHS North East London Integrated Care Board"),
        ("la-e06000065", "North Yorkshire", "NHS Humber and North Yorkshire Integrated Care Board"),
    ],
)
def test_known_lookups(council: str, force: str, icb: str) -> None:
    assert REF.force_for_council(council).name == force
    assert REF.icb_for_council(council).name == icb


def test_unknown_council_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="la-e99999999"):
        REF.force_for_council("la-e99999999")
