"""Delivery to the agency's system: a webhook that fails is retried; a folder gets JSON files."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
from agencies import SHARING
from exchange import ENVELOPES, exchange
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from test_http_ingest import serving
from test_router import ALL, CASE, KENT, KENT_ICB, KENT_POLICE, placement_body

from broker.errors import PolicyError
from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.schema import codec
from connectors.sinks import FolderSink, WebhookSink
from connectors.webhook_signing import verify

pytestmark = pytest.mark.kafka
SECRET = b"shared with the agency's case system"


async def test_failing_webhook_is_retried_and_delivered_only_when_it_succeeds(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    ns = kafka_ns
    calls: list[tuple[dt.datetime, int]] = []
    agency_app = FastAPI()

    @agency_app.post("/cbx")
    async def receive(request: Request) -> JSONResponse:
        # The agency's system checks the delivery came from its connector, as documented.
        verify(request.headers, await request.body(), secret=SECRET)
        doc = await request.json()
        status = 503 if len(calls) < 4 else 200
        calls.append((dt.datetime.now(dt.UTC), status))
        assert doc["event_type"] == "PlacementNotified"
        return JSONResponse(status_code=status, content={})

    async with serving(agency_app) as url, exchange(ns, tmp_path) as ex:
        webhook = WebhookSink(f"{url}/cbx", secret=SECRET, base_delay_s=0.2, max_delay_s=0.5)
        folder = FolderSink(tmp_path / "icb-inbox")
        for agency in ALL:
            sink = webhook if agency == KENT_POLICE else folder if agency == KENT_ICB else None
            await ex.agency(agency, inbox=sink is not None, sink=sink)
        await ex.sync_all()
        placed = await ex.connectors[KENT].send(
            "PlacementNotified", placement_body(), case_ref=CASE, sharing=SHARING
        )
        mid = str(placed.header.message_id)
        receipts: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while not calls:
            assert time.monotonic() < deadline, "the webhook was never called"
            await asyncio.sleep(0.01)
        # The agency's system has not got it yet, so it cannot be acknowledged.
        with pytest.raises(PolicyError, match="was not delivered"):
            await ex.connectors[KENT_POLICE].acknowledge(mid)

        async def delivered_receipt() -> bool:
            receipts.clear()
            v = ex.connectors[KENT].forms.latest["Receipt"]

            def take(r: Any) -> None:
                header, body = ENVELOPES.decode(r.value)
                rec = codec.decode(body, lambda _fp: v.wire_parsed)
                receipts.append(
                    {
                        **rec,
                        "by": header.sender,
                        "subject_message_id": str(rec["subject_message_id"]),
                    }
                )

            await kafka.read_to_end(ns, ns.topics.receipts, take)
            return any(r["by"] == KENT_POLICE and r["subject_message_id"] == mid for r in receipts)

        await ex.wait_for(delivered_receipt, what="Kent Police's DELIVERED receipt")
        assert [s for _, s in calls] == [503, 503, 503, 503, 200]
        police = [r for r in receipts if r["by"] == KENT_POLICE and r["subject_message_id"] == mid]
        assert [r["status"] for r in police] == ["DELIVERED"]
        await ex.connectors[KENT_POLICE].acknowledge(mid)

        async def acknowledged() -> bool:
            await delivered_receipt()
            return any(r["by"] == KENT_POLICE and r["status"] == "ACKNOWLEDGED" for r in receipts)

        await ex.wait_for(acknowledged, what="Kent Police's ACKNOWLEDGED receipt")
        await webhook.close()
    assert police[0]["at"] >= calls[-1][0] - dt.timedelta(milliseconds=5)

    files = list((tmp_path / "icb-inbox").glob(f"*_PlacementNotified_{mid}.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["event"]["identity"]["family_name"] == "Whitcombe"
    assert doc["event"]["risk_summary"] == {"withheld": "INTELLIGENCE"}
    assert oct(files[0].stat().st_mode)[-3:] == "600"
