"""Statutory clocks (``schemas/policy/obligations.yaml``): which event starts which obligation,
who owes it, what meets it and by when; and :class:`Clocks`, which keeps every clock of every case
from the messages it is shown, with no Kafka in sight.

A clock is DUE until a message meets it, MET when one does (by which message, and how early or
late: a negative margin is late), or OVERDUE once its limit passes unmet (and MET, late, if the
meeting message comes after that).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from broker.errors import ConfigurationError
from broker.model import OBLIGATION_OVERDUE, Role
from broker.paths import policy_file

from . import calendar


class ClockStatus(StrEnum):
    DUE = "DUE"
    MET = "MET"
    OVERDUE = "OVERDUE"


@dataclass(frozen=True)
class Limit:
    hours: float | None = None
    working_days: int | None = None
    by_start: bool = False

    @classmethod
    def parse(cls, raw: Any, where: str) -> Limit:
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ConfigurationError(f"{where}: within needs one of hours, working_days, by_start")
        ((kind, value),) = raw.items()
        if kind == "hours" and isinstance(value, int | float) and value > 0:
            return cls(hours=float(value))
        if kind == "working_days" and isinstance(value, int) and value >= 0:
            return cls(working_days=value)
        if kind == "by_start" and value is True:
            return cls(by_start=True)
        raise ConfigurationError(f"{where}: within {raw!r} is not a limit")

    @property
    def text(self) -> str:
        """The limit as the policy states it."""
        if self.hours is not None:
            if self.hours < 1:
                return f"{round(self.hours * 3600)} seconds"
            return f"{self.hours:g} hours"
        if self.working_days is not None:
            return f"{self.working_days} working days"
        return "by the day it starts"

    def due(self, start: dt.datetime | dt.date) -> dt.datetime:
        """When a clock started at ``start`` runs out (UTC)."""
        if self.hours is not None:
            if not isinstance(start, dt.datetime):
                start = calendar.start_of_day(start)
            return start + dt.timedelta(hours=self.hours)
        day = start if not isinstance(start, dt.datetime) else calendar.local_date(start)
        if self.by_start:
            return calendar.end_of_day(day)
        assert self.working_days is not None
        return calendar.working_days_after(day, self.working_days)


@dataclass(frozen=True)
class Obligation:
    id: str
    title: str
    source: str
    starts_on: str
    starts_at: str
    owed_by: tuple[Role, ...]
    within: Limit
    met_by: tuple[str, ...] = ()
    key: str | None = None
    self_met: bool = False
    once_per_case: bool = False
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    met_when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    emergency_field: str | None = None
    emergency_within: Limit | None = None
    #: The clear body field saying when the follow-up happened (None: when it was accepted).
    met_at: str | None = None

    def limit_for(self, fields: Mapping[str, Any]) -> Limit:
        if self.emergency_field and fields.get(self.emergency_field) is True:
            assert self.emergency_within is not None
            return self.emergency_within
        return self.within


@dataclass(frozen=True)
class Seen:
    """What the clocks need of a message: its header and its clear body fields."""

    message_id: str
    event_type: str
    case_ref: str
    occurred_at: dt.datetime
    recorded_at: dt.datetime
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Clock:
    obligation: Obligation
    case_ref: str
    key: str
    started_by: str
    started_at: dt.datetime
    due_at: dt.datetime
    status: ClockStatus = ClockStatus.DUE
    met_by: str | None = None
    met_at: dt.datetime | None = None
    overdue_at: dt.datetime | None = None
    started_by_type: str = ""
    met_by_type: str | None = None
    limit: Limit | None = None

    @property
    def id(self) -> str:
        return f"{self.obligation.id}:{self.case_ref}:{self.key}"

    @property
    def margin(self) -> dt.timedelta | None:
        """How early it was met (negative: how late)."""
        return self.due_at - self.met_at if self.met_at is not None else None

    def as_json(self) -> dict[str, Any]:
        return {
            "clock": self.id,
            "obligation": self.obligation.id,
            "title": self.obligation.title,
            "case_ref": self.case_ref,
            "owed_by": [str(r) for r in self.obligation.owed_by],
            "started_by": self.started_by,
            "started_by_type": self.started_by_type,
            "started_at": self.started_at.isoformat(),
            "due_at": self.due_at.isoformat(),
            "status": str(self.status),
            "met_by": self.met_by,
            "met_by_type": self.met_by_type,
            "met_at": self.met_at.isoformat() if self.met_at else None,
            "margin_s": self.margin.total_seconds() if self.margin is not None else None,
        }


class Clocks:
    """Every clock of every case, from the messages shown to :meth:`observe` (in any order a
    partition gives them; a message shown twice changes nothing)."""

    def __init__(self, obligations: Iterable[Obligation] | None = None) -> None:
        self.obligations = list(obligations if obligations is not None else load())
        self.clocks: dict[str, Clock] = {}
        self._seen: set[str] = set()
        self._waiting: dict[tuple[str, str], list[Seen]] = {}
        self.uncounted: dict[str, str] = {}
        """Clock id → why it could not be counted (a date outside the known calendar)."""

    def observe(self, m: Seen) -> list[Clock]:
        """Start or meet clocks with ``m``; the clocks it changed."""
        if m.message_id in self._seen:
            return []
        self._seen.add(m.message_id)
        changed: list[Clock] = []
        for o in self.obligations:
            if m.event_type == o.starts_on and _matches(o.when, m.fields):
                clock = self._start(o, m)
                if clock is not None:
                    changed.append(clock)
        for o in self.obligations:
            if m.event_type not in o.met_by or not _matches(o.met_when, m.fields):
                continue
            key = self._key(o, m)
            clock = self.clocks.get(f"{o.id}:{m.case_ref}:{key}")
            if clock is None:
                # Met before it started (a partition delivered the reply first): kept until then.
                self._waiting.setdefault((o.id, f"{m.case_ref}:{key}"), []).append(m)
                continue
            if clock.met_by is None:
                self._meet(clock, m)
                changed.append(clock)
        return changed

    def _start(self, o: Obligation, m: Seen) -> Clock | None:
        key = self._key(o, m)
        cid = f"{o.id}:{m.case_ref}:{key}"
        if cid in self.clocks or (
            o.once_per_case and any(c.startswith(f"{o.id}:{m.case_ref}:") for c in self.clocks)
        ):
            return None
        raw = m.occurred_at if o.starts_at == "occurred_at" else m.fields.get(o.starts_at)
        if not isinstance(raw, dt.date):
            return None  # no start to count from: nothing can be said late
        limit = o.limit_for(m.fields)
        try:
            started = raw if isinstance(raw, dt.datetime) else calendar.start_of_day(raw)
            due = limit.due(raw)
        except (calendar.OutsideCalendar, OverflowError) as exc:
            # A date the exchange accepts (1900 to 2100) but no calendar here can count from:
            # say so for this clock and go on with the others.
            self.uncounted[cid] = str(exc)
            return None
        clock = Clock(
            o,
            m.case_ref,
            key,
            m.message_id,
            started,
            due,
            started_by_type=m.event_type,
            limit=limit,
        )
        self.clocks[cid] = clock
        if o.self_met:
            self._meet(clock, m)
        for waiting in self._waiting.pop((o.id, f"{m.case_ref}:{key}"), []):
            if clock.met_by is None:
                self._meet(clock, waiting)
        return clock

    @staticmethod
    def _key(o: Obligation, m: Seen) -> str:
        """What one clock of ``o`` is about: the notice itself, the case, or a body field."""
        if o.self_met and m.event_type == o.starts_on:
            return m.message_id
        if o.key in (None, "case"):
            return m.case_ref
        return str(m.fields.get(o.key))

    @staticmethod
    def _meet(clock: Clock, m: Seen) -> None:
        """``m`` meets ``clock``: at the time its body says the follow-up happened, when the
        policy names such a field, else when the exchange accepted it."""
        at = m.recorded_at
        field_name = clock.obligation.met_at
        if field_name and m.event_type != clock.obligation.starts_on:
            value = m.fields.get(field_name)
            stated: dt.datetime | None = None
            if isinstance(value, dt.datetime):
                stated = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            elif isinstance(value, dt.date):
                with contextlib.suppress(calendar.OutsideCalendar, OverflowError):
                    stated = calendar.start_of_day(value)
            # A follow-up said to have happened before what it follows cannot be believed (a
            # careless or hostile date): it counts from when the exchange accepted it.
            if stated is not None and stated >= clock.started_at:
                at = stated
        clock.met_by = m.message_id
        clock.met_by_type = m.event_type
        clock.met_at = at
        clock.status = ClockStatus.MET

    def overdue(self, now: dt.datetime) -> list[Clock]:
        """Clocks whose limit passed unmet, each returned once (then OVERDUE)."""
        out = []
        for c in self.clocks.values():
            if c.status == ClockStatus.DUE and c.due_at < now:
                c.status = ClockStatus.OVERDUE
                c.overdue_at = now
                out.append(c)
        return out

    def of_case(self, case_ref: str) -> list[Clock]:
        return sorted(
            (c for c in self.clocks.values() if c.case_ref == case_ref), key=lambda c: c.due_at
        )


@cache
def fact_fields(obligations: tuple[Obligation, ...] | None = None) -> dict[str, tuple[str, ...]]:
    """Message type → the clear body fields the clocks read from it."""
    out: dict[str, set[str]] = {}
    for o in obligations if obligations is not None else load():
        start = out.setdefault(o.starts_on, set())
        if o.starts_at != "occurred_at":
            start.add(o.starts_at)
        if o.key not in (None, "case"):
            start.add(str(o.key))
        start.update(o.when)
        if o.emergency_field:
            start.add(o.emergency_field)
        for t in o.met_by:
            met = out.setdefault(t, set())
            if o.key not in (None, "case"):
                met.add(str(o.key))
            met.update(o.met_when)
            if o.met_at:
                met.add(o.met_at)
    # The tracker's own reminders: which clock each one was about.
    out.setdefault(OBLIGATION_OVERDUE, set()).update({"clock_id", "obligation"})
    return {t: tuple(sorted(f)) for t, f in out.items()}


def as_text(value: Any) -> str:
    """A clear field's value as the delivery log keeps it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def from_text(text: str) -> Any:
    """The inverse of :func:`as_text` for the kinds of value clocks read."""
    if text in ("true", "false"):
        return text == "true"
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            return text
    if "T" in text:
        try:
            at = dt.datetime.fromisoformat(text)
        except ValueError:
            return text
        return at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return text


def _matches(conditions: Mapping[str, tuple[Any, ...]], fields: Mapping[str, Any]) -> bool:
    return all(fields.get(k) in values for k, values in conditions.items())


def _conditions(raw: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise ConfigurationError(f"{where}: give FIELD: [VALUE, ...]")
    return {str(k): tuple(v) for k, v in raw.items()}


def shortened(
    limits: Mapping[str, dt.timedelta], obligations: Iterable[Obligation] | None = None
) -> tuple[Obligation, ...]:
    """The obligations with some limits replaced by a fixed duration (a scenario's run, where
    waiting 72 hours is not an option); every other obligation as the policy says."""
    known = list(obligations if obligations is not None else load())
    unknown = sorted(set(limits) - {o.id for o in known})
    if unknown:
        raise ConfigurationError(f"no obligation {', '.join(unknown)} in obligations.yaml")
    out = []
    for o in known:
        if o.id in limits:
            hours = limits[o.id].total_seconds() / 3600
            if hours <= 0:
                raise ConfigurationError(f"obligation {o.id}: a limit must be longer than zero")
            fixed = Limit(hours=hours)
            o = replace(o, within=fixed, emergency_within=fixed if o.emergency_field else None)
        out.append(o)
    return tuple(out)


@cache
def load(path: Path | None = None) -> tuple[Obligation, ...]:
    path = path or policy_file("obligations.yaml")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"{path.name}: {exc}") from None
    out = []
    for i, raw in enumerate(doc.get("obligations") or []):
        where = f"{path.name}: obligation {raw.get('id', i)}"
        try:
            emergency = raw.get("emergency")
            o = Obligation(
                id=str(raw["id"]),
                title=str(raw["title"]),
                source=" ".join(str(raw["source"]).split()),
                starts_on=str(raw["starts_on"]),
                starts_at=str(raw["starts_at"]),
                owed_by=tuple(Role(r) for r in raw["owed_by"]),
                within=Limit.parse(raw["within"], where),
                met_by=tuple(raw.get("met_by") or ()),
                key=raw.get("key"),
                self_met=bool(raw.get("self", False)),
                once_per_case=bool(raw.get("once_per_case", False)),
                when=_conditions(raw.get("when"), where),
                met_when=_conditions(raw.get("met_when"), where),
                emergency_field=emergency["field"] if emergency else None,
                emergency_within=Limit.parse(emergency["within"], where) if emergency else None,
                met_at=raw.get("met_at"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        if not o.self_met and not o.met_by:
            raise ConfigurationError(f"{where}: say what meets it (met_by) or self: true")
        out.append(o)
    return tuple(out)
