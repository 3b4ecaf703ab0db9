"""Cold start: how long the first message after every service starts takes, against the messages
that follow it, and against raw aiokafka started cold over the same topology, in one run.

    .venv/bin/python -m benchmarks.bench_cold [--messages 50]

In a fresh namespace, the router and four connectors start from nothing (Lancashire Constabulary
sends; Kent County Council, Kent Police and Lancashire County Council receive). Measured:

1. router_ready_s: from the router's start to its producer made and its partitions assigned;
2. first_ms: the first ChildMissingReported after that, from send to unsealed at all three
   recipients; then ``--messages`` more, one at a time (steady p50, p99);
3. new_case_ms: Kent registers a new placement and, at once, the force reports that child
   missing: from the placement's send until the report is unsealed at all three (the force's
   connector must learn the case first);
4. the baseline: a raw aiokafka relay (a consumer group and one transactional producer fanning
   each record out to three topics, three consumers), started cold the same way: first and steady.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.bench_e2e import sharing
from benchmarks.raw import RawRelay
from broker import model
from broker.admin import provision
from broker.kafka import embedded as local_kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings

RESULTS = Path(__file__).parent / "results"
PLA, HLA, HOF, HF = "la-e10000016", "la-e10000017", "pf-e23000032", "pf-e23000003"
RECIPIENTS = (PLA, HOF, HLA)
ICBS = ("icb-e54000032", "icb-e54000048")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def summary(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {
        "p50_ms": ms(statistics.median(s)),
        "p99_ms": ms(s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]),
        "max_ms": ms(s[-1]),
    }


def placement() -> dict[str, Any]:
    """Agency JSON, as HTTP ingest takes it."""
    return {
        "placement_id": str(uuid.uuid4()),
        "legal_status": "C2",
        "placement_type": "CHILDRENS_HOME",
        "start_date": dt.date.today().isoformat(),
        "host_authority": HLA,
        "approved_by_role": "Director of Children's Services",
        "identity": {"given_names": "Sam", "family_name": "Bench", "date_of_birth": "2011-01-01"},
        "address": {"lines": ["1 Bench Row"], "town": "Preston", "postcode": "PR1 1AA"},
    }


def missing() -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).isoformat()
    return {
        "episode_id": str(uuid.uuid4()),
        "status": "MISSING",
        "reported_at": now,
        "last_seen": {"seen_at": now, "place": "Preston bus station"},
    }


def missing_report(force: Any, case_ref: str) -> Any:
    """The host force's IMMEDIATE missing report about ``case_ref``, sealed, not yet sent."""
    return force.prepare(
        "ChildMissingReported",
        force.convert("ChildMissingReported", missing()),
        case_ref=case_ref,
        sharing=sharing(),
        urgency="IMMEDIATE",
    )


async def measure_cbx(settings: KafkaSettings, n: int, tmp: Path) -> dict[str, Any]:
    from broker.crypto.keys import AgencyKeys
    from broker.router.service import RouterService
    from connectors.gateway.connector import Connector
    from connectors.gateway.inbox import Delivered

    ns = settings.with_prefix(f"cold{uuid.uuid4().hex[:8]}")
    await provision.setup(ns)
    arrived: dict[str, dict[str, float]] = {}
    events: dict[str, asyncio.Event] = {}

    def sink(agency: str) -> Any:
        async def take(d: Delivered) -> None:
            mid = str(d.header.message_id)
            arrived.setdefault(mid, {})[agency] = time.perf_counter()
            if set(arrived[mid]) >= set(RECIPIENTS) and mid in events:
                events[mid].set()

        return take

    connectors = {}
    for agency in (PLA, HLA, HOF, HF, *ICBS):
        await provision.add_agency(ns, agency)
        keys = AgencyKeys.new(agency)
        await provision.publish_agency_keys(ns, keys)
        if agency in ICBS:
            continue  # told of placements; not part of what is measured
        connectors[agency] = Connector(
            principals.settings_for(ns, agency), keys, state_dir=tmp / agency
        )
    router = RouterService(principals.settings_for(ns, model.ROUTER))
    t0 = time.perf_counter()
    task = asyncio.create_task(router.run())
    await asyncio.wait_for(router.ready.wait(), 120)
    ready_s = time.perf_counter() - t0
    for agency, c in connectors.items():
        await c.start()
        if agency in RECIPIENTS:
            c.start_inbox(sink(agency))
    try:
        # A case the force knows before it reports.
        kent = connectors[PLA]

        async def place(reference: str) -> str:
            sent = await kent.send(
                "PlacementNotified",
                kent.convert("PlacementNotified", placement()),
                case_ref=reference,
                sharing=sharing(),
            )
            return sent.header.case_ref

        case = await place("BENCH-1")
        await connectors[HF].sync()
        while connectors[HF].registry.get(case) is None:
            await asyncio.sleep(0.01)
            await connectors[HF].sync()

        async def one(case_ref: str) -> float:
            started = time.perf_counter()
            out = missing_report(connectors[HF], case_ref)
            mid = str(out.header.message_id)
            events[mid] = asyncio.Event()
            await connectors[HF].publish([out])
            await asyncio.wait_for(events[mid].wait(), 60)
            return time.perf_counter() - started

        first = await one(case)
        steady = [await one(case) for _ in range(n)]

        # A new case, reported at once.
        started = time.perf_counter()
        new = await place("BENCH-2")
        while connectors[HF].registry.get(new) is None:
            await connectors[HF].sync()
        learned = time.perf_counter() - started
        reported = await one(new)
        new_case = time.perf_counter() - started
    finally:
        router.stop_event.set()
        await task
        for c in connectors.values():
            await c.stop()
    return {
        "router_ready_s": round(ready_s, 3),
        "first_ms": ms(first),
        "steady": summary(steady),
        "first_vs_steady_p50": round(first / statistics.median(steady), 2),
        "new_case_ms": ms(new_case),
        "new_case_known_to_sender_ms": ms(learned),
        "new_case_report_ms": ms(reported),
    }


async def measure_raw(settings: KafkaSettings, n: int) -> dict[str, Any]:
    """The same shape in raw aiokafka: produce; consume-transform-produce in a transaction to
    three topics; three consumers. Everything started cold."""
    events: dict[bytes, asyncio.Event] = {}

    def arrived(key: bytes) -> None:
        if key in events:
            events[key].set()

    relay = RawRelay(settings, "coldraw", arrived)
    await relay.create_topics()
    t0 = time.perf_counter()
    await relay.start()
    ready_s = time.perf_counter() - t0
    payload = os.urandom(1500)

    async def one() -> float:
        key = uuid.uuid4().bytes
        events[key] = asyncio.Event()
        started = time.perf_counter()
        await relay.send(key, payload)
        await asyncio.wait_for(events[key].wait(), 60)
        return time.perf_counter() - started

    try:
        first = await one()
        steady = [await one() for _ in range(n)]
    finally:
        await relay.stop()
    return {
        "ready_s": round(ready_s, 3),
        "first_ms": ms(first),
        "steady": summary(steady),
        "first_vs_steady_p50": round(first / statistics.median(steady), 2),
    }


async def run(n: int) -> dict[str, Any]:
    external = KafkaSettings.from_env()
    started_here = external is None and local_kafka.status() is None
    settings = external or local_kafka.start().settings()
    try:
        with tempfile.TemporaryDirectory(prefix="cbx-bench-cold-") as tmp:
            cbx = await measure_cbx(settings, n, Path(tmp))
        raw = await measure_raw(settings, n)
    finally:
        if started_here:
            local_kafka.stop()
    return {
        "messages": n,
        "cbx": cbx,
        "baseline_raw_aiokafka": raw,
        "first_vs_raw_first": round(cbx["first_ms"] / raw["first_ms"], 2),
        "steady_p50_vs_raw": round(cbx["steady"]["p50_ms"] / raw["steady"]["p50_ms"], 2),
        "at": dt.datetime.now(dt.UTC).isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=50, help="Messages after the first.")
    parser.add_argument("--out", default="cold.json", help="File name under results/.")
    args = parser.parse_args()
    from broker.logging import configure_logging

    configure_logging(level=os.environ.get("CBX_LOG_LEVEL", "WARNING"))
    result = asyncio.run(run(args.messages))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    c, r = result["cbx"], result["baseline_raw_aiokafka"]
    print(f"router ready in {c['router_ready_s']} s (raw relay ready in {r['ready_s']} s)")
    print(
        f"first message after start: cbx {c['first_ms']} ms, raw {r['first_ms']} ms "
        f"({result['first_vs_raw_first']} x raw)"
    )
    print(
        f"steady p50: cbx {c['steady']['p50_ms']} ms, raw {r['steady']['p50_ms']} ms "
        f"({result['steady_p50_vs_raw']} x raw); cbx first/steady {c['first_vs_steady_p50']}"
    )
    print(
        f"new case reported at once: {c['new_case_ms']} ms "
        f"(known to the force after {c['new_case_known_to_sender_ms']} ms)"
    )


if __name__ == "__main__":
    main()
