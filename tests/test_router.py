"""The router on the real broker: statutory routing, registry, gaps, dead letters, duplicates."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from agencies import SHARING, body_of
from cli import cbx
from exchange import Exchange, exchange

from broker.crypto.keys import AgencyKeys
from broker.crypto.sealing import Sealer
from broker.crypto.signing import Signer, Verifier
from broker.delivery_log import Status
from broker.directory import AgencyEntry, Directory
from broker.envelope import Protector
from broker.errors import CbxError
from broker.kafka.settings import KafkaSettings
from broker.model import Recipient, Role
from broker.policy.sharing import SharingPolicy
from broker.schema import codec
from broker.schema.catalogue import Catalogue

pytestmark = pytest.mark.kafka

KENT, LANCS = "la-e10000016", "la-e10000017"
KENT_POLICE, LANCS_POLICE = "pf-e23000032", "pf-e23000003"
KENT_ICB, LANCS_ICB = "icb-e54000032", "icb-e54000048"
PROVIDER = "cp-sc482913"
OUTSIDER = "pf-e23000001"
ALL = [KENT, LANCS, KENT_POLICE, LANCS_POLICE, KENT_ICB, LANCS_ICB, PROVIDER, OUTSIDER]
CASE = "KCC-LAC-000123"


def placement_body(**over: Any) -> dict[str, Any]:
    return body_of("PlacementNotified", host_authority=LANCS, provider=PROVIDER, **over)


async def _place(ex: Exchange, case: str = CASE, **kwargs: Any) -> Any:
    kent = ex.connectors[KENT]
    return await kent.send(
        "PlacementNotified", placement_body(), case_ref=case, sharing=SHARING, **kwargs
    )


async def _received(ex: Exchange, message_id: Any) -> dict[str, int]:
    counts = {}
    for agency in ALL:
        ids = await ex.inbox_ids(agency)
        counts[agency] = ids.get(str(message_id), 0)
    return counts


async def test_placement_and_missing_report_reach_exactly_the_statutory_recipients(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)

        placed = await _place(ex)
        expected = {LANCS, LANCS_POLICE, KENT_POLICE, LANCS_ICB, KENT_ICB, PROVIDER}
        assert {r.agency for r in placed.header.recipients} == expected

        async def placement_routed() -> dict[str, int] | None:
            got = await _received(ex, placed.header.message_id)
            return got if sum(got.values()) >= len(expected) else None

        got = await ex.wait_for(placement_routed, what="placement routed")
        assert {a for a, n in got.items() if n} == expected
        assert all(n in (0, 1) for n in got.values())
        assert got[OUTSIDER] == 0
        assert got[KENT] == 0

        # Each recipient opens it; the host ICB cannot read intelligence, the host force can.
        (_, rec), *_ = [x for x in await ex.inbox(LANCS_ICB)]
        _, icb_view = ex.connectors[LANCS_ICB].open(rec.value, list(rec.headers))
        assert icb_view["identity"]["family_name"] == "Whitcombe"
        assert (
            str(icb_view["risk_summary"])
            == "Withheld(sensitivity=<SensitivityClass.INTELLIGENCE: 'INTELLIGENCE'>)"
        )
        (_hdr, rec), *_ = [x for x in await ex.inbox(LANCS_POLICE)]
        _, hf_view = ex.connectors[LANCS_POLICE].open(rec.value, list(rec.headers))
        assert hf_view["risk_summary"]["previous_missing_episodes"] == 4

        # The host force learns the case from the registry and reports the child missing.
        missing = await ex.report_missing(LANCS_POLICE, CASE)
        assert missing.header.sender_role == Role.HOST_FORCE
        expected_missing = {KENT, KENT_POLICE, LANCS, PROVIDER}  # the home: its child is missing

        async def missing_routed() -> dict[str, int] | None:
            got = await _received(ex, missing.header.message_id)
            return got if sum(got.values()) >= len(expected_missing) else None

        got = await ex.wait_for(missing_routed, what="missing report routed")
        assert {a for a, n in got.items() if n} == expected_missing
        _, pla_view = ex.connectors[KENT].open(
            *next(
                (r.value, list(r.headers))
                for h, r in await ex.inbox(KENT)
                if h.message_id == missing.header.message_id
            )
        )
        assert pla_view["last_seen"]["place"] == "bus station, Elwick Road"

        log = await ex.log()
        mine = [e for e in log if e.message_id == str(missing.header.message_id)]
        assert [e.status for e in mine].count(Status.ACCEPTED) == 1
        assert {e.recipient for e in mine if e.status == Status.ROUTED} == expected_missing
        accepted = next(e for e in mine if e.status == Status.ACCEPTED)
        assert accepted.ack_deadline is not None, "IMMEDIATE carries an acknowledgement deadline"


async def test_route_gap_is_recorded_notified_and_repaired_by_the_sender(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    async with exchange(kafka_ns, tmp_path) as ex:
        for agency in ALL:
            await ex.agency(agency, inbox=(agency == KENT))
        await ex.sync_all()
        kent = ex.connectors[KENT]
        _, full = kent.route("PlacementNotified", CASE, placement_body())
        without_home_force = [r for r in full if r.agency != KENT_POLICE]
        placed = await kent.send(
            "PlacementNotified",
            placement_body(),
            case_ref=CASE,
            sharing=SHARING,
            recipients=without_home_force,
            sender_role=Role.PLACING_AUTHORITY,
        )

        async def home_force_has_it() -> list[Any]:
            return [
                h
                for h, _ in await ex.inbox(KENT_POLICE)
                if h.related_message_id == placed.header.message_id
            ]

        repairs = await ex.wait_for(home_force_has_it, what="repair delivered to the home force")
        assert len(repairs) == 1
        repair = repairs[0]
        assert [r.agency for r in repair.recipients] == [KENT_POLICE]
        ((_, rec),) = [
            x for x in await ex.inbox(KENT_POLICE) if x[0].message_id == repair.message_id
        ]
        _, view = ex.connectors[KENT_POLICE].open(rec.value, list(rec.headers))
        assert view["identity"]["family_name"] == "Whitcombe"

        async def logged() -> list[Any] | None:
            log = await ex.log()
            orig = [e for e in log if e.message_id == str(placed.header.message_id)]
            ok = {(e.status, e.recipient) for e in orig}
            if (Status.REPAIRED, KENT_POLICE) in ok:
                return orig
            return None

        orig = await ex.wait_for(logged, what="REPAIRED in the delivery log")
        statuses = {(e.status, e.recipient) for e in orig}
        assert (Status.ROUTE_GAP, KENT_POLICE) in statuses
        assert (Status.REPAIRED, KENT_POLICE) in statuses
        assert (Status.ROUTED, KENT_POLICE) not in statuses
        assert kent.stats.repaired == 1


async def test_a_message_published_twice_is_routed_once(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        kent = ex.connectors[KENT]
        out = kent.prepare("PlacementNotified", placement_body(), case_ref=CASE, sharing=SHARING)
        await kent.publish([out])
        second = kent.prepare(
            "PlacementNotified", placement_body(), case_ref="KCC-LAC-000999", sharing=SHARING
        )
        # The retry: same message id and bytes, published again, then something after it.
        await kent.publish([out])
        await kent.publish([second])

        async def both() -> bool:
            # The two cases sit on different partitions: either may be routed first. Wait for
            # both and for the router to have read everything, the copy published again too.
            ids = await ex.inbox_ids(LANCS)
            done, end = await ex.router_progress()
            return (
                str(out.header.message_id) in ids
                and str(second.header.message_id) in ids
                and done >= end
            )

        await ex.wait_for(both, what="both messages routed, the copy read")
        ids = await ex.inbox_ids(LANCS)
        assert ids[str(out.header.message_id)] == 1


def _cbx(settings: KafkaSettings, home: Path, *args: str) -> Any:
    return cbx(settings, home, *args)


async def test_every_dead_letter_reason_and_replay_after_fix(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    cat = Catalogue.load()
    async with exchange(kafka_ns, tmp_path) as ex:
        for agency in ALL:
            await ex.agency(agency)
        late = await ex.agency(
            "la-e10000015", publish_keys=False
        )  # Hertfordshire, keys not yet published
        await ex.sync_all()
        kent = ex.connectors[KENT]
        topics = kafka_ns.topics
        from broker.kafka import clients as kafka

        producer = kafka.producer(kafka_ns)
        await producer.start()
        sent: dict[str, str] = {}
        try:
            # malformed: not Avro at all
            await producer.send_and_wait(topics.outbound(KENT), b"not an envelope", key=b"x")
            sent["malformed"] = "malformed"
            # unknown-schema: single-object framing with a fingerprint nobody published
            await producer.send_and_wait(topics.outbound(KENT), b"\xc3\x01" + b"\x42" * 8 + b"\x00")
            sent["unknown-schema"] = "unknown-schema"
            # bad-signature: a real message whose signature was damaged in transit
            good = kent.prepare(
                "PlacementNotified", placement_body(), case_ref="C-BADSIG", sharing=SHARING
            )
            kent.protector.sign([good])
            bad = [
                (k, (bytes([v[0] ^ 1]) + v[1:]) if k == "cbx-sig" else v) for k, v in good.headers
            ]
            await producer.send_and_wait(
                topics.outbound(KENT), good.value, key=good.key, headers=bad
            )
            sent["bad-signature"] = str(good.header.message_id)
            # sender-mismatch: Kent's message written to Lancashire's outbound topic
            other = kent.prepare(
                "PlacementNotified", placement_body(), case_ref="C-MISMATCH", sharing=SHARING
            )
            kent.protector.sign([other])
            await producer.send_and_wait(
                topics.outbound(LANCS), other.value, key=other.key, headers=other.headers
            )
            sent["sender-mismatch"] = str(other.header.message_id)
            # policy: a council may not grade police risk
            graded = kent.prepare(
                "MissingRiskGraded",
                body_of("MissingRiskGraded"),
                case_ref="C-POLICY",
                sharing=SHARING,
                recipients=[Recipient(KENT_POLICE, Role.HOME_FORCE)],
                sender_role=Role.PLACING_AUTHORITY,
            )
            await kent.publish([graded])
            sent["policy"] = str(graded.header.message_id)
            # unknown-recipient: sealed for an agency that is not on the exchange
            ghost = AgencyKeys.new("pf-e23000036")
            local = Directory(
                [e for e in kent.directory.agencies()]
                + [AgencyEntry.from_keys(ghost, "x", "POLICE")]
            )
            sealer = Sealer(kent.keys, local, SharingPolicy.load(), kent.forms)
            prot = Protector(cat, kent.forms, sealer, Verifier(local))
            hdr = kent.prepare(
                "CSERiskAssessed",
                _cse(),
                case_ref="C-GHOST",
                sharing=SHARING,
                recipients=[Recipient(KENT_POLICE, Role.HOME_FORCE)],
                sender_role=Role.PLACING_AUTHORITY,
            ).header
            from dataclasses import replace

            ghost_hdr = replace(hdr, recipients=(Recipient("pf-e23000036", Role.HOME_FORCE),))
            ghost_out = prot.sign([prot.seal(ghost_hdr, _cse())])[0]
            await producer.send_and_wait(
                topics.outbound(KENT), ghost_out.value, key=ghost_out.key, headers=ghost_out.headers
            )
            sent["unknown-recipient"] = str(ghost_hdr.message_id)
            # unsealed-or-malformed-body: a body in its plain schema, sensitive fields in clear
            plain = cat.latest("CSERiskAssessed")
            clear_hdr = replace(hdr, message_id=uuid.uuid4(), case_ref="C-CLEAR")
            clear_value = kent.protector.envelopes.encode(
                clear_hdr, codec.encode(plain.parsed, plain.fingerprint, _cse())
            )
            clear_headers = Signer(kent.keys).sign_batch([clear_value])[0]
            await producer.send_and_wait(
                topics.outbound(KENT), clear_value, key=b"C-CLEAR", headers=clear_headers
            )
            sent["unsealed-or-malformed-body"] = str(clear_hdr.message_id)
            # bad-signature that a fix cures: Hertfordshire's keys are not in the directory yet
            herts = late.prepare(
                "CSERiskAssessed",
                _cse(),
                case_ref="C-LATE",
                sharing=SHARING,
                recipients=[Recipient(KENT_POLICE, Role.HOME_FORCE)],
                sender_role=Role.PLACING_AUTHORITY,
            )
            await late.publish([herts])
        finally:
            await producer.stop()

        async def all_dead() -> list[Any] | None:
            dead = await ex.dead_letters()
            return dead if len(dead) >= 8 else None

        dead = await ex.wait_for(all_dead, what="8 dead letters")
        reasons = {d.reason for d in dead}
        assert reasons == {
            "malformed",
            "unknown-schema",
            "bad-signature",
            "sender-mismatch",
            "policy",
            "unknown-recipient",
            "unsealed-or-malformed-body",
        }
        for d in dead:
            assert d.topic.startswith(topics.outbound_prefix)
            assert d.offset >= 0
            assert d.stage
            assert d.error_class
            assert d.error
        by_id = {d.message_id: d for d in dead if d.message_id}
        for reason, mid in sent.items():
            if mid != reason:
                assert by_id[mid].reason == reason
        log = await ex.log()
        rejected = [e for e in log if e.status == Status.REJECTED]
        assert len(rejected) == 8, "\n".join(f"{e.source} {e.reason}" for e in rejected)
        # No sensitive value in the dead-letter headers or the log.
        blob = json.dumps([d.as_json() for d in dead]) + json.dumps([e.as_json() for e in log])
        for secret in ("Whitcombe", "TN23", "Larch House", "older associates"):
            assert secret not in blob

        listed = _cbx(kafka_ns, tmp_path, "deadletter", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == 8

        # The fix: publish Hertfordshire's keys; then replay its dead letter.
        await ex.publish_keys(late)
        late_dl = next(d for d in dead if d.message_id == str(herts.header.message_id))
        assert late_dl.reason == "bad-signature"
        replayed = _cbx(kafka_ns, tmp_path, "deadletter", "replay", late_dl.id)
        assert replayed.returncode == 0, replayed.stderr

        async def delivered() -> bool:
            return str(herts.header.message_id) in await ex.inbox_ids(KENT_POLICE)

        await ex.wait_for(delivered, what="replayed message routed")
        statuses = [
            e.status for e in await ex.log() if e.message_id == str(herts.header.message_id)
        ]
        assert Status.REPLAYED in statuses
        assert Status.ROUTED in statuses


def _cse() -> dict[str, Any]:
    import datetime as dt

    return {
        "assessment_id": str(uuid.uuid4()),
        "tool": "CSE screening tool v3",
        "level": "HIGH",
        "category": None,
        "assessed_date": dt.date(2026, 4, 1),
        "review_date": dt.date(2026, 7, 1),
        "indicators": ["older associates", "unexplained gifts"],
    }


async def test_metrics_and_sigterm(kafka_ns: KafkaSettings, tmp_path: Path) -> None:
    import socket
    import urllib.request

    from broker.kafka import clients as kafka

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with exchange(kafka_ns, tmp_path, metrics_port=port) as ex:
        await ex.agency(KENT)
        producer = kafka.producer(kafka_ns)
        await producer.start()
        await producer.send_and_wait(kafka_ns.topics.outbound(KENT), b"junk", key=b"x")
        await producer.stop()

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return str(r.read().decode())

        async def counted() -> str | None:
            try:
                text = await asyncio.to_thread(scrape)
            except OSError:
                return None
            line = 'cbx_router_dead_letters_total{reason="malformed"} 1.0'
            return text if line in text else None

        text = await ex.wait_for(counted, what="metrics with one dead letter")
        for name in (
            "cbx_router_messages_total",
            "cbx_router_routed_total",
            "cbx_router_route_gaps_total",
            "cbx_router_latency_seconds_bucket",
        ):
            assert name in text
        code = ex.router.terminate(timeout=30)
        assert code == 0, ex.router.log_text()[-3000:]
        assert "router_stopped" in ex.router.log_text()


async def test_replay_refuses_a_dead_letter_the_router_did_not_sign(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    from broker.kafka import clients as kafka
    from broker.router import deadletter
    from broker.router.deadletter import Failure, error_headers

    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        kent = ex.connectors[KENT]
        genuine = kent.prepare(
            "PlacementNotified", placement_body(), case_ref="C-DL", sharing=SHARING
        )
        kent.protector.sign([genuine])
        damaged = [
            (k, bytes([v[0] ^ 1]) + v[1:] if k == "cbx-sig" else v) for k, v in genuine.headers
        ]
        producer = kafka.producer(kafka_ns)  # as the administrator: agencies may not write there
        await producer.start()
        try:
            await producer.send_and_wait(
                kafka_ns.topics.outbound(KENT), genuine.value, key=genuine.key, headers=damaged
            )
            forged_headers = list(genuine.headers) + error_headers(
                Failure("bad-signature", "protection", "SignatureError", "looks genuine"),
                kafka_ns.topics.outbound(KENT),
                0,
                0,
                str(genuine.header.message_id),
                "svc-router",
            )
            await producer.send_and_wait(
                kafka_ns.topics.deadletter, genuine.value, key=genuine.key, headers=forged_headers
            )
        finally:
            await producer.stop()

        async def both() -> list[Any] | None:
            dead = await ex.dead_letters()
            return dead if len(dead) == 2 else None

        dead = await ex.wait_for(both, what="the router's dead letter and the forged one")
        forged = next(
            d for d in dead if not any(k.startswith("cbx.errors.sig.") for k, _ in d.headers)
        )
        real = next(d for d in dead if d is not forged)
        assert forged.writer == real.writer == "svc-router"  # the claim alone proves nothing
        with pytest.raises(CbxError, match="not carry a valid signature of the router"):
            await deadletter.replay(kafka_ns, forged.id)
        replayed = await deadletter.replay(kafka_ns, real.id)
        assert replayed.id == real.id
