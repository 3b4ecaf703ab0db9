"""What a handover costs against the number of partitions that move.

    .venv/bin/python -m benchmarks.bench_handover [--sizes 250,500,1000,2000]

When one of two router instances stops, the other is given its partitions, and a report on one
of them waits until the survivor has taken them on. This measures that handover with the
router's own client (confluent-kafka, the consumer group protocol, read_committed, a 500 ms fetch
hold) and nothing of cbx around it, for several numbers of partitions moved, in one run on the
same broker. For each size N: topics of 100 partitions, 2N in all; two members of a fresh group,
each owning N and having read a record of each; then one leaves and, as it has left, a record is
written to ten of its partitions. In the member that stays:

1. heard_s: from the leave until the group's new assignment reaches the application;
2. assign_s: how long the client takes to add the N partitions to its N (``incremental_assign``,
   called in the callback);
3. first_record_s: from the leave until the first of the ten records arrives.

Each size runs twice: once with an offset committed for every partition, once with none for the
partitions that move, as the router left a partition nothing had been routed from before it
committed starting offsets (docs/architecture.md, "Where a partition begins"). Without an offset
the member that stays must ask where each moved partition begins (ListOffsets, one request a
partition). In both, the partitions' first records are deleted once read, so each begins past
them and neither run reads anything but the probes again. Each row without offsets gives its
times as ratios of the row with them, of the same size; the first size with offsets is also the
baseline of every size's ratios. The runs go one after the other, each size on topics of its own
(both its runs on the same ones) deleted after it (7,500 partitions in all by default): run it on
a broker of its own, not next to an exchange already near the broker's file descriptor limit,
which the deleted topics' files count against until the broker removes them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from benchmarks.bench_clients import TOPIC_PARTITIONS, every_partition_led
from broker.kafka import clients as kafka
from broker.kafka import embedded as local_kafka
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import TopicSpec

RESULTS = Path(__file__).parent / "results"
#: Records written to the leaver's partitions once it has left.
PROBES = 10
#: As the router's consumer (broker/router/service.py).
FETCH_WAIT_MS = 500


class Member:
    """One member of the group, polling on a thread of its own."""

    def __init__(self, settings: KafkaSettings, group: str, pattern: str) -> None:
        from confluent_kafka import Consumer

        self.owned: set[tuple[str, int]] = set()
        self.assigned_at: list[float] = []
        self.assign_s: list[float] = []
        self.arrivals: list[tuple[float, str, int, bytes]] = []
        self.consumer = Consumer(
            {
                **settings.librdkafka_config(),
                "group.id": group,
                "group.protocol": "consumer",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": FETCH_WAIT_MS,
            }
        )
        self.consumer.subscribe([pattern], on_assign=self._assign, on_revoke=self._revoke)
        self._stop = threading.Event()
        self._commit, self._committed = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _assign(self, consumer: Any, partitions: list[Any]) -> None:
        if not partitions:
            return
        began = time.perf_counter()
        self.assigned_at.append(began)
        consumer.incremental_assign(partitions)
        self.assign_s.append(time.perf_counter() - began)
        self.owned |= {(p.topic, p.partition) for p in partitions}

    def _revoke(self, consumer: Any, partitions: list[Any]) -> None:
        consumer.incremental_unassign(partitions)
        self.owned -= {(p.topic, p.partition) for p in partitions}

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._commit.is_set():
                self._commit_owned()
                self._commit.clear()
                self._committed.set()
            msg = self.consumer.poll(0.05)
            if msg is not None and msg.error() is None:
                self.arrivals.append(
                    (time.perf_counter(), msg.topic(), msg.partition(), msg.value())
                )

    def _commit_owned(self) -> None:
        positions = [p for p in self.consumer.position(self.consumer.assignment()) if p.offset >= 0]
        if positions:
            self.consumer.commit(offsets=positions, asynchronous=False)

    def commit(self, within_s: float = 60.0) -> None:
        """Commit the position of every partition owned, on the polling thread (the client's
        calls are made from one thread, as the router's are)."""
        self._committed.clear()
        self._commit.set()
        if not self._committed.wait(within_s):
            raise TimeoutError("the commit did not complete")

    def leave(self) -> None:
        """Stop polling and leave the group (once: a second call does nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.consumer.close()


async def _wait(check: Any, within_s: float, what: str) -> None:
    end = time.monotonic() + within_s
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def handover(
    settings: KafkaSettings, name: str, topics: list[str], offsets: bool
) -> dict[str, Any]:
    """Two members of a fresh group sharing ``topics``; one leaves; the other's times. With
    ``offsets``, every partition has a committed offset; without, the moved ones have none."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        # A record on every partition, for the members to read: then each is fetching them all.
        await asyncio.wait_for(every_partition_led(settings, topics), 300)
        pattern = "^" + re.escape(f"{name}.") + ".*"
        group = f"{name}-{uuid.uuid4().hex[:6]}"
        total = len(topics) * TOPIC_PARTITIONS
        probe = f"probe {group}".encode()  # this run's, not one the other run wrote
        stays, leaves = Member(settings, group, pattern), Member(settings, group, pattern)
        try:
            await _wait(
                lambda: (
                    len(stays.owned) + len(leaves.owned) == total
                    and len(stays.arrivals) + len(leaves.arrivals) >= total
                ),
                300,
                "the two members did not share the partitions and read them",
            )
            await asyncio.sleep(2.0)  # settled: no rebalance still under way
            # Each partition now begins past what was read of it (-1: its end), as a partition
            # whose early records retention removed: nothing but the probes is read again.
            every = [TopicPartition(t, p) for t in topics for p in range(TOPIC_PARTITIONS)]
            await admin.delete_records({tp: RecordsToDelete(-1) for tp in every})
            stays.commit()
            if offsets:
                leaves.commit()
            moved = sorted(leaves.owned)
            kept = len(stays.owned)
            stays.assigned_at.clear()
            stays.assign_s.clear()
            before = len(stays.arrivals)
            leaves.leave()
            left = time.perf_counter()
            producer = kafka.producer(settings, linger_ms=0)
            await producer.start()
            try:
                probes = random.Random(total).sample(moved, PROBES)
                for topic, partition in probes:
                    await producer.send_and_wait(topic, probe, partition=partition)
            finally:
                await producer.stop()
            await _wait(
                lambda: any(v == probe for *_, v in stays.arrivals[before:]),
                120,
                "no probe arrived in the member that stayed",
            )
            first = min(t for t, *_, v in stays.arrivals[before:] if v == probe)
            return {
                "offsets": "committed" if offsets else "none",
                "partitions_moved": len(moved),
                "partitions_kept": kept,
                "heard_s": round(stays.assigned_at[0] - left, 3) if stays.assigned_at else None,
                "assign_s": round(stays.assign_s[0], 3) if stays.assign_s else None,
                "first_record_s": round(first - left, 3),
            }
        finally:
            # Both, whatever failed: a member left polling would hold the partitions' group.
            leaves.leave()
            stays.leave()
    finally:
        await admin.close()


async def both_ways(settings: KafkaSettings, size: int) -> list[dict[str, Any]]:
    """``handover`` with offsets, then without, over the same 2 * ``size`` partitions (a fresh
    group each time), deleted after."""
    count = max(1, 2 * size // TOPIC_PARTITIONS)
    name = f"{settings.topic_prefix}.h{size}"
    topics = [f"{name}.{i:03d}" for i in range(count)]
    await kafka.ensure_topics(settings, [TopicSpec(t, TOPIC_PARTITIONS) for t in topics])
    try:
        rows = []
        for offsets in (True, False):
            print(f"{size} partitions moving, offsets {offsets}", flush=True)
            rows.append(await handover(settings, name, topics, offsets))
        return rows
    finally:
        admin = kafka.admin(settings)
        await admin.start()
        try:
            await admin.delete_topics(topics)  # thousands of the broker's file descriptors
        finally:
            await admin.close()


async def run(sizes: list[int]) -> dict[str, Any]:
    external = KafkaSettings.from_env()
    started_here = external is None and local_kafka.status() is None
    base = external or local_kafka.start().settings()
    settings = base.with_prefix(f"handover{uuid.uuid4().hex[:6]}")
    rows = []
    try:
        for size in sizes:
            rows += await both_ways(settings, size)
    finally:
        if started_here:
            local_kafka.stop()
    baseline = rows[0]
    keys = ("heard_s", "assign_s", "first_record_s")
    for with_offsets, row in zip(rows[::2], rows[1::2], strict=True):
        for key in keys:
            if row[key] is not None and with_offsets[key]:
                row[f"{key}_x_committed"] = round(row[key] / with_offsets[key], 2)
    for row in rows:
        for key in keys:
            if row[key] is not None and baseline[key]:
                row[f"{key}_x_baseline"] = round(row[key] / baseline[key], 2)
    return {
        "benchmark": "handover",
        "fetch_wait_ms": FETCH_WAIT_MS,
        "rows": rows,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="250,500,1000,2000", help="Partitions moved, in turn.")
    parser.add_argument("--out", default="handover.json", help="File name under results/.")
    args = parser.parse_args()
    from broker.logging import configure_logging

    configure_logging(level="WARNING")
    sizes = [int(s) for s in args.sizes.split(",")]
    result = asyncio.run(run(sizes))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in result["rows"]:
        against = (
            f", {r['first_record_s_x_committed']}x with offsets"
            if "first_record_s_x_committed" in r
            else ""
        )
        print(
            f"  {r['partitions_moved']:5} moved, offsets {r['offsets']:9}: heard {r['heard_s']} s, "
            f"client's assign {r['assign_s']} s ({r.get('assign_s_x_baseline')}x), first record "
            f"{r['first_record_s']} s ({r.get('first_record_s_x_baseline')}x{against})"
        )


if __name__ == "__main__":
    main()
