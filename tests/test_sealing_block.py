"""The sealing block is decoded once per distinct bytes, and the directory's current encryption
key is kept until a key starts or ends: both are what a sender and its recipients ask for on
every message, and neither may ever give an answer another body or another moment would not."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

import pytest
from agencies import (
    CATALOGUE,
    HOME_FORCE,
    HOST_FORCE,
    MISSING_RECIPIENTS,
    PLACING,
    POLICY,
    body_of,
    header,
    network,
)

from broker.crypto import sealing
from broker.crypto.keys import AgencyKeys
from broker.crypto.sealing import SEALING_FIELD, BodyForms, unsealed_for
from broker.directory import AgencyEntry, Directory, PublicKeyInfo
from broker.envelope import Outgoing
from broker.errors import SerializationError
from broker.model import Role, Withheld
from broker.schema import codec

CLOTHING = "grey hoodie, black joggers, white trainers"


def _reports(count: int) -> tuple[Any, list[Outgoing]]:
    net = network()
    sender = net.protector(HOST_FORCE)
    outs = sender.sign(
        [
            sender.seal(
                header("ChildMissingReported", HOST_FORCE, Role.HOST_FORCE, MISSING_RECIPIENTS),
                body_of("ChildMissingReported"),
            )
            for _ in range(count)
        ]
    )
    return net, outs


def _body(out: Outgoing) -> bytes:
    return _envelope(out)[1]


def _envelope(out: Outgoing) -> tuple[Any, bytes]:
    from broker.envelope import EnvelopeCodec

    return EnvelopeCodec(CATALOGUE).decode(out.value)


def _counting(forms: BodyForms, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    decoded: list[int] = []
    real = codec.decode_whole

    def counted(data: bytes, schema: Any, what: str) -> Any:
        decoded.append(len(data))
        return real(data, schema, what)

    monkeypatch.setattr(codec, "decode_whole", counted)
    return decoded


def test_bodies_under_the_same_data_keys_share_one_decoded_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, outs = _reports(5)
    forms = BodyForms(CATALOGUE)
    decoded = _counting(forms, monkeypatch)
    fields = []
    for out in outs:
        _, clear, block = forms.split(_body(out))
        assert SEALING_FIELD not in clear
        fields.append(clear["initial_risk_grade"])
        assert block.wrapped["LOCATION"] >= {PLACING, HOME_FORCE}
    assert len(decoded) == 1, "five bodies sealed under one set of data keys: one block decoded"
    assert len(set(fields)) == 1
    assert fields[0]


def test_a_changed_block_is_decoded_afresh_and_judged_on_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body whose block no longer wraps a key for the home force is short-sealed for it, even
    right after the genuine block, with the same data keys, was decoded and kept."""
    _, outs = _reports(1)
    forms = BodyForms(CATALOGUE)
    decoded = _counting(forms, monkeypatch)
    hdr, body = _envelope(outs[0])
    form, _, genuine = forms.split(body)
    assert unsealed_for(POLICY, hdr.event_type, hdr.recipients, form, genuine) == {}

    record = codec.decode(body, lambda _fp: form.wire_parsed)
    for k in record[SEALING_FIELD]["keys"]:
        k["wrapped"] = [w for w in k["wrapped"] if w["recipient"] != HOME_FORCE]
    stripped = codec.encode(form.wire_parsed, form.wire_fingerprint, record)
    _, _, block = forms.split(stripped)
    assert len(decoded) == 2
    short = unsealed_for(POLICY, hdr.event_type, hdr.recipients, form, block)
    assert set(short) == {HOME_FORCE}


def test_a_recipient_opens_with_the_kept_block_and_withholds_what_is_not_wrapped_for_it() -> None:
    net, outs = _reports(3)
    home = net.protector(HOME_FORCE)
    for out in outs:
        _, opened = home.open(out.value, out.headers)
        assert opened["clothing"] == CLOTHING
    # The host ICB is not a recipient: every sealed field is withheld from it, message after
    # message, whatever block it has already decoded.
    icb = network().protector(HOME_FORCE)
    icb.opener.keys = net.keys["icb-e54000048"]
    for out in outs:
        hdr, body = _envelope(out)
        _, record = icb.opener.open(body, hdr.message_id, hdr.schema_fingerprint)
        assert isinstance(record["clothing"], Withheld)


def test_bytes_after_the_block_are_refused() -> None:
    _, outs = _reports(1)
    forms = BodyForms(CATALOGUE)
    body = _body(outs[0])
    forms.split(body)  # the genuine block is now kept
    with pytest.raises(SerializationError, match="trailing bytes after the sealing block"):
        forms.split(body + b"\x00")
    with pytest.raises(SerializationError, match="sealing block does not decode"):
        forms.split(body[:-3])


def test_what_is_kept_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agency can write blocks of its own making into its outbound topic: a block over the
    size limit is decoded every time and never kept, and the blocks kept never exceed their
    byte budget, however many distinct ones arrive."""
    _, outs = _reports(1)
    body = _body(outs[0])
    forms = BodyForms(CATALOGUE)
    form, _, _ = forms.split(body)
    record = codec.decode(body, lambda _fp: form.wire_parsed)
    key = record[SEALING_FIELD]["keys"][0]
    key["wrapped"] = key["wrapped"] * 400  # about 60 KB of wraps
    big = codec.encode(form.wire_parsed, form.wire_fingerprint, record)
    monkeypatch.setattr(sealing, "BLOCK_KEPT_MAX", 32 * 1024)
    monkeypatch.setattr(sealing, "BLOCKS_KEPT_BYTES", 16 * 1024)
    decoded = _counting(forms, monkeypatch)
    for _ in range(3):
        forms.split(big)
    assert len(decoded) == 3, "a block over the limit is never kept"
    assert forms._blocks_bytes <= 16 * 1024
    # Many distinct small blocks: the budget holds.
    for i in range(40):
        record[SEALING_FIELD]["keys"][0]["wrapped"] = key["wrapped"][: 1 + i % 5]
        record[SEALING_FIELD]["keys"][0]["key_id"] = i.to_bytes(16, "big")
        forms.split(codec.encode(form.wire_parsed, form.wire_fingerprint, record))
        assert forms._blocks_bytes <= 16 * 1024
    assert 0 < len(forms._blocks) < 40


def _entry(agency: str, keys: list[PublicKeyInfo]) -> AgencyEntry:
    return AgencyEntry(agency, agency, "LA", (), tuple(keys), ())


def _key(key_id: str, start: dt.datetime, end: dt.datetime) -> PublicKeyInfo:
    return PublicKeyInfo(key_id, b"\x01" * 32, start, end)


def test_the_current_encryption_key_follows_the_clock_and_the_entry() -> None:
    now = dt.datetime.now(dt.UTC)
    old = _key("old", now - dt.timedelta(days=1), now + dt.timedelta(seconds=0.6))
    new = _key("new", now + dt.timedelta(seconds=0.3), now + dt.timedelta(days=1))
    directory = Directory([_entry(PLACING, [old, new])])
    assert directory.encryption_key(PLACING) == old
    assert directory.encryption_key(PLACING) == old  # kept, still right
    time.sleep(0.35)
    assert directory.encryption_key(PLACING) == new, "a pre-published key takes over on time"
    # The entry changes (a rotation published, then a removal): the answer follows at once.
    newer = _key("newer", now, now + dt.timedelta(days=2))
    directory.put(dataclasses.replace(_entry(PLACING, [old, new, newer])))
    assert directory.encryption_key(PLACING) == new  # newest not_before still wins
    directory.put(dataclasses.replace(_entry(PLACING, [newer]), revoked=True))
    assert directory.encryption_key(PLACING) is None
    directory.put(_entry(PLACING, [newer]))
    assert directory.encryption_key(PLACING) == newer
    directory.remove(PLACING)
    assert directory.encryption_key(PLACING) is None


def test_an_expiring_key_stops_being_used_when_it_ends() -> None:
    now = dt.datetime.now(dt.UTC)
    only = _key("only", now - dt.timedelta(days=1), now + dt.timedelta(seconds=0.3))
    directory = Directory([_entry(PLACING, [only])])
    assert directory.encryption_key(PLACING) == only
    time.sleep(0.35)
    assert directory.encryption_key(PLACING) is None
    # An explicit moment is answered for that moment, never from what is kept.
    assert directory.encryption_key(PLACING, at=now) == only


def test_a_real_rotation_reaches_the_sealer_at_once() -> None:
    net = network()
    before = net.directory.encryption_key(PLACING)
    keys: AgencyKeys = net.keys[PLACING]
    keys.rotate()
    net.publish(PLACING)
    after = net.directory.encryption_key(PLACING)
    assert before is not None
    assert after is not None
    assert after.key_id == keys.current("enc").key_id != before.key_id
