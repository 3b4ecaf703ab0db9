"""A case's chronology as one agency holds it: what it sent and received about a child, in order.

The connector keeps an index of the messages of each case it took part in (case, time, type,
direction, message id, topic, partition and offset: never content) in an embedded SQLite database
under its folder. The index is caught up from the agency's own topics (its inbox and its outbound
topic, read_committed, from the offsets stored with the rows) whenever a chronology is asked for,
so a deleted folder is rebuilt from Kafka alone. The content is read again from those topics and
opened with the agency's keys each time: a field this agency may not read stays withheld, with its
class, exactly as it was delivered.

Delivery and acknowledgement states come from the agency's status topic (the tracker copies there
what became of each message it sent, and its own row of each message sent to it), and the
statutory clocks each message started or met are counted from the messages themselves.

:func:`merge` combines the JSON exports of several agencies into the multi-agency chronology a
case review asks for: one row per message, which agencies held it and when each acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import io
import os
import sqlite3
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from aiokafka import TopicPartition

from broker.envelope import Header, Protector
from broker.errors import CbxError, ConfigurationError, PolicyError
from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import Topics
from broker.logging import get_logger
from broker.model import OBLIGATION_OVERDUE, SYSTEM_TYPES, Withheld
from broker.policy.obligations import Clocks, Seen
from broker.policy.profiles import profile_for
from broker.policy.reference import reference
from broker.tracker.view import DeliveryView


class Holder(Protocol):
    """What a chronology needs of the agency's connector (its identity, topics, keys and the
    states its status topic gave it)."""

    agency: str
    settings: KafkaSettings
    topics: Topics
    protector: Protector
    statuses: DeliveryView
    state_dir: Path

    def open(self, value: bytes, headers: Any) -> tuple[Header, dict[str, Any]]: ...


log = get_logger("chronology")

SENT, RECEIVED = "sent", "received"
#: What an export says it is (``cbx chronology merge`` checks it).
EXPORT_KIND = "cbx.chronology/v1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  message_id TEXT NOT NULL, direction TEXT NOT NULL, case_ref TEXT NOT NULL,
  occurred_at REAL NOT NULL, recorded_at REAL NOT NULL, event_type TEXT NOT NULL,
  topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
  copy_id TEXT NOT NULL,
  PRIMARY KEY (message_id, direction)
);
CREATE INDEX IF NOT EXISTS entries_case ON entries(case_ref, occurred_at);
CREATE TABLE IF NOT EXISTS topics (topic TEXT PRIMARY KEY, id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (
  topic TEXT NOT NULL, partition INTEGER NOT NULL, next INTEGER NOT NULL,
  PRIMARY KEY (topic, partition)
);
"""


@dataclass(frozen=True)
class Entry:
    """One indexed message: where it is, never what it says."""

    message_id: str
    direction: str
    case_ref: str
    occurred_at: dt.datetime
    recorded_at: dt.datetime
    event_type: str
    topic: str
    partition: int
    offset: int
    #: The id of the copy this agency holds (a route-gap re-send has its own id; the chronology
    #: names the message it re-sends, so every agency's export names one message once).
    copy_id: str


class ChronologyIndex:
    """The SQLite index of one agency's messages by case (rows and read offsets together)."""

    def __init__(self, path: Path) -> None:
        # Case references and who sent what are headers at rest: this user's alone.
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def offsets(self) -> dict[tuple[str, int], int]:
        return {
            (t, p): n for t, p, n in self.db.execute("SELECT topic, partition, next FROM offsets")
        }

    def add(self, entries: Iterable[Entry], offsets: Mapping[tuple[str, int], int]) -> None:
        """Rows and the offsets they were read up to, in one transaction (a crash loses both)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                """INSERT OR IGNORE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?)""",
                [
                    (
                        e.message_id,
                        e.direction,
                        e.case_ref,
                        e.occurred_at.timestamp(),
                        e.recorded_at.timestamp(),
                        e.event_type,
                        e.topic,
                        e.partition,
                        e.offset,
                        e.copy_id,
                    )
                    for e in entries
                ],
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO offsets VALUES (?,?,?)",
                [(t, p, n) for (t, p), n in offsets.items()],
            )

    def topic_ids(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT topic, id FROM topics").fetchall())

    def renew(self, topic: str, topic_id: str, *, forget: bool) -> None:
        """Record ``topic``'s Kafka id; with ``forget``, first drop its rows and offsets (the
        topic was made again, so they name positions that are no longer there)."""
        with self.db:
            self.db.execute("BEGIN")
            if forget:
                self.db.execute("DELETE FROM entries WHERE topic = ?", (topic,))
                self.db.execute("DELETE FROM offsets WHERE topic = ?", (topic,))
            self.db.execute("INSERT OR REPLACE INTO topics VALUES (?, ?)", (topic, topic_id))

    def case(self, case_ref: str) -> list[Entry]:
        rows = self.db.execute(
            """SELECT message_id, direction, case_ref, occurred_at, recorded_at, event_type, topic,
                      partition, "offset", copy_id
               FROM entries WHERE case_ref = ? ORDER BY occurred_at, recorded_at""",
            (case_ref,),
        ).fetchall()
        return [
            Entry(r[0], r[1], r[2], _utc(r[3]), _utc(r[4]), r[5], r[6], r[7], r[8], r[9])
            for r in rows
        ]

    def cases(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT case_ref FROM entries ORDER BY 1")]


def display_name(agency: str) -> str:
    """An agency's name as a chronology shows it: the area's name and the kind of agency (a
    council and the police force of one area share the area's name)."""
    name = reference().name_of(agency)
    if name == agency:
        return agency
    try:
        kind = profile_for(agency).kind
    except ConfigurationError:
        return name
    return {"council": f"{name} council", "police": f"{name} police"}.get(kind, name)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


class Chronologies:
    """A connector's chronologies: its index, caught up from its topics, and the events read
    back and opened from them."""

    def __init__(self, connector: Holder) -> None:
        self.c = connector
        self.index = ChronologyIndex(connector.state_dir / "chronology.sqlite")

    def _entry(self, r: Any, direction: str) -> Entry | None:
        """The index row of one record of the inbox or the outbound topic (None: not an event of
        a case: a receipt, a route-gap notice, or a re-send this agency made)."""
        try:
            header: Header = self.c.protector.envelopes.decode(r.value)[0]
        except Exception:  # an unreadable record is the inbox's business (quarantined there)
            return None
        if header.event_type in SYSTEM_TYPES and header.event_type != OBLIGATION_OVERDUE:
            return None
        related = header.related_message_id
        if related is not None and direction == SENT:
            return None  # a re-send to recipients the first copy missed: the original is listed
        message_id = str(related or header.message_id)
        return Entry(
            message_id,
            direction,
            header.case_ref,
            header.occurred_at,
            header.recorded_at,
            str(header.event_type),
            r.topic,
            r.partition,
            r.offset,
            str(header.message_id),
        )

    async def _same_topics(self, names: list[str]) -> None:
        """Forget what was indexed of a topic that has been made again since (its Kafka id
        changed: ``cbx agency migrate`` moved it to fewer partitions), so it is read again from
        its start."""
        known = self.index.topic_ids()
        for name, topic_id in (
            await asyncio.to_thread(kafka.topic_ids, self.c.settings, names)
        ).items():
            if known.get(name) != topic_id:
                remade = name in known
                if remade:
                    log.info("chronology_topic_remade", agency=self.c.agency, topic=name)
                self.index.renew(name, topic_id, forget=remade)

    async def catch_up(self, timeout_s: float = 60.0) -> int:
        """Index what arrived on the agency's inbox and outbound topics since the last time (from
        the beginning for a new or deleted index); how many rows were added. Fails only when
        reading makes no progress for ``timeout_s``."""
        c = self.c
        topics = {c.topics.inbox(c.agency): RECEIVED, c.topics.outbound(c.agency): SENT}
        await self._same_topics(list(topics))
        stored = self.index.offsets()
        consumer = kafka.consumer(c.settings, group_id=None)
        added = 0
        async with kafka.access(c.settings):
            tps = [
                TopicPartition(t, p) for t in topics for p in await kafka.partitions(c.settings, t)
            ]
            if not tps:
                return 0
            await consumer.start()
            try:
                consumer.assign(tps)
                for tp in tps:
                    consumer.seek(tp, stored.get((tp.topic, tp.partition), 0))
                end = await consumer.end_offsets(tps)
                loop = asyncio.get_running_loop()
                seen, moved = -1, loop.time()
                while True:
                    positions = {tp: await consumer.position(tp) for tp in tps}
                    if all(positions[tp] >= end[tp] for tp in tps):
                        break
                    if sum(positions.values()) != seen:
                        seen, moved = sum(positions.values()), loop.time()
                    elif loop.time() - moved > timeout_s:
                        raise CbxError(
                            f"indexing {c.agency}'s topics made no progress for {timeout_s:.0f} s"
                        )
                    batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                    rows = [
                        e
                        for tp, records in batch.items()
                        for r in records
                        if (e := self._entry(r, topics[tp.topic])) is not None
                    ]
                    reached = {
                        (tp.topic, tp.partition): await consumer.position(tp) for tp in batch
                    }
                    self.index.add(rows, reached)
                    added += len(rows)
            finally:
                await consumer.stop()
        if added:
            log.info("chronology_indexed", agency=c.agency, rows=added)
        return added

    async def _records(self, entries: list[Entry]) -> dict[tuple[str, int, int], Any]:
        """The records at the entries' positions, read again from Kafka."""
        want: dict[TopicPartition, set[int]] = {}
        for e in entries:
            want.setdefault(TopicPartition(e.topic, e.partition), set()).add(e.offset)
        out: dict[tuple[str, int, int], Any] = {}
        if not want:
            return out
        consumer = kafka.consumer(self.c.settings, group_id=None)
        async with kafka.access(self.c.settings):
            await consumer.start()
            try:
                consumer.assign(list(want))
                for tp, offsets in want.items():
                    for offset in sorted(offsets):
                        if (tp.topic, tp.partition, offset) in out:
                            continue
                        consumer.seek(tp, offset)
                        for _ in range(50):
                            batch = await consumer.getmany(tp, timeout_ms=500, max_records=500)
                            records = batch.get(tp, [])
                            for r in records:
                                if r.offset in offsets:
                                    out[(tp.topic, tp.partition, r.offset)] = r
                            if (tp.topic, tp.partition, offset) in out or (
                                records and records[-1].offset > offset
                            ):
                                break
            finally:
                await consumer.stop()
        return out

    async def chronology(self, case_ref: str) -> dict[str, Any]:
        """The case as this agency holds it: every event in order, opened with its keys."""
        c = self.c
        await self.catch_up()
        entries = self.index.case(case_ref)
        if not entries:
            raise PolicyError(
                f"no message about case {case_ref} was sent or received by {c.agency}"
            )
        records = await self._records(entries)
        events = []
        seen: list[Seen] = []
        for e in entries:
            r = records.get((e.topic, e.partition, e.offset))
            if r is None:
                log.warning("chronology_record_gone", topic=e.topic, offset=e.offset)
                events.append(_gone(e))
                continue
            try:
                header, body = c.open(r.value, list(r.headers or []))
            except Exception as exc:  # kept in quarantine by the inbox; said so here
                events.append(_gone(e, f"cannot be opened: {type(exc).__name__}"))
                continue
            events.append(self._event(e, header, body))
            seen.append(
                Seen(
                    e.message_id,
                    str(header.event_type),
                    case_ref,
                    header.occurred_at,
                    header.recorded_at,
                    {k: v for k, v in body.items() if not isinstance(v, Withheld)},
                )
            )
        _clocks(events, seen)
        return {
            "kind": EXPORT_KIND,
            "agency": c.agency,
            "agency_name": display_name(c.agency),
            "case_ref": case_ref,
            "generated_at": dt.datetime.now(dt.UTC).isoformat(),
            "events": events,
        }

    def _event(self, e: Entry, header: Header, body: dict[str, Any]) -> dict[str, Any]:
        name = display_name
        c = self.c
        mine = [r for r in header.recipients if r.agency == c.agency]
        state = c.statuses.summary(e.message_id) or c.statuses.summary(e.copy_id)
        delivery = {r["agency"]: r for r in (state or {}).get("recipients", [])}
        recipients = []
        for agency in dict.fromkeys(r.agency for r in header.recipients):
            roles = "+".join(str(r.role) for r in header.recipients if r.agency == agency)
            row = delivery.get(agency, {})
            recipients.append(
                {
                    "agency": agency,
                    "name": name(agency),
                    "role": roles,
                    "status": row.get("status"),
                    "delivered_at": row.get("delivered_at"),
                    "acknowledged_at": row.get("acknowledged_at"),
                }
            )
        return {
            "message_id": e.message_id,
            "copy_id": e.copy_id,
            "occurred_at": header.occurred_at.isoformat(),
            "recorded_at": header.recorded_at.isoformat(),
            "event_type": str(header.event_type),
            "direction": e.direction,
            "urgency": header.urgency,
            "sender": {
                "agency": header.sender,
                "name": name(header.sender),
                "role": str(header.sender_role),
            },
            "as_role": "+".join(str(r.role) for r in mine) if mine else str(header.sender_role),
            "recipients": recipients,
            "status": (state or {}).get("status"),
            "fields": {k: _plain(v) for k, v in body.items()},
            "purpose": header.sharing.purpose,
        }


def _gone(e: Entry, why: str = "no longer on the topic (retention)") -> dict[str, Any]:
    return {
        "message_id": e.message_id,
        "copy_id": e.copy_id,
        "occurred_at": e.occurred_at.isoformat(),
        "recorded_at": e.recorded_at.isoformat(),
        "event_type": e.event_type,
        "direction": e.direction,
        "sender": None,
        "recipients": [],
        "status": None,
        "fields": {},
        "unavailable": why,
    }


def _plain(value: Any) -> Any:
    """A body value as JSON: a withheld field as {"withheld": CLASS}."""
    if isinstance(value, Withheld):
        return {"withheld": str(value.sensitivity)}
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _clocks(events: list[dict[str, Any]], seen: list[Seen]) -> None:
    """Each event's ``clocks``: those it started and those it met, counted from the messages as
    opened (``seen``, with the values' own types)."""
    clocks = Clocks()
    for m in sorted(seen, key=lambda m: m.recorded_at):
        clocks.observe(m)
    clocks.overdue(dt.datetime.now(dt.UTC))
    for ev in events:
        ev["clocks"] = [
            {
                "obligation": cl.obligation.id,
                "title": cl.obligation.title,
                "started": cl.started_by == ev["message_id"],
                "met": cl.met_by == ev["message_id"],
                "due_at": cl.due_at.isoformat(),
                "status": str(cl.status),
                "margin_s": cl.margin.total_seconds() if cl.margin is not None else None,
            }
            for cl in clocks.clocks.values()
            if ev["message_id"] in (cl.started_by, cl.met_by)
        ]


# --- rendering ------------------------------------------------------------------------------


def _field_text(value: Any) -> str:
    if _is_withheld(value):
        return f"[withheld: {value['withheld']}]"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_field_text(v)}" for k, v in value.items() if v not in (None, []))
    if isinstance(value, list):
        return " | ".join(_field_text(v) for v in value)
    return "" if value is None else str(value)


CSV_COLUMNS = [
    "occurred_at",
    "event_type",
    "direction",
    "sender",
    "sender_role",
    "recipients",
    "status",
    "clocks",
    "fields",
    "message_id",
]


def to_csv(doc: Mapping[str, Any]) -> str:
    """One row per event; withheld fields say so, with their class."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for ev in doc["events"]:
        sender = ev.get("sender") or {}
        w.writerow(
            [
                ev["occurred_at"],
                ev["event_type"],
                ev["direction"],
                sender.get("name", ""),
                sender.get("role", ""),
                "; ".join(
                    f"{r['name']} ({r['role']}): {r.get('status') or '-'}"
                    for r in ev.get("recipients", [])
                ),
                ev.get("status") or ev.get("unavailable") or "",
                "; ".join(_clock_text(cl) for cl in ev.get("clocks", [])),
                "; ".join(
                    f"{k}={_field_text(v)}"
                    for k, v in ev["fields"].items()
                    if v not in (None, []) and k != "cbx_sealing"
                ),
                ev["message_id"],
            ]
        )
    return out.getvalue()


def _clock_text(cl: Mapping[str, Any]) -> str:
    what = "started" if cl["started"] else "met"
    if cl["met"] and cl["started"]:
        what = "given"
    late = cl["margin_s"] is not None and cl["margin_s"] < 0
    return f"{cl['obligation']} {what} ({cl['status']}{', late' if late else ''})"


# --- the multi-agency chronology ------------------------------------------------------------


def merge(exports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several agencies' exports of one case as one chronology: one row per message, which
    agencies held it (sent or received) and when each acknowledged; each field as any agency that
    could read it read it (withheld only if none could)."""
    docs = list(exports)
    if not docs:
        raise PolicyError("give at least one chronology export")
    for d in docs:
        if d.get("kind") != EXPORT_KIND or not isinstance(d.get("events"), list):
            raise PolicyError(
                f"not a cbx chronology export (kind {d.get('kind')!r}): export one with "
                "cbx chronology CASE --agency ID --format json"
            )
    cases = {d["case_ref"] for d in docs}
    if len(cases) != 1:
        raise PolicyError(f"the exports are of different cases: {', '.join(sorted(cases))}")
    rows: dict[str, dict[str, Any]] = {}
    for d in docs:
        agency = d["agency"]
        for ev in d["events"]:
            row = rows.setdefault(
                ev["message_id"],
                {
                    "message_id": ev["message_id"],
                    "occurred_at": ev["occurred_at"],
                    "recorded_at": ev["recorded_at"],
                    "event_type": ev["event_type"],
                    "sender": ev.get("sender"),
                    "recipients": {},
                    "held_by": {},
                    "fields": {},
                    "clocks": {},
                },
            )
            if row["sender"] is None and ev.get("sender"):
                row["sender"] = ev["sender"]
            for r in ev.get("recipients", []):
                known = row["recipients"].setdefault(r["agency"], dict(r))
                for k in ("status", "delivered_at", "acknowledged_at"):
                    if known.get(k) is None and r.get(k) is not None:
                        known[k] = r[k]
            own: dict[str, Any] = next(
                (r for r in ev.get("recipients", []) if r["agency"] == agency), {}
            )
            row["held_by"][agency] = {
                "direction": ev["direction"],
                "acknowledged_at": own.get("acknowledged_at"),
            }
            for k, v in ev.get("fields", {}).items():
                if k not in row["fields"] or (
                    _is_withheld(row["fields"][k]) and not _is_withheld(v)
                ):
                    row["fields"][k] = v
            for cl in ev.get("clocks", []):
                row["clocks"][cl["obligation"]] = cl
    merged = sorted(rows.values(), key=lambda r: (r["occurred_at"], r["recorded_at"]))
    for r in merged:
        r["recipients"] = list(r["recipients"].values())
        r["clocks"] = list(r["clocks"].values())
        for agency, held in r["held_by"].items():
            if held["acknowledged_at"] is None:
                got: dict[str, Any] = next(
                    (x for x in r["recipients"] if x["agency"] == agency), {}
                )
                held["acknowledged_at"] = got.get("acknowledged_at")
    return {
        "kind": "cbx.chronology.merged/v1",
        "case_ref": cases.pop(),
        "agencies": sorted(d["agency"] for d in docs),
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "events": merged,
    }


def _is_withheld(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"withheld"}


MERGED_COLUMNS = [
    "occurred_at",
    "event_type",
    "sender",
    "recipients",
    "held_by",
    "acknowledged",
    "clocks",
    "fields",
    "message_id",
]


def merged_csv(doc: Mapping[str, Any]) -> str:
    name = display_name
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(MERGED_COLUMNS)
    for ev in doc["events"]:
        sender = ev.get("sender") or {}
        w.writerow(
            [
                ev["occurred_at"],
                ev["event_type"],
                f"{sender.get('name', '')} ({sender.get('role', '')})",
                "; ".join(f"{r['name']} ({r['role']})" for r in ev["recipients"]),
                "; ".join(
                    f"{name(a)} ({h['direction']})" for a, h in sorted(ev["held_by"].items())
                ),
                "; ".join(
                    f"{r['name']}: {r.get('acknowledged_at') or 'not acknowledged'}"
                    for r in ev["recipients"]
                ),
                "; ".join(_clock_text(cl) for cl in ev["clocks"]),
                "; ".join(
                    f"{k}={_field_text(v)}" for k, v in ev["fields"].items() if v not in (None, [])
                ),
                ev["message_id"],
            ]
        )
    return out.getvalue()


# --- a printable page -------------------------------------------------------------------------

_TEMPLATES = Path(__file__).parent / "templates"


@cache
def _pages() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["field_text"] = _field_text
    env.filters["clock_text"] = _clock_text
    env.filters["name_of"] = display_name
    return env.get_template("chronology.html")


def to_html(doc: Mapping[str, Any]) -> str:
    """A printable page of one agency's chronology (or of a merged one), escaped throughout."""
    merged = bool(doc["events"]) and "held_by" in doc["events"][0]
    return str(_pages().render(doc=doc, merged=merged))
