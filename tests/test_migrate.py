"""``cbx agency migrate`` on the real broker: a children's home provisioned with a council's
partitions moves to its kind's one partition with every record kept, nothing routed or delivered
twice, its connector finding its cases, statuses and chronology afterwards, and new messages both
ways routed once. Refused, with nothing changed, while its connector runs or its inbox is not
delivered."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from agencies import body_of
from aiokafka import TopicPartition
from cli import cbx
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from exchange import SHARING, Exchange, exchange

from broker import model
from broker.admin import migrate as moving
from broker.delivery_log import Status
from broker.kafka import clients as kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.router.state import RouterState
from broker.tracker.service import TrackerService
from connectors.gateway.connector import Connector

pytestmark = pytest.mark.kafka

KENT, LANCS = "la-e10000016", "la-e10000017"
KENT_POLICE, LANCS_POLICE = "pf-e23000032", "pf-e23000003"
KENT_ICB, LANCS_ICB = "icb-e54000032", "icb-e54000048"
HOME = "cp-sc482913"
ALL = [KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB, HOME]
CASE, CASE2, CASE3 = "KCC-LAC-000123", "KCC-LAC-000124", "KCC-LAC-000125"


async def _home_as_a_council(ex: Exchange) -> None:
    """Every agency of ALL, the home provisioned as every agency was before kinds had their own
    partitions: with a council's (3, and the urgent lane)."""
    await kafka.ensure_topics(ex.settings, ex.settings.topics.agency(HOME, 3, True))
    for agency in ALL:
        await ex.agency(agency, inbox=(agency == HOME))
    await ex.sync_all()


async def _place(ex: Exchange, case: str) -> Any:
    body = body_of("PlacementNotified", host_authority=LANCS, provider=HOME)
    return await ex.connectors[KENT].send("PlacementNotified", body, case_ref=case, sharing=SHARING)


async def _admits(ex: Exchange, conn: Connector, case: str) -> Any:
    """The home reports the child missing: IMMEDIATE, on its outbound topic's urgent lane
    before the move (and its only partition after)."""
    return await conn.send(
        "ChildMissingReported",
        body_of("ChildMissingReported"),
        case_ref=f"{KENT}/{case}",
        sharing=SHARING,
        urgency="IMMEDIATE",
    )


async def _all_of(ex: Exchange, topic: str) -> list[Any]:
    out: list[Any] = []
    await kafka.read_to_end(ex.settings, topic, out.append)
    return out


async def _inbox_delivered(ex: Exchange) -> bool:
    """The home's inbox group has committed past every record of its inbox."""
    admin = kafka.admin(ex.settings)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(
            ex.settings.topics.agency_group(HOME, "inbox")
        )
    finally:
        await admin.close()
    last: dict[int, int] = {}
    for r in await _all_of(ex, ex.settings.topics.inbox(HOME)):
        last[r.partition] = r.offset
    return bool(last) and all(
        (m := committed.get(TopicPartition(ex.settings.topics.inbox(HOME), p))) is not None
        and m.offset > o
        for p, o in last.items()
    )


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _files(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.exists() else []


def _spooled(path: Path) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    head, *lines = [json.loads(x) for x in path.read_text().splitlines()]
    return stat.S_IMODE(path.stat().st_mode), head, lines


def _holds(settings: KafkaSettings) -> list[Any]:
    """DENY ACLs of every principal on this namespace's topics."""
    client = AdminClient(settings.librdkafka_config())
    found = client.describe_acls(
        AclBindingFilter(
            ResourceType.TOPIC,
            None,
            ResourcePatternType.ANY,
            "User:*",
            None,
            AclOperation.ANY,
            AclPermissionType.DENY,
        )
    ).result(timeout=30)
    return [b for b in found if b.name.startswith(settings.topic_prefix + ".")]


async def test_a_home_moves_to_one_partition_keeping_everything_and_routing_nothing_twice(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    t = kafka_ns.topics
    home_topics = [t.outbound(HOME), t.inbox(HOME), t.status(HOME), t.cases(HOME)]
    async with exchange(kafka_ns, tmp_path) as ex:
        await _home_as_a_council(ex)
        assert await moving.partition_counts(kafka_ns, home_topics) == {
            t.outbound(HOME): 4, t.inbox(HOME): 4, t.status(HOME): 3, t.cases(HOME): 3
        }  # fmt: skip
        home = ex.connectors[HOME]
        # The tracker runs throughout: it writes the home's status topic, during the move too.
        tracker = TrackerService(principals.settings_for(kafka_ns, model.TRACKER), 0.5)
        tracker_task = asyncio.create_task(tracker.run())
        try:
            await _moves(ex, home, tmp_path)
        finally:
            tracker.stop_event.set()
            await tracker_task


async def _moves(ex: Exchange, home: Connector, tmp_path: Path) -> None:
    kafka_ns = ex.settings
    t = kafka_ns.topics
    home_topics = [t.outbound(HOME), t.inbox(HOME), t.status(HOME), t.cases(HOME)]
    placed = await _place(ex, CASE)
    await ex.wait_registered(HOME, f"{KENT}/{CASE}")
    admitted = await _admits(ex, home, CASE)
    # A record the router cannot read: dead-lettered once, and its copy never again.
    producer = kafka.producer(kafka_ns)
    await producer.start()
    await (await producer.send(t.outbound(HOME), b"\x00not an envelope", partition=1))
    await producer.stop()

    async def routed() -> bool:
        done, total = await ex.router_progress()
        return done == total and len(await ex.dead_letters()) == 1

    await ex.wait_for(routed, what="everything routed")
    await ex.wait_for(lambda: _inbox_delivered(ex), what="the home's inbox delivered")

    # While its connector runs, the move is refused and nothing changes.
    with pytest.raises(moving.MigrationError, match="connector is running"):
        await moving.migrate(kafka_ns, HOME, tmp_path / "spool")
    assert (await moving.partition_counts(kafka_ns, [t.inbox(HOME)]))[t.inbox(HOME)] == 4

    # Stopped with a message in its inbox not yet delivered: refused, the hold released.
    await home.stop()
    del ex.connectors[HOME]
    placed2 = await _place(ex, CASE2)
    await ex.wait_for(routed, what="the second placement routed")
    with pytest.raises(moving.MigrationError, match="has not delivered 1 record"):
        await moving.migrate(kafka_ns, HOME, tmp_path / "spool")
    assert _holds(kafka_ns) == []
    assert (await moving.partition_counts(kafka_ns, [t.inbox(HOME)]))[t.inbox(HOME)] == 4
    assert not await asyncio.to_thread(_files, tmp_path / "spool")

    # Its connector delivers it, builds its chronology, and stops: now the home can move.
    home = Connector(principals.settings_for(kafka_ns, HOME), home.keys)
    await home.start()
    home.start_inbox()
    await ex.wait_for(lambda: _inbox_delivered(ex), what="the home's inbox delivered")
    await ex.wait_for(
        lambda: _all_of(ex, t.status(HOME)), what="the tracker's statuses for the home"
    )
    before = {name: await _all_of(ex, name) for name in home_topics}
    chronology = await home.chronologies.chronology(f"{KENT}/{CASE}")
    listed = sorted((e["message_id"], e["direction"]) for e in chronology["events"])
    assert {str(placed.header.message_id), str(admitted.header.message_id)} <= {
        m for m, _ in listed
    }
    kent_before = await ex.inbox_ids(KENT)
    await home.stop()

    dry = await asyncio.to_thread(
        cbx, kafka_ns, tmp_path, "agency", "migrate", HOME, "--dry-run", "--json"
    )
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)["agencies"][0]["topics"]
    assert {p["topic"]: p["partitions_after"] for p in planned} == dict.fromkeys(home_topics, 1)
    assert (await moving.partition_counts(kafka_ns, [t.inbox(HOME)]))[t.inbox(HOME)] == 4

    spool = tmp_path / "spool"
    run = await asyncio.to_thread(
        cbx, kafka_ns, tmp_path, "agency", "migrate", HOME, "--spool", str(spool), "--json"
    )
    assert run.returncode == 0, run.stderr + run.stdout
    report = json.loads(run.stdout)["agencies"][0]
    mode, head, lines = _spooled(Path(report["spool"]))
    assert Path(report["spool"]).parent == spool
    assert mode == 0o600, "the spool file is its owner's alone"
    kept: dict[str, list[dict[str, Any]]] = {n: [] for n in home_topics}
    for x in lines:
        kept[x["topic"]].append(x)
    assert head["records"] == {n: len(kept[n]) for n in home_topics}
    assert {r["topic"]: (r["partitions_before"], r["partitions_after"], r["records"])
            for r in report["topics"]} == {
        t.outbound(HOME): (4, 1, len(kept[t.outbound(HOME)])),
        t.inbox(HOME): (4, 1, len(kept[t.inbox(HOME)])),
        t.status(HOME): (3, 1, len(kept[t.status(HOME)])),
        t.cases(HOME): (3, 1, len(kept[t.cases(HOME)])),
    }  # fmt: skip
    # Everything read before the move is in the spool file, byte for byte.
    by_place = {(x["topic"], x["partition"], x["offset"]): x for x in lines}
    for name, records in before.items():
        assert records, f"{name} had records to move"
        for r in records:
            assert _unb64(by_place[(name, r.partition, r.offset)]["value"]) == r.value

    # The new topics: one partition each, starting with the spool's records in each old
    # partition's order, with keys, headers and timestamps; no hold left behind.
    assert await moving.partition_counts(kafka_ns, home_topics) == dict.fromkeys(home_topics, 1)
    assert _holds(kafka_ns) == []
    for name in home_topics:
        after = await _all_of(ex, name)
        assert {r.partition for r in after} == {0}
        copies = [
            (r.key, r.value, tuple((k, bytes(v)) for k, v in r.headers), r.timestamp)
            for r in after[: len(kept[name])]
        ]
        spooled = [
            (_unb64(x["key"]), _unb64(x["value"]),
             tuple((k, _unb64(v)) for k, v in x["headers"]), x["timestamp"])
            for x in kept[name]
        ]  # fmt: skip
        assert sorted(copies, key=repr) == sorted(spooled, key=repr)
        for p in {x["partition"] for x in kept[name]}:
            mine = [y for x, y in zip(kept[name], spooled, strict=True) if x["partition"] == p]
            assert [c for c in copies if c in mine] == mine

    # The home's inbox group is at the end of the copy: nothing is delivered again.
    assert report["groups"] == {t.agency_group(HOME, "inbox"): {"0": len(kept[t.inbox(HOME)])}}

    # New traffic both ways, routed exactly once; the copies were not routed again.
    again = Connector(principals.settings_for(kafka_ns, HOME), home.keys)
    await again.start()
    ex.connectors[HOME] = again
    assert again.registry.get(f"{KENT}/{CASE}") is not None, "its cases came across"
    assert again.delivery_status(str(admitted.header.message_id)) is not None
    second = await _place(ex, CASE3)
    await ex.wait_registered(HOME, f"{KENT}/{CASE3}")
    admitted2 = await _admits(ex, again, CASE3)

    async def both_routed() -> bool:
        kent = await ex.inbox_ids(KENT)
        home_ids = await ex.inbox_ids(HOME)
        return (
            kent.get(str(admitted2.header.message_id), 0) >= 1
            and home_ids.get(str(second.header.message_id), 0) >= 1
        )

    await ex.wait_for(both_routed, what="new messages routed after the move")
    await ex.wait_for(routed, what="everything routed after the move")
    kent_after = await ex.inbox_ids(KENT)
    assert kent_after[str(admitted2.header.message_id)] == 1
    assert kent_after[str(admitted.header.message_id)] == 1
    assert {k: kent_after[k] for k in kent_before} == kent_before
    assert (await ex.inbox_ids(HOME))[str(second.header.message_id)] == 1
    # The router wrote one ROUTED entry per recipient of each message, the move or not.
    routed_once = {str(m.header.message_id) for m in (placed, admitted, placed2, second)}
    routed_to = [
        (e.message_id, e.recipient)
        for e in await ex.log()
        if e.message_id in routed_once and e.status == Status.ROUTED
    ]
    assert {m for m, _ in routed_to} == routed_once
    assert len(routed_to) == len(set(routed_to))
    assert len(await ex.dead_letters()) == 1

    # The tracker went on after the move: the new report's statuses reach the home.
    async def status_mirrored() -> bool:
        await again.sync()
        return again.delivery_status(str(admitted2.header.message_id)) is not None

    await ex.wait_for(status_mirrored, within_s=120, what="the tracker's status copies")

    # Its chronology names the same messages, read from the new topics, each still opening.
    rebuilt = await again.chronologies.chronology(f"{KENT}/{CASE}")
    assert sorted((e["message_id"], e["direction"]) for e in rebuilt["events"]) == listed
    assert not [e for e in rebuilt["events"] if e.get("unavailable")]


async def test_a_move_stopped_after_deleting_the_topics_is_finished_from_its_spool_file(
    kafka_ns: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = kafka_ns.topics
    home_topics = [t.outbound(HOME), t.inbox(HOME), t.status(HOME), t.cases(HOME)]
    async with exchange(kafka_ns, tmp_path) as ex:
        await _home_as_a_council(ex)
        placed = await _place(ex, CASE)
        await ex.wait_registered(HOME, f"{KENT}/{CASE}")
        admitted = await _admits(ex, ex.connectors[HOME], CASE)

        async def routed() -> bool:
            done, total = await ex.router_progress()
            return done == total

        await ex.wait_for(routed, what="everything routed")
        await ex.wait_for(lambda: _inbox_delivered(ex), what="the home's inbox delivered")
        home = ex.connectors.pop(HOME)
        await home.stop()
        before = {name: len(await _all_of(ex, name)) for name in home_topics}

        async def crash(*args: Any) -> None:
            raise RuntimeError("the process died here")

        monkeypatch.setattr(moving, "_rebuild", crash)
        with pytest.raises(RuntimeError, match="died here"):
            await moving.migrate(kafka_ns, HOME, tmp_path / "spool")
        monkeypatch.undo()
        assert await moving.partition_counts(kafka_ns, home_topics) == {}, "deleted"
        (spool,) = await asyncio.to_thread(_files, tmp_path / "spool")

        for attempt in (1, 2):  # the second finds everything done and writes nothing
            run = await asyncio.to_thread(
                cbx, kafka_ns, tmp_path, "agency", "migrate", "--resume", str(spool), "--json"
            )
            assert run.returncode == 0, f"attempt {attempt}: {run.stderr}{run.stdout}"
            report = json.loads(run.stdout)["agencies"][0]
            assert {r["topic"]: r["records"] for r in report["topics"]} == before
            assert report["groups"] == {t.agency_group(HOME, "inbox"): {"0": before[t.inbox(HOME)]}}
            assert await moving.partition_counts(kafka_ns, home_topics) == dict.fromkeys(
                home_topics, 1
            )
            for name in home_topics:
                assert len(await _all_of(ex, name)) == before[name]
            assert _holds(kafka_ns) == []

        # The router took the copies for what they are: routed once, before the move.
        again = Connector(principals.settings_for(kafka_ns, HOME), home.keys)
        await again.start()
        ex.connectors[HOME] = again
        assert again.registry.get(f"{KENT}/{CASE}") is not None
        later = await _admits(ex, again, CASE)

        async def later_routed() -> bool:
            return (await ex.inbox_ids(KENT)).get(str(later.header.message_id), 0) >= 1

        await ex.wait_for(later_routed, what="a report after the resumed move routed")
        await ex.wait_for(routed, what="everything routed after the move")
        kent = await ex.inbox_ids(KENT)
        assert kent[str(admitted.header.message_id)] == 1
        assert kent[str(later.header.message_id)] == 1
        assert (await ex.inbox_ids(LANCS))[str(placed.header.message_id)] == 1

        # A spool file that is not one is refused, naming the line.
        bad = tmp_path / "bad.jsonl"
        await asyncio.to_thread(bad.write_text, '{"agency": "cp-sc482913", "topics": {}}\n{oops\n')
        refused = await asyncio.to_thread(
            cbx, kafka_ns, tmp_path, "agency", "migrate", "--resume", str(bad)
        )
        assert refused.returncode != 0
        assert "line 2: not a readable spool file" in refused.stderr


def test_a_move_marker_ends_the_old_topics_dead_letter_positions() -> None:
    state = RouterState()
    state.routed.update(
        {"cbx.outbound.cp-sc482913/2/7": "", "cbx.outbound.la-e1/0/7": "", "m": "x"}
    )
    state.note_moved("cbx.outbound.cp-sc482913", 0, 5)
    assert state.routed == {"cbx.outbound.la-e1/0/7": "", "m": "x"}
    assert [state.copied("cbx.outbound.cp-sc482913", 0, o) for o in (0, 4, 5, 9)] == [
        True, True, False, False
    ]  # fmt: skip
    assert not state.copied("cbx.outbound.cp-sc482913", 1, 0)


async def test_a_resumed_move_writes_only_what_each_partition_does_not_hold_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def rec(p: int, n: int, value: bytes | None) -> moving.Rec:
        return moving.Rec("x", p, n, 0, b"k", value, ())

    rows = [(0, rec(0, 0, b"a")), (1, rec(1, 0, b"b")), (0, rec(0, 1, None)), (1, rec(1, 1, b"d"))]
    holds: list[moving.Rec] = []

    async def read(admin: Any, name: str) -> list[moving.Rec]:
        return holds

    monkeypatch.setattr(moving, "_read", read)
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9")
    assert await moving._still_to_write(settings, "x", rows) == rows
    holds[:] = [rec(0, 0, b"a")]  # stopped after the first record of partition 0
    assert await moving._still_to_write(settings, "x", rows) == rows[1:]
    holds[:] = [rec(0, 0, b"a"), rec(0, 1, None), rec(1, 0, b"b"), rec(1, 1, b"d")]
    assert await moving._still_to_write(settings, "x", rows) == []
    for other in ([rec(0, 0, b"z")], [*holds, rec(1, 2, b"e")]):  # not the copies; more than them
        holds[:] = other
        with pytest.raises(moving.MigrationError, match="not the first copies"):
            await moving._still_to_write(settings, "x", rows)
