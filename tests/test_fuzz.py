"""Fuzzing the whole path on the real broker: requests of every message type, generated from the
schemas and then broken with edge values, through HTTP ingest, the router and every recipient.

For each generated request: the answer is 202 or a 4xx that names what was wrong (never a 5xx);
every message answered 202 reaches each of its recipients' systems, or is quarantined by that
recipient, or is dead-lettered by the router, each with a reason; and a valid report sent after
each batch reaches everyone it must. ``make test`` runs a bounded number of cases; ``make fuzz``
runs ``CBX_FUZZ_CASES`` (10,000) and prints the counts (``docs/reliability.md``).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from avro_strategies import records
from exchange import Exchange, exchange
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from test_http_ingest import SHARING_JSON
from test_no_input_stops_delivery import Recorder
from test_router import (
    CASE,
    KENT,
    KENT_ICB,
    KENT_POLICE,
    LANCS,
    LANCS_ICB,
    LANCS_POLICE,
    PROVIDER,
)

from benchmarks.samples import PAYLOADS
from broker.delivery_log import Status
from broker.kafka.settings import KafkaSettings
from broker.schema.catalogue import Catalogue
from connectors.ingest.http import create_app
from connectors.ingest.idempotency import IdempotencyStore
from connectors.sinks import to_json

pytestmark = pytest.mark.kafka

CATALOGUE = Catalogue.load()
PARTIES = [KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB, PROVIDER]
# Who sends each type in the case Kent placed in Lancashire with the provider.
SENDERS = {
    "PlacementNotified": KENT,
    "PlacementEnded": KENT,
    "HomeAdmissionNotified": PROVIDER,
    "HomeDischargeNotified": PROVIDER,
    "MissingProfileLodged": PROVIDER,
    "ChildMissingReported": LANCS_POLICE,
    "MissingRiskGraded": LANCS_POLICE,
    "ChildFound": LANCS_POLICE,
    "ReturnInterviewCompleted": LANCS,
    "CSERiskAssessed": KENT,
    "TriggerPlanIssued": KENT,
    "CAWNIssued": LANCS_POLICE,
    "HealthAssessmentRequested": KENT,
    "HealthRecordTransferRequested": KENT_ICB,
}
TYPES = sorted(SENDERS)
BATCH = 50

# Values that have broken a stage before, or could: calendar and time-zone extremes, empty and
# huge strings, lone surrogates, deep nesting, wrong types, numbers past every range.
EDGES: list[Any] = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01",
    "9999-12-31",
    "1899-12-31",
    "2101-01-01T00:00:00Z",
    "2026-02-30",
    "2026-04-11T25:61:00Z",
    "2026-04-11T12:00:00",
    "",
    "x" * 25_000,
    "\ud800",
    "a\udfffb",
    "\u0000",
    "🙂" * 100,
    0,
    -1,
    2**31,
    2**63,
    -(2**64),
    1e308,
    True,
    None,
    [],
    {},
    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    {"nested": {"deeper": {"still": [1, 2, {"x": None}]}}},
    ["HIGH"] * 2000,
    "SOON",
    "KCC-LAC-000123",
]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def put(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    """(message type, request, how it was broken)."""
    event_type = draw(st.sampled_from(TYPES))
    event = to_json(draw(records(CATALOGUE.latest(event_type).raw)))
    if event_type == "PlacementNotified":
        event.update(host_authority=LANCS, provider=PROVIDER)
    request: dict[str, Any] = {
        "case_ref": CASE,
        "urgency": draw(st.sampled_from(["IMMEDIATE", "URGENT", "PRIORITY", "ROUTINE"])),
        "sharing": copy.deepcopy(SHARING_JSON),
        "event": event,
    }
    how = draw(st.sampled_from(["valid", "edge", "edge", "unknown-field", "drop-field"]))
    if how == "edge":
        where = draw(st.sampled_from(paths(request)))
        put(request, where, draw(st.sampled_from(EDGES)))
        how = f"edge at {'.'.join(map(str, where))}"
    elif how == "unknown-field":
        dicts = [(), *(p for p in paths(request) if isinstance(_get(request, p), dict))]
        target = draw(st.sampled_from(dicts))
        name = draw(st.text(min_size=1, max_size=20))
        put(request, (*target, name), draw(st.sampled_from(EDGES)))
    elif how == "drop-field":
        where = draw(st.sampled_from([p for p in paths(request) if isinstance(p[-1], str)]))
        parent = _get(request, where[:-1])
        parent.pop(where[-1], None)
    return event_type, request, how


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


class Tally:
    def __init__(self) -> None:
        self.answers: Counter[int] = Counter()
        self.accepted: dict[str, set[str]] = {}  # message id -> recipients
        self.outcomes: Counter[str] = Counter()

    def report(self) -> str:
        return json.dumps(
            {
                "requests": sum(self.answers.values()),
                "answers": dict(sorted(self.answers.items())),
                "accepted_messages": len(self.accepted),
                "recipient_outcomes": dict(self.outcomes),
            },
            indent=2,
        )


async def _settle(ex: Exchange, rec: Recorder, tally: Tally, pending: dict[str, set[str]]) -> None:
    """Until each accepted message is delivered, quarantined or dead-lettered, per recipient."""

    async def accounted() -> bool:
        rejected = {e.message_id for e in await ex.log() if e.status == Status.REJECTED}
        quarantined = {
            (a, q["message_id"]) for a in PARTIES for q in ex.connectors[a].quarantine.list()
        }
        done = []
        for mid, recipients in pending.items():
            if mid in rejected:
                tally.outcomes["dead-lettered"] += len(recipients)
                done.append(mid)
                continue
            got = rec.reached(mid)
            kept = {a for a in recipients if (a, mid) in quarantined}
            if recipients <= got | kept:
                tally.outcomes["delivered"] += len(recipients & got)
                tally.outcomes["quarantined"] += len(kept - got)
                done.append(mid)
        for mid in done:
            pending.pop(mid)
        return not pending

    try:
        await ex.wait_for(accounted, within_s=120, what="accepted messages accounted")
    except AssertionError:
        detail = {mid: sorted(r - rec.reached(mid)) for mid, r in pending.items()}
        raise AssertionError(f"not accounted for: {detail}") from None


async def _place(kent: httpx.AsyncClient) -> httpx.Response:
    """Kent places the case's child in a Lancashire home."""
    return await kent.post(
        "/v1/events/PlacementNotified",
        json={
            "case_ref": CASE,
            "sharing": SHARING_JSON,
            "event": {
                **PAYLOADS["PlacementNotified"],
                "host_authority": LANCS,
                "provider": PROVIDER,
            },
        },
    )


async def _sentinel(ex: Exchange, rec: Recorder, clients: dict[str, httpx.AsyncClient]) -> None:
    """After a batch, a valid missing report must reach every recipient. A valid PlacementEnded
    among the generated requests ends the host parties' part in the case, after which the host
    force is rightly refused; Kent placing the child again is the valid way back, so it comes
    first."""
    placed = await _place(clients[KENT])
    assert placed.status_code == 202, placed.text
    await ex.wait_party(LANCS_POLICE, CASE, LANCS_POLICE)
    r = await clients[LANCS_POLICE].post(
        "/v1/events/ChildMissingReported",
        json={
            "case_ref": CASE,
            "urgency": "IMMEDIATE",
            "sharing": SHARING_JSON,
            "event": PAYLOADS["ChildMissingReported"],
        },
    )
    assert r.status_code == 202, r.text
    mid = r.json()["message_id"]

    async def arrived() -> bool:
        return rec.reached(mid) >= {KENT, LANCS, KENT_POLICE}

    await ex.wait_for(arrived, what="the sentinel report at every recipient")


CASES = int(os.environ.get("CBX_FUZZ_CASES", "500"))
SEED = int(os.environ.get("CBX_FUZZ_SEED", "20261127"))


def generate(n: int, seed_value: int) -> list[tuple[str, dict[str, Any], str]]:
    """``n`` requests drawn by hypothesis (reproducible from the seed), each one example."""
    out: list[tuple[str, dict[str, Any], str]] = []

    @seed(seed_value)
    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def collect(case: tuple[str, dict[str, Any], str]) -> None:
        out.append(case)

    collect()
    return out


@pytest.mark.timeout(7200)
async def test_no_generated_request_stops_delivery(kafka_ns: KafkaSettings, tmp_path: Path) -> None:
    rec = Recorder()
    tally = Tally()
    failures: list[str] = []
    cases = generate(CASES, SEED)
    started = time.monotonic()
    async with exchange(kafka_ns, tmp_path) as ex:
        for agency in PARTIES:
            await ex.agency(agency, inbox=True, sink=rec.sink(agency))
        await ex.sync_all()
        clients = {
            a: httpx.AsyncClient(
                transport=httpx.ASGITransport(
                    app=create_app(ex.connectors[a], IdempotencyStore(tmp_path / f"{a}.jsonl"))
                ),
                base_url="http://connector",
            )
            for a in set(SENDERS.values())
        }
        try:
            placed = await _place(clients[KENT])
            assert placed.status_code == 202, placed.text
            for a in PARTIES:
                await ex.wait_registered(a, CASE)
            for start in range(0, len(cases), BATCH):
                pending: dict[str, set[str]] = {}
                for event_type, request, how in cases[start : start + BATCH]:
                    r = await clients[SENDERS[event_type]].post(
                        f"/v1/events/{event_type}",
                        content=json.dumps(request).encode("utf-8", "surrogatepass"),
                        headers={"Content-Type": "application/json"},
                    )
                    tally.answers[r.status_code] += 1
                    if r.status_code >= 500:
                        failures.append(f"{event_type} {how}: {r.status_code} {r.text[:300]}")
                    elif r.status_code == 202:
                        answer = r.json()
                        recipients = {x["agency"] for x in answer["recipients"]}
                        tally.accepted[answer["message_id"]] = recipients
                        pending[answer["message_id"]] = recipients
                    else:
                        errors = r.json().get("errors") or []
                        if not errors or not all(e.get("problem") and "path" in e for e in errors):
                            failures.append(f"{event_type} {how}: {r.status_code} {r.text[:300]}")
                await _settle(ex, rec, tally, pending)
                await _sentinel(ex, rec, clients)
        finally:
            for c in clients.values():
                await c.aclose()
    took = time.monotonic() - started
    print(f"\nfuzz: {len(cases)} cases (seed {SEED}) in {took:.0f} s\n{tally.report()}")
    assert not failures, "\n".join(failures[:20])
    assert tally.answers[202] > 0
    assert sum(n for s, n in tally.answers.items() if 400 <= s < 500) > 0
