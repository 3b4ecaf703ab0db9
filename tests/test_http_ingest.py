"""HTTP ingest with real HTTP requests to a running connector, on the real broker."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from exchange import exchange
from test_router import ALL, CASE, KENT, KENT_POLICE, LANCS, PROVIDER

from benchmarks.samples import PAYLOADS
from broker import model
from broker.kafka.settings import KafkaSettings
from connectors.ingest.http import create_app
from connectors.ingest.idempotency import IdempotencyStore

pytestmark = pytest.mark.kafka

SHARING_JSON = {
    "purpose": "safeguard a looked-after child placed out of area",
    "lawful_basis": ["UK_GDPR_6_1_E_PUBLIC_TASK", "DPA_2018_SCH1_PARA18_SAFEGUARDING_CHILDREN"],
    "consent": "NOT_SOUGHT",
    "consent_not_sought_reason": "risk of significant harm",
    "decision_maker_role": "Team manager",
}


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_ingest_routes_good_payloads_refuses_bad_ones_and_is_idempotent(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        kent = ex.connectors[KENT]
        store = IdempotencyStore(tmp_path / "sent.jsonl")
        async with serving(create_app(kent, store)) as url, httpx.AsyncClient(base_url=url) as http:
            placement = {
                **PAYLOADS["PlacementNotified"],
                "host_authority": LANCS,
                "provider": PROVIDER,
            }
            good = {
                "case_ref": CASE,
                "urgency": "ROUTINE",
                "sharing": SHARING_JSON,
                "event": placement,
            }
            first = await http.post(
                "/v1/events/PlacementNotified", json=good, headers={"Idempotency-Key": "kent-42"}
            )
            assert first.status_code == 202, first.text
            answer = first.json()
            assert {r["agency"] for r in answer["recipients"]} == {
                LANCS,
                KENT_POLICE,
                "pf-e23000003",
                "icb-e54000048",
                "icb-e54000032",
                PROVIDER,
            }
            again = await http.post(
                "/v1/events/PlacementNotified", json=good, headers={"Idempotency-Key": "kent-42"}
            )
            assert again.status_code == 202
            assert again.json()["message_id"] == answer["message_id"]
            assert again.json()["replayed"] is True
            clash = await http.post(
                "/v1/events/PlacementNotified",
                json={**good, "case_ref": "OTHER"},
                headers={"Idempotency-Key": "kent-42"},
            )
            assert clash.status_code == 409

            bad_event = {
                **placement,
                "legal_status": "Z9",
                "start_date": "02/03/2026",
                "identity": {"given_names": "Jordan"},
                "colour": "Whitcombe-blue",
            }
            bad = await http.post(
                "/v1/events/PlacementNotified",
                json={"urgency": "SOON", "sharing": SHARING_JSON, "event": bad_event},
            )
            assert bad.status_code == 422
            paths = {e["path"] for e in bad.json()["errors"]}
            assert {
                "case_ref",
                "urgency",
                "event.legal_status",
                "event.start_date",
                "event.identity.family_name",
                "event.identity.date_of_birth",
                "event.colour",
            } <= paths
            assert "Whitcombe" not in bad.text
            assert "02/03/2026" not in bad.text
            unknown = await http.post("/v1/events/NoSuchThing", json=good)
            assert unknown.status_code == 404

            status = await http.get(f"/v1/messages/{answer['message_id']}")
            assert status.status_code == 200
            assert status.json()["status"] == "PUBLISHED"
            spec = (await http.get("/openapi.json")).json()
            body = spec["paths"]["/v1/events/ChildMissingReported"]["post"]["requestBody"]
            assert "ChildMissingReported" in str(body)
            assert (
                spec["components"]["schemas"]["ChildMissingReported"]["properties"]["last_seen"][
                    "x-cbx-sensitivity"
                ]
                == "LOCATION"
            )

        async def routed() -> bool:
            return answer["message_id"] in await ex.inbox_ids(LANCS)

        await ex.wait_for(routed, what="the ingested placement routed")
        ids = await ex.inbox_ids(LANCS)
        assert ids[answer["message_id"]] == 1
        # The bad requests published nothing: only the one placement is in Lancashire's inbox.
        assert len(ids) == 1
        # A restarted connector still knows the key.
        assert IdempotencyStore(tmp_path / "sent.jsonl").get("kent-42") is not None


async def test_the_sender_sees_each_recipients_state_and_only_its_own_messages(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    from broker.kafka import principals
    from broker.tracker.service import TrackerService

    async with exchange(kafka_ns, tmp_path) as ex:
        for agency in ALL:
            await ex.agency(agency, inbox=agency != KENT)
        await ex.sync_all()
        tracker = TrackerService(principals.settings_for(kafka_ns, model.TRACKER), 0.5)
        tracker_task = asyncio.create_task(tracker.run())
        kent_app = create_app(ex.connectors[KENT], IdempotencyStore(tmp_path / "kent.jsonl"))
        lancs_app = create_app(ex.connectors[LANCS], IdempotencyStore(tmp_path / "lancs.jsonl"))
        try:
            async with (
                serving(kent_app) as kent_url,
                serving(lancs_app) as lancs_url,
                httpx.AsyncClient(base_url=kent_url) as kent,
                httpx.AsyncClient(base_url=lancs_url) as lancs,
            ):
                placement = {**PAYLOADS["PlacementNotified"], "host_authority": LANCS}
                posted = await kent.post(
                    "/v1/events/PlacementNotified",
                    json={"case_ref": CASE, "sharing": SHARING_JSON, "event": placement},
                )
                assert posted.status_code == 202, posted.text
                mid = posted.json()["message_id"]
                recipients = {r["agency"] for r in posted.json()["recipients"]}

                async def delivered_everywhere() -> Any:
                    doc = (await kent.get(f"/v1/messages/{mid}")).json()
                    return doc if doc["status"] == "DELIVERED" else None

                doc = await ex.wait_for(delivered_everywhere, what="DELIVERED to all")
                assert {r["agency"] for r in doc["recipients"]} == recipients
                assert all("delivered_at" in r for r in doc["recipients"])

                # Lancashire's system acknowledges through its own connector.
                acked = await lancs.post(f"/v1/messages/{mid}/ack")
                assert acked.status_code == 202

                async def lancs_acknowledged() -> Any:
                    doc = (await kent.get(f"/v1/messages/{mid}")).json()
                    states = {r["agency"]: r["status"] for r in doc["recipients"]}
                    return doc if states[LANCS] == "ACKNOWLEDGED" else None

                doc = await ex.wait_for(lancs_acknowledged, what="Lancashire's acknowledgement")
                states = {r["agency"]: r["status"] for r in doc["recipients"]}
                assert {a for a, s in states.items() if s == "DELIVERED"} == recipients - {LANCS}
                assert doc["status"] == "DELIVERED"  # not every recipient has acknowledged
                # Lancashire did not send it, so its connector knows nothing of it as a sender.
                assert (await lancs.get(f"/v1/messages/{mid}")).status_code == 404
                assert "Whitcombe" not in json.dumps(doc)
        finally:
            tracker.stop_event.set()
            await tracker_task
