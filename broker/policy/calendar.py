"""Working days in England and Wales, for statutory time limits ("within 5 working days").

Bank holidays come from the ``govuk-bank-holidays`` package, which ships GOV.UK's published list
(no network at run time; the package is updated when GOV.UK adds years). Days are counted in UK
local time (Europe/London), so a limit ends at the end of a local day whatever the clocks did in
between, and an instant is turned into a local date before counting.

The rule for when counting starts (stated in ``schemas/policy/obligations.yaml``): the day the
event happened is day 0 whatever kind of day it is; day 1 is the next working day after it. A
limit of N working days ends at the end of the Nth working day (23:59:59.999999 local time). So an
event on a Saturday, a bank holiday or a Monday morning all count from the next working day.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from zoneinfo import ZoneInfo

from govuk_bank_holidays.bank_holidays import BankHolidays

from broker.errors import ConfigurationError

UK = ZoneInfo("Europe/London")
DIVISION = BankHolidays.ENGLAND_AND_WALES


@cache
def bank_holidays() -> frozenset[dt.date]:
    """England and Wales bank holidays, as shipped with the package."""
    holidays = BankHolidays(use_cached_holidays=True).get_holidays(division=DIVISION)
    return frozenset(h["date"] for h in holidays)


class OutsideCalendar(ConfigurationError):
    """A day outside the years whose bank holidays are known: working days cannot be counted."""


def covered_until() -> dt.date:
    """The last year the shipped list covers, as its last day: counting beyond it is refused."""
    return dt.date(max(bank_holidays()).year, 12, 31)


def covered_from() -> dt.date:
    """The first year the shipped list covers, as its first day: counting before it is refused."""
    return dt.date(min(bank_holidays()).year, 1, 1)


def is_working_day(day: dt.date) -> bool:
    return day.weekday() < 5 and day not in bank_holidays()


def local_date(at: dt.datetime) -> dt.date:
    if at.tzinfo is None:
        raise ValueError("a naive time has no place on the calendar: give it a time zone")
    return at.astimezone(UK).date()


def add_working_days(day: dt.date, n: int) -> dt.date:
    """The Nth working day after ``day`` (``day`` itself is day 0, whatever it is)."""
    if n < 0:
        raise ValueError("a number of working days is not negative")
    if day < covered_from():
        raise OutsideCalendar(
            f"working days before {covered_from()} are unknown (bank holidays not shipped)"
        )
    current = day
    counted = 0
    while counted < n:
        current += dt.timedelta(days=1)
        if current > covered_until():
            raise OutsideCalendar(
                f"working days past {covered_until()} are unknown: update govuk-bank-holidays"
            )
        if is_working_day(current):
            counted += 1
    return current


def end_of_day(day: dt.date) -> dt.datetime:
    """The last instant of a UK local day, in UTC."""
    return dt.datetime.combine(day, dt.time.max, tzinfo=UK).astimezone(dt.UTC)


def start_of_day(day: dt.date) -> dt.datetime:
    """The first instant of a UK local day, in UTC."""
    return dt.datetime.combine(day, dt.time.min, tzinfo=UK).astimezone(dt.UTC)


def working_days_after(at: dt.datetime | dt.date, n: int) -> dt.datetime:
    """When a limit of ``n`` working days from ``at`` ends (UTC)."""
    day = at if not isinstance(at, dt.datetime) else local_date(at)
    return end_of_day(add_working_days(day, n))
