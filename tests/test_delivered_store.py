"""The inbox's record of what the agency's system was handed, with no broker: it survives a
restart and the file's compaction, acknowledged or not, and keeps headers only."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from agencies import CATALOGUE, HOST, HOST_FORCE, PLACING, header

from broker.envelope import EnvelopeCodec, Header
from broker.model import Recipient, Role
from connectors.gateway.delivered import DeliveredStore

ENVELOPES = EnvelopeCodec(CATALOGUE)


def _headers(n: int) -> list[Header]:
    to = [Recipient(PLACING, Role.PLACING_AUTHORITY), Recipient(HOST, Role.HOST_AUTHORITY)]
    return [header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, to) for _ in range(n)]


def test_what_was_handed_over_is_known_after_a_restart_and_a_compaction(tmp_path: Path) -> None:
    path = tmp_path / "delivered.jsonl"
    store = DeliveredStore(path, ENVELOPES)
    hs = _headers(3)
    store.add_many(hs)
    store.acknowledged(str(hs[0].message_id))
    store.acknowledged(str(hs[1].message_id))
    ids = [str(h.message_id) for h in hs]

    for reopened in (DeliveredStore(path, ENVELOPES), None):
        s = reopened or store
        assert all(s.handed(i) for i in ids)
        assert [s.get(i) is not None for i in ids] == [False, False, True]

    store._compact()
    lines = [json.loads(line) for line in path.open()]
    assert sorted(k for rec in lines for k in rec) == ["at", "at", "at", "header", "seen", "seen"]
    again = DeliveredStore(path, ENVELOPES)
    assert all(again.handed(i) for i in ids)
    assert again.get(ids[2]) == hs[2]
    assert not again.handed(str(_headers(1)[0].message_id))


def test_what_was_handed_over_is_forgotten_after_keep(tmp_path: Path) -> None:
    """Past ``keep`` (30 days by default) nothing of a message is kept, handed or not."""
    path = tmp_path / "delivered.jsonl"
    (h,) = _headers(1)
    DeliveredStore(path, ENVELOPES).add_many([h])
    later = DeliveredStore(path, ENVELOPES, keep=dt.timedelta(seconds=-1))
    assert not later.handed(str(h.message_id))
    assert later.get(str(h.message_id)) is None


def test_an_acknowledgement_before_its_batch_is_recorded_holds(tmp_path: Path) -> None:
    """The agency's system may acknowledge from inside the sink, before the batch is recorded:
    the message is then handed but never open, now and after a restart."""
    path = tmp_path / "delivered.jsonl"
    store = DeliveredStore(path, ENVELOPES)
    (h,) = _headers(1)
    mid = str(h.message_id)
    store.acknowledged(mid)
    store.add_many([h])
    assert store.handed(mid)
    assert store.get(mid) is None
    again = DeliveredStore(path, ENVELOPES)
    assert again.handed(mid)
    assert again.get(mid) is None
