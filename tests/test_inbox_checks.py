"""A recipient's own checks, with no broker: a message not sealed for a class its role may read is
refused (missing-key), never delivered with the fields withheld."""

from __future__ import annotations

from typing import Any

import pytest
from agencies import HOME_FORCE, HOST, HOST_FORCE, PLACING, SHARING, body_of, header, network
from aiokafka import TopicPartition

from broker.envelope import Header, Outgoing
from broker.errors import PolicyError
from broker.kafka.settings import KafkaSettings
from broker.model import Recipient, Role, Withheld
from connectors.gateway import inbox as inbox_module
from connectors.gateway.connector import Connector
from connectors.gateway.inbox import LANE_CHECK_EVERY

SETTINGS = KafkaSettings(bootstrap_servers="127.0.0.1:9")


class Record:
    def __init__(self, out: Outgoing) -> None:
        self.value = out.value
        self.headers = out.headers
        self.key = out.key
        self.topic, self.partition, self.offset = "unit.inbox.x", 0, 1


async def test_a_recipient_refuses_what_was_not_sealed_for_it(tmp_path: Any) -> None:
    net = network()
    sender = net.protector(HOST_FORCE)
    named = [
        Recipient(PLACING, Role.PLACING_AUTHORITY),
        Recipient(HOST, Role.HOST_AUTHORITY),
        Recipient(HOME_FORCE, Role.HOME_FORCE),
    ]
    full = sender.seal(_header(named), body_of("ChildMissingReported"))
    sealed = sender.sealer.seal(
        "ChildMissingReported", full.header.message_id, body_of("ChildMissingReported"), named[2:]
    )
    short = Outgoing(full.header, sender.envelopes.encode(full.header, sealed.body))
    sender.sign([short])
    kent = Connector(SETTINGS, net.keys[PLACING], state_dir=tmp_path / "kent")
    kent.directory = net.directory
    kent.protector.verifier.directory = net.directory
    kent.protector.sealer.directory = net.directory
    header, body = kent.open(short.value, short.headers)
    assert any(isinstance(v, Withheld) for v in body.values())
    assert kent.inbox._missing_keys(header, body)
    receipts: list[Outgoing] = []
    await kent.inbox.handle(Record(short), None, receipts)
    assert [q["reason"] for q in kent.quarantine.list()] == ["missing-key"]
    (answer,) = receipts  # a REJECTED receipt to the sender, about this message
    assert answer.header.event_type == "Receipt"
    assert answer.header.related_message_id == full.header.message_id
    assert [r.agency for r in answer.header.recipients] == [HOST_FORCE]
    # The properly sealed message is not refused.
    sender.sign([full])
    receipts.clear()
    await kent.inbox.handle(Record(full), None, receipts)
    assert len(kent.quarantine.list()) == 1
    assert kent.inbox.delivered.get(str(full.header.message_id)) is None  # kept at batch end
    assert len(receipts) == 1


def _header(recipients: list[Recipient]) -> Header:
    h = header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, recipients)
    assert h.sharing == SHARING
    return h


async def test_a_message_is_acknowledgeable_once_handed_and_never_handed_twice(
    tmp_path: Any,
) -> None:
    """Handed over, a message may be acknowledged before its batch is recorded (not while the
    sink is still handing it over); read again, it is not handed over a second time."""
    net = network()
    sender = net.protector(HOST_FORCE)
    to = [Recipient(PLACING, Role.PLACING_AUTHORITY), Recipient(HOST, Role.HOST_AUTHORITY)]
    out = sender.seal(_header(to), body_of("ChildMissingReported"))
    sender.sign([out])
    mid = str(out.header.message_id)
    kent = Connector(SETTINGS, net.keys[PLACING], state_dir=tmp_path / "kent")
    kent.directory = net.directory
    kent.protector.verifier.directory = net.directory
    sent: list[Outgoing] = []

    async def send_receipts(receipts: list[Outgoing]) -> None:
        sent.extend(receipts)

    kent.send_receipts = send_receipts  # type: ignore[method-assign]
    handed: list[str] = []
    refused: list[str] = []

    async def sink(d: Any) -> None:
        handed.append(str(d.header.message_id))
        try:
            await kent.acknowledge(mid)
        except PolicyError as exc:
            refused.append(str(exc))

    receipts: list[Outgoing] = []
    await kent.inbox.handle(Record(out), sink, receipts)
    assert handed == [mid]
    (refusal,) = refused  # the sink was still handing it over
    assert "was not delivered" in refusal
    assert kent.inbox.delivered.get(mid) is None  # the batch is not recorded yet
    ack = await kent.acknowledge(mid)  # ... and yet the system may confirm it
    assert ack.header.related_message_id == out.header.message_id
    with pytest.raises(PolicyError, match="acknowledged already"):
        await kent.acknowledge(mid)
    # The batch is recorded; the consumer reads it again (its commit did not happen).
    kent.inbox._record_batch()
    again: list[Outgoing] = []
    await kent.inbox.handle(Record(out), sink, again)
    assert handed == [mid]  # not handed a second time
    (repeat,) = again  # its DELIVERED receipt goes again; the tracker folds the repeat
    assert repeat.header.related_message_id == out.header.message_id
    reopened = Connector(SETTINGS, net.keys[PLACING], state_dir=tmp_path / "kent")
    assert reopened.inbox.delivered.handed(mid)
    assert reopened.inbox.delivered.get(mid) is None  # acknowledged before its record: still so


class _FetchedMeanwhile:
    """An inbox consumer of one partition whose client fetched ``later`` while a batch was being
    handed over: each look (aiokafka's ``getmany``) takes the next list."""

    def __init__(self, later: list[list[Any]]) -> None:
        self.later = list(later)
        self.looks = 0

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    async def getmany(self, *tps: Any, timeout_ms: int = 0) -> dict[Any, list[Any]]:
        self.looks += 1
        return {tps[0]: self.later.pop(0)} if self.later else {}


def _home_inbox(tmp_path: Any) -> tuple[Connector, Any, list[Any]]:
    """A connector whose inbox records what it would hand over, in order, without opening it."""
    net = network()
    sender = net.protector(HOST_FORCE)
    kent = Connector(SETTINGS, net.keys[PLACING], state_dir=tmp_path / "kent")
    handed: list[Any] = []

    async def handle(record: Any, sink: Any, receipts: list[Outgoing]) -> None:
        handed.append(record)

    kent.inbox.handle = handle  # type: ignore[method-assign]

    def record(event_type: str, urgency: str) -> Record:
        to = [Recipient(PLACING, Role.PLACING_AUTHORITY)]
        h = header(event_type, HOST_FORCE, Role.HOST_FORCE, to, urgency=urgency)
        return Record(sender.seal(h, body_of(event_type)))

    return kent, record, handed


async def test_an_inbox_without_a_lane_hands_what_would_travel_one_first(tmp_path: Any) -> None:
    """One partition, no lane: of what is fetched, the messages that would travel a lane go first;
    what the client fetched meanwhile is looked at every LANE_CHECK_EVERY records, and its urgent
    ones go next. Urgent messages keep their order (a missing report before its risk grading,
    which travels with it whatever its urgency); so do the rest."""
    kent, record, handed = _home_inbox(tmp_path)
    bulk = [record("PlacementNotified", "ROUTINE") for _ in range(LANE_CHECK_EVERY + 3)]
    missing = record("ChildMissingReported", "IMMEDIATE")
    graded = record("MissingRiskGraded", "ROUTINE")  # an episode's: urgent whatever its urgency
    late_bulk = record("PlacementNotified", "ROUTINE")
    consumer = _FetchedMeanwhile([[late_bulk, graded]])
    tp = TopicPartition("unit.inbox.x", 0)
    await kent.inbox._deliver(consumer, {tp: [*bulk, missing]}, None, [])
    first = LANE_CHECK_EVERY - 1  # bulk handed before the first look, after the missing report
    assert handed == [missing, *bulk[:first], graded, *bulk[first:], late_bulk]


async def test_an_inbox_without_a_lane_moves_nothing_it_cannot_read_ahead(tmp_path: Any) -> None:
    """Bytes that are no envelope, and an IMMEDIATE message addressed to another agency, are not
    taken for urgent ones: they are handed over (to be refused) in their turn, behind a real
    urgent message and among the rest, and nothing is dropped."""
    kent, record, handed = _home_inbox(tmp_path)
    bulk = [record("PlacementNotified", "ROUTINE") for _ in range(4)]
    garbage = record("PlacementNotified", "ROUTINE")
    garbage.value = b"\x00\xff" * 5_000
    net = network()
    elsewhere = Record(
        net.protector(HOST_FORCE).seal(
            header(
                "ChildMissingReported",
                HOST_FORCE,
                Role.HOST_FORCE,
                [Recipient(HOST, Role.HOST_AUTHORITY)],
            ),
            body_of("ChildMissingReported"),
        )
    )
    missing = record("ChildMissingReported", "IMMEDIATE")
    batch = [bulk[0], garbage, bulk[1], elsewhere, bulk[2], missing, bulk[3]]
    await kent.inbox._deliver(
        _FetchedMeanwhile([]), {TopicPartition("unit.inbox.x", 0): batch}, None, []
    )
    assert handed == [missing, bulk[0], garbage, bulk[1], elsewhere, bulk[2], bulk[3]]


async def test_an_inbox_without_a_lane_takes_in_no_more_than_its_bound(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its bound a batch takes nothing more in: what was fetched meanwhile waits for the
    next batch (after this one's commit), in its order."""
    kent, record, handed = _home_inbox(tmp_path)
    batch = [record("PlacementNotified", "ROUTINE") for _ in range(3 * LANE_CHECK_EVERY)]
    monkeypatch.setattr(inbox_module, "UNLANED_BATCH_MOST", LANE_CHECK_EVERY + 1)
    consumer = _FetchedMeanwhile([[record("PlacementNotified", "ROUTINE")] for _ in range(5)])
    await kent.inbox._deliver(consumer, {TopicPartition("unit.inbox.x", 0): batch}, None, [])
    assert handed == batch
    assert consumer.looks == 0
    assert len(consumer.later) == 5
