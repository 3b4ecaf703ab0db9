"""Routing rules without a broker: a message that would reach no one is refused, saying why."""

from __future__ import annotations

import dataclasses

import pytest

from broker.errors import NoRecipientError
from broker.model import Recipient, Role
from broker.policy.routing import Rules

RULES = Rules.load()
KENT, MEDWAY = "la-e10000016", "la-e06000035"  # one police force and one ICB cover both
KENT_MEDWAY_ICB, KENT_POLICE = "icb-e54000032", "pf-e23000032"


def test_a_message_whose_required_parties_are_all_its_sender_is_refused() -> None:
    parties = RULES.placement_parties(KENT, MEDWAY)
    assert parties[Role.PLACING_ICB] == parties[Role.HOST_ICB] == KENT_MEDWAY_ICB
    with pytest.raises(NoRecipientError) as refused:
        RULES.recipients("HealthRecordTransferRequested", KENT_MEDWAY_ICB, parties)
    text = str(refused.value)
    assert "would reach no one" in text
    assert "HOST_ICB" in text
    assert f"{KENT_MEDWAY_ICB} itself" in text


def test_the_router_refuses_it_too() -> None:
    parties = RULES.placement_parties(KENT, MEDWAY)
    from broker.policy.registry import Placement

    case = Placement.new("la-e10000016/KCC-1", parties)
    with pytest.raises(NoRecipientError):
        RULES.check(
            "HealthRecordTransferRequested",
            KENT_MEDWAY_ICB,
            Role.PLACING_ICB,
            [],
            case,
            lambda _a: True,
        )


def test_a_rule_may_allow_the_sender_alone() -> None:
    parties = RULES.placement_parties(KENT, MEDWAY)
    alone = dataclasses.replace(RULES.rules["HealthRecordTransferRequested"], sender_alone_ok=True)
    rules = Rules({**RULES.rules, "HealthRecordTransferRequested": alone}, RULES.ref)
    assert rules.recipients("HealthRecordTransferRequested", KENT_MEDWAY_ICB, parties) == []


def test_a_message_with_anyone_else_to_tell_is_not_refused() -> None:
    parties = RULES.placement_parties(KENT, MEDWAY)
    out = RULES.recipients("ChildMissingReported", KENT_POLICE, parties)
    assert {r.agency for r in out} == {KENT, MEDWAY}
    assert Recipient(KENT, Role.PLACING_AUTHORITY) in out


def test_the_police_can_read_the_trigger_plans_actions() -> None:
    from broker.model import SensitivityClass
    from broker.policy.sharing import SharingPolicy

    policy = SharingPolicy.load()
    readers = policy.audience("TriggerPlanIssued", SensitivityClass.CARE)
    assert {Role.HOST_FORCE, Role.HOME_FORCE} <= readers
    # ...only in the trigger plan: other care plans stay with councils, the carer and the IRO.
    assert Role.HOST_FORCE not in policy.audience("PlacementNotified", SensitivityClass.CARE)


def test_any_police_force_may_report_a_child_found_and_every_party_hears() -> None:
    from broker.policy.registry import Placement

    parties = RULES.placement_parties(KENT, "la-e10000017")  # Kent places in Lancashire
    case = Placement.new("la-e10000016/KCC-1", parties)
    met = "pf-e23000001"  # found in London: neither host nor home force
    told = RULES.recipients("ChildFound", met, parties)
    assert {r.agency for r in told} == {KENT, "la-e10000017", KENT_POLICE, "pf-e23000003"}
    decision = RULES.check("ChildFound", met, Role.OTHER_FORCE, told, case, lambda _a: True)
    assert {r.agency for r in decision.deliver} == {r.agency for r in told}
    assert decision.gaps == []
    home = RULES.recipients("ChildFound", KENT_POLICE, parties)
    RULES.check("ChildFound", KENT_POLICE, Role.HOME_FORCE, home, case, lambda _a: True)


def test_only_a_police_force_may_speak_as_one() -> None:
    from broker.errors import PolicyError
    from broker.policy.registry import Placement

    parties = RULES.placement_parties(KENT, "la-e10000017")
    case = Placement.new("la-e10000016/KCC-1", parties)
    told = RULES.recipients("ChildFound", "pf-e23000001", parties)
    with pytest.raises(PolicyError, match="is a council, which cannot be a OTHER_FORCE"):
        RULES.check("ChildFound", "la-e10000015", Role.OTHER_FORCE, told, case, lambda _a: True)
