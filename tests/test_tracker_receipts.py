"""The tracker takes a receipt only from a recipient of the message it is about (no broker)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from agencies import HOME_FORCE, HOST, HOST_FORCE, OUTSIDER, PLACING, header, network

from broker.delivery_log import LogEntry, Status
from broker.kafka.settings import KafkaSettings
from broker.model import Recipient, Role
from broker.tracker.service import NotARecipientError, TrackerService
from connectors.gateway.receipts import make_receipt


def _tracker(net: Any) -> TrackerService:
    """A tracker with no broker, verifying with the test network's directory."""
    tracker = TrackerService(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    tracker.directory = net.directory
    tracker._verifier.directory = net.directory
    return tracker


def test_receipts_count_only_from_the_messages_recipients() -> None:
    net = network()
    tracker = _tracker(net)
    subject = header(
        "ChildMissingReported",
        HOST_FORCE,
        Role.HOST_FORCE,
        [Recipient(PLACING, Role.PLACING_AUTHORITY), Recipient(HOME_FORCE, Role.HOME_FORCE)],
    )
    mid = str(subject.message_id)
    now = dt.datetime.now(dt.UTC)
    tracker.view.apply(LogEntry(mid, Status.ACCEPTED, now, "ChildMissingReported", HOST_FORCE))
    for agency in (PLACING, HOME_FORCE):
        tracker.view.apply(LogEntry(mid, Status.ROUTED, now, recipient=agency))

    def receipt(agency: str, status: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        prot = net.protector(agency)
        out = make_receipt(prot, prot.sealer.forms, agency, subject, status)
        prot.sign([out])
        return out.value, list(out.headers)

    entry = tracker._receipt_entry(*receipt(PLACING, "ACKNOWLEDGED"))
    assert (entry.message_id, entry.recipient, entry.status) == (mid, PLACING, Status.ACKNOWLEDGED)
    assert entry.sender == HOST_FORCE
    for stranger in (OUTSIDER, HOST):  # not sent to them: their word changes nothing
        for status in ("ACKNOWLEDGED", "REJECTED"):
            with pytest.raises(NotARecipientError, match="not a recipient"):
                tracker._receipt_entry(*receipt(stranger, status))


async def test_a_receipt_that_overtakes_its_routed_entries_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The router's transaction marks the recipient's inbox and the delivery log separately, so a
    receipt may reach the tracker before the ROUTED entries of its message do, even after a
    catch-up. The tracker catches up again until they come (a stranger's receipt is still
    refused, once the wait is over), rather than lose the receipt."""
    from broker.tracker import service

    monkeypatch.setattr(service, "RECEIPT_WAIT_S", 0.5)
    net = network()
    tracker = _tracker(net)
    to = [Recipient(PLACING, Role.PLACING_AUTHORITY)]
    subject = header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, to)
    mid = str(subject.message_id)
    now = dt.datetime.now(dt.UTC)
    syncs = []

    class Follower:
        async def sync(self) -> None:
            syncs.append(1)
            if len(syncs) == 3:  # the delivery log's marker is written at last
                tracker.view.apply(
                    LogEntry(mid, Status.ACCEPTED, now, "ChildMissingReported", HOST_FORCE)
                )
                tracker.view.apply(LogEntry(mid, Status.ROUTED, now, recipient=PLACING))

    tracker._log_follower = Follower()  # type: ignore[assignment]

    class Record:
        def __init__(self, agency: str) -> None:
            prot = net.protector(agency)
            out = make_receipt(prot, prot.sealer.forms, agency, subject, "DELIVERED")
            prot.sign([out])
            self.value, self.headers, self.offset = out.value, list(out.headers), 0

    entries: list[LogEntry] = []
    waiting = tracker._take_receipts([Record(PLACING), Record(OUTSIDER)], entries)
    assert len(waiting) == 2
    assert entries == []
    await tracker._after_routed(waiting, entries)
    assert [(e.message_id, e.recipient, e.status) for e in entries] == [
        (mid, PLACING, Status.DELIVERED)
    ]
    assert len(syncs) > 3  # the stranger's receipt was judged only when the wait ran out
