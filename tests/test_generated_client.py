"""A client generated from the connector's OpenAPI document by `openapi-python-client`, the tool an
agency's integration engineer would use: every endpoint is generated, its models take every valid
request and refuse the values cbx refuses, and it talks to a real connector on the real broker."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from exchange import exchange
from test_fuzz import SENDERS
from test_openapi import _example, _missing_report
from test_router import ALL, CASE, KENT, LANCS, LANCS_POLICE, PROVIDER

from benchmarks.samples import PAYLOADS
from broker.crypto.keys import AgencyKeys
from broker.kafka.settings import KafkaSettings
from broker.model import SYSTEM_TYPES
from connectors.gateway.connector import Connector
from connectors.ingest.http import create_app
from connectors.ingest.idempotency import IdempotencyStore

PACKAGE = "cbx_connector_client"


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("doc")
    conn = Connector(
        KafkaSettings("127.0.0.1:1"), AgencyKeys.new("la-e10000016"), state_dir=tmp / "state"
    )
    return create_app(conn, IdempotencyStore(tmp / "keys.jsonl")).openapi()


@pytest.fixture(scope="module")
def client_package(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("client")
    (tmp / "openapi.json").write_text(json.dumps(document))
    tool = Path(sys.executable).with_name("openapi-python-client")
    done = subprocess.run(
        [str(tool), "generate", "--path", str(tmp / "openapi.json"), "--meta", "none",
         "--output-path", str(tmp / PACKAGE)],
        capture_output=True, text=True, check=False, cwd=tmp,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sys.path.insert(0, str(tmp))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp))


def _event_types(document: dict[str, Any]) -> list[str]:
    return sorted(p.rsplit("/", 1)[1] for p in document["paths"] if p.startswith("/v1/events/"))


def _operation(package: ModuleType, event_type: str) -> Any:
    return importlib.import_module(f"{package.__name__}.api.default.send_{_snake(event_type)}")


def _model(package: ModuleType, event_type: str) -> Any:
    module = importlib.import_module(f"{package.__name__}.models.{_snake(event_type)}_request")
    return getattr(module, f"{event_type}Request")


def test_every_endpoint_is_generated(client_package: Any, document: dict[str, Any]) -> None:
    folder = Path(client_package.__file__).parent / "api" / "default"
    generated = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    types = _event_types(document)
    assert len(types) == 16
    assert not set(types) & SYSTEM_TYPES
    assert {f"send_{_snake(t)}" for t in types} <= generated
    # status, ack, case view, chronology
    assert len(generated) == len(document["paths"]) == len(types) + 4


def test_every_request_goes_through_the_generated_models(
    client_package: Any, document: dict[str, Any]
) -> None:
    for t in _event_types(document):
        example = _example(document["components"]["schemas"][f"{t}Request"], document)
        example["sharing"]["lawful_basis"] = ["UK_GDPR_6_1_E_PUBLIC_TASK"]
        model = _model(client_package, t).from_dict(example)
        sent = model.to_dict()
        assert sent["event"].keys() >= example["event"].keys(), t
        assert sent["case_ref"] == example["case_ref"]


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(urgency="SOON"),
        lambda r: r["sharing"].update(consent="MAYBE"),
        lambda r: r["event"].update(status="GONE"),
    ],
)
def test_the_generated_models_refuse_what_cbx_refuses(client_package: Any, change: Any) -> None:
    request = _missing_report()
    _model(client_package, "ChildMissingReported").from_dict(request)
    change(request)
    with pytest.raises((ValueError, KeyError)):
        _model(client_package, "ChildMissingReported").from_dict(request)


SHARING = {
    "purpose": "safeguard a looked-after child placed out of area",
    "lawful_basis": ["UK_GDPR_6_1_E_PUBLIC_TASK"],
    "consent": "NOT_SOUGHT",
    "consent_not_sought_reason": "risk of significant harm",
    "decision_maker_role": "Team manager",
}


@pytest.mark.kafka
async def test_the_generated_client_sends_every_message_type_to_a_real_connector(
    client_package: Any, document: dict[str, Any], kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    client_module = importlib.import_module(f"{PACKAGE}.client")
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)

        def client_for(agency: str) -> Any:
            app = create_app(ex.connectors[agency], IdempotencyStore(tmp_path / f"{agency}.jsonl"))
            c = client_module.Client(base_url="http://connector")
            c.set_async_httpx_client(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://connector"
                )
            )
            return c

        placement = _model(client_package, "PlacementNotified").from_dict(
            {
                "case_ref": CASE,
                "sharing": SHARING,
                "event": {**PAYLOADS["PlacementNotified"], "host_authority": LANCS,
                          "provider": PROVIDER},
            }
        )  # fmt: skip
        placed = await _operation(client_package, "PlacementNotified").asyncio_detailed(
            client=client_for(KENT), body=placement, idempotency_key="generated-1"
        )
        assert placed.status_code == 202, placed.content
        assert {r.agency for r in placed.parsed.recipients} >= {LANCS, LANCS_POLICE}
        await ex.wait_registered(LANCS_POLICE, CASE)

        report = _model(client_package, "ChildMissingReported").from_dict(
            {"case_ref": CASE, "urgency": "IMMEDIATE", "sharing": SHARING,
             "event": PAYLOADS["ChildMissingReported"]}
        )  # fmt: skip
        sent = await _operation(client_package, "ChildMissingReported").asyncio_detailed(
            client=client_for(LANCS_POLICE), body=report
        )
        assert sent.status_code == 202, sent.content
        assert KENT in {r.agency for r in sent.parsed.recipients}

        # Every other type, from an agency that sends it in this case, built from the document's
        # own schema; the end of the placement last.
        gp = "gp-a81001"
        await ex.agency(gp)
        for agency in {*SENDERS.values()}:
            await ex.wait_registered(agency, CASE)
        others = [t for t in sorted(SENDERS) if t not in ("PlacementNotified", "PlacementEnded")]
        for t in [*others, "CasePartiesChanged", "PlacementEnded"]:
            request = _example(document["components"]["schemas"][f"{t}Request"], document)
            request.update(case_ref=CASE, sharing=SHARING)
            if t == "CasePartiesChanged":
                request["event"]["changes"] = [{"change": "ADDED", "agency": gp, "role": "GP"}]
            answer = await _operation(client_package, t).asyncio_detailed(
                client=client_for(SENDERS.get(t, KENT)),
                body=_model(client_package, t).from_dict(request),
            )
            assert answer.status_code == 202, (t, answer.content)
            assert answer.parsed.recipients, t

        # A refusal parses as the document's Error: a council may not send a police report.
        refused = await _operation(client_package, "ChildMissingReported").asyncio_detailed(
            client=client_for(KENT), body=report
        )
        assert refused.status_code == 403
        assert "does not send ChildMissingReported" in refused.parsed.error
