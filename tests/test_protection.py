"""End-to-end protection: sealing per class and recipient, signatures, tampering, fail closed."""

from __future__ import annotations

import copy
import datetime as dt
import os
import stat
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import fastavro
import pytest
from agencies import (
    CATALOGUE,
    FORMS,
    HOME_FORCE,
    HOST,
    HOST_FORCE,
    HOST_ICB,
    MISSING_RECIPIENTS,
    OUTSIDER,
    PLACING,
    POLICY,
    body_of,
    header,
    network,
)
from avro_strategies import normalise, records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.crypto import keys as keystore
from broker.crypto.sealing import SEALING_FIELD, KeyReuse
from broker.crypto.signing import H_PROOF, H_SIG, Signer
from broker.errors import KeystoreError, ProtectionError, SignatureError
from broker.model import Recipient, Role, SensitivityClass, Withheld
from broker.schema import codec

NET = network()
ROLES_FOR = {
    PLACING: Role.PLACING_AUTHORITY,
    HOST: Role.HOST_AUTHORITY,
    HOME_FORCE: Role.HOME_FORCE,
    HOST_FORCE: Role.HOST_FORCE,
    HOST_ICB: Role.HOST_ICB,
}
SENDER_ROLE = {PLACING: Role.PLACING_AUTHORITY, HOST_FORCE: Role.HOST_FORCE}
SECRET_TEXT = st.text("abcdefghijklmnopqrstuvwxyz", min_size=10, max_size=20).map(
    lambda s: "S3n" + s
)


def _field_plaintext(event_type: str, field: str, value: Any) -> bytes:
    form = FORMS.latest[event_type]
    sf = next(s for s in form.sealed if s.name == field)
    buf = BytesIO()
    fastavro.schemaless_writer(buf, sf.parsed, {"v": value})
    return buf.getvalue()[1:] if value is not None else b""  # drop the union index byte of "v"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _published(out: Any) -> bytes:
    return out.value + b"".join(v for _, v in out.headers) + out.key


@pytest.mark.parametrize("event_type", CATALOGUE.event_types())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), sender=st.sampled_from([PLACING, HOST_FORCE]))
def test_sealed_messages_leak_nothing_and_open_exactly_per_entitlement(
    event_type: str, data: st.DataObject, sender: str
) -> None:
    form = FORMS.latest[event_type]
    body = data.draw(records(form.plain.raw, text=SECRET_TEXT))
    recipients = [Recipient(a, r) for a, r in ROLES_FOR.items() if a != sender]
    out = NET.protector(sender).sign(
        [
            NET.protector(sender).seal(
                header(event_type, sender, SENDER_ROLE[sender], recipients), body
            )
        ]
    )[0]
    wire = _published(out)

    # No sensitive value, nor the encoding of any sealed field, appears anywhere in what is
    # published (a value also given in a cleartext field is, of course, in clear there).
    sealed_names = {sf.name for sf in form.sealed}
    clear = {s for k, v in body.items() if k not in sealed_names for s in _strings(v)}
    for sf in form.sealed:
        for s in _strings(body.get(sf.name)):
            if s not in clear:
                assert s.encode() not in wire, f"{sf.name} leaked"
        plain = _field_plaintext(event_type, sf.name, body.get(sf.name))
        if len(plain) >= 12 and not clear & set(_strings(body.get(sf.name))):
            assert plain not in wire, f"{sf.name} leaked in Avro form"

    # Each recipient recovers exactly the classes its role is entitled to; the rest is withheld.
    for agency, role in ROLES_FOR.items():
        if agency == sender:
            continue
        _, opened = NET.protector(agency).open(out.value, out.headers)
        for field_name in form.plain.raw["fields"]:
            name = field_name["name"]
            sf = next((s for s in form.sealed if s.name == name), None)
            if sf is None:
                assert normalise(opened[name]) == normalise(body[name])
            elif role in POLICY.audience(event_type, sf.sensitivity):
                assert normalise(opened[name]) == normalise(body[name]), (agency, name)
            else:
                assert opened[name] == Withheld(sf.sensitivity), (agency, name)

    # The sender can re-open all of its own message.
    _, own = NET.protector(sender).open(out.value, out.headers)
    for sf in form.sealed:
        assert normalise(own[sf.name]) == normalise(body[sf.name])

    # An agency that is not a recipient recovers nothing.
    with pytest.raises(ProtectionError, match="not a recipient"):
        NET.protector(OUTSIDER).open(out.value, out.headers)
    _, from_opener = NET.protector(OUTSIDER).opener.open(
        NET.protector(OUTSIDER).envelopes.decode(out.value)[1],
        out.header.message_id,
        out.header.schema_fingerprint,
    )
    assert all(isinstance(from_opener[sf.name], Withheld) for sf in form.sealed)


def _missing_report() -> Any:
    sender = NET.protector(HOST_FORCE)
    out = sender.seal(
        header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, MISSING_RECIPIENTS),
        body_of("ChildMissingReported"),
    )
    return sender.sign([out])[0]


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_changing_any_byte_of_a_published_message_fails(position: int, flip: int) -> None:
    out = _missing_report()
    value = bytearray(out.value)
    value[position % len(value)] ^= flip
    with pytest.raises((SignatureError, ProtectionError)):
        NET.protector(PLACING).open(bytes(value), out.headers)


@pytest.mark.parametrize("name", [H_SIG, H_PROOF])
def test_changing_the_signature_or_proof_fails(name: str) -> None:
    out = _missing_report()
    bad = [(k, (bytes([v[0] ^ 1]) + v[1:]) if k == name and v else v) for k, v in out.headers]
    if name == H_PROOF:  # a one-message batch has an empty proof: add a bogus level instead
        bad = [(k, b"R" + b"\0" * 32 if k == name else v) for k, v in out.headers]
    with pytest.raises(SignatureError):
        NET.protector(PLACING).open(out.value, bad)


def test_tampered_ciphertext_fails_even_without_signature_checks() -> None:
    out = _missing_report()
    opener = NET.protector(PLACING)
    hdr, body = opener.envelopes.decode(out.value)
    form = FORMS.by_plain[hdr.schema_fingerprint]
    record = codec.decode(body, lambda _fp: form.wire_parsed)
    ct = bytearray(record["last_seen"]["ciphertext"])
    ct[3] ^= 0x40
    record["last_seen"]["ciphertext"] = bytes(ct)
    forged = codec.encode(form.wire_parsed, form.wire_fingerprint, record)
    with pytest.raises(ProtectionError, match="last_seen"):
        opener.opener.open(forged, hdr.message_id, hdr.schema_fingerprint)


def _sealed_record(out: Any) -> tuple[Any, Any, dict[str, Any]]:
    hdr, body = NET.protector(PLACING).envelopes.decode(out.value)
    form = FORMS.by_plain[hdr.schema_fingerprint]
    return hdr, form, codec.decode(body, lambda _fp: form.wire_parsed)


def test_a_sealed_value_moved_to_another_message_fails() -> None:
    sender = NET.protector(HOST_FORCE)  # the same sender, so the data key is reused and shared
    a = sender.seal(
        header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, MISSING_RECIPIENTS),
        body_of("ChildMissingReported", clothing="red coat"),
    )
    b = sender.seal(
        header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, MISSING_RECIPIENTS),
        body_of("ChildMissingReported", clothing="blue coat"),
    )
    _, _, rec_a = _sealed_record(a)
    hdr_b, form, rec_b = _sealed_record(b)
    assert rec_a["clothing"]["key_id"] == rec_b["clothing"]["key_id"], (
        "same data key: AAD must bind"
    )
    rec_b["clothing"] = rec_a["clothing"]
    forged = codec.encode(form.wire_parsed, form.wire_fingerprint, rec_b)
    with pytest.raises(ProtectionError, match="clothing"):
        NET.protector(PLACING).opener.open(forged, hdr_b.message_id, hdr_b.schema_fingerprint)


def test_a_sealed_value_moved_to_another_field_fails() -> None:
    sender = NET.protector(PLACING)
    recipients = [Recipient(HOST_FORCE, Role.HOST_FORCE), Recipient(HOST, Role.HOST_AUTHORITY)]
    body = {
        "profile_id": str(uuid.uuid4()),
        "lodged_date": dt.date(2026, 3, 2),
        "review_date": dt.date(2026, 6, 2),
        "previous_episode_count": 2,
        "identity": {
            "given_names": "Sam",
            "family_name": "Doe",
            "known_as": None,
            "date_of_birth": dt.date(2011, 1, 1),
            "gender": None,
            "nhs_number": None,
        },
        "description": {
            "height_cm": 150,
            "build": None,
            "hair": None,
            "eyes": None,
            "distinguishing_features": None,
        },
        "photo": None,
        "associates": [],
        "places": [],
        "phones": ["07700900123"],
        "medical_needs": None,
    }
    out = sender.seal(
        header("MissingProfileLodged", PLACING, Role.PLACING_AUTHORITY, recipients), body
    )
    hdr, form, rec = _sealed_record(out)
    # photo and description are both IDENTITY: same data key, different field.
    rec["photo"], rec["description"] = rec["description"], rec["photo"]
    forged = codec.encode(form.wire_parsed, form.wire_fingerprint, rec)
    with pytest.raises(ProtectionError):
        NET.protector(HOST_FORCE).opener.open(forged, hdr.message_id, hdr.schema_fingerprint)


def test_a_tagged_field_in_clear_is_refused() -> None:
    plain = CATALOGUE.latest("ChildMissingReported")
    clear_body = codec.encode(plain.parsed, plain.fingerprint, body_of("ChildMissingReported"))
    with pytest.raises(ProtectionError, match="in clear"):
        NET.protector(PLACING).opener.open(clear_body, uuid.uuid4(), plain.fingerprint)


def test_no_key_for_a_recipient_fails_closed() -> None:
    net = network(PLACING, HOST_FORCE)
    sender = net.protector(HOST_FORCE)
    with pytest.raises(ProtectionError, match=HOME_FORCE):
        sender.seal(
            header(
                "ChildMissingReported",
                HOST_FORCE,
                Role.HOST_FORCE,
                [
                    Recipient(PLACING, Role.PLACING_AUTHORITY),
                    Recipient(HOME_FORCE, Role.HOME_FORCE),
                ],
            ),
            body_of("ChildMissingReported"),
        )


def test_unknown_signing_key_and_impersonation_fail() -> None:
    out = _missing_report()
    impostor_keys = keystore.AgencyKeys.new(HOST_FORCE)  # same name, keys not in the directory
    forged = Signer(impostor_keys).sign_batch([out.value])[0]
    with pytest.raises(SignatureError, match="not a key of"):
        NET.protector(PLACING).open(out.value, forged)
    # A real agency signing a message whose header names another sender.
    other = Signer(NET.keys[HOST]).sign_batch([out.value])[0]
    with pytest.raises(ProtectionError, match="header names"):
        NET.protector(PLACING).open(out.value, other)
    with pytest.raises(SignatureError, match="not signed"):
        NET.protector(PLACING).open(out.value, [])


def test_batch_signature_verifies_each_message_on_its_own() -> None:
    sender = NET.protector(HOST_FORCE)
    batch = [
        sender.seal(
            header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, MISSING_RECIPIENTS),
            body_of("ChildMissingReported"),
        )
        for _ in range(7)
    ]
    sender.sign(batch)
    sigs = {dict(o.headers)[H_SIG] for o in batch}
    assert len(sigs) == 1, "one signature for the batch"
    for out in batch:
        _, opened = NET.protector(PLACING).open(out.value, out.headers)
        assert opened["clothing"] == "grey hoodie, black joggers, white trainers"
    # A proof from one message does not fit another.
    swapped = [
        (k, dict(batch[1].headers)[H_PROOF] if k == H_PROOF else v) for k, v in batch[0].headers
    ]
    with pytest.raises(SignatureError):
        NET.protector(PLACING).open(batch[0].value, swapped)


def test_key_reuse_is_bounded() -> None:
    def key_ids(reuse: KeyReuse) -> set[bytes]:
        sender = NET.protector(HOST_FORCE, reuse)
        ids = set()
        for _ in range(5):
            out = sender.seal(
                header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, MISSING_RECIPIENTS),
                body_of("ChildMissingReported"),
            )
            ids.add(bytes(_sealed_record(out)[2]["last_seen"]["key_id"]))
        return ids

    assert len(key_ids(KeyReuse())) == 1
    assert len(key_ids(KeyReuse(max_uses=2))) == 3
    assert len(key_ids(KeyReuse.never())) == 5


def test_key_rotation_keeps_old_messages_open_and_new_ones_use_new_keys() -> None:
    net = network(PLACING, HOST, HOME_FORCE, HOST_FORCE)
    before = net.protector(HOST_FORCE).sign(
        [
            net.protector(HOST_FORCE).seal(
                header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, MISSING_RECIPIENTS),
                body_of("ChildMissingReported"),
            )
        ]
    )[0]
    old_enc = net.keys[PLACING].current("enc").key_id
    old_sig = net.keys[HOST_FORCE].current("sig").key_id
    for agency in (PLACING, HOST_FORCE):
        net.keys[agency].rotate()
        net.publish(agency)
    new_enc = net.keys[PLACING].current("enc").key_id
    assert new_enc != old_enc

    _, opened = net.protector(PLACING).open(before.value, before.headers)
    assert opened["clothing"] == "grey hoodie, black joggers, white trainers"

    after = net.protector(HOST_FORCE).sign(
        [
            net.protector(HOST_FORCE).seal(
                header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, MISSING_RECIPIENTS),
                body_of("ChildMissingReported"),
            )
        ]
    )[0]
    _, _, rec = _sealed_record(after)
    wrapped_for = {
        w["recipient"]: w["recipient_key_id"]
        for k in rec[SEALING_FIELD]["keys"]
        for w in k["wrapped"]
    }
    assert wrapped_for[PLACING] == new_enc
    assert dict(after.headers)["cbx-kid"].decode() != old_sig
    _, opened = net.protector(PLACING).open(after.value, after.headers)
    assert opened["clothing"] == "grey hoodie, black joggers, white trainers"

    # Once the old keys expire and are pruned, old messages no longer open: rotation has an end.
    net.keys[PLACING].prune(at=dt.datetime.now(dt.UTC) + dt.timedelta(days=31))
    with pytest.raises(ProtectionError, match="no longer holds"):
        net.protector(PLACING).opener.open(
            net.protector(PLACING).envelopes.decode(before.value)[1],
            before.header.message_id,
            before.header.schema_fingerprint,
        )


def test_keystore_mode_0600_and_passphrase(tmp_path: Path) -> None:
    keys = keystore.AgencyKeys.new(PLACING)
    plain = keystore.save(keys, tmp_path / "plain.json")
    assert stat.S_IMODE(os.stat(plain).st_mode) == 0o600
    assert keystore.load(plain).agency == PLACING

    protected = keystore.save(keys, tmp_path / "prot.json", passphrase=b"correct horse")
    assert stat.S_IMODE(os.stat(protected).st_mode) == 0o600
    assert b"PRIVATE KEY-----\nMC4" not in protected.read_bytes(), "keys must be encrypted"
    loaded = keystore.load(protected, passphrase=b"correct horse")
    assert loaded.current("enc").public_bytes == keys.current("enc").public_bytes
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        keystore.load(protected, passphrase=b"battery staple")
    with pytest.raises(KeystoreError, match="passphrase-protected"):
        keystore.load(protected)


def test_every_sensitivity_class_has_an_audience_and_roles_match_the_schema() -> None:
    header_schema = CATALOGUE.latest("Envelope").raw["fields"][0]["type"]
    role_enum = next(f["type"] for f in header_schema["fields"] if f["name"] == "sender_role")
    assert set(role_enum["symbols"]) == {r.value for r in Role}
    sv = CATALOGUE.latest("SealedValue").raw["fields"][0]["type"]
    assert set(sv["symbols"]) == {c.value for c in SensitivityClass}
    for cls in SensitivityClass:
        assert POLICY.audience("ChildMissingReported", cls)
    assert Role.HOST_FORCE in POLICY.audience("MissingProfileLodged", SensitivityClass.HEALTH)
    assert Role.HOST_FORCE not in POLICY.audience("PlacementNotified", SensitivityClass.HEALTH)


def test_opening_does_not_mutate_the_body_schema_defaults() -> None:
    before = copy.deepcopy(CATALOGUE.latest("TriggerPlanIssued").raw)
    _ = FORMS.latest["TriggerPlanIssued"]
    assert CATALOGUE.latest("TriggerPlanIssued").raw == before
