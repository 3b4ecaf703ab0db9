"""The connector's OpenAPI document, checked with tools made for the job, not by cbx's own code.

`openapi-spec-validator` validates the served document (OpenAPI 3.1); `jsonschema` (Draft 2020-12,
the dialect of OpenAPI 3.1) validates requests against the document's own request schemas. What the
document accepts, cbx accepts, and the invalid values cbx refuses the document refuses too. No
broker: the document and the request reader need none.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from broker.crypto.keys import AgencyKeys
from broker.kafka.settings import KafkaSettings
from broker.model import SYSTEM_TYPES
from cbx.scenarios import spec
from connectors.gateway.connector import Connector
from connectors.ingest.auth import TokenStore
from connectors.ingest.http import create_app
from connectors.ingest.idempotency import IdempotencyStore
from connectors.ingest.request import Request, RequestReader

DOC_URI = "urn:cbx:openapi"


@pytest.fixture(scope="module")
def connector(tmp_path_factory: pytest.TempPathFactory) -> Connector:
    tmp = tmp_path_factory.mktemp("openapi")
    return Connector(
        KafkaSettings("127.0.0.1:1"), AgencyKeys.new("pf-e23000003"), state_dir=tmp / "state"
    )


@pytest.fixture(scope="module")
def doc(connector: Connector, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("edge")
    app = create_app(
        connector, IdempotencyStore(tmp / "keys.jsonl"), tokens=TokenStore(tmp / "tokens.json")
    )
    return copy.deepcopy(app.openapi())


@pytest.fixture(scope="module")
def reader(connector: Connector) -> RequestReader:
    return RequestReader(connector.catalogue, connector.converters)


def validator(doc: dict[str, Any], event_type: str) -> Draft202012Validator:
    registry: Registry = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(doc))
    schema = {"$ref": f"{DOC_URI}#/components/schemas/{event_type}Request"}
    return Draft202012Validator(schema, registry=registry, format_checker=FormatChecker())


def event_types(connector: Connector) -> list[str]:
    return [t for t in connector.catalogue.event_types() if t not in SYSTEM_TYPES]


def test_the_served_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any error, dangling references included


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    names = set(doc["components"]["schemas"])
    assert refs
    assert [r for r in refs if r.removeprefix("#/components/schemas/") not in names] == []
    assert "nullable" not in str(doc)  # 3.0's form; 3.1 says {"type": "null"}


def test_every_message_type_has_its_route_request_schema_and_error_answers(
    doc: dict[str, Any], connector: Connector
) -> None:
    for t in event_types(connector):
        post = doc["paths"][f"/v1/events/{t}"]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{t}Request"}
        request = doc["components"]["schemas"][f"{t}Request"]
        assert request["additionalProperties"] is False
        assert {"case_ref", "sharing", "event"} <= set(request["required"])
        for code in ("401", "403", "409", "413", "415", "422", "503"):
            answer = post["responses"][code]["content"]["application/json"]["schema"]
            assert answer == {"$ref": "#/components/schemas/Error"}
    assert doc["components"]["securitySchemes"]["apiToken"]["scheme"] == "bearer"


def _played(path: Path) -> list[tuple[spec.StepSpec, dict[str, Any]]]:
    """Each step of a scenario with its request, references resolved as the runner does."""
    case = spec.load(path)
    context = spec.Context(case)
    out = []
    for step in case.steps:
        if step.event_type is None:
            continue
        request = context.resolve(step.request, step.id)
        context.values["steps"][step.id] = {"request": request, "case_ref": request["case_ref"]}
        out.append((step, request))
    return out


def _scenario_requests() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (f"{path.stem}:{step.id}", step.event_type or "", request)
        for path in spec.shipped()
        for step, request in _played(path)
        if step.outcome == "accepted"
    ]


SCENARIO_REQUESTS = _scenario_requests()


@pytest.mark.parametrize(
    ("where", "event_type", "request_json"),
    SCENARIO_REQUESTS,
    ids=[w for w, _, _ in SCENARIO_REQUESTS],
)
def test_the_shipped_scenarios_requests_fit_the_document_and_cbx(
    doc: dict[str, Any],
    reader: RequestReader,
    where: str,
    event_type: str,
    request_json: dict[str, Any],
) -> None:
    errors = [e.message for e in validator(doc, event_type).iter_errors(request_json)]
    assert errors == [], where
    assert isinstance(reader.read(event_type, request_json), Request), where


def _example(schema: dict[str, Any], doc: dict[str, Any]) -> Any:
    """The smallest value a schema of the document accepts (required fields only)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        return _example(doc["components"]["schemas"][name], doc)
    if "anyOf" in schema:
        return _example(schema["anyOf"][0], doc)
    if "enum" in schema:
        return schema["enum"][0]
    t = schema.get("type")
    if isinstance(t, list):
        t = next(x for x in t if x != "null")
    fmt = schema.get("format")
    if t == "object":
        props = schema.get("properties", {})
        return {k: _example(props[k], doc) for k in schema.get("required", [])}
    if t == "array":
        return []
    if t == "string":
        return {
            "date": "2026-05-04",
            "date-time": "2026-05-04T10:00:00Z",
            "uuid": "6f1d2c3b-4a5e-4f60-9a7b-8c9d0e1f2a3b",
        }.get(fmt or "", "x")
    if t == "integer":
        return 1
    if t == "number":
        return 1.5
    if t == "boolean":
        return False
    raise AssertionError(f"no example for {schema}")


def test_a_request_built_from_each_types_schema_is_accepted_by_cbx(
    doc: dict[str, Any], reader: RequestReader, connector: Connector
) -> None:
    for t in event_types(connector):
        request = _example(doc["components"]["schemas"][f"{t}Request"], doc)
        request["sharing"]["lawful_basis"] = ["UK_GDPR_6_1_E_PUBLIC_TASK"]
        assert list(validator(doc, t).iter_errors(request)) == [], t
        read = reader.read(t, request)
        assert isinstance(read, Request), (t, read)


def _missing_report() -> dict[str, Any]:
    played = _played(spec.scenarios_dir() / "provider-reports-missing.yaml")
    return next(request for step, request in played if step.id == "missing")


INVALID: list[tuple[str, Any, str]] = [
    # (what, change to the valid request, the path cbx names)
    ("urgency SOON", lambda r: r.update(urgency="SOON"), "urgency"),
    ("consent MAYBE", lambda r: r["sharing"].update(consent="MAYBE"), "sharing.consent"),
    ("no event", lambda r: r.pop("event"), "event"),
    ("a field nobody defined", lambda r: r["event"].update(mood="calm"), "event.mood"),
    ("a date that is not a date", lambda r: r["event"].update(reported_at="02/03/2026 23:10"),
     "event.reported_at"),
    ("a status outside the enum", lambda r: r["event"].update(status="GONE"), "event.status"),
    ("a role nobody has", lambda r: r.update(also_notify=[
        {"agency": "pf-e23000005", "role": "CHIEF_CONSTABLE", "reason": "r"}]),
     "also_notify[0].role"),
    ("a number for a name", lambda r: r.update(case_ref=12), "case_ref"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "change", "path"), INVALID, ids=[w for w, _, _ in INVALID])
def test_what_cbx_refuses_the_document_refuses(
    doc: dict[str, Any], reader: RequestReader, what: str, change: Any, path: str
) -> None:
    request = _missing_report()
    assert list(validator(doc, "ChildMissingReported").iter_errors(request)) == []
    change(request)
    assert list(validator(doc, "ChildMissingReported").iter_errors(request)), what
    errors = reader.read("ChildMissingReported", request)
    assert isinstance(errors, list), what
    assert path in [e.path for e in errors], (what, [e.as_dict() for e in errors])
