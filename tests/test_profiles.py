"""Agency profiles agree with the routing rules, and connectors keep to them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli import cbx

from broker.errors import ConfigurationError, PolicyError
from broker.kafka import lanes
from broker.kafka.topics import Topics
from broker.model import SYSTEM_TYPES
from broker.policy.profiles import agency_topics, profile_for, profiles
from broker.policy.routing import Rules

RULES = Rules.load()


@pytest.mark.parametrize("kind", sorted(profiles()))
def test_profile_is_what_the_rules_allow_its_roles(kind: str) -> None:
    p = profiles()[kind]
    sends = {t for t, r in RULES.rules.items() if r.senders & p.roles}
    # The exchange's own messages reach every kind (profiles.yaml does not list them).
    receives = {t for t, r in RULES.rules.items() if r.allowed & p.roles} - SYSTEM_TYPES
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
    assert profile_for("gp-a81001").kind == "gp"
    assert profile_for("sch-118822").kind == "school"
    assert profile_for("iro-e10000016").kind == "iro"
    assert profile_for("rhi-1122334").kind == "rhi"


@pytest.mark.parametrize(
    ("agency", "expected"),
    [
        ("gp-81001", "gp-<ODS practice code>"),
        ("gp-a810012", "gp-<ODS practice code>"),
        ("sch-11882", "6-digit unique reference number"),
        ("iro-w10000016", "iro-<GSS code of the council"),
        ("rhi-12", "registered charity or company number"),
    ],
)
def test_an_id_that_is_not_its_kinds_official_code_is_refused(agency: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        profile_for(agency)


def test_the_new_kinds_have_directory_kinds_the_directory_schema_knows() -> None:
    from broker.policy.profiles import directory_kind
    from broker.schema.catalogue import Catalogue

    raw = json.dumps(Catalogue.load().latest("DirectoryEntry").raw)
    for agency, kind in (
        ("gp-a81001", "HEALTH"),
        ("sch-118822", "SCHOOL"),
        ("iro-e10000016", "SUPPORT_SERVICE"),
        ("rhi-1122334", "SUPPORT_SERVICE"),
    ):
        assert directory_kind(agency) == kind
        assert f'"{kind}"' in raw


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


def test_partitions_follow_the_kind_and_a_provider_has_one_and_no_lane() -> None:
    topics = Topics("cbx")
    sizes = {
        agency: {spec.name.split(".")[1]: spec.partitions for spec in agency_topics(topics, agency)}
        for agency in ("la-e10000016", "pf-e23000032", "icb-e54000032", "cp-sc482913", "gp-a81001")
    }
    assert sizes["la-e10000016"] == {"outbound": 4, "inbox": 4, "status": 3, "cases": 3}
    assert sizes["pf-e23000032"] == {"outbound": 4, "inbox": 4, "status": 3, "cases": 3}
    assert sizes["icb-e54000032"] == {"outbound": 3, "inbox": 3, "status": 2, "cases": 2}
    for small in ("cp-sc482913", "gp-a81001"):
        assert sizes[small] == {"outbound": 1, "inbox": 1, "status": 1, "cases": 1}
    # 3,000 children's homes: 12,000 partitions, not the 42,000 of a council's layout.
    assert sum(sizes["cp-sc482913"].values()) * 3000 == 12_000
    # ... and read first: the router and the inbox take a topic of one partition before bulk.
    assert lanes.read_first(0, 1)
    assert not lanes.read_first(0, 4)
    assert lanes.read_first(3, 4)


def _profiles_with(tmp_path: Path, kind: str, key: str, value: object) -> Path:
    """The shipped profiles with one setting of one kind changed, written under ``tmp_path``."""
    from broker.paths import schemas_dir

    data = yaml.safe_load((schemas_dir() / "policy" / "profiles.yaml").read_text())
    data["profiles"][kind][key] = value
    path = tmp_path / f"profiles-{kind}-{key}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_only_an_agency_of_one_partition_may_go_without_the_lane(tmp_path: Path) -> None:
    path = _profiles_with(tmp_path, "council", "lane", False)
    with pytest.raises(ConfigurationError, match="profile council: lane: false is for an agency"):
        profiles(path)
    path = _profiles_with(tmp_path, "council", "lane", "no")
    with pytest.raises(ConfigurationError, match="profile council: lane must be true or false"):
        profiles(path)


@pytest.mark.parametrize("value", [0, 33, "3", True, 1.5])
def test_a_profile_with_an_impossible_partition_count_is_refused(
    tmp_path: Path, value: object
) -> None:
    path = _profiles_with(tmp_path, "provider", "partitions", value)
    with pytest.raises(ConfigurationError, match="profile provider: partitions must be a whole"):
        profiles(path)
