"""The router's verdicts one record at a time, with no broker: every outcome and dead-letter reason.

:class:`RouterCore` decides; these tests feed it records built exactly as connectors build them
and read what it would write. The same checks on the real broker are in ``test_router.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from agencies import (
    CATALOGUE,
    FORMS,
    HOME_FORCE,
    HOST,
    HOST_FORCE,
    HOST_ICB,
    OUTSIDER,
    PLACING,
    POLICY,
    Network,
    body_of,
    header,
    network,
)

from broker.crypto.keys import AgencyKeys
from broker.crypto.sealing import Sealer
from broker.crypto.signing import Signer, Verifier
from broker.delivery_log import LogCodec, LogEntry, Status
from broker.directory import AgencyEntry, Directory
from broker.envelope import Outgoing, Protector
from broker.kafka.topics import Topics
from broker.model import ROUTER, Recipient, Role
from broker.policy.registry import case_id
from broker.policy.routing import Rules
from broker.router.core import InRecord, Outcome, RouterCore
from broker.router.deadletter import H_REASON
from broker.router.state import RouterState
from broker.schema import codec

PLACING_ICB = "icb-e54000032"
TOPICS = Topics("unit")
RULES = Rules.load()
LOGS = LogCodec(CATALOGUE)
CASE = case_id(PLACING, "KCC-LAC-000123")  # a case is its placing authority and reference
MISSING_TO = {PLACING, HOST, HOME_FORCE}


@pytest.fixture
def net() -> Network:
    return network(PLACING, HOST, HOME_FORCE, HOST_FORCE, HOST_ICB, PLACING_ICB, OUTSIDER)


@pytest.fixture
def core(net: Network) -> RouterCore:
    router_keys = AgencyKeys.new(ROUTER)
    sealer = Sealer(router_keys, net.directory, POLICY, FORMS)
    return RouterCore(CATALOGUE, FORMS, RULES, net.directory, sealer, RouterState(), TOPICS)


class Feed:
    """Records on outbound topics, with offsets, as the router reads them."""

    def __init__(self) -> None:
        self.offset = 0

    def record(
        self, owner: str, value: bytes | None, headers: Any = (), key: bytes = b"k"
    ) -> InRecord:
        self.offset += 1
        return InRecord(TOPICS.outbound(owner), 0, self.offset, key, value, list(headers))

    def signed(self, net: Network, out: Outgoing, owner: str | None = None) -> InRecord:
        net.protector(out.header.sender).sign([out])
        return self.record(owner or out.header.sender, out.value, out.headers, out.key)


def _placement(net: Network, **changes: Any) -> Outgoing:
    parties = RULES.placement_parties(PLACING, HOST)
    recipients = RULES.recipients("PlacementNotified", PLACING, parties)
    h = header("PlacementNotified", PLACING, Role.PLACING_AUTHORITY, recipients, urgency="ROUTINE")
    h = dataclasses.replace(h, **{"case_ref": CASE, **changes})
    body = body_of("PlacementNotified", host_authority=HOST, provider=None)
    return net.protector(PLACING).seal(h, body)


def _missing(net: Network, recipients: list[Recipient] | None = None, **changes: Any) -> Outgoing:
    chosen = recipients or [
        Recipient(PLACING, Role.PLACING_AUTHORITY),
        Recipient(HOST, Role.HOST_AUTHORITY),
        Recipient(HOME_FORCE, Role.HOME_FORCE),
    ]
    h = header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, chosen, case_ref=CASE)
    h = dataclasses.replace(h, **changes)
    return net.protector(HOST_FORCE).seal(h, body_of("ChildMissingReported"))


def _inboxes(o: Outcome) -> set[str]:
    prefix = TOPICS.inbox_prefix
    return {x.topic.removeprefix(prefix) for x in o.outputs if x.topic.startswith(prefix)}


def _log(o: Outcome) -> list[Any]:
    return [
        e
        for x in o.outputs
        if x.topic == TOPICS.delivery_log and x.value
        for e in LOGS.entries(x.value)
    ]


def _placed(core: RouterCore, net: Network, feed: Feed) -> None:
    o = core.process(feed.signed(net, _placement(net)))
    assert o.status == "routed"
    core.state.commit()


def test_a_placement_is_routed_to_its_parties_and_registers_the_case(
    core: RouterCore, net: Network
) -> None:
    feed = Feed()
    o = core.process(feed.signed(net, _placement(net)))
    assert o.status == "routed"
    assert _inboxes(o) == {HOST, HOST_FORCE, HOME_FORCE, HOST_ICB, PLACING_ICB}
    statuses = [e.status for e in _log(o)]
    assert statuses.count(Status.ACCEPTED) == 1
    assert statuses.count(Status.ROUTED) == 5
    assert [x.topic for x in o.outputs].count(TOPICS.placements) == 1
    views = {x.topic for x in o.outputs if x.topic.startswith(TOPICS.cases_prefix)}
    assert views == {
        TOPICS.cases(a) for a in (PLACING, HOST, HOST_FORCE, HOME_FORCE, HOST_ICB, PLACING_ICB)
    }
    assert [x.key for x in o.outputs if x.topic == TOPICS.routed] == [str(o.message_id).encode()]
    assert core.state.case(CASE) is not None  # staged...
    core.state.rollback()
    assert core.state.case(CASE) is None  # ...and only kept once the transaction commits


def test_a_missing_report_reaches_the_statutory_recipients(core: RouterCore, net: Network) -> None:
    feed = Feed()
    _placed(core, net, feed)
    o = core.process(feed.signed(net, _missing(net)))
    assert o.status == "routed"
    assert _inboxes(o) == MISSING_TO
    accepted = next(e for e in _log(o) if e.status == Status.ACCEPTED)
    assert accepted.reason is None  # the case is known: its recipients were checked


def test_a_routed_message_is_one_delivery_log_record_read_as_one_entry_a_recipient(
    core: RouterCore, net: Network
) -> None:
    """The router writes a message's ACCEPTED and ROUTED entries as one record; every reader
    expands it into the entries it always read, each with the message's own fields."""
    feed = Feed()
    _placed(core, net, feed)
    o = core.process(feed.signed(net, _missing(net)))
    records = [x for x in o.outputs if x.topic == TOPICS.delivery_log]
    assert len(records) == 1
    assert records[0].key == str(o.message_id).encode()
    accepted, *routed = LOGS.entries(records[0].value)
    assert accepted.status == Status.ACCEPTED
    assert accepted.routed is None
    assert accepted.sharing is not None
    assert {e.recipient for e in routed} == MISSING_TO
    for e in routed:
        assert e.status == Status.ROUTED
        assert e.role
        for same in ("message_id", "at", "sender", "case_ref", "urgency", "ack_deadline"):
            assert getattr(e, same) == getattr(accepted, same), same
        assert e.sharing is None
        assert e.facts is None
    # A record written one entry at a time (by an earlier router) reads as it always did.
    old = LogEntry(
        message_id="m-1", status=Status.ROUTED, at=accepted.at, recipient=HOST, role="HOST"
    )
    assert LOGS.entries(LOGS.encode(old)) == [old]


def test_a_left_out_recipient_is_a_route_gap_with_a_notice_to_the_sender(
    core: RouterCore, net: Network
) -> None:
    feed = Feed()
    _placed(core, net, feed)
    o = core.process(feed.signed(net, _missing(net, [Recipient(PLACING, Role.PLACING_AUTHORITY)])))
    assert o.status == "routed"
    assert o.gaps == 2
    gaps = {e.recipient for e in _log(o) if e.status == Status.ROUTE_GAP}
    assert gaps == {HOST, HOME_FORCE}
    assert TOPICS.inbox(HOST_FORCE) in [x.topic for x in o.outputs]  # the notice


def test_a_case_not_yet_registered_is_delivered_as_addressed_and_says_so(
    core: RouterCore, net: Network
) -> None:
    o = core.process(Feed().signed(net, _missing(net)))
    assert o.status == "routed"
    assert _inboxes(o) == MISSING_TO
    accepted = next(e for e in _log(o) if e.status == Status.ACCEPTED)
    assert accepted.reason is not None
    assert "not in the placement registry" in accepted.reason


def test_the_same_message_again_is_a_duplicate_even_resealed(
    core: RouterCore, net: Network
) -> None:
    feed = Feed()
    _placed(core, net, feed)
    first = _missing(net)
    assert core.process(feed.signed(net, first)).status == "routed"
    core.state.commit()
    again = _missing(net, message_id=first.header.message_id)
    assert again.value != first.value
    assert core.process(feed.signed(net, again)).status == "duplicate"


def _dead(o: Outcome, reason: str) -> Any:
    assert o.status == "rejected", o
    assert o.reason == reason
    (letter,) = [x for x in o.outputs if x.topic == TOPICS.deadletter]
    headers = dict(letter.headers)
    assert headers[H_REASON].decode() == reason
    (entry,) = _log(o)
    assert entry.status == Status.REJECTED
    assert (entry.reason or "").startswith(reason)
    return entry


def test_dead_letter_malformed(core: RouterCore, net: Network) -> None:
    feed = Feed()
    _dead(core.process(feed.record(PLACING, None)), "malformed")
    _dead(core.process(feed.record(PLACING, b"not an envelope")), "malformed")
    for when in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        edge = _placement(net, occurred_at=dt.datetime.fromisoformat(when))
        _dead(core.process(feed.signed(net, edge)), "malformed")


def test_dead_letter_unknown_schema(core: RouterCore) -> None:
    o = core.process(Feed().record(PLACING, b"\xc3\x01" + b"\x42" * 8 + b"\x00"))
    _dead(o, "unknown-schema")


def test_dead_letter_bad_signature(core: RouterCore, net: Network) -> None:
    feed = Feed()
    out = _placement(net)
    net.protector(PLACING).sign([out])
    damaged = [(k, bytes([v[0] ^ 1]) + v[1:] if k == "cbx-sig" else v) for k, v in out.headers]
    _dead(core.process(feed.record(PLACING, out.value, damaged)), "bad-signature")
    _dead(core.process(feed.record(PLACING, out.value, [])), "bad-signature")


def test_dead_letter_sender_mismatch(core: RouterCore, net: Network) -> None:
    feed = Feed()
    _dead(core.process(feed.signed(net, _placement(net), owner=HOST)), "sender-mismatch")
    # signed by another agency than the header names
    out = _placement(net)
    net.protector(HOST).sign([out])
    _dead(core.process(feed.record(PLACING, out.value, out.headers)), "sender-mismatch")


def test_dead_letter_policy(core: RouterCore, net: Network) -> None:
    feed = Feed()
    _placed(core, net, feed)
    h = header(
        "MissingRiskGraded",
        PLACING,
        Role.PLACING_AUTHORITY,
        [Recipient(HOME_FORCE, Role.HOME_FORCE)],
        case_ref=CASE,
    )
    graded = net.protector(PLACING).seal(h, body_of("MissingRiskGraded"))
    entry = _dead(core.process(feed.signed(net, graded)), "policy")
    assert "may not send MissingRiskGraded" in (entry.reason or "")


def test_dead_letter_unknown_recipient(core: RouterCore, net: Network) -> None:
    ghost = AgencyKeys.new("pf-e23000036")  # known to the sender's view only, not on the exchange
    local = Directory([*net.directory.agencies(), AgencyEntry.from_keys(ghost, "x", "POLICE")])
    sealer = Sealer(net.keys[HOST_FORCE], local, POLICY, FORMS)
    prot = Protector(CATALOGUE, FORMS, sealer, Verifier(local))
    h = header(
        "ChildMissingReported",
        HOST_FORCE,
        Role.HOST_FORCE,
        [Recipient("pf-e23000036", Role.OTHER_FORCE)],
        case_ref=CASE,
    )
    out = prot.sign([prot.seal(h, body_of("ChildMissingReported"))])[0]
    rec = Feed().record(HOST_FORCE, out.value, out.headers)
    _dead(core.process(rec), "unknown-recipient")


def test_dead_letter_unsealed_body(core: RouterCore, net: Network) -> None:
    plain = CATALOGUE.latest("ChildMissingReported")
    h = _missing(net).header
    value = net.protector(HOST_FORCE).envelopes.encode(
        h, codec.encode(plain.parsed, plain.fingerprint, body_of("ChildMissingReported"))
    )
    headers = Signer(net.keys[HOST_FORCE]).sign_batch([value])[0]
    _dead(core.process(Feed().record(HOST_FORCE, value, headers)), "unsealed-or-malformed-body")


def test_dead_letter_message_id_reused_leaves_the_first_message_alone(
    core: RouterCore, net: Network
) -> None:
    feed = Feed()
    _placed(core, net, feed)
    first = _missing(net)
    assert core.process(feed.signed(net, first)).status == "routed"
    core.state.commit()
    other = _missing(
        net, [Recipient(PLACING, Role.PLACING_AUTHORITY)], message_id=first.header.message_id
    )
    o = core.process(feed.signed(net, other))
    assert o.status == "rejected"
    assert o.reason == "message-id-reused"
    (entry,) = _log(o)
    assert entry.message_id is None  # the first message keeps its own state
    assert entry.related_message_id == str(first.header.message_id)


def test_a_record_that_makes_a_check_fail_unexpectedly_is_dead_lettered(
    core: RouterCore, net: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = Feed()

    def boom(*_a: Any, **_k: Any) -> Any:
        raise ZeroDivisionError

    with monkeypatch.context() as m:
        m.setattr(core.rules, "check", boom)
        _dead(core.process(feed.signed(net, _placement(net))), "unprocessable")
    assert core.process(feed.signed(net, _placement(net))).status == "routed"


def test_a_dead_letter_read_again_is_not_dead_lettered_twice(core: RouterCore) -> None:
    rec = Feed().record(PLACING, b"junk")
    assert core.process(rec).status == "rejected"
    core.state.commit()
    assert core.process(rec).status == "duplicate"


def test_a_message_id_is_not_marked_rejected_by_a_forgery_of_it(
    core: RouterCore, net: Network
) -> None:
    """An outsider reusing a real message id on its own topic gets a dead letter of its own."""
    feed = Feed()
    _placed(core, net, feed)
    first = _missing(net)
    core.process(feed.signed(net, first))
    core.state.commit()
    h = header(
        "ChildMissingReported",
        OUTSIDER,
        Role.OTHER_FORCE,
        [Recipient(PLACING, Role.PLACING_AUTHORITY)],
        case_ref=CASE,
        message_id=first.header.message_id,
    )
    forged = net.protector(OUTSIDER).seal(h, body_of("ChildMissingReported"))
    o = core.process(feed.signed(net, forged))
    assert o.status == "rejected"
    assert all(e.message_id != str(first.header.message_id) for e in _log(o))


def test_a_forged_sender_cannot_mark_anothers_message_rejected(
    core: RouterCore, net: Network
) -> None:
    """A record on an agency's own topic that names another sender and one of its real ids is
    refused and logged against the writer, not against the message id it names."""
    feed = Feed()
    _placed(core, net, feed)
    first = _missing(net)
    assert core.process(feed.signed(net, first)).status == "routed"
    core.state.commit()
    forged = _missing(net, message_id=first.header.message_id)
    net.protector(OUTSIDER).sign([forged])  # signed by the outsider, naming the host force
    o = core.process(feed.record(OUTSIDER, forged.value, forged.headers))
    entry = _dead(o, "sender-mismatch")
    assert entry.message_id is None
    assert entry.sender == OUTSIDER
    assert entry.related_message_id == str(first.header.message_id)


def test_dead_letter_short_sealed(core: RouterCore, net: Network) -> None:
    feed = Feed()
    _placed(core, net, feed)
    full = _missing(net)
    named = list(full.header.recipients)
    sealed = net.protector(HOST_FORCE).sealer.seal(
        "ChildMissingReported", full.header.message_id, body_of("ChildMissingReported"), named[:1]
    )
    value = net.protector(HOST_FORCE).envelopes.encode(full.header, sealed.body)
    short = Outgoing(full.header, value)
    entry = _dead(core.process(feed.signed(net, short)), "short-sealed")
    for r in named[1:]:
        assert r.agency in (entry.reason or "")


def test_a_council_cannot_register_a_placement_under_another_councils_case_id(
    core: RouterCore, net: Network
) -> None:
    squat = _placement(net, case_ref=case_id(HOST, "KCC-LAC-000123"))
    entry = _dead(core.process(Feed().signed(net, squat)), "policy")
    assert "its placing authority's own case id" in (entry.reason or "")
