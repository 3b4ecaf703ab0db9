"""Moving an agency's topics to the partitions its kind is given now (``cbx agency migrate``).

Kafka can add partitions to a topic but never take them away. An agency provisioned before its
kind was given fewer partitions (a children's home with a council's three and the urgent lane)
keeps them until its four topics are made again. This module does that without losing a record
and without routing or delivering anything twice:

1. Refuse unless the agency's consumer groups are empty (its connector is stopped).
2. Hold every writer off the agency's topics: an ACL denying WRITE to every principal on each of
   them (Kafka's DENY wins over the router's and tracker's prefixed ALLOW; the administrator, a
   super user, is not held). A transaction already open on them ends (commits, or aborts when its
   next write is refused) before anything is read.
3. Read every committed record of the four topics and refuse, releasing the hold, when the router
   has not routed all of the outbound topic or a consumer group of the agency has not delivered
   all of its inbox: those records would otherwise be copied as done.
4. Keep every record in a spool file (one JSON line a record, with its old partition and offset),
   written and synced before anything is deleted: the file is what a failed run is recovered from.
5. Tell the router which offsets of the new outbound topic are copies it has already routed: a
   ``moved:<topic>/<partition>`` marker on ``cbx.router.routed`` (which only the router and the
   administrator can write), written before the new topic exists, so the router has read it
   before it is assigned the new partitions. The marker also ends the old topic's dead-letter
   positions, which a new topic's offsets would otherwise meet again.
6. Delete the topics, wait until the cluster has let them go, make them again with the plan's
   partitions, and write every record back (in each old partition's order; a case's records stay
   together, on the lane if they were on the lane), with its key, headers and timestamp.
7. Set each of the agency's consumer groups that had read the inbox to the end of the copy, and
   release the hold.

Recipients' signatures and seals are in the records themselves, so a copy verifies and opens as
the original did. A connector that starts afterwards finds its cases and statuses on the new
topics, and its chronology index, which names the topics' Kafka ids, reads them again.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import heapq
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from broker.admin import provision
from broker.errors import CbxError
from broker.kafka import clients as kafka
from broker.kafka import lanes, topics
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import TopicSpec
from broker.logging import get_logger
from broker.policy.profiles import agency_topics

log = get_logger("migrate")

#: How long the move waits for a transaction open on the held topics to end, and for the
#: cluster to let deleted topics go.
SETTLE_S = 60.0


class MigrationError(CbxError):
    """A move refused or failed; the message says what holds it and what to do."""

    stage = "migrate"


@dataclass(frozen=True)
class TopicMove:
    """One of an agency's topics with more partitions than its kind is given now."""

    spec: TopicSpec
    now: int

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Moved:
    """What a move did: per topic, partitions before and after and records copied."""

    agency: str
    spool: Path | None
    topics: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    #: Consumer groups set to the end of the inbox copy: group -> next offset per partition.
    groups: dict[str, dict[int, int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "agency": self.agency,
            "spool": str(self.spool) if self.spool else None,
            "topics": [
                {"topic": t, "partitions_before": a, "partitions_after": b, "records": n}
                for t, (a, b, n) in self.topics.items()
            ],
            "groups": self.groups,
        }


@dataclass(frozen=True)
class Rec:
    """One record as read from the old topic (and as kept in the spool)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": _b64(self.key),
            "value": _b64(self.value),
            "headers": [[k, _b64(v)] for k, v in self.headers],
        }


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.librdkafka_config())


def _result(futures: dict[Any, Any], what: str) -> dict[Any, Any]:
    out = {}
    for key, fut in futures.items():
        try:
            out[key] = fut.result(timeout=30)
        except KafkaException as exc:
            raise MigrationError(f"{what} ({key}): {exc.args[0].str()}") from exc
    return out


# --- what would move ---------------------------------------------------------------------------


async def plan(admin: KafkaSettings, agency: str) -> list[TopicMove]:
    """The agency's topics that have more partitions than its kind is given now."""
    topics.check_agency_id(agency)
    specs = agency_topics(admin.topics, agency)
    counts = await partition_counts(admin, [s.name for s in specs])
    return [
        TopicMove(s, counts[s.name])
        for s in specs
        if s.name in counts and counts[s.name] > s.partitions
    ]


async def partition_counts(admin: KafkaSettings, names: list[str]) -> dict[str, int]:
    """Partition counts of those of ``names`` that exist."""
    client = kafka.admin(admin)
    await client.start()
    try:
        described = await client.describe_topics(names)
    finally:
        await client.close()
    return {
        t["topic"]: len(t["partitions"])
        for t in described
        if not t.get("error_code") and t.get("partitions")
    }


async def agencies_to_move(admin: KafkaSettings) -> list[str]:
    """Every provisioned agency with a topic that has more partitions than its kind is given."""
    return [a for a in await provision.provisioned_agencies(admin) if await plan(admin, a)]


# --- the move ----------------------------------------------------------------------------------


async def migrate(admin: KafkaSettings, agency: str, spool_dir: Path) -> Moved:
    """Move ``agency``'s topics to the plan's partitions (see the module's description)."""
    moves = await plan(admin, agency)
    done = Moved(agency, None)
    if not moves:
        return done
    names = [m.name for m in moves]
    groups = await asyncio.to_thread(_agency_groups, admin, agency)
    with _held(admin, names):
        await _settled(admin, names)
        records = {name: await _read(admin, name) for name in names}
        committed = await asyncio.to_thread(_committed, admin, [*groups, _router_group(admin)])
        _check_done(admin, agency, records, committed, groups)
        inbox = admin.topics.inbox(agency)
        readers = [g for g in groups if any(t == inbox for t, _ in committed.get(g, {}))]
        done.spool = _spool(spool_dir, agency, moves, records, readers)
        await asyncio.to_thread(_delete, admin, names)
        done.groups = await _rebuild(admin, agency, moves, records, readers)
    for m in moves:
        done.topics[m.name] = (m.now, m.spec.partitions, len(records[m.name]))
    log.info("agency_migrated", agency=agency, topics=len(moves), spool=str(done.spool))
    return done


async def _rebuild(
    admin: KafkaSettings,
    agency: str,
    moves: list[TopicMove],
    records: dict[str, list[Rec]],
    readers: list[str],
) -> dict[str, dict[int, int]]:
    """Make the deleted topics again and write their records back (under the hold); the inbox
    readers' offsets set to the end of the copy. What a resumed move finds written already is
    not written again."""
    there = await partition_counts(admin, [m.name for m in moves])
    missing = [m.name for m in moves if m.name not in there]
    await asyncio.to_thread(_router_let_go, admin, missing)
    placed = {m.name: _placed(records[m.name], m.spec.partitions) for m in moves}
    outbound = admin.topics.outbound(agency)
    if outbound in missing:
        await _mark_moved(admin, outbound, placed[outbound], moves)
    await kafka.ensure_topics(admin, [m.spec for m in moves])
    await _write(admin, {n: await _still_to_write(admin, n, rows) for n, rows in placed.items()})
    inbox = admin.topics.inbox(agency)
    if inbox not in placed:
        return {}
    ends = _ends(placed[inbox], _count(moves, inbox))
    await asyncio.to_thread(_set_offsets, admin, readers, inbox, ends)
    return {g: ends for g in readers}


async def _still_to_write(
    admin: KafkaSettings, name: str, rows: list[tuple[int, Rec]]
) -> list[tuple[int, Rec]]:
    """What of ``rows`` the new ``name`` does not hold yet: all of them when it is empty, none
    when it holds them all, the rest of each partition when a move stopped while writing (a
    partition is written in order, so it holds the first of its copies). Anything else is
    refused: the topic was written since, so it is not this move's to fill."""
    has: dict[int, list[bytes | None]] = {}
    for r in await _read(admin, name):
        has.setdefault(r.partition, []).append(r.value)
    if not has:
        return rows
    left: list[tuple[int, Rec]] = []
    seen: dict[int, int] = {}
    for p, r in rows:
        i = seen[p] = seen.get(p, 0) + 1
        written = has.get(p, [])
        if i <= len(written):
            if written[i - 1] != r.value:
                break
            continue
        left.append((p, r))
    else:
        if all(len(v) <= seen.get(p, 0) for p, v in has.items()):
            return left
    raise MigrationError(
        f"{name} holds records that are not the first copies of this move: it was written "
        "since; compare it with the spool file before writing anything"
    )


async def resume(admin: KafkaSettings, spool: Path) -> Moved:
    """Finish a move that failed after deleting the topics, from its spool file: the topics made
    again if they are not there yet, and the records written back if they are not there yet."""
    head, records = _load_spool(spool)
    agency = str(head["agency"])
    specs = {s.name: s for s in agency_topics(admin.topics, agency)}
    moves = [TopicMove(specs[n], int(t["before"])) for n, t in head["topics"].items()]
    names = [m.name for m in moves]
    counts = await partition_counts(admin, names)
    early = sorted(n for n in names if counts.get(n, 0) > specs[n].partitions)
    if early:
        raise MigrationError(
            f"{', '.join(early)} still have their old partitions: that move stopped before "
            "deleting anything, so run `cbx agency migrate` again instead"
        )
    await asyncio.to_thread(_agency_groups, admin, agency)  # its connector must still be stopped
    done = Moved(agency, spool)
    with _held(admin, names):
        done.groups = await _rebuild(admin, agency, moves, records, list(head.get("readers", [])))
    for m in moves:
        done.topics[m.name] = (m.now, m.spec.partitions, len(records[m.name]))
    log.info("agency_migration_resumed", agency=agency, spool=str(spool))
    return done


def _load_spool(path: Path) -> tuple[dict[str, Any], dict[str, list[Rec]]]:
    at = 1
    try:
        with path.open() as lines:
            head = json.loads(next(lines))
            records: dict[str, list[Rec]] = {n: [] for n in head["topics"]}
            for line in lines:
                at += 1
                x = json.loads(line)
                records[x["topic"]].append(
                    Rec(
                        x["topic"],
                        x["partition"],
                        x["offset"],
                        x["timestamp"],
                        _unb64(x["key"]),
                        _unb64(x["value"]),
                        tuple((k, _unb64(v) or b"") for k, v in x["headers"]),
                    )
                )
    except (OSError, StopIteration, ValueError, KeyError, TypeError) as exc:
        raise MigrationError(f"{path} line {at}: not a readable spool file ({exc!r})") from None
    wanted = head.get("records", {})
    short = {t: (len(rs), wanted.get(t)) for t, rs in records.items() if len(rs) != wanted.get(t)}
    if short:
        raise MigrationError(
            f"{path}: records missing from the spool file (have, expected): {short}"
        )
    return head, records


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _count(moves: list[TopicMove], name: str) -> int:
    return next(m.spec.partitions for m in moves if m.name == name)


def _router_group(admin: KafkaSettings) -> str:
    return admin.topics.group("router")


def _agency_groups(admin: KafkaSettings, agency: str) -> list[str]:
    """The agency's consumer groups; refused unless every one is empty (no member)."""
    client = _admin(admin)
    prefix = f"{admin.topic_prefix}-{agency}."
    try:
        listed = client.list_consumer_groups().result(timeout=30)
    except KafkaException as exc:
        raise MigrationError(f"listing consumer groups: {exc.args[0].str()}") from exc
    mine = sorted(g.group_id for g in listed.valid if g.group_id.startswith(prefix))
    if not mine:
        return []
    described = _result(client.describe_consumer_groups(mine), "describing consumer groups")
    busy = sorted(g for g, d in described.items() if d.members)
    if busy:
        raise MigrationError(
            f"{agency}'s connector is running (consumer groups with members: {', '.join(busy)}): "
            "stop it, then run the migration again"
        )
    return mine


def _committed(
    admin: KafkaSettings, groups: list[str], client: AdminClient | None = None
) -> dict[str, dict[tuple[str, int], int]]:
    """Each group's committed offsets (asked with ``client``, if given)."""
    client = client or _admin(admin)
    out: dict[str, dict[tuple[str, int], int]] = {}
    for group in groups:  # the call takes one group at a time
        got = _result(
            client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)]),
            f"reading the committed offsets of {group}",
        )
        out[group] = {
            (tp.topic, tp.partition): tp.offset
            for r in got.values()
            for tp in r.topic_partitions or []
            if tp.offset >= 0
        }
    return out


def _check_done(
    admin: KafkaSettings,
    agency: str,
    records: dict[str, list[Rec]],
    committed: dict[str, dict[tuple[str, int], int]],
    groups: list[str],
) -> None:
    """Refuse when a record would be copied as done that is not: an outbound record the router
    has not routed, an inbox record a group of the agency that reads the inbox has not
    delivered."""
    problems = []
    outbound, inbox = admin.topics.outbound(agency), admin.topics.inbox(agency)
    router = committed.get(_router_group(admin), {})
    waiting = [r for r in records.get(outbound, []) if r.offset >= router.get(_tp(r), 0)]
    if waiting:
        problems.append(f"the router has not routed {len(waiting)} record(s) of {outbound}")
    for group in groups:
        offsets = committed.get(group, {})
        if not any(t == inbox for t, _ in offsets):
            continue  # a group that does not read the inbox
        behind = [r for r in records.get(inbox, []) if r.offset >= offsets.get(_tp(r), 0)]
        if behind:
            problems.append(f"{group} has not delivered {len(behind)} record(s) of {inbox}")
    if problems:
        raise MigrationError(
            f"{agency}'s topics were not moved, nothing changed: {'; '.join(problems)}. "
            "Let the router run, and the agency's connector until it has delivered its inbox, "
            "stop the connector, then run the migration again"
        )


def _tp(r: Rec) -> tuple[str, int]:
    return (r.topic, r.partition)


# --- holding writers off -----------------------------------------------------------------------


def _deny(name: str, kind: type[AclBinding] = AclBinding) -> AclBinding:
    return kind(
        ResourceType.TOPIC,
        name,
        ResourcePatternType.LITERAL,
        "User:*",
        "*",
        AclOperation.WRITE,
        AclPermissionType.DENY,
    )


class _held:
    """Every principal but the administrator refused WRITE on ``names`` for the block's length;
    the hold is taken away however the block ends."""

    def __init__(self, admin: KafkaSettings, names: list[str]) -> None:
        self.admin = admin
        self.names = names
        self.bindings = [_deny(n) for n in names]
        self.secured = admin.security_protocol.startswith("SASL")

    def __enter__(self) -> _held:
        if not self.secured:
            raise MigrationError(
                "the cluster has no SASL listener, so writers cannot be held off the topics "
                "being moved: run the migration against the cluster's SASL listener as its "
                "administrator"
            )
        client = _admin(self.admin)
        _result(client.create_acls(self.bindings), "holding writers off")
        log.info("writers_held", topics=self.names)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.secured:
            return
        client = _admin(self.admin)
        filters = [_deny(n, AclBindingFilter) for n in self.names]
        _result(client.delete_acls(filters), "releasing the hold on writers")
        log.info("writers_released", topics=self.names)


async def _settled(admin: KafkaSettings, names: list[str]) -> None:
    """Return once no transaction is open on ``names`` (each partition's last stable offset is
    its high watermark) and the ends stay put: what was written before the hold is all there."""
    parts = await partition_counts(admin, names)
    tps = [TopicPartition(n, p) for n in names for p in range(parts.get(n, 0))]
    committed = kafka.consumer(admin, group_id=None)
    everything = kafka.consumer(admin, group_id=None, isolation_level="read_uncommitted")
    await committed.start()
    await everything.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_S
        last: dict[Any, int] | None = None
        while True:
            stable = await committed.end_offsets(tps)
            high = await everything.end_offsets(tps)
            if stable == high and stable == last:
                return
            last = stable if stable == high else None
            if loop.time() > deadline:
                open_on = sorted({tp.topic for tp in tps if stable[tp] != high[tp]})
                raise MigrationError(
                    f"a transaction writing {', '.join(open_on) or 'the topics'} stayed open for "
                    f"{SETTLE_S:.0f} s after writers were held off: nothing was moved; run the "
                    "migration again"
                )
            await asyncio.sleep(0.5)
    finally:
        await committed.stop()
        await everything.stop()


# --- reading, keeping, writing back -------------------------------------------------------------


async def _read(admin: KafkaSettings, name: str) -> list[Rec]:
    out: list[Rec] = []

    def keep(r: Any) -> None:
        out.append(
            Rec(
                name,
                r.partition,
                r.offset,
                r.timestamp,
                r.key,
                r.value,
                tuple((k, bytes(v)) for k, v in (r.headers or ())),
            )
        )

    await kafka.read_to_end(admin, name, keep)
    return out


def _spool(
    spool_dir: Path,
    agency: str,
    moves: list[TopicMove],
    records: dict[str, list[Rec]],
    readers: list[str],
) -> Path:
    """Every record, one JSON line each after a line saying what was moved; synced to disk and
    readable by its owner only (case references travel in clear headers)."""
    spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = spool_dir / f"{agency}-{stamp}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        head = {
            "agency": agency,
            "at": stamp,
            "topics": {m.name: {"before": m.now, "after": m.spec.partitions} for m in moves},
            "records": {n: len(rs) for n, rs in records.items()},
            "readers": readers,
        }
        out.write(json.dumps(head) + "\n")
        for rs in records.values():
            for r in rs:
                out.write(json.dumps(r.as_json()) + "\n")
        out.flush()
        os.fsync(out.fileno())
    return path


def _placed(records: list[Rec], partitions: int) -> list[tuple[int, Rec]]:
    """Each record with its new partition, in the order to write them: each old partition's
    records keep their order, and the partitions are interleaved by timestamp. A record of the
    old urgent lane goes to the new lane (or the only partition), any other to its key's bulk
    partition, as a producer would place it now."""
    by_part: dict[int, list[Rec]] = {}
    for r in records:
        by_part.setdefault(r.partition, []).append(r)
    old = max(by_part, default=0) + 1
    lane = max((r.partition for r in records), default=-1)
    merged: Iterator[Rec] = heapq.merge(*by_part.values(), key=lambda r: r.timestamp)
    out = []
    for r in merged:
        was_lane = lanes.has_lane(old) and r.partition == lane
        out.append((lanes.partition_for(r.key, partitions, was_lane), r))
    return out


def _ends(placed: list[tuple[int, Rec]], partitions: int) -> dict[int, int]:
    ends = dict.fromkeys(range(partitions), 0)
    for p, _ in placed:
        ends[p] += 1
    return ends


async def _mark_moved(
    admin: KafkaSettings, outbound: str, placed: list[tuple[int, Rec]], moves: list[TopicMove]
) -> None:
    """Tell the router how many of each new outbound partition's first offsets are copies."""
    producer = kafka.producer(admin)
    await producer.start()
    try:
        for p, n in _ends(placed, _count(moves, outbound)).items():
            key = topics.moved_key(outbound, p)
            await (await kafka.send(producer, admin.topics.routed, str(n).encode(), key=key))
    finally:
        await producer.stop()


def _delete(admin: KafkaSettings, names: list[str]) -> None:
    client = _admin(admin)
    _result(client.delete_topics(names, operation_timeout=30), "deleting the old topics")
    until = time.monotonic() + SETTLE_S
    while True:
        meta = client.list_topics(timeout=30)
        left = [n for n in names if n in meta.topics]
        if not left:
            return
        if time.monotonic() > until:
            raise MigrationError(
                f"the cluster had not let {', '.join(left)} go {SETTLE_S:.0f} s after deleting "
                "them: the records are in the spool file; run the migration again to finish"
            )
        time.sleep(0.2)


def _router_let_go(admin: KafkaSettings, names: list[str]) -> None:
    """Wait until no router instance holds a partition of ``names`` and the router group's
    offsets on them are gone with them. The router then takes the new topic's partitions as new:
    it catches up with the routed ids, the marker among them, before routing any of them, and
    reads them from their start."""
    client = _admin(admin)
    group = _router_group(admin)
    until = time.monotonic() + SETTLE_S
    while True:
        described = _result(client.describe_consumer_groups([group]), "describing the router")
        held = {
            tp.topic
            for d in described.values()
            for m in d.members
            for tp in (m.assignment.topic_partitions if m.assignment else [])
            if tp.topic in names
        }
        kept = {t for t, _ in _committed(admin, [group], client).get(group, {}) if t in names}
        if not held and not kept:
            return
        if time.monotonic() > until:
            raise MigrationError(
                f"the router still held {', '.join(sorted(held | kept))} {SETTLE_S:.0f} s after "
                "the topics were deleted: the records are in the spool file"
            )
        time.sleep(0.2)


async def _write(admin: KafkaSettings, placed: dict[str, list[tuple[int, Rec]]]) -> None:
    producer = kafka.producer(admin, linger_ms=20)
    await producer.start()
    try:
        futures = []
        for name, rows in placed.items():
            for p, r in rows:
                futures.append(
                    await kafka.send(
                        producer,
                        name,
                        r.value,
                        key=r.key,
                        partition=p,
                        timestamp_ms=r.timestamp,
                        headers=list(r.headers),
                    )
                )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _set_offsets(admin: KafkaSettings, groups: list[str], inbox: str, ends: dict[int, int]) -> None:
    client = _admin(admin)
    for group in groups:
        request = ConsumerGroupTopicPartitions(
            group, [CTopicPartition(inbox, p, n) for p, n in sorted(ends.items())]
        )
        _result(client.alter_consumer_group_offsets([request]), f"setting {group}'s offsets")


__all__ = ["MigrationError", "Moved", "TopicMove", "agencies_to_move", "migrate", "plan", "resume"]
