"""The console's view at scale: how fast it catches up with a large delivery log, and how long
its board and searches take, against raw aiokafka reading the same topic in the same run.

    .venv/bin/python -m benchmarks.bench_console [--entries 1000000] [--queries 50]

The delivery log is synthetic but shaped like a national exchange's: 250 agencies (153 councils,
43 forces, 42 ICBs, 12 providers), messages over the last seven days each with an ACCEPTED entry
(sharing decision included), three to five recipients ROUTED, DELIVERED and mostly ACKNOWLEDGED,
and about 2% of recipients OVERDUE then ESCALATED. The baseline is a plain consumer reading the
topic to its end without decoding: what the broker and client cost without the view.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from broker.console.feed import Feed
from broker.console.store import Search, ViewStore
from broker.delivery_log import LogCodec, LogEntry, Status
from broker.kafka import clients as kafka
from broker.kafka import embedded as local_kafka
from broker.kafka.settings import KafkaSettings
from broker.schema.catalogue import Catalogue

RESULTS = Path(__file__).parent / "results"
TYPES = ["PlacementNotified", "ChildMissingReported", "ChildFound", "MissingRiskGraded"]
URGENCY = {"PlacementNotified": "ROUTINE", "ChildMissingReported": "IMMEDIATE"}
SHARING = {
    "purpose": "locate a missing child",
    "lawful_basis": ["UK_GDPR_6_1_E_PUBLIC_TASK"],
    "consent": "NOT_SOUGHT",
    "decision_maker_role": "Duty inspector",
}


def agencies() -> list[str]:
    return (
        [f"la-e{10000000 + i:08d}" for i in range(153)]
        + [f"pf-e{23000000 + i:08d}" for i in range(43)]
        + [f"icb-e{54000000 + i:08d}" for i in range(42)]
        + [f"cp-sc{600000 + i}" for i in range(12)]
    )


def synthetic(n: int, seed: int = 7) -> list[LogEntry]:
    """About ``n`` delivery-log entries, message by message, in time order per message."""
    rnd = random.Random(seed)
    names = agencies()
    now = dt.datetime.now(dt.UTC)
    out: list[LogEntry] = []
    while len(out) < n:
        mid = str(uuid.UUID(int=rnd.getrandbits(128)))
        sender = rnd.choice(names)
        event_type = rnd.choice(TYPES)
        urgency = URGENCY.get(event_type, "URGENT")
        case = f"{sender}/CASE-{rnd.randrange(20_000)}"
        at = now - dt.timedelta(seconds=rnd.uniform(0, 7 * 86_400))
        common: dict[str, Any] = {
            "message_id": mid,
            "event_type": event_type,
            "sender": sender,
            "case_ref": case,
            "urgency": urgency,
        }
        out.append(
            LogEntry(
                status=Status.ACCEPTED,
                at=at,
                occurred_at=at - dt.timedelta(minutes=5),
                ack_deadline=at + dt.timedelta(minutes=15),
                sharing=SHARING,
                **common,
            )
        )
        for r in rnd.sample(names, rnd.randint(3, 5)):
            t = at
            for status in (Status.ROUTED, Status.DELIVERED):
                t += dt.timedelta(milliseconds=rnd.randint(5, 500))
                out.append(LogEntry(status=status, at=t, recipient=r, role="HOST_FORCE", **common))
            if rnd.random() < 0.02:
                t = at + dt.timedelta(minutes=15)
                for status in (Status.OVERDUE, Status.ESCALATED):
                    out.append(
                        LogEntry(
                            status=status,
                            at=t,
                            recipient=r,
                            reason="not acknowledged in time",
                            writer="tracker",
                            **common,
                        )
                    )
            else:
                t += dt.timedelta(seconds=rnd.randint(1, 600))
                out.append(
                    LogEntry(
                        status=Status.ACKNOWLEDGED, at=t, recipient=r, writer="tracker", **common
                    )
                )
    return out


async def fill(settings: KafkaSettings, entries: list[LogEntry]) -> float:
    codec = LogCodec(Catalogue.load())
    producer = kafka.producer(settings, linger_ms=20, max_batch_size=1_048_576)
    await producer.start()
    started = time.perf_counter()
    try:
        topic = settings.topics.delivery_log
        pending = []
        for e in entries:
            key = e.message_id.encode() if e.message_id else None
            pending.append(await producer.send(topic, codec.encode(e), key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def raw_read(settings: KafkaSettings, n: int) -> float:
    """Baseline: a plain consumer reading the whole topic, no decoding."""
    topic = settings.topics.delivery_log
    consumer = kafka.consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await kafka.partitions(settings, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started = time.perf_counter()
        count = 0
        while count < n:
            for records in (await consumer.getmany(timeout_ms=500, max_records=20_000)).values():
                count += len(records)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def timed(fn: Any, runs: int) -> dict[str, float]:
    ms = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - started) * 1000)
    ms.sort()
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[max(0, int(len(ms) * 0.95) - 1)], 2),
        "max_ms": round(ms[-1], 2),
    }


async def measure(settings: KafkaSettings, n: int, runs: int, folder: Path) -> dict[str, Any]:
    settings = settings.with_prefix(f"bench{uuid.uuid4().hex[:6]}")
    await kafka.ensure_topics(settings, settings.topics.core())
    entries = synthetic(n)
    fill_s = await fill(settings, entries)
    print(f"wrote {len(entries)} delivery-log entries in {fill_s:.1f} s", flush=True)
    base_s = await raw_read(settings, len(entries))
    print(f"raw aiokafka read them in {base_s:.1f} s", flush=True)

    store = ViewStore(folder / "view.sqlite")
    feed = Feed(settings, store, Catalogue.load())
    started = time.perf_counter()
    await feed.start()
    try:
        await feed.sync(timeout_s=3600)
    finally:
        await feed.stop()
    view_s = time.perf_counter() - started
    print(f"the console's view caught up in {view_s:.1f} s", flush=True)

    names = agencies()
    rnd = random.Random(11)
    now = time.time()
    counts = store.counts()
    # Cases that exist (a search for one nobody sent would only measure an empty index lookup).
    cases = sorted({m["case_ref"] for m in store.search(Search(per_page=500))[0]})
    queries = {
        "board_hour": lambda: store.board(now - 3600, now),
        "board_day": lambda: store.board(now - 86_400, now),
        "board_week": lambda: store.board(now - 7 * 86_400, now),
        "escalations": lambda: store.escalations(now),
        "search_agency_status": lambda: store.search(
            Search(agency=rnd.choice(names), status="ACKNOWLEDGED")
        ),
        "search_case": lambda: store.search(Search(case_ref=rnd.choice(cases))),
        "case_view": lambda: store.case(rnd.choice(cases)),
        "search_type_urgency_day": lambda: store.search(
            Search(
                event_type="ChildMissingReported",
                urgency="IMMEDIATE",
                since=now - 86_400,
                until=now,
            )
        ),
        "search_all_page_20": lambda: store.search(Search(page=20)),
        "search_status_escalated": lambda: store.search(Search(status="ESCALATED")),
    }
    times = {name: timed(fn, runs) for name, fn in queries.items()}
    store.close()
    db_bytes = await asyncio.to_thread(
        lambda: sum(p.stat().st_size for p in folder.glob("view.sqlite*"))
    )
    return {
        "benchmark": "console_view",
        "entries": len(entries),
        "messages": counts["messages"],
        "recipients": counts["recipients"],
        "baseline_raw_read_entries_per_s": round(len(entries) / base_s),
        "view_catch_up_entries_per_s": round(len(entries) / view_s),
        "view_vs_raw_read": round(base_s / view_s, 3),
        "view_database_mib": round(db_bytes / 2**20, 1),
        "query_runs": runs,
        "queries": times,
        "at": dt.datetime.now(dt.UTC).isoformat(),
    }


async def run(n: int, runs: int) -> dict[str, Any]:
    external = KafkaSettings.from_env()
    started_here = external is None and local_kafka.status() is None
    settings = external or local_kafka.start().settings()
    try:
        with tempfile.TemporaryDirectory(prefix="cbx-bench-console-") as tmp:
            return await measure(settings, n, runs, Path(tmp))
    finally:
        if started_here:
            local_kafka.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=50, help="Runs of each query.")
    parser.add_argument("--out", default="console.json", help="File name under results/.")
    args = parser.parse_args()
    from broker.logging import configure_logging

    configure_logging(level=os.environ.get("CBX_LOG_LEVEL", "WARNING"))
    result = asyncio.run(run(args.entries, args.queries))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"entries {result['entries']} ({result['messages']} messages, "
        f"{result['recipients']} recipient states), view {result['view_database_mib']} MiB"
    )
    print(f"  raw aiokafka read:   {result['baseline_raw_read_entries_per_s']:9d} entries/s")
    print(
        f"  console view:        {result['view_catch_up_entries_per_s']:9d} entries/s"
        f"  ({result['view_vs_raw_read']:.2f} x raw read)"
    )
    for name, t in result["queries"].items():
        print(f"  {name:26s} p50 {t['p50_ms']:8.1f} ms   p95 {t['p95_ms']:8.1f} ms")


if __name__ == "__main__":
    main()
