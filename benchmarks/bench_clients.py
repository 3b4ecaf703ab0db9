"""Two Kafka clients side by side: what it costs a consumer to hold many partitions.

    .venv/bin/python -m benchmarks.bench_clients [--partitions 4000] [--seconds 20]

A router at national size holds about 3,900 outbound partitions, nearly all idle at any moment,
and an urgent report on any one of them must be routed at once. This measures, for aiokafka (what
the router uses) and confluent-kafka (librdkafka, which cbx uses for administration), one client
at a time in a process of its own, in one run on the same broker:

1. ready_s: from the consumer's start (joining a group that subscribes to every topic) until it
   reads its first record;
2. latency of a record produced every 200 ms to a random partition, from its timestamp to its
   arrival in the consumer (p50, p99, max), with every other partition idle, from three seconds
   after the first record on;
3. the consumer process's CPU from its first record on, as a share of one core.

Both clients use read_committed, a 100 ms fetch wait and their defaults otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import random
import re
import resource
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.bench_cold import summary
from broker.kafka import clients as kafka
from broker.kafka import embedded as local_kafka
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import TopicSpec

RESULTS = Path(__file__).parent / "results"
TOPIC_PARTITIONS = 100
PROBE_EVERY_S = 0.2
FETCH_WAIT_MS = 100
#: Seconds after the first record before latencies count.
SETTLE_S = 3.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _aiokafka_consumer(settings: KafkaSettings, pattern: str, group: str, pipe: Any) -> Any:
    consumer = kafka.consumer(
        settings, group_id=group, fetch_max_wait_ms=FETCH_WAIT_MS, auto_offset_reset="latest"
    )
    consumer.subscribe(pattern=pattern)
    await consumer.start()
    arrivals: list[tuple[float, float]] = []
    # (time, CPU used) at the first record, then when told to stop
    marks: list[tuple[float, float]] = []
    try:
        while not pipe.poll():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                arrivals.extend((now, r.timestamp / 1000) for r in records)
            if arrivals and not marks:
                marks.append((now, _cpu_s()))
        marks.append((time.time(), _cpu_s()))
    finally:
        await consumer.stop()
    return arrivals, marks


def _confluent_consumer(settings: KafkaSettings, pattern: str, group: str, pipe: Any) -> Any:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            **settings.librdkafka_config(),
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": FETCH_WAIT_MS,
        }
    )
    consumer.subscribe([f"^{pattern}"])
    arrivals: list[tuple[float, float]] = []
    marks: list[tuple[float, float]] = []
    try:
        while not pipe.poll():
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                arrivals.append((time.time(), msg.timestamp()[1] / 1000))
                if not marks:
                    marks.append((time.time(), _cpu_s()))
        marks.append((time.time(), _cpu_s()))
    finally:
        consumer.close()
    return arrivals, marks


def child(client: str, settings: KafkaSettings, pattern: str, group: str, pipe: Any) -> None:
    """One consumer of one client until the parent says stop; then its arrivals and CPU."""
    started = time.time()
    if client == "aiokafka":
        arrivals, marks = asyncio.run(_aiokafka_consumer(settings, pattern, group, pipe))
    else:
        arrivals, marks = _confluent_consumer(settings, pattern, group, pipe)
    pipe.recv()
    # CPU from the first record on: holding the partitions, not joining the group.
    (t0, cpu0), (t1, cpu1) = marks[0], marks[-1]
    share = (cpu1 - cpu0) / (t1 - t0) if len(marks) > 1 and t1 > t0 else None
    pipe.send((started, arrivals, share))


async def _probe(settings: KafkaSettings, topics: list[str], seconds: float) -> None:
    """One record every ``PROBE_EVERY_S`` to a random partition, for ``seconds``."""
    producer = kafka.producer(settings, linger_ms=0)
    await producer.start()
    rng = random.Random(7)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await producer.send_and_wait(
                rng.choice(topics), b"probe", partition=rng.randrange(TOPIC_PARTITIONS)
            )
            await asyncio.sleep(PROBE_EVERY_S)
    finally:
        await producer.stop()


async def every_partition_led(settings: KafkaSettings, topics: list[str]) -> None:
    """One record on every partition, so that no client is measured while leaders are still
    being elected for topics made a moment ago."""
    producer = kafka.producer(settings, linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(t, b"warm", partition=p)
            for t in topics
            for p in range(TOPIC_PARTITIONS)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def measure(
    settings: KafkaSettings, client: str, topics: list[str], pattern: str, seconds: float
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    group = f"{settings.topic_prefix}-{client}-{uuid.uuid4().hex[:6]}"
    proc = ctx.Process(target=child, args=(client, settings, pattern, group, theirs), daemon=True)
    proc.start()
    # Probes from the start: the first that arrives says when the consumer was reading.
    await _probe(settings, topics, seconds)
    ours.send("stop")
    started, arrivals, cpu_share = await asyncio.get_running_loop().run_in_executor(None, ours.recv)
    proc.join(30)
    first = min((a for a, _ in arrivals), default=None)
    # Steady: records sent from SETTLE_S after the consumer read its first one (a group that
    # subscribes by pattern may join again as it learns the topics: that is start-up, not
    # holding the partitions).
    steady = [a - t for a, t in arrivals if first is not None and t > first + SETTLE_S]
    return {
        "ready_s": round(first - started, 2) if first is not None else None,
        "latency": (summary(steady) | {"count": len(steady)}) if steady else {},
        "cpu_share_of_a_core": round(cpu_share, 3) if cpu_share is not None else None,
    }


async def run(partitions: int, seconds: float) -> dict[str, Any]:
    external = KafkaSettings.from_env()
    started_here = external is None and local_kafka.status() is None
    base = external or local_kafka.start().settings()
    settings = base.with_prefix(f"clients{uuid.uuid4().hex[:6]}")
    count = max(1, partitions // TOPIC_PARTITIONS)
    topics = [f"{settings.topic_prefix}.many.{i:03d}" for i in range(count)]
    try:
        await kafka.ensure_topics(settings, [TopicSpec(t, TOPIC_PARTITIONS) for t in topics])
        print(f"{len(topics)} topics of {TOPIC_PARTITIONS} partitions made", flush=True)
        await asyncio.wait_for(every_partition_led(settings, topics), 300)
        pattern = re.escape(f"{settings.topic_prefix}.many.") + ".*"
        result: dict[str, Any] = {
            "benchmark": "clients",
            "partitions": count * TOPIC_PARTITIONS,
            "seconds": seconds,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        for client in ("aiokafka", "confluent-kafka"):
            print(f"{client}: {count * TOPIC_PARTITIONS} partitions, {seconds:.0f} s", flush=True)
            result[client] = await measure(settings, client, topics, pattern, seconds)
        return result
    finally:
        # Thousands of partitions hold thousands of the broker's file descriptors: given back.
        admin = kafka.admin(settings)
        await admin.start()
        try:
            await admin.delete_topics(topics)
        finally:
            await admin.close()
        if started_here:
            local_kafka.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", default="clients.json", help="File name under results/.")
    args = parser.parse_args()
    from broker.logging import configure_logging

    configure_logging(level="WARNING")
    result = asyncio.run(run(args.partitions, args.seconds))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    for client in ("aiokafka", "confluent-kafka"):
        r = result[client]
        lat = r["latency"]
        print(
            f"  {client:16} ready {r['ready_s']} s; a record on one of {result['partitions']} "
            f"partitions: p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, "
            f"max {lat.get('max_ms')} ms; CPU {r['cpu_share_of_a_core']} of a core"
        )


if __name__ == "__main__":
    main()
