"""Agency profiles agree with the routing rules, and connectors keep to them."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import cbx

from broker.errors import ConfigurationError, PolicyError
from broker.policy.profiles import profile_for, profiles
from broker.policy.routing import Rules

RULES = Rules.load()


@pytest.mark.parametrize("kind", ["council", "police", "health", "provider"])
def test_profile_is_what_the_rules_allow_its_roles(kind: str) -> None:
    p = profiles()[kind]
    sends = {t for t, r in RULES.rules.items() if r.senders & p.roles}
    receives = {t for t, r in RULES.rules.items() if r.allowed & p.roles}
    assert p.sends == sends
    assert p.receives == receives


def test_every_kind_has_a_profile_by_prefix() -> None:
    assert profile_for("la-e10000016").kind == "council"
    assert profile_for("pf-e23000003").kind == "police"
    assert profile_for("icb-e54000048").kind == "health"
    assert profile_for("cp-sc482913").kind == "provider"
    assert profile_for("pf-e23000003").sink == "webhook"
    assert profile_for("la-e10000016").sink == "folder"
    with pytest.raises(ConfigurationError, match="has no profile"):
        profile_for("xx-123456")


def test_a_council_may_not_send_a_police_report() -> None:
    council = profile_for("la-e10000016")
    council.check_send("la-e10000016", "PlacementNotified")
    with pytest.raises(PolicyError, match="a council does not send ChildMissingReported"):
        council.check_send("la-e10000016", "ChildMissingReported")
    assert council.may_receive("Receipt")
    assert not profile_for("icb-e54000048").may_receive("ChildMissingReported")


def test_a_police_connector_without_a_webhook_says_what_to_give(tmp_path: Path) -> None:
    done = cbx(None, tmp_path, "connector", "run", "--agency", "pf-e23000003", CBX_WEBHOOK_URL="")
    assert done.returncode == 1
    assert "profile delivers by webhook" in done.stderr + done.stdout
    assert "CBX_WEBHOOK_URL" in done.stderr + done.stdout


def test_the_kinds_that_read_the_whole_registry_are_the_kinds_the_acls_let_read_it() -> None:
    from broker.kafka.acls import grants
    from broker.policy.profiles import profiles

    for p in profiles().values():
        agency = f"{p.prefix}x1"
        reads_all = any(
            g.name == "cbx.placements" and g.operation == "READ"
            for g in grants("agency", "cbx", agency)
        )
        assert reads_all == (p.registry == "all"), p.kind
