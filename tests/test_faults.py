"""Faults on a three-broker cluster (real JVMs, real signals): nothing acknowledged is lost, and
nothing is delivered or logged twice.

The short form runs in `make test`; `make faults` runs the full form (``CBX_FAULTS_FULL=1``:
10,000 messages a stream, a broker down for a minute). Each test prints its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from agencies import SHARING, body_of
from aiokafka import TopicPartition
from exchange import LOGS, Exchange, exchange

from broker import model
from broker.admin import provision
from broker.crypto import keys as keystore
from broker.delivery_log import Status
from broker.errors import EmbeddedKafkaError
from broker.kafka import clients as kafka
from broker.kafka import embedded, principals
from broker.kafka.follow import TopicFollower
from broker.kafka.settings import KafkaSettings

FULL = os.environ.get("CBX_FAULTS_FULL") == "1"
#: The full form reads a delivery log of some 100,000 entries after each fault: longer than the
#: suite's default time-out allows.
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(1800 if FULL else 300)]
MESSAGES = 10_000 if FULL else 600
BATCH = 100
KENT, LANCS = "la-e10000016", "la-e10000017"
KENT_POLICE, LANCS_POLICE = "pf-e23000032", "pf-e23000003"
KENT_ICB, LANCS_ICB = "icb-e54000032", "icb-e54000048"
PROVIDER = "cp-sc482913"  # the children's home
PARTIES = [KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB, PROVIDER]
#: A placement in Lancashire is told to all but the council that sent it.
RECIPIENTS = [a for a in PARTIES if a != KENT]


@contextlib.contextmanager
def home(path: Path) -> Iterator[None]:
    saved = os.environ.get("CBX_HOME")
    os.environ["CBX_HOME"] = str(path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CBX_HOME", None)
        else:
            os.environ["CBX_HOME"] = saved


class Cluster:
    """The three-node embedded cluster of this module, and its nodes' signals."""

    def __init__(self, path: Path, state: embedded.BrokerState) -> None:
        self.path = path
        self.state = state

    def settings(self) -> KafkaSettings:
        return self.state.settings().with_prefix(f"f{uuid.uuid4().hex[:10]}")

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        with home(self.path):
            embedded.kill_node(node_id, sig)

    def start(self, node_id: int) -> None:
        with home(self.path):
            self.state = embedded.start_node(node_id)

    def down(self) -> list[int]:
        return [
            i + 1
            for i, pid in enumerate(self.state.node_pids())
            if not embedded._is_kafka_process(pid)
        ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if KafkaSettings.from_env() is not None:
        pytest.skip("the fault suite runs its own embedded cluster")
    path = tmp_path_factory.mktemp("cbx-cluster")
    with home(path):
        try:
            state = embedded.start(brokers=3)
        except EmbeddedKafkaError as exc:
            pytest.fail(f"{exc.reason}\n{exc.log_tail}")
    c = Cluster(path, state)
    try:
        yield c
    finally:
        with home(path):
            embedded.stop(purge=True)


async def leader_of(settings: KafkaSettings, topic: str, partition: int) -> int:
    client = kafka.admin(settings)
    await client.start()
    try:
        (described,) = await client.describe_topics([topic])
    finally:
        await client.close()
    return int(next(p["leader"] for p in described["partitions"] if p["partition"] == partition))


async def coordinator_of(settings: KafkaSettings, group: str) -> int:
    client = kafka.admin(settings)
    await client.start()
    try:
        return int(await client.find_coordinator(group))
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def placing(ex: Exchange) -> AsyncIterator[list[str]]:
    """The agencies of a Kent placement in Lancashire, with a router; yields the ids sent."""
    await ex.agencies(PARTIES)
    yield []


async def stream(ex: Exchange, sent: list[str], n: int, on_batch: Any = None) -> int:
    """Kent sends ``n`` placements in batches; a batch whose send fails is sent again (same ids),
    as an agency's system retries. ``on_batch(i)`` runs before batch ``i``. Retries made."""
    kent = ex.connectors[KENT]
    body = body_of("PlacementNotified", host_authority=LANCS)
    retries = 0
    for b, start in enumerate(range(0, n, BATCH)):
        if on_batch is not None:
            await on_batch(b)
        batch = [
            kent.prepare("PlacementNotified", body, case_ref=f"KCC-F-{i:06d}", sharing=SHARING)
            for i in range(start, min(n, start + BATCH))
        ]
        for attempt in range(60):
            try:
                await kent.publish(batch)
                break
            except Exception:  # the cluster is failing over: the same messages again
                retries += 1
                await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
        else:
            raise AssertionError(f"batch {b} could not be sent")
        sent += [str(o.header.message_id) for o in batch]
    return retries


async def assert_exactly_once(ex: Exchange, sent: list[str], what: str) -> None:
    """Every message sent is routed, in every recipient's inbox once, and logged once each."""

    async def routed() -> bool:
        done, total = await ex.router_progress()
        return done >= total

    await ex.wait_for(routed, within_s=600, what=f"the router to catch up ({what})")
    started = time.monotonic()
    wanted = set(sent)
    for agency in RECIPIENTS:
        counts = Counter(
            str(h.message_id) for h, _ in await ex.inbox(agency) if str(h.message_id) in wanted
        )
        missing = wanted - set(counts)
        twice = {m: c for m, c in counts.items() if c > 1}
        assert not missing, f"{what}: {len(missing)} of {len(wanted)} never reached {agency}"
        assert not twice, f"{what}: {len(twice)} reached {agency} more than once"
    log = [e for e in await ex.log() if e.message_id in wanted]
    accepted = Counter(e.message_id for e in log if e.status == Status.ACCEPTED)
    routed_to = Counter((e.message_id, e.recipient) for e in log if e.status == Status.ROUTED)
    assert set(accepted) == wanted, f"{what}: accepted entries missing"
    assert max(accepted.values()) == 1, f"{what}: a message accepted twice in the log"
    assert len(routed_to) == len(wanted) * len(RECIPIENTS)
    assert max(routed_to.values()) == 1, f"{what}: a copy logged twice"
    print(
        f"\n{what}: {len(wanted)} messages, {len(wanted) * len(RECIPIENTS)} inbox copies, "
        f"each once; delivery log {len(log)} entries, none twice "
        f"(checked in {time.monotonic() - started:.1f} s)"
    )


async def test_every_broker_takes_a_new_agency_once_provisioning_returns(
    cluster: Cluster,
) -> None:
    """Each broker applies new SCRAM credentials from the metadata log on its own time: `cbx
    agency add` returns only once every broker of the cluster accepts them, so a connector whose
    first connection goes to another broker than the bootstrap one is not refused."""
    settings = cluster.settings()
    brokers = cluster.state.settings().bootstrap_servers.split(",")
    assert len(brokers) == 3
    for agency in PARTIES[:4]:
        await provision.add_agency(settings, agency)
        own = principals.settings_for(settings, agency)
        for broker in brokers:
            client = kafka.admin(replace(own, bootstrap_servers=broker))
            try:
                await client.start()  # authenticates with the agency's password, or raises
            finally:
                await client.close()


async def test_outbound_leader_killed_mid_stream(cluster: Cluster, tmp_path: Path) -> None:
    """SIGKILL the leader of the outbound partition carrying most of the stream, mid-stream; it
    comes back a little later."""
    settings = cluster.settings()
    async with exchange(settings, tmp_path) as ex, placing(ex) as sent:
        topic = settings.topics.outbound(KENT)
        victim = await leader_of(settings, topic, 0)
        half = MESSAGES // BATCH // 2

        async def fault(b: int) -> None:
            if b == half:
                cluster.kill(victim)
                print(f"\nkilled node {victim} (leader of {topic}/0) after {b * BATCH} messages")
            if b == half + 2:
                cluster.start(victim)

        retries = await stream(ex, sent, MESSAGES, fault)
        print(f"sender retried {retries} batch(es) while the cluster failed over")
        assert cluster.down() == []
        await assert_exactly_once(ex, sent, "outbound leader killed")


async def test_inbox_leader_and_transaction_coordinator_killed(
    cluster: Cluster, tmp_path: Path
) -> None:
    """SIGKILL the leader of a recipient's inbox partition, then the broker coordinating the
    router's transactions, each while the stream flows."""
    settings = cluster.settings()
    async with exchange(settings, tmp_path) as ex, placing(ex) as sent:
        inbox = settings.topics.inbox(LANCS)
        third = max(1, MESSAGES // BATCH // 3)
        killed: list[int] = []

        async def fault(b: int) -> None:
            if b == third:
                node = await leader_of(settings, inbox, 0)
                cluster.kill(node)
                killed.append(node)
                print(f"\nkilled node {node} (leader of {inbox}/0)")
            elif b == third + 1:
                cluster.start(killed[-1])
            elif b == 2 * third:
                group = settings.topics.group("router")
                node = await coordinator_of(settings, group)
                cluster.kill(node)
                killed.append(node)
                print(f"killed node {node} (coordinator of {group})")
            elif b == 2 * third + 1:
                cluster.start(killed[-1])

        await stream(ex, sent, MESSAGES, fault)
        assert len(killed) == 2
        assert cluster.down() == []
        await assert_exactly_once(ex, sent, "inbox leader and coordinator killed")


async def test_rolling_restart_while_a_stream_flows(cluster: Cluster, tmp_path: Path) -> None:
    """Each broker in turn stops cleanly (SIGTERM) and starts again, while Kent sends."""
    settings = cluster.settings()
    async with exchange(settings, tmp_path) as ex, placing(ex) as sent:
        batches = MESSAGES // BATCH
        step = max(1, batches // 4)

        async def fault(b: int) -> None:
            if b and b % step == 0 and b // step <= 3:
                node = b // step
                cluster.kill(node, signal.SIGTERM)
                for _ in range(300):
                    if node in cluster.down():
                        break
                    await asyncio.sleep(0.1)
                cluster.start(node)
                print(f"\nnode {node} restarted after {b * BATCH} messages")

        await stream(ex, sent, MESSAGES, fault)
        assert cluster.down() == []
        await assert_exactly_once(ex, sent, "rolling restart")


async def test_two_brokers_down_then_back(cluster: Cluster, tmp_path: Path) -> None:
    """One broker down: writes go on with two in sync. Two down: a send fails clearly (not
    enough replicas in sync) rather than being acknowledged and lost. Both return: the router,
    the tracker and the connectors carry on by themselves, without a restart, and everything
    sent is routed once, and every copy is handed over and logged DELIVERED.

    After the quorum was lost, some inbox consumers were seen to stop fetching a partition whose
    leader had moved (records there, the fetch answered, the position unmoved); the inbox's
    stall watch replaces such a consumer (a shorter window here than the default 30 s)."""
    settings = cluster.settings()
    async with exchange(settings, tmp_path) as ex:
        for agency in PARTIES:
            conn = await ex.agency(agency, inbox=agency in RECIPIENTS)
            conn.inbox.stall_s = 10.0
        await ex.sync_all()
        tracker = spawn_tracker(settings, tmp_path)
        sent: list[str] = []
        try:
            # Started before the outage: a service that cannot reach the cluster while it
            # starts exits non-zero for its supervisor to start it again; once started, it
            # waits outages out.
            for _ in range(600):
                if "tracker_started" in (tmp_path / "tracker.log").read_text(errors="replace"):
                    break
                assert tracker.poll() is None, "the tracker could not start"
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the tracker did not start within a minute")
            kent = ex.connectors[KENT]
            body = body_of("PlacementNotified", host_authority=LANCS)
            await stream(ex, sent, BATCH)
            cluster.kill(3)
            if FULL:
                await asyncio.sleep(60)
            await stream(ex, sent, 2 * BATCH if FULL else BATCH)  # two in sync: writes go on
            cluster.kill(2)
            refused = kent.prepare(
                "PlacementNotified", body, case_ref="KCC-F-DOWN", sharing=SHARING
            )
            with pytest.raises(Exception) as failed:  # noqa: PT011 - whichever aiokafka gives
                await asyncio.wait_for(kent.publish([refused]), 45)
            print(f"\nwith one broker of three: the send failed with {type(failed.value).__name__}")
            await asyncio.sleep(5)  # the services meet the outage too
            cluster.start(2)
            cluster.start(3)
            await stream(ex, sent, BATCH)
            assert ex.router.alive(), "the router carried on by itself"
            assert tracker.poll() is None, "the tracker carried on by itself"
            for agency in RECIPIENTS:
                assert ex.connectors[agency].inbox.running, f"{agency}'s inbox carried on"
            await assert_exactly_once(ex, sent, "two brokers down, then back")
            await assert_all_delivered(ex, sent)
        finally:
            tracker.terminate()
            tracker.wait(60)


def spawn_tracker(settings: KafkaSettings, home: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **principals.settings_for(settings, model.TRACKER).to_env(),
        "CBX_HOME": str(home),
        "CBX_LOG_FORMAT": "json",
    }
    with (home / "tracker.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cbx.cli", "tracker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def assert_all_delivered(ex: Exchange, sent: list[str]) -> None:
    """The tracker folded every recipient's DELIVERED receipt into the delivery log.

    The log is followed, each entry decoded once, rather than read whole on every look: in the
    full form it holds some 100,000 entries.
    """
    wanted = set(sent)
    done: set[tuple[str, str]] = set()

    def take(record: Any) -> None:
        for entry in LOGS.entries(record.value):
            if entry.status == Status.DELIVERED and entry.message_id in wanted:
                done.add((entry.message_id, entry.recipient))

    follower = TopicFollower(ex.settings, ex.settings.topics.delivery_log, take)
    await follower.start()
    started = time.monotonic()
    try:

        async def all_delivered() -> bool:
            return len(done) >= len(wanted) * len(RECIPIENTS)

        await ex.wait_for(all_delivered, within_s=120, what="every copy DELIVERED")
    except AssertionError:
        per = Counter(recipient for _, recipient in done)
        running = {a: ex.connectors[a].inbox.running for a in RECIPIENTS}
        raise AssertionError(f"DELIVERED per recipient {dict(per)}; inboxes {running}") from None
    finally:
        await follower.stop()
    print(f"{len(done)} copies logged DELIVERED (seen in {time.monotonic() - started:.1f} s)")


async def test_router_tracker_and_a_broker_killed_together(
    cluster: Cluster, tmp_path: Path
) -> None:
    """SIGKILL the router, the tracker and a broker at the same moment, mid-stream; start them
    again. The recipients' connectors read their inboxes throughout, so the tracker has receipts
    to fold: every message ends DELIVERED to each recipient, once."""
    settings = cluster.settings()
    async with exchange(settings, tmp_path) as ex:
        delivered: Counter[tuple[str, str]] = Counter()

        def sink(agency: str) -> Any:
            async def take(d: Any) -> None:
                delivered[(str(d.header.message_id), agency)] += 1

            return take

        for agency in PARTIES:
            await ex.agency(agency, inbox=agency in RECIPIENTS, sink=sink(agency))
        await ex.sync_all()
        procs = [spawn_tracker(settings, tmp_path)]
        sent: list[str] = []
        half = MESSAGES // BATCH // 2

        async def fault(b: int) -> None:
            if b == half:
                node = await leader_of(settings, settings.topics.outbound(KENT), 1)
                ex.router.kill()
                procs[0].kill()
                cluster.kill(node)
                print(f"\nkilled the router, the tracker and node {node} together")
                cluster.start(node)
                ex.router.start()
                procs[0] = spawn_tracker(settings, tmp_path)

        try:
            await stream(ex, sent, MESSAGES, fault)
            await assert_exactly_once(ex, sent, "router, tracker and a broker killed")

            await assert_all_delivered(ex, sent)
            assert len(delivered) == len(sent) * len(RECIPIENTS)
            assert max(delivered.values()) == 1, "an agency's system was handed a copy twice"
            print(f"{len(delivered)} copies handed to the recipients' systems, each once")
        finally:
            procs[0].terminate()
            procs[0].wait(60)


def export_row(i: int) -> str:
    """One line of Kent's nightly export (JSON lines), as its systems write it."""
    return json.dumps(
        {
            "event_type": "PlacementNotified",
            "case_ref": f"KCC-X-{i:06d}",
            "urgency": "ROUTINE",
            "sharing": {
                "purpose": SHARING.purpose,
                "lawful_basis": list(SHARING.lawful_basis),
                "consent": SHARING.consent,
                "consent_not_sought_reason": SHARING.consent_not_sought_reason,
                "decision_maker_role": SHARING.decision_maker_role,
            },
            "event": {
                "placement_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"kent/{i}")),
                "legal_status": "C2",
                "placement_type": "CHILDRENS_HOME",
                "start_date": "2026-11-30",
                "host_authority": LANCS,
                "provider": PROVIDER,
                "approved_by_role": "Director of Children's Services",
                "identity": {
                    "given_names": "Sam",
                    "family_name": f"X{i}",
                    "date_of_birth": "2012-01-01",
                },
                "address": {"lines": ["1 Row"], "town": "Preston", "postcode": "PR1 1AA"},
            },
        }
    )


async def test_a_connector_killed_with_a_broker_mid_file(cluster: Cluster, tmp_path: Path) -> None:
    """Kent's connector, a process of its own, takes a nightly export from its drop folder; it,
    the router and a broker are SIGKILLed together half way; all three start again. Every row
    reaches every recipient once: the rows already sent are not sent again, and one sent again
    because the kill came between Kafka's acknowledgement and the connector's record of it is
    routed once (its message id comes from its content)."""
    settings = cluster.settings()
    async with exchange(settings, tmp_path) as ex:
        await ex.agencies(PARTIES)
        keystore.save(ex.connectors[KENT].keys, keystore.keystore_path(KENT, tmp_path / "keys"))
        drop = tmp_path / "kent-drop"
        drop.mkdir()
        (drop / "placements.jsonl.part").write_text(
            "\n".join(export_row(i) for i in range(MESSAGES)) + "\n"
        )
        (drop / "placements.jsonl.part").rename(drop / "placements.jsonl")
        env = {
            **os.environ,
            **principals.settings_for(settings, KENT).to_env(),
            "CBX_HOME": str(tmp_path),
            "CBX_LOG_FORMAT": "json",
        }

        def connector() -> subprocess.Popen[bytes]:
            with (tmp_path / "kent-connector.log").open("ab") as out:
                return subprocess.Popen(
                    [sys.executable, "-m", "cbx.cli", "connector", "run", "--agency", KENT,
                     "--no-http", "--drop", str(drop)],
                    env=env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip

        proc = connector()
        outbound = settings.topics.outbound(KENT)
        try:
            for _ in range(600):
                if await outbound_records(settings, outbound) >= MESSAGES // 3:
                    break
                await asyncio.sleep(0.05)
            sent_before = await outbound_records(settings, outbound)
            node = await leader_of(settings, outbound, 0)
            proc.kill()
            ex.router.kill()
            cluster.kill(node)
            print(f"\nkilled Kent's connector, the router and node {node} after {sent_before} rows")
            cluster.start(node)
            ex.router.start()
            proc.wait(30)
            proc = connector()

            async def all_there() -> bool:
                refs = [str(h.case_ref) for h, _ in await ex.inbox(LANCS)]
                return len({r for r in refs if "KCC-X-" in r}) >= MESSAGES

            await ex.wait_for(all_there, within_s=600, what="every row at Lancashire")
            for agency in RECIPIENTS:
                refs = Counter(
                    str(h.case_ref)
                    for h, _ in await ex.inbox(agency)
                    if "KCC-X-" in str(h.case_ref)
                )
                assert len(refs) == MESSAGES, f"{agency}: {MESSAGES - len(refs)} rows missing"
                assert max(refs.values()) == 1, f"{agency}: a row delivered twice"
            written = await outbound_records(settings, outbound)
            print(
                f"{MESSAGES} rows reached each of {len(RECIPIENTS)} recipients once; "
                f"{written - MESSAGES} sent again after the kill and routed once"
            )
        finally:
            proc.terminate()
            proc.wait(60)


async def outbound_records(settings: KafkaSettings, topic: str) -> int:
    c = kafka.consumer(settings, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in await kafka.partitions(settings, topic)]
        return sum((await c.end_offsets(tps)).values())
    finally:
        await c.stop()
