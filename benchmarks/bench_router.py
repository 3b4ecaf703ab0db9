"""Router throughput on a real broker, against a raw transactional copier in the same run.

    .venv/bin/python -m benchmarks.bench_router [--messages 10000]

Both read the same pre-filled outbound topic of signed, sealed ChildMissingReported messages for
three recipients. The baseline is plain aiokafka consume-transform-produce in transactions (three
copies per record plus the offsets, one transaction per fetched batch): what the broker and client
cost without cbx. The router adds decoding, signature checks (Merkle roots, cached per batch),
policy, the delivery log (four entries a message) and the routed-id marker.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from benchmarks.bench_e2e import fan_out
from benchmarks.samples import PAYLOADS
from broker import model
from broker.admin import provision
from broker.crypto.keys import AgencyKeys
from broker.directory import AgencyEntry, publish
from broker.envelope import SharingDecision
from broker.kafka import clients as kafka
from broker.kafka import embedded as local_kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import TopicSpec
from broker.policy.profiles import directory_kind
from broker.router.service import RouterService
from connectors.gateway.connector import Connector

RESULTS = Path(__file__).parent / "results"
PLA, HLA, HOF, HF = "la-e10000016", "la-e10000017", "pf-e23000032", "pf-e23000003"
PARTIES = [PLA, HLA, HOF, HF, "icb-e54000032", "icb-e54000048"]
CASES = 64
SHARING = SharingDecision(
    "locate a missing child",
    ("UK_GDPR_6_1_E_PUBLIC_TASK",),
    "NOT_SOUGHT",
    "Duty inspector",
    "risk of significant harm",
)


async def prefill(settings: KafkaSettings, n: int) -> tuple[str, float]:
    """Place a child, then publish ``n`` missing reports; returns the outbound topic."""
    conns = {}
    await provision.setup(settings)
    for a in PARTIES:
        await provision.add_agency(settings, a)
        c = Connector(principals.settings_for(settings, a), AgencyKeys.new(a))
        await c.start()
        await publish(settings, AgencyEntry.from_keys(c.keys, a, directory_kind(a)))
        conns[a] = c
    for c in conns.values():
        await c.sync()
    placement = {**PAYLOADS["PlacementNotified"], "provider": None, "host_authority": HLA}
    body = conns[PLA].convert("PlacementNotified", placement)
    placed = [
        conns[PLA].prepare("PlacementNotified", body, case_ref=f"KCC-LAC-{i}", sharing=SHARING)
        for i in range(CASES)
    ]
    await conns[PLA].publish(placed)
    hf = conns[HF]
    missing = hf.convert("ChildMissingReported", PAYLOADS["ChildMissingReported"])
    recipients = [
        r
        for r in hf.rules.recipients(
            "ChildMissingReported", HF, hf.rules.placement_parties(PLA, HLA)
        )
    ]
    from broker.model import Role

    t0 = time.perf_counter()
    for start in range(0, n, 500):
        batch = [
            hf.prepare(
                "ChildMissingReported",
                missing,
                case_ref=f"KCC-LAC-{i % CASES}",
                sharing=SHARING,
                urgency="IMMEDIATE",
                recipients=recipients,
                sender_role=Role.HOST_FORCE,
            )
            for i in range(start, min(n, start + 500))
        ]
        await hf.publish(batch)
    publish_s = time.perf_counter() - t0
    for c in conns.values():
        await c.stop()
    return settings.topics.outbound(HF), publish_s


async def drain_time(
    settings: KafkaSettings, group: str, topic: str, total: int, timeout_s: float = 900
) -> float:
    """Seconds until ``group`` has committed ``total`` records of ``topic``."""
    parts = await kafka.partitions(settings, topic)
    tps = [TopicPartition(topic, p) for p in parts]
    admin = kafka.admin(settings)
    await admin.start()
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < timeout_s:
            offsets = await admin.list_consumer_group_offsets(group)
            done = sum(offsets[tp].offset for tp in tps if tp in offsets)
            if done >= total:
                return time.perf_counter() - t0
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    raise TimeoutError(f"{group} did not finish {topic}")


async def baseline(settings: KafkaSettings, topic: str, total: int) -> float:
    """Raw aiokafka: read, write three copies, commit offsets in the transaction."""
    outs = [f"{settings.topic_prefix}.bench.copy{i}" for i in range(3)]
    await kafka.ensure_topics(settings, [TopicSpec(t, 3) for t in outs])
    group = f"{settings.topic_prefix}-baseline"
    consumer = kafka.consumer(settings, topic, group_id=group)
    producers: dict[int, Any] = {}
    await consumer.start()
    t0 = time.perf_counter()
    done = 0
    try:
        while done < total:
            done += await fan_out(settings, consumer, producers, group, outs)
    finally:
        await consumer.stop()
        for p in producers.values():
            await p.stop()
    return time.perf_counter() - t0


async def run(n: int) -> dict[str, Any]:
    external = KafkaSettings.from_env()
    started_here = external is None and local_kafka.status() is None
    settings = external or local_kafka.start().settings()
    try:
        return await _measure(settings, n)
    finally:
        if started_here:
            local_kafka.stop()


async def _measure(settings: KafkaSettings, n: int) -> dict[str, Any]:
    settings = settings.with_prefix(f"bench{uuid.uuid4().hex[:6]}")
    await kafka.ensure_topics(settings, settings.topics.core())
    topic, publish_s = await prefill(settings, n)
    print(f"published {n} in {publish_s:.1f}s", flush=True)
    base_s = await baseline(settings, topic, n)
    print(f"baseline copied {n} in {base_s:.1f}s", flush=True)

    service = RouterService(principals.settings_for(settings, model.ROUTER))
    task = asyncio.create_task(service.run())
    try:
        group = settings.topics.group("router")
        await drain_time(settings, group, settings.topics.outbound(PLA), CASES)
        router_s = await drain_time(settings, group, topic, n)
    finally:
        service.stop_event.set()
        await task
    return {
        "benchmark": "router",
        "messages": n,
        "recipients": 3,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "connector_publish_msgs_per_s": n / publish_s,
        "baseline_msgs_per_s": n / base_s,
        "router_msgs_per_s": n / router_s,
        "router_vs_baseline": base_s / router_s,
        "note": "router timed after it routed the placements (start-up excluded)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    from broker.logging import configure_logging

    configure_logging(level=os.environ.get("CBX_LOG_LEVEL", "WARNING"))
    result = asyncio.run(run(args.messages))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "router.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"messages {result['messages']}, 3 recipients each")
    print(
        f"  connector publish (seal+sign+send): {result['connector_publish_msgs_per_s']:8.0f} msg/s"
    )
    print(f"  raw aiokafka transactional copy:    {result['baseline_msgs_per_s']:8.0f} msg/s")
    print(
        f"  cbx router:                         {result['router_msgs_per_s']:8.0f} msg/s"
        f"  ({result['router_vs_baseline']:.2f} x baseline)"
    )


if __name__ == "__main__":
    main()
