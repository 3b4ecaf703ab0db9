"""The tracker's statutory clocks without a broker: folded from delivery-log entries, the reminder
addressed to the placing authority and the agency owing the follow-up, signed, and routable."""

from __future__ import annotations

import datetime as dt
import uuid

from agencies import CATALOGUE, FORMS, POLICY, network

from broker.crypto.sealing import Sealer
from broker.crypto.signing import Signer, Verifier
from broker.delivery_log import LogEntry, Status
from broker.envelope import EnvelopeCodec
from broker.model import OBLIGATION_OVERDUE, TRACKER, Recipient, Role
from broker.policy.registry import Placement, PlacementRegistry
from broker.policy.routing import Rules
from broker.schema import codec
from broker.tracker.obligations import ObligationWatch, notice_id

KENT, LANCS, KENT_POLICE, LANCS_POLICE = (
    "la-e10000016",
    "la-e10000017",
    "pf-e23000032",
    "pf-e23000003",
)
RHI = "rhi-1122334"
CASE = f"{KENT}/KCC-77"
RULES = Rules.load()
T0 = dt.datetime(2026, 11, 2, 10, 0, tzinfo=dt.UTC)


def found(watch: ObligationWatch, case: str = CASE, episode: str = "ep-1") -> str:
    mid = str(uuid.uuid4())
    watch.apply(
        LogEntry(
            message_id=mid,
            status=Status.ACCEPTED,
            at=T0,
            event_type="ChildFound",
            sender=LANCS_POLICE,
            case_ref=case,
            occurred_at=T0,
            facts={"episode_id": episode, "found_at": T0.isoformat()},
        )
    )
    for agency, role in ((KENT, "PLACING_AUTHORITY"), (LANCS, "HOST_AUTHORITY")):
        watch.apply(
            LogEntry(
                message_id=mid,
                status=Status.ROUTED,
                at=T0,
                event_type="ChildFound",
                case_ref=case,
                recipient=agency,
                role=role,
            )
        )
    return mid


def registered(*extra: Recipient) -> PlacementRegistry:
    registry = PlacementRegistry()
    case = Placement.new(
        CASE,
        {
            Role.PLACING_AUTHORITY: KENT,
            Role.HOST_AUTHORITY: LANCS,
            Role.HOST_FORCE: LANCS_POLICE,
            Role.HOME_FORCE: KENT_POLICE,
        },
    )
    if extra:
        case = case.with_parties(list(extra), [], T0 - dt.timedelta(days=1), uuid.uuid4())
    registry.put(case)
    return registry


def test_an_unmet_interview_is_owed_by_the_host_authority_and_told_to_the_placing_one() -> None:
    watch = ObligationWatch(RULES, registered())
    found(watch)
    assert watch.overdue(T0 + dt.timedelta(hours=71)) == []
    (clock,) = watch.overdue(T0 + dt.timedelta(hours=73))
    recipients, owing = watch.recipients(clock, T0 + dt.timedelta(hours=73))
    assert recipients == [
        Recipient(KENT, Role.PLACING_AUTHORITY),
        Recipient(LANCS, Role.HOST_AUTHORITY),
    ]
    assert owing == LANCS
    assert watch.overdue(T0 + dt.timedelta(hours=80)) == []  # once


def test_a_registered_return_interview_provider_owes_it_first() -> None:
    watch = ObligationWatch(RULES, registered(Recipient(RHI, Role.RHI_PROVIDER)))
    found(watch)
    (clock,) = watch.overdue(T0 + dt.timedelta(days=4))
    recipients, owing = watch.recipients(clock, T0 + dt.timedelta(days=4))
    assert owing == RHI
    assert Recipient(RHI, Role.RHI_PROVIDER) in recipients


def test_an_unregistered_case_names_who_held_the_owing_role_in_the_starting_message() -> None:
    watch = ObligationWatch(RULES, PlacementRegistry())
    found(watch)
    (clock,) = watch.overdue(T0 + dt.timedelta(days=4))
    recipients, owing = watch.recipients(clock, T0 + dt.timedelta(days=4))
    assert owing == LANCS
    assert recipients[0] == Recipient(KENT, Role.PLACING_AUTHORITY)


def test_a_reminder_already_in_the_log_is_not_sent_again() -> None:
    watch = ObligationWatch(RULES, registered())
    found(watch)
    clock_id = f"return-home-interview:{CASE}:ep-1"
    watch.apply(
        LogEntry(
            message_id=str(notice_id(clock_id)),
            status=Status.ACCEPTED,
            at=T0 + dt.timedelta(hours=72),
            event_type=OBLIGATION_OVERDUE,
            sender=TRACKER,
            case_ref=CASE,
            facts={"clock_id": clock_id, "obligation": "return-home-interview"},
        )
    )
    assert watch.overdue(T0 + dt.timedelta(days=5)) == []


def test_the_reminder_is_signed_by_the_tracker_and_passes_the_routers_rules() -> None:
    net = network(KENT, LANCS, KENT_POLICE, LANCS_POLICE, TRACKER)
    keys = net.keys[TRACKER]
    watch = ObligationWatch(RULES, registered())
    started = found(watch)
    now = T0 + dt.timedelta(hours=73)
    (clock,) = watch.overdue(now)
    envelopes = EnvelopeCodec(CATALOGUE)
    composed = watch.compose(
        clock,
        now,
        Sealer(keys, net.directory, POLICY, FORMS),
        Signer(keys),
        envelopes,
        FORMS.latest[OBLIGATION_OVERDUE].plain.fingerprint,
    )
    assert composed is not None
    value, headers, recipients = composed
    assert Verifier(net.directory).verify(value, headers) == TRACKER
    header, body = envelopes.decode(value)
    assert header.message_id == notice_id(clock.id)
    assert header.sender == TRACKER
    assert header.sender_role == Role.EXCHANGE
    assert header.case_ref == CASE
    form = FORMS.latest[OBLIGATION_OVERDUE]
    record = codec.decode(body, lambda _fp: form.wire_parsed)
    assert record["clock_id"] == clock.id
    assert str(record["started_by_message_id"]) == started
    assert record["limit"] == "72 hours"
    assert record["owing_agency"] == LANCS
    case = watch.registry.get(CASE)
    decision = RULES.check(
        OBLIGATION_OVERDUE, TRACKER, Role.EXCHANGE, recipients, case, lambda _a: True, at=now
    )
    assert {d.agency for d in decision.deliver} == {KENT, LANCS}
    assert decision.gaps == []


def test_no_agency_may_send_what_only_the_exchange_sends() -> None:
    import pytest

    from broker.errors import PolicyError

    case = registered().get(CASE)
    with pytest.raises(PolicyError, match="sent by the exchange only"):
        RULES.check(
            OBLIGATION_OVERDUE,
            LANCS,
            Role.EXCHANGE,
            [Recipient(KENT, Role.PLACING_AUTHORITY)],
            case,
            lambda _a: True,
        )
    with pytest.raises(PolicyError):
        RULES.check(
            OBLIGATION_OVERDUE,
            LANCS,
            Role.HOST_AUTHORITY,
            [Recipient(KENT, Role.PLACING_AUTHORITY)],
            case,
            lambda _a: True,
        )


def test_an_agency_not_on_the_exchange_is_left_out_and_the_others_still_reminded() -> None:
    net = network(KENT, LANCS, KENT_POLICE, LANCS_POLICE, TRACKER)
    keys = net.keys[TRACKER]
    watch = ObligationWatch(RULES, registered())
    found(watch)
    now = T0 + dt.timedelta(hours=73)
    (clock,) = watch.overdue(now)
    composed = watch.compose(
        clock,
        now,
        Sealer(keys, net.directory, POLICY, FORMS),
        Signer(keys),
        EnvelopeCodec(CATALOGUE),
        FORMS.latest[OBLIGATION_OVERDUE].plain.fingerprint,
        lambda agency: agency != LANCS,  # the host council's entry was revoked
    )
    assert composed is not None
    assert composed[2] == [Recipient(KENT, Role.PLACING_AUTHORITY)]
    nobody = watch.compose(
        clock,
        now,
        Sealer(keys, net.directory, POLICY, FORMS),
        Signer(keys),
        EnvelopeCodec(CATALOGUE),
        FORMS.latest[OBLIGATION_OVERDUE].plain.fingerprint,
        lambda _agency: False,
    )
    assert nobody is None
