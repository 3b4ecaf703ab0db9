"""Access control on the real, secured broker: each agency touches only its own topics."""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError, SaslAuthenticationFailed

from broker.admin import provision
from broker.errors import AccessDeniedError, AuthenticationFailedError, ConfigurationError
from broker.kafka import clients as kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings

pytestmark = pytest.mark.kafka

AGENCIES = ["la-e10000016", "la-e10000017", "pf-e23000032", "pf-e23000003"]


@pytest.fixture
async def secured(kafka_ns: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    if not provision.secured(kafka_ns):
        pytest.fail("the test broker must run with SASL and ACLs (the embedded one does)")
    monkeypatch.setenv("CBX_HOME", str(tmp_path))
    await provision.setup(kafka_ns)
    for a in AGENCIES:
        await provision.add_agency(kafka_ns, a)
    return kafka_ns


async def _write(settings: KafkaSettings, topic: str) -> None:
    p = kafka.producer(settings, request_timeout_ms=10000)
    async with kafka.access(settings):
        await p.start()
        try:
            await p.send_and_wait(topic, b"probe", key=b"k")
        finally:
            await p.stop()


async def _read(settings: KafkaSettings, topic: str, group: str | None) -> None:
    c = kafka.consumer(settings, topic, group_id=group)
    try:
        async with kafka.access(settings):
            await c.start()
            await c.getmany(timeout_ms=1500)
    finally:
        await c.stop()


async def test_each_agency_writes_only_its_outbound_and_reads_only_its_inbox(
    secured: KafkaSettings,
) -> None:
    t = secured.topics
    for me, other in itertools.product(AGENCIES, AGENCIES):
        mine = principals.settings_for(secured, me)
        group = t.agency_group(me, "inbox")
        if me == other:
            await _write(mine, t.outbound(other))
            await _read(mine, t.outbound(other), None)  # its own chronology is rebuilt from it
            await _read(mine, t.inbox(other), group)
            await _read(mine, t.status(other), group)
            await _read(mine, t.cases(other), None)
            with pytest.raises(AccessDeniedError):  # only the router writes its case view
                await _write(mine, t.cases(other))
            with pytest.raises(AccessDeniedError):  # only the tracker writes it
                await _write(mine, t.status(other))
            continue
        with pytest.raises(AccessDeniedError) as denied:
            await _write(mine, t.outbound(other))
        assert f"User:{me}" in str(denied.value)
        assert t.outbound(other) in str(denied.value)
        with pytest.raises(AccessDeniedError) as denied:
            await _read(mine, t.inbox(other), group)
        assert f"User:{me}" in str(denied.value)
        assert t.inbox(other) in str(denied.value)
        # Nor may it write another's inbox (only the router does) or read another's outbound.
        with pytest.raises(AccessDeniedError):
            await _write(mine, t.inbox(other))
        with pytest.raises(AccessDeniedError):
            await _read(mine, t.outbound(other), group)
        with pytest.raises(AccessDeniedError):  # nor what became of another's messages
            await _read(mine, t.status(other), group)
        with pytest.raises(AccessDeniedError):  # nor the cases another is a party to
            await _read(mine, t.cases(other), None)


async def test_wrong_or_missing_credentials_cannot_connect(secured: KafkaSettings) -> None:
    agency = principals.settings_for(secured, AGENCIES[0])
    wrong = agency.as_principal(AGENCIES[0], "not-the-password")
    with pytest.raises(AuthenticationFailedError, match="authentication failed"):
        await _write(wrong, secured.topics.outbound(AGENCIES[0]))
    anonymous = replace(
        agency,
        security_protocol="PLAINTEXT",
        sasl_mechanism=None,
        sasl_username=None,
        sasl_password=None,
    )
    with pytest.raises(AuthenticationFailedError, match="authentication failed"):
        await _write(anonymous, secured.topics.outbound(AGENCIES[0]))


async def test_no_agency_may_use_another_agencys_group_or_transactional_id(
    secured: KafkaSettings,
) -> None:
    me, other = AGENCIES[0], AGENCIES[1]
    mine = principals.settings_for(secured, me)
    t = secured.topics
    with pytest.raises(AccessDeniedError, match="consumer group") as denied:
        await _read(mine, t.inbox(me), t.agency_group(other, "inbox"))
    assert t.agency_group(other, "inbox") in str(denied.value)
    with pytest.raises(AccessDeniedError, match="transactional id"):
        await _start_transactional(mine, t.agency_group(other, "filedrop"))
    own = kafka.transactional_producer(mine, t.agency_group(me, "filedrop"))
    async with kafka.access(mine):
        await own.start()
        async with own.transaction():
            await own.send(t.outbound(me), b"in a transaction")
        await own.stop()


async def _send_on(producer: object, settings: KafkaSettings, topic: str) -> None:
    async with kafka.access(settings):
        await producer.send_and_wait(topic, b"after")  # type: ignore[attr-defined]


async def _start_transactional(settings: KafkaSettings, transactional_id: str) -> None:
    producer = kafka.transactional_producer(settings, transactional_id)
    async with kafka.access(settings):
        try:
            await producer.start()
        finally:
            await producer.stop()


async def test_a_removed_agency_is_refused_at_once_and_the_others_keep_working(
    secured: KafkaSettings,
) -> None:
    gone, staying = AGENCIES[2], AGENCIES[3]
    t = secured.topics
    gone_settings = principals.settings_for(secured, gone)
    staying_settings = principals.settings_for(secured, staying)
    producer = kafka.producer(gone_settings)
    async with kafka.access(gone_settings):
        await producer.start()
        await producer.send_and_wait(t.outbound(gone), b"before")
    try:
        await provision.remove_agency(secured, gone)
        # The connection it already has is refused on its next request.
        with pytest.raises(AccessDeniedError, match=f"User:{gone}"):
            await _send_on(producer, gone_settings, t.outbound(gone))
    finally:
        await producer.stop()
    # New connections fail to authenticate: the credentials are gone.
    with pytest.raises(AuthenticationFailedError):
        await _write(gone_settings, t.outbound(gone))
    await _write(staying_settings, t.outbound(staying))
    await _read(staying_settings, t.inbox(staying), t.agency_group(staying, "inbox"))


def test_the_acl_set_of_each_role_is_reviewable_data(secured: KafkaSettings) -> None:
    from broker.kafka.acls import AccessControl, grants

    live = AccessControl(secured).describe(AGENCIES[0])
    policy = grants("agency", secured.topic_prefix, AGENCIES[0])
    assert set(policy) <= set(live)
    names = {g.name for g in policy}
    assert secured.topics.outbound(AGENCIES[0]) in names
    assert secured.topics.inbox(AGENCIES[0]) in names
    assert not any(AGENCIES[1] in n for n in names)


# What each kind of principal may do on each shared topic: (read, write).
SHARED = {
    "agency": {
        "schemas": (True, False),
        "directory": (True, False),
        "placements": (False, False),  # its own cases only: cbx.cases.<agency>
        "receipts": (False, True),
        "delivery_log": (False, False),
        "deadletter": (False, False),
        "routed": (False, False),
        "audit": (False, False),
    },
    "router": {
        "schemas": (True, False),
        "directory": (True, False),
        "placements": (True, True),
        "receipts": (False, False),
        "delivery_log": (False, True),
        "deadletter": (False, True),
        "routed": (True, True),
        "audit": (False, False),
    },
    "tracker": {
        "schemas": (False, False),
        "directory": (True, False),
        "placements": (True, False),  # whom to remind of an overdue obligation
        "receipts": (True, False),
        "delivery_log": (True, True),
        "deadletter": (False, False),
        "routed": (False, False),
        "audit": (False, False),
    },
    # The console: it writes the delivery log only to say a dead letter was replayed, and the
    # audit topic with what operators did.
    "operator": {
        "schemas": (False, False),
        "directory": (True, False),
        "placements": (True, False),
        "receipts": (False, False),
        "delivery_log": (True, True),
        "deadletter": (True, False),
        "routed": (False, False),
        "audit": (True, True),
    },
}
PRINCIPALS = {
    "agency": AGENCIES[0],
    "router": "svc-router",
    "tracker": "svc-tracker",
    "operator": "svc-operator",
}


async def test_every_principal_kind_on_every_shared_topic(secured: KafkaSettings) -> None:
    t = secured.topics
    wrong = []
    # A police force reads the whole placement registry (it may report any child in its area).
    police = principals.settings_for(secured, AGENCIES[2])
    await _read(police, t.placements, None)
    with pytest.raises(AccessDeniedError):
        await _write(police, t.placements)
    for kind, rights in SHARED.items():
        who = principals.settings_for(secured, PRINCIPALS[kind])
        for attr, (may_read, may_write) in rights.items():
            topic = getattr(t, attr)
            for action, allowed in (("read", may_read), ("write", may_write)):
                try:
                    if action == "read":
                        await _read(who, topic, None)  # topic rights alone, no group
                    else:
                        await _write(who, topic)
                    done = True
                except AccessDeniedError:
                    done = False
                if done != allowed:
                    wrong.append(f"{kind} {action} {topic}: {'allowed' if done else 'refused'}")
    assert wrong == []
    # The console may put a dead letter back on an outbound topic (the router checks its
    # signature again) but never reads what an agency received.
    operator = principals.settings_for(secured, "svc-operator")
    await _write(operator, t.outbound(AGENCIES[0]))
    with pytest.raises(AccessDeniedError):
        await _read(operator, t.inbox(AGENCIES[0]), None)
    with pytest.raises(AccessDeniedError):
        await _read(operator, t.outbound(AGENCIES[0]), None)
    # The tracker's reminders go out on its own outbound topic, which nobody else may write.
    tracker = principals.settings_for(secured, "svc-tracker")
    await _write(tracker, t.outbound("svc-tracker"))
    with pytest.raises(AccessDeniedError):
        await _write(tracker, t.outbound(AGENCIES[0]))
    with pytest.raises(AccessDeniedError):
        await _write(principals.settings_for(secured, AGENCIES[0]), t.outbound("svc-tracker"))


async def test_provisioning_returns_once_the_new_credentials_are_accepted(secured, caplog) -> None:  # type: ignore[no-untyped-def]
    """`cbx agency add` returns only when the agency can connect; a password the cluster never
    accepts is reported, naming the principal, when the wait runs out. The refusals met while
    waiting are expected, so they are not logged as aiokafka's errors; outside the wait they are."""
    await provision.add_agency(secured, "la-e10000021")
    agency = principals.settings_for(secured, "la-e10000021")
    await provision.credentials_accepted(agency, within_s=0)  # at once: already accepted
    wrong = replace(agency, sasl_password="not-the-password")

    def refusals() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name.startswith("aiokafka")
            and r.levelno >= logging.ERROR
            and any(isinstance(a, SaslAuthenticationFailed) for a in r.args or ())
        ]

    caplog.set_level(logging.INFO, logger="aiokafka")
    with pytest.raises(ConfigurationError, match="la-e10000021 within 1 s"):
        await provision.credentials_accepted(wrong, within_s=1)
    assert refusals() == []
    client = kafka.admin(wrong)
    with pytest.raises(KafkaError):
        await client.start()
    await client.close()
    assert refusals(), "a refused login outside the wait is still aiokafka's error"
