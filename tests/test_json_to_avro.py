"""Agency JSON to Avro: correct records for good input, every bad field named, no value echoed."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import fastavro
import pytest
from avro_strategies import normalise, records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.schema import codec
from broker.schema.catalogue import ENVELOPE, Catalogue
from broker.schema.json_to_avro import JsonConversionError, JsonToAvro
from broker.schema.store import SchemaStore
from connectors.sinks import to_json

CATALOGUE = Catalogue.load()
TYPES = CATALOGUE.event_types()
SENTINEL = "Zq9SENTINEL"
LEAK_VALUES = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=4, max_size=12).map(lambda s: SENTINEL + s),
    st.integers(min_value=10**9, max_value=10**12).map(lambda i: f"{SENTINEL}{i}"),
)


def _json_value(leak: str) -> st.SearchStrategy[Any]:
    """Arbitrary JSON in which every string value carries the sentinel.

    Object keys are field names, not values: an unknown field is reported by its name, so the keys
    here are ordinary names.
    """
    leaf = st.one_of(st.just(leak), st.just(7_777_777_777), st.booleans(), st.none())
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.sampled_from(["k", "name", "x"]), inner, max_size=2),
        ),
        max_leaves=6,
    )


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_good_json_becomes_the_same_record(name: str, data: st.DataObject) -> None:
    v = CATALOGUE.latest(name)
    record = data.draw(records(v.raw))
    payload = json.loads(json.dumps(to_json(record)))
    converted = JsonToAvro(v.parsed).convert(payload)
    encoded = codec.encode(v.parsed, v.fingerprint, converted)
    decoded = codec.decode(encoded, SchemaStore(CATALOGUE).writer_for)
    assert normalise(decoded) == normalise(record)


def _wrong_value(good: Any) -> Any:
    """A value of the wrong JSON kind for a field whose good value is ``good``."""
    if isinstance(good, str):
        return [SENTINEL + "-list"]
    if isinstance(good, bool):
        return SENTINEL + "-bool"
    if isinstance(good, int | float):
        return SENTINEL + "-number"
    if isinstance(good, list):
        return SENTINEL + "-array"
    if isinstance(good, dict):
        return [SENTINEL + "-object"]
    return 12345678901234  # null allowed: a number fits no optional field here


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_bad_field_is_named_and_no_value_is_echoed(name: str, data: st.DataObject) -> None:
    v = CATALOGUE.latest(name)
    good = to_json(data.draw(records(v.raw)))
    bad = {k: _wrong_value(val) for k, val in good.items()}
    bad[SENTINEL + "_extra"] = SENTINEL + "-extra-value"
    with pytest.raises(JsonConversionError) as info:
        JsonToAvro(v.parsed).convert(bad)
    err = info.value
    named = {e.path.split(".")[0].split("[")[0] for e in err.errors}
    assert set(good) <= named, f"fields not named: {set(good) - named}"
    assert SENTINEL + "_extra" in named
    text = str(err) + json.dumps([e.as_dict() for e in err.errors])
    assert "-list" not in text
    assert "-bool" not in text
    assert "-number" not in text
    assert "-array" not in text
    assert "-object" not in text
    assert "-extra-value" not in text
    assert "12345678901234" not in text


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), leak=LEAK_VALUES)
def test_arbitrary_garbage_never_appears_in_errors(
    name: str, data: st.DataObject, leak: str
) -> None:
    v = CATALOGUE.latest(name)
    good = to_json(data.draw(records(v.raw)))
    field = data.draw(st.sampled_from(sorted(good)))
    good[field] = data.draw(_json_value(leak))
    errors = JsonToAvro(v.parsed).errors(good)
    text = json.dumps([e.as_dict() for e in errors]) + " ".join(map(str, errors))
    assert leak not in text
    assert "7777777777" not in text


def test_missing_required_fields_are_each_named() -> None:
    v = CATALOGUE.latest("MissingRiskGraded")
    with pytest.raises(JsonConversionError) as info:
        JsonToAvro(v.parsed).convert({"episode_id": "0f5c2b7a-3d8e-4a35-a8c1-6a2e51c1a001"})
    paths = {e.path for e in info.value.errors}
    assert paths == {"grade", "graded_at", "reviewing_officer_role", "rationale"}
    assert all(e.problem == "required field is missing" for e in info.value.errors)


def test_nested_paths_and_kinds() -> None:
    v = CATALOGUE.latest("TriggerPlanIssued")
    payload = {
        "plan_id": "0f5c2b7a-3d8e-4a35-a8c1-6a2e51c1a001",
        "version": 1,
        "issued_date": "2026-02-30",
        "review_date": "2026-05-01",
        "reporting": {"report_after_minutes": "sixty", "reported_by": "CARE_PROVIDER"},
        "associates": [{"name": "A", "relationship": "friend"}, {"relationship": 5}],
        "vehicles": [{"registration": "AB12CDE", "description": "blue"}],
    }
    errors = {e.path: e for e in JsonToAvro(v.parsed).errors(payload)}
    assert set(errors) == {
        "issued_date",
        "reporting.report_after_minutes",
        "associates[1].name",
        "associates[1].relationship",
    }
    assert errors["issued_date"].problem == "not a real calendar date"
    assert errors["reporting.report_after_minutes"].got == "string"
    assert errors["associates[1].relationship"].expected == "string"


def test_timestamps_need_a_zone_and_become_aware_datetimes() -> None:
    v = CATALOGUE.latest("ChildFound")
    conv = JsonToAvro(v.parsed)
    base = {"episode_id": "0f5c2b7a-3d8e-4a35-a8c1-6a2e51c1a001"}
    naive = conv.errors({**base, "found_at": "2026-03-01T10:00:00"})
    assert [e.problem for e in naive] == ["no time zone"]
    rec = conv.convert({**base, "found_at": "2026-03-01T10:00:00+01:00"})
    assert rec["found_at"] == dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)


def test_envelope_header_converts_too() -> None:
    v = CATALOGUE.latest(ENVELOPE)
    errors = JsonToAvro(v.parsed).errors({"header": {}, "body": "not base64!"})
    paths = {e.path for e in errors}
    assert "header.message_id" in paths
    assert "body" in paths


def test_faster_path_agrees_with_fastavro_validation() -> None:
    # Whatever our converter accepts, fastavro's validator accepts too.
    v = CATALOGUE.latest("PlacementNotified")
    sample = {
        "placement_id": "0f5c2b7a-3d8e-4a35-a8c1-6a2e51c1a001",
        "legal_status": "C2",
        "placement_type": "CHILDRENS_HOME",
        "start_date": "2026-01-05",
        "host_authority": "la-e10000016",
        "approved_by_role": "Nominated officer",
        "identity": {"given_names": "A", "family_name": "B", "date_of_birth": "2012-04-01"},
        "address": {"lines": ["1 Road"], "town": "Town", "postcode": "AB1 2CD"},
    }
    record = JsonToAvro(v.parsed).convert(sample)
    assert fastavro.validation.validate(record, v.parsed, raise_errors=True)
