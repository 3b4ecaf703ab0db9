"""The placement registry keeps records read from the log encoded until their case is asked for,
and ends up exactly where decoding every record on arrival would have put it."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from types import SimpleNamespace

from agencies import CATALOGUE
from test_router import KENT, LANCS, LANCS_POLICE

from broker.model import Role
from broker.policy.registry import Placement, PlacementRegistry, case_id, placement_follower
from broker.schema import codec

VERSION = CATALOGUE.latest("PlacementRecord")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _record(ref: str, host: str, active: bool, minutes: int) -> Placement:
    p = Placement.new(case_id(KENT, ref), {Role.PLACING_AUTHORITY: KENT, Role.HOST_AUTHORITY: host})
    return Placement(p.case_ref, p.spans, active, uuid.uuid4(), T0 + dt.timedelta(minutes=minutes))


def _encode(p: Placement) -> bytes:
    return codec.encode(VERSION.parsed, VERSION.fingerprint, p.to_record())


def _log_record(p: Placement | None, key: str, minutes: int) -> SimpleNamespace:
    """A record as the follower's consumer hands it over (a tombstone when ``p`` is None)."""
    stamp = int((T0 + dt.timedelta(minutes=minutes)).timestamp() * 1000)
    return SimpleNamespace(
        key=key.encode(), value=_encode(p) if p else None, timestamp=stamp, offset=0
    )


def _follow(registry: PlacementRegistry) -> object:
    """The follower's record handler for ``registry``, without a broker (never started)."""
    settings = SimpleNamespace(topics=SimpleNamespace(placements="cbx.placements"))
    return placement_follower(settings, CATALOGUE, registry).handle  # type: ignore[arg-type]


def _state(reg: PlacementRegistry, refs: list[str]) -> dict[str, tuple[object, ...] | None]:
    out: dict[str, tuple[object, ...] | None] = {}
    for ref in refs:
        p = reg.get(case_id(KENT, ref))
        out[ref] = None if p is None else (p.active, p.updated_at, p.source_message_id)
    return out


def test_records_decoded_when_asked_give_the_registry_decoding_on_arrival_gives() -> None:
    rng = random.Random(20261128)
    refs = [f"KCC-LAC-{i:03d}" for i in range(12)]
    log = []
    for step in range(400):
        ref = rng.choice(refs)
        # Out of order, and often the same minute: several routers write the registry.
        minutes = rng.randrange(0, 15)
        if rng.random() < 0.1:
            log.append(_log_record(None, case_id(KENT, ref), minutes))
        else:
            host = rng.choice([LANCS, LANCS_POLICE])
            log.append(
                _log_record(
                    _record(ref, host, rng.random() < 0.6, minutes), case_id(KENT, ref), step
                )
            )

    eager = PlacementRegistry()
    for r in log:  # what the registry did before: decode each record as it arrives
        if r.value is not None:
            eager.put(Placement.from_record(codec.decode(r.value, lambda _: VERSION.parsed)))
        else:
            eager.remove(r.key.decode(), dt.datetime.fromtimestamp(r.timestamp / 1000, dt.UTC))

    lazy = PlacementRegistry()
    handle = _follow(lazy)
    asked = PlacementRegistry()
    handle_asked = _follow(asked)
    for i, r in enumerate(log):
        handle(r)  # type: ignore[operator]
        handle_asked(r)  # type: ignore[operator]
        if i % 7 == 0:  # asked for now and then, so some cases are decoded part-way
            asked.get(r.key.decode())

    assert lazy.settle(5) > 0, "records read are kept encoded until asked for"
    assert _state(lazy, refs) == _state(eager, refs)
    assert _state(asked, refs) == _state(eager, refs)
    assert lazy.settle(100) == 0
    assert len(lazy) == len(eager) == len(asked)


def test_a_bare_reference_finds_cases_still_encoded_and_a_local_put_is_weighed_against_them() -> (
    None
):
    reg = PlacementRegistry()
    handle = _follow(reg)
    newer = _record("KCC-9", LANCS, True, 10)
    handle(_log_record(newer, newer.case_ref, 10))  # type: ignore[operator]
    assert [p.source_message_id for p in reg.find("KCC-9")] == [newer.source_message_id]
    handle(_log_record(_record("KCC-10", LANCS, True, 1), case_id(KENT, "KCC-10"), 1))  # type: ignore[operator]
    older = _record("KCC-10", LANCS_POLICE, True, 0)
    assert not reg.put(older), "the record read from the log is newer than a local one"
    kept = reg.get("KCC-10")
    assert kept is not None
    assert kept.parties[Role.HOST_AUTHORITY] == LANCS


def test_a_record_that_does_not_decode_costs_only_itself() -> None:
    reg = PlacementRegistry()
    handle = _follow(reg)
    good = _record("KCC-11", LANCS, True, 0)
    handle(_log_record(good, good.case_ref, 0))  # type: ignore[operator]
    bad = _log_record(None, good.case_ref, 1)
    bad.value = _encode(good)[:-3]  # cut short
    handle(bad)  # type: ignore[operator]
    found = reg.get(good.case_ref)
    assert found is not None
    assert found.source_message_id == good.source_message_id
    assert reg.settle(10) == 0
