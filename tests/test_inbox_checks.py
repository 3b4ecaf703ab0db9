"""A recipient's own checks, with no broker: a message not sealed for a class its role may read is
refused (missing-key), never delivered with the fields withheld."""

from __future__ import annotations

from typing import Any

import pytest
from agencies import HOME_FORCE, HOST, HOST_FORCE, PLACING, SHARING, body_of, network

from broker.envelope import Header, Outgoing
from broker.errors import PolicyError
from broker.kafka.settings import KafkaSettings
from broker.model import Recipient, Role, Withheld
from connectors.gateway.connector import Connector

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
    from agencies import header

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
