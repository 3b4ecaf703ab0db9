"""Statutory clocks without a broker: working-day arithmetic (bank holidays, weekends, clock
changes, a clock started on a bank holiday) and every obligation met on time, met late, never met.
"""

from __future__ import annotations

import datetime as dt

import pytest

from broker.policy import calendar
from broker.policy.obligations import Clocks, ClockStatus, Seen, load

UTC = dt.UTC
D = dt.date


@pytest.mark.parametrize(
    ("start", "n", "expected"),
    [
        (D(2026, 11, 27), 1, D(2026, 11, 30)),  # Friday + 1: Monday
        (D(2026, 11, 28), 1, D(2026, 11, 30)),  # Saturday counts from the next working day
        (D(2026, 11, 30), 5, D(2026, 12, 7)),  # Monday + 5: next Monday
        # Christmas 2026: Fri 25 and the Boxing Day substitute Mon 28 are bank holidays.
        (D(2026, 12, 24), 1, D(2026, 12, 29)),
        (D(2026, 12, 24), 3, D(2026, 12, 31)),
        (D(2026, 12, 24), 4, D(2027, 1, 4)),  # New Year's Day, then the weekend
        # Started on a bank holiday (the summer bank holiday, Mon 31 Aug 2026).
        (D(2026, 8, 31), 1, D(2026, 9, 1)),
        (D(2026, 8, 31), 0, D(2026, 8, 31)),
        # Easter 2027: Good Friday 26 Mar and Easter Monday 29 Mar.
        (D(2027, 3, 25), 1, D(2027, 3, 30)),
        (D(2026, 11, 27), 20, D(2026, 12, 29)),
    ],
)
def test_working_days(start: dt.date, n: int, expected: dt.date) -> None:
    assert calendar.add_working_days(start, n) == expected


def test_limits_end_at_the_end_of_a_uk_day_whatever_the_clocks_did() -> None:
    # Winter (GMT): the end of the day is 23:59:59 UTC. Summer (BST): 22:59:59 UTC.
    assert calendar.end_of_day(D(2026, 12, 7)).hour == 23
    assert calendar.end_of_day(D(2026, 7, 7)).hour == 22
    # Counted across the spring change (Sun 29 Mar 2026): from Fri 27 Mar (GMT), 1 working day.
    due = calendar.working_days_after(dt.datetime(2026, 3, 27, 23, 30, tzinfo=UTC), 1)
    assert due == dt.datetime(2026, 3, 30, 22, 59, 59, 999999, tzinfo=UTC)
    # An instant is a UK date first: 23:30 UTC on 30 June is already 1 July in London.
    assert calendar.local_date(dt.datetime(2026, 6, 30, 23, 30, tzinfo=UTC)) == D(2026, 7, 1)
    with pytest.raises(ValueError, match="time zone"):
        calendar.local_date(dt.datetime(2026, 6, 30, 23, 30))


def test_the_shipped_calendar_ends_somewhere_and_says_so() -> None:
    from broker.errors import ConfigurationError

    end = calendar.covered_until()
    assert end.year >= 2027
    with pytest.raises(ConfigurationError, match="govuk-bank-holidays"):
        calendar.add_working_days(end, 5)


CASE = "la-e10000016/KCC-1"
T0 = dt.datetime(2026, 10, 24, 23, 0, tzinfo=UTC)  # Sat 24 Oct, the night the clocks go back


def seen(mid: str, event_type: str, at: dt.datetime, **fields: object) -> Seen:
    return Seen(mid, event_type, CASE, at, at, fields)


def test_every_obligation_is_loaded_with_its_source() -> None:
    # Exactly these: each has its own test below (met on time, met late, never met).
    ids = {o.id for o in load()}
    assert ids == {
        "return-home-interview",
        "placement-notice",
        "placement-end-notice",
        "initial-health-assessment",
        "high-risk-strategy-discussion",
    }
    assert all(len(o.source) > 40 for o in load())


# -- return home interview: 72 elapsed hours, across the autumn clock change ----------------------


def rhi(found: dt.datetime, interview: dt.datetime | None, episode: str = "ep-1") -> Clocks:
    clocks = Clocks()
    clocks.observe(seen("found", "ChildFound", found, episode_id=episode, found_at=found))
    if interview is not None:
        clocks.observe(
            seen(
                "rhi", "ReturnInterviewCompleted", interview, episode_id=episode, outcome="DECLINED"
            )
        )
    return clocks


def test_return_interview_met_on_time_late_and_never() -> None:
    due = T0 + dt.timedelta(hours=72)
    on_time = rhi(T0, T0 + dt.timedelta(hours=71))
    clock = on_time.clocks[f"return-home-interview:{CASE}:ep-1"]
    assert clock.due_at == due  # elapsed hours: the clock change does not move it
    assert clock.status == ClockStatus.MET
    assert clock.met_by == "rhi"
    assert clock.margin == dt.timedelta(hours=1)
    assert on_time.overdue(due + dt.timedelta(days=1)) == []

    never = rhi(T0, None)
    assert never.overdue(due - dt.timedelta(seconds=1)) == []
    (late,) = never.overdue(due + dt.timedelta(seconds=1))
    assert late.status == ClockStatus.OVERDUE
    assert never.overdue(due + dt.timedelta(days=3)) == []  # reported once
    never.observe(
        seen("rhi", "ReturnInterviewCompleted", due + dt.timedelta(hours=5), episode_id="ep-1")
    )
    assert late.status == ClockStatus.MET
    assert late.margin == -dt.timedelta(hours=5)

    # Another episode's interview does not meet this one.
    other = rhi(T0, T0 + dt.timedelta(hours=1), episode="ep-1")
    other.observe(seen("found2", "ChildFound", T0, episode_id="ep-2", found_at=T0))
    assert [c.key for c in other.overdue(due + dt.timedelta(hours=1))] == ["ep-2"]


def test_an_interview_read_before_its_found_report_still_meets_it() -> None:
    clocks = Clocks()
    clocks.observe(
        seen("rhi", "ReturnInterviewCompleted", T0 + dt.timedelta(hours=3), episode_id="e")
    )
    clocks.observe(seen("found", "ChildFound", T0, episode_id="e", found_at=T0))
    (clock,) = clocks.clocks.values()
    assert clock.status == ClockStatus.MET
    assert clocks.observe(seen("found", "ChildFound", T0, episode_id="e", found_at=T0)) == []


# -- placement notice: before the start, or 5 working days for an emergency -----------------------


def notice(sent: dt.datetime, start: dt.date, emergency: bool) -> Clocks:
    clocks = Clocks()
    clocks.observe(seen("notice", "PlacementNotified", sent, start_date=start, emergency=emergency))
    return clocks


def test_placement_notice_on_time_and_late() -> None:
    start = D(2026, 12, 24)
    on_time = notice(dt.datetime(2026, 12, 24, 9, tzinfo=UTC), start, False)
    (c,) = [c for c in on_time.clocks.values() if c.obligation.id == "placement-notice"]
    assert c.status == ClockStatus.MET
    assert c.margin is not None
    assert c.margin > dt.timedelta(0)
    late = notice(dt.datetime(2026, 12, 29, 9, tzinfo=UTC), start, False)
    (c,) = [c for c in late.clocks.values() if c.obligation.id == "placement-notice"]
    assert c.margin is not None
    assert c.margin < dt.timedelta(0)
    # An emergency placement on Christmas Eve: 29, 30, 31 Dec, then (New Year's Day off) 4 and
    # 5 Jan 2027.
    emergency = notice(dt.datetime(2027, 1, 5, 17, tzinfo=UTC), start, True)
    (c,) = [c for c in emergency.clocks.values() if c.obligation.id == "placement-notice"]
    assert c.due_at == calendar.end_of_day(D(2027, 1, 5))
    assert c.margin is not None
    assert c.margin > dt.timedelta(0)
    never_late = emergency.overdue(dt.datetime(2030, 1, 1, tzinfo=UTC))
    assert [x.obligation.id for x in never_late] == ["initial-health-assessment"]


# -- placement ended: within 10 working days after the end ----------------------------------------


def test_placement_end_notice() -> None:
    # A Friday; 10 working days: 21-24 Dec, 29-31 Dec, then 4, 5 and 6 Jan 2027.
    end = D(2026, 12, 18)
    for sent, on_time in (
        (dt.datetime(2026, 12, 17, 12, tzinfo=UTC), True),  # before the end
        (dt.datetime(2027, 1, 6, 20, tzinfo=UTC), True),
        (dt.datetime(2027, 1, 7, 9, tzinfo=UTC), False),
    ):
        clocks = Clocks()
        clocks.observe(seen("ended", "PlacementEnded", sent, end_date=end))
        (c,) = clocks.clocks.values()
        assert c.due_at == calendar.end_of_day(D(2027, 1, 6))
        assert c.margin is not None
        assert (c.margin >= dt.timedelta(0)) is on_time, sent


# -- initial health assessment: 20 working days, once per case -----------------------------------


def test_initial_health_assessment() -> None:
    start = D(2026, 11, 27)
    placed = dt.datetime(2026, 11, 26, 10, tzinfo=UTC)
    due = calendar.end_of_day(D(2026, 12, 29))  # 20 working days, Christmas skipped
    for asked, expected in (
        (dt.datetime(2026, 12, 10, tzinfo=UTC), ClockStatus.MET),
        (None, ClockStatus.OVERDUE),
    ):
        clocks = Clocks()
        clocks.observe(seen("p1", "PlacementNotified", placed, start_date=start, emergency=False))
        # A second placement of the same case starts no second clock.
        clocks.observe(seen("p2", "PlacementNotified", placed, start_date=start, emergency=False))
        # A review request does not meet an initial assessment.
        clocks.observe(seen("review", "HealthAssessmentRequested", placed, kind="REVIEW"))
        if asked is not None:
            clocks.observe(seen("ask", "HealthAssessmentRequested", asked, kind="INITIAL"))
        health = [
            c for c in clocks.clocks.values() if c.obligation.id == "initial-health-assessment"
        ]
        assert len(health) == 1
        assert health[0].due_at == due
        clocks.overdue(due + dt.timedelta(seconds=1))
        assert health[0].status == expected
    late = Clocks()
    late.observe(seen("p1", "PlacementNotified", placed, start_date=start, emergency=False))
    late.observe(
        seen("ask", "HealthAssessmentRequested", due + dt.timedelta(days=2), kind="INITIAL")
    )
    (c,) = [c for c in late.clocks.values() if c.obligation.id == "initial-health-assessment"]
    assert c.margin == -dt.timedelta(days=2)


def test_a_message_seen_twice_changes_nothing() -> None:
    clocks = rhi(T0, None)
    again = clocks.observe(seen("found", "ChildFound", T0, episode_id="ep-1", found_at=T0))
    assert again == []
    assert len(clocks.clocks) == 1


def test_clocks_read_only_clear_fields_the_schemas_have() -> None:
    """What the router copies into the delivery log for the clocks is never a sensitive field."""
    from broker.policy.obligations import fact_fields
    from broker.schema.catalogue import Catalogue

    catalogue = Catalogue.load()
    for event_type, names in fact_fields().items():
        schema = catalogue.latest(event_type)
        fields = {f["name"] for f in schema.raw["fields"]}
        assert set(names) <= fields, event_type
        assert not set(names) & set(schema.sensitive_fields), event_type


def test_facts_come_back_as_the_values_they_were() -> None:
    from broker.policy.obligations import as_text, from_text

    for value in (
        True,
        False,
        D(2026, 11, 2),
        dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
        "INITIAL",
        "3f0c8c1e-0000-4000-8000-000000000001",
    ):
        assert from_text(as_text(value)) == value


@pytest.mark.parametrize("start", [D(1900, 1, 1), D(2100, 12, 31)])
def test_a_date_at_the_edge_of_the_accepted_range_is_not_counted_and_stops_nothing(
    start: dt.date,
) -> None:
    """1900 to 2100 is accepted at the edge; bank holidays are known for fewer years. Such a
    clock is reported as not counted, with why, and the other clocks go on."""
    clocks = Clocks()
    at = dt.datetime(2026, 11, 27, 9, tzinfo=UTC)
    clocks.observe(seen("far", "PlacementNotified", at, start_date=start, emergency=True))
    assert {cid.split(":")[0] for cid in clocks.uncounted} == {
        "placement-notice",
        "initial-health-assessment",
    }
    assert all("unknown" in why for why in clocks.uncounted.values())
    # The next message of another case is counted as usual.
    clocks.observe(
        Seen(
            "next", "ChildFound", "la-e10000016/OTHER", at, at, {"episode_id": "e", "found_at": at}
        )
    )
    assert [c.obligation.id for c in clocks.clocks.values()] == ["return-home-interview"]
    assert clocks.overdue(at + dt.timedelta(days=4))[0].status == ClockStatus.OVERDUE


def test_an_interview_reported_late_but_offered_in_time_meets_its_clock_on_time() -> None:
    # The interview was offered 70 hours after the return; the report of it reached the exchange
    # after the limit. The clock counts the offer (met_at: offered_at), not the report's arrival.
    clocks = rhi(T0, None)
    due = T0 + dt.timedelta(hours=72)
    (late,) = clocks.overdue(due + dt.timedelta(hours=1))
    clocks.observe(
        Seen(
            "rhi",
            "ReturnInterviewCompleted",
            CASE,
            due + dt.timedelta(hours=2),
            due + dt.timedelta(hours=2),
            {"episode_id": "ep-1", "offered_at": T0 + dt.timedelta(hours=70)},
        )
    )
    assert late.status == ClockStatus.MET
    assert late.met_at == T0 + dt.timedelta(hours=70)
    assert late.margin == dt.timedelta(hours=2)


# -- a missing episode graded high: a strategy discussion (local limit, 24 hours shipped) ---------


def strategy(grade: str, held: dt.datetime | None, episode: str = "ep-9") -> Clocks:
    clocks = Clocks()
    clocks.observe(
        seen("graded", "MissingRiskGraded", T0, episode_id=episode, grade=grade, graded_at=T0)
    )
    if held is not None:
        clocks.observe(
            seen(
                "strategy",
                "StrategyDiscussionHeld",
                held + dt.timedelta(hours=30),  # reported later: the time it was held counts
                episode_id=episode,
                held_at=held,
            )
        )
    return clocks


def test_high_risk_strategy_discussion_met_on_time_late_and_never() -> None:
    cid = f"high-risk-strategy-discussion:{CASE}:ep-9"
    due = T0 + dt.timedelta(hours=24)
    on_time = strategy("HIGH", T0 + dt.timedelta(hours=2))
    clock = on_time.clocks[cid]
    assert clock.due_at == due
    assert clock.status == ClockStatus.MET
    assert clock.margin == dt.timedelta(hours=22)
    assert on_time.overdue(due + dt.timedelta(days=2)) == []

    late = strategy("HIGH", T0 + dt.timedelta(hours=26))
    assert late.clocks[cid].status == ClockStatus.MET
    assert late.clocks[cid].margin == -dt.timedelta(hours=2)

    never = strategy("HIGH", None)
    assert never.overdue(due - dt.timedelta(minutes=1)) == []
    (overdue,) = never.overdue(due + dt.timedelta(minutes=1))
    assert overdue.id == cid
    assert overdue.obligation.owed_by[0].value == "PLACING_AUTHORITY"

    # Graded below high: no clock. Regraded high again: the same episode's clock, not a second.
    assert strategy("MEDIUM", None).clocks == {}
    again = strategy("HIGH", None)
    again.observe(
        seen("regraded", "MissingRiskGraded", T0, episode_id="ep-9", grade="HIGH", graded_at=T0)
    )
    assert list(again.clocks) == [cid]


def test_a_scenario_can_shorten_a_limit_and_nothing_else() -> None:
    from broker.errors import ConfigurationError
    from broker.policy.obligations import shortened

    fast = {o.id: o for o in shortened({"return-home-interview": dt.timedelta(seconds=20)})}
    assert fast["return-home-interview"].within.hours == pytest.approx(20 / 3600)
    assert fast["return-home-interview"].within.text == "20 seconds"
    assert fast["initial-health-assessment"].within.working_days == 20
    with pytest.raises(ConfigurationError, match="no obligation nope"):
        shortened({"nope": dt.timedelta(seconds=1)})
    with pytest.raises(ConfigurationError, match="longer than zero"):
        shortened({"return-home-interview": dt.timedelta(0)})


def test_an_interview_dated_before_the_child_was_found_counts_from_when_it_was_sent() -> None:
    # A careless or hostile system dates the interview in 1900 to make a late one look early.
    clocks = rhi(T0, None)
    sent = T0 + dt.timedelta(hours=80)
    clocks.observe(
        Seen(
            "rhi",
            "ReturnInterviewCompleted",
            CASE,
            sent,
            sent,
            {"episode_id": "ep-1", "offered_at": dt.datetime(1900, 1, 1, tzinfo=UTC)},
        )
    )
    (clock,) = clocks.clocks.values()
    assert clock.met_at == sent
    assert clock.margin == -dt.timedelta(hours=8)  # late, as it was
