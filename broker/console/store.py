"""The console's materialised view: the delivery log, dead letters, operator actions and the
directory, folded into SQLite tables an operator can search.

The tables are a cache of topics, never a source of truth: the offsets read so far are kept in the
same transaction as what was read from them, so after a restart the view carries on where it
stopped, and a missing database file is rebuilt from the start of every topic. Message states are
folded by the tracker's own :class:`~broker.tracker.view.DeliveryView`, so the console never
disagrees with what senders are told.

Times are stored as UTC epoch seconds (REAL), so windows are plain range queries.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.delivery_log import LogEntry, Status
from broker.model import OBLIGATION_OVERDUE
from broker.tracker.view import DeliveryView, MessageState, RecipientState

#: Bump when the tables change: an older view is rebuilt from the topics.
VIEW_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries(
  seq INTEGER PRIMARY KEY, message_id TEXT, status TEXT NOT NULL, at REAL NOT NULL,
  event_type TEXT, sender TEXT, recipient TEXT, role TEXT, case_ref TEXT, urgency TEXT,
  reason TEXT, related_message_id TEXT, source TEXT, writer TEXT);
CREATE INDEX IF NOT EXISTS entries_message ON entries(message_id, at);
CREATE TABLE IF NOT EXISTS messages(
  message_id TEXT PRIMARY KEY, event_type TEXT, sender TEXT, case_ref TEXT, urgency TEXT,
  occurred_at REAL, accepted_at REAL, ack_deadline REAL, first_at REAL NOT NULL,
  last_at REAL NOT NULL, status TEXT NOT NULL, rejected_reason TEXT, sharing TEXT,
  recipients TEXT NOT NULL DEFAULT '', facts TEXT);
CREATE INDEX IF NOT EXISTS messages_first ON messages(first_at);
CREATE INDEX IF NOT EXISTS messages_case ON messages(case_ref, occurred_at);
CREATE INDEX IF NOT EXISTS messages_sender ON messages(sender, first_at);
CREATE INDEX IF NOT EXISTS messages_status ON messages(status, first_at);
CREATE INDEX IF NOT EXISTS messages_type ON messages(event_type, first_at);
CREATE TABLE IF NOT EXISTS recipients(
  message_id TEXT NOT NULL, agency TEXT NOT NULL, role TEXT, status TEXT NOT NULL,
  routed_at REAL, delivered_at REAL, acknowledged_at REAL, overdue_at REAL, escalated_at REAL,
  route_gap_at REAL, repaired_at REAL, recipient_rejected_at REAL, last_at REAL NOT NULL,
  PRIMARY KEY(message_id, agency));
CREATE INDEX IF NOT EXISTS recipients_agency ON recipients(agency);
CREATE INDEX IF NOT EXISTS recipients_routed ON recipients(routed_at);
CREATE INDEX IF NOT EXISTS recipients_delivered ON recipients(delivered_at);
CREATE INDEX IF NOT EXISTS recipients_acknowledged ON recipients(acknowledged_at);
CREATE TABLE IF NOT EXISTS board_counts(
  agency TEXT NOT NULL, metric TEXT NOT NULL, hour INTEGER NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY(hour, agency, metric)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_open ON recipients(status)
  WHERE status IN ('OVERDUE', 'ESCALATED');
CREATE TABLE IF NOT EXISTS agency_activity(
  agency TEXT PRIMARY KEY, last_sent_at REAL, last_receipt_at REAL);
CREATE TABLE IF NOT EXISTS deadletters(
  id TEXT PRIMARY KEY, at TEXT, topic TEXT, sender TEXT, stage TEXT, reason TEXT,
  error_class TEXT, error TEXT, message_id TEXT, writer TEXT);
CREATE INDEX IF NOT EXISTS deadletters_message ON deadletters(message_id);
CREATE TABLE IF NOT EXISTS actions(
  action_id TEXT PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, actor_role TEXT,
  action TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT, message_id TEXT, case_ref TEXT,
  target TEXT, text TEXT, client TEXT);
CREATE INDEX IF NOT EXISTS actions_message ON actions(message_id, at);
CREATE INDEX IF NOT EXISTS actions_at ON actions(at);
CREATE TABLE IF NOT EXISTS directory(
  agency TEXT PRIMARY KEY, name TEXT, kind TEXT, keys TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS offsets(
  topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
  PRIMARY KEY(topic, partition));
"""

#: Recipient timestamps kept as columns, by the status that sets them.
_AT_COLUMNS = {
    Status.ROUTED: "routed_at",
    Status.DELIVERED: "delivered_at",
    Status.ACKNOWLEDGED: "acknowledged_at",
    Status.OVERDUE: "overdue_at",
    Status.ESCALATED: "escalated_at",
    Status.ROUTE_GAP: "route_gap_at",
    Status.REPAIRED: "repaired_at",
    Status.RECIPIENT_REJECTED: "recipient_rejected_at",
}

#: Recipient states the board counts, by the key of their time in a folded state.
_COUNTED = {"ROUTED": "routed", "DELIVERED": "delivered", "ACKNOWLEDGED": "acknowledged"}

#: Statuses a search can ask for (a message's overall status).
STATUSES = (
    "ACCEPTED",
    "ROUTED",
    "DELIVERED",
    "ACKNOWLEDGED",
    "ROUTE_GAP",
    "OVERDUE",
    "ESCALATED",
    "RECIPIENT_REJECTED",
    "REJECTED",
)


def epoch(v: dt.datetime | None) -> float | None:
    return v.timestamp() if v is not None else None


def utc(v: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(v, dt.UTC) if v is not None else None


@dataclass(frozen=True)
class Search:
    """A message search: every field optional; times are epoch seconds."""

    message_id: str | None = None
    case_ref: str | None = None
    agency: str | None = None
    event_type: str | None = None
    status: str | None = None
    urgency: str | None = None
    since: float | None = None
    until: float | None = None
    page: int = 1
    per_page: int = 50


@dataclass(frozen=True)
class DeadLetterRow:
    id: str
    at: str
    topic: str
    sender: str
    stage: str
    reason: str
    error_class: str
    error: str
    message_id: str | None
    writer: str


@dataclass(frozen=True)
class Action:
    """An operator action (the ``OperatorAction`` record, times as datetimes)."""

    action_id: str
    at: dt.datetime
    actor: str
    action: str
    outcome: str
    actor_role: str | None = None
    reason: str | None = None
    message_id: str | None = None
    case_ref: str | None = None
    target: str | None = None
    text: str | None = None
    client: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Action:
        return cls(**r)


class ViewStore:
    """The SQLite view. One writer (the follower) and many readers (pages), on one connection
    guarded by a lock: SQLite serialises writers anyway, and reads here are short."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # The view is a cache of topics: one made by another version of this code is dropped
            # and rebuilt from the beginning of every topic (its offsets go with it).
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version != VIEW_VERSION:
                tables = [
                    r[0]
                    for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                ]
                for t in tables:
                    self._db.execute(f'DROP TABLE IF EXISTS "{t}"')
                self._db.execute(f"PRAGMA user_version = {VIEW_VERSION}")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # -- following topics ---------------------------------------------------------------------

    def offsets(self, topic: str) -> dict[int, int]:
        return {
            r["partition"]: r["next_offset"]
            for r in self._rows(
                "SELECT partition, next_offset FROM offsets WHERE topic=?", (topic,)
            )
        }

    def apply_log(self, entries: Sequence[LogEntry], topic: str, positions: dict[int, int]) -> None:
        """Fold a batch of delivery-log entries; ``positions`` are the next offsets to read."""
        with self._tx() as db:
            self._fold(db, entries)
            _save_offsets(db, topic, positions)

    def apply_dead_letters(
        self, rows: Iterable[DeadLetterRow], topic: str, positions: dict[int, int]
    ) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO deadletters VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        d.id,
                        d.at,
                        d.topic,
                        d.sender,
                        d.stage,
                        d.reason,
                        d.error_class,
                        d.error,
                        d.message_id,
                        d.writer,
                    )
                    for d in rows
                ],
            )
            _save_offsets(db, topic, positions)

    def apply_actions(
        self, actions: Iterable[Action], topic: str, positions: dict[int, int]
    ) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO actions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        a.action_id,
                        a.at.timestamp(),
                        a.actor,
                        a.actor_role,
                        a.action,
                        a.outcome,
                        a.reason,
                        a.message_id,
                        a.case_ref,
                        a.target,
                        a.text,
                        a.client,
                    )
                    for a in actions
                ],
            )
            _save_offsets(db, topic, positions)

    def apply_directory(
        self, entries: Iterable[dict[str, Any]], topic: str, positions: dict[int, int]
    ) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO directory VALUES (?,?,?,?,?)",
                [
                    (e["agency"], e["name"], e["kind"], json.dumps(e["keys"]), e["updated"])
                    for e in entries
                ],
            )
            _save_offsets(db, topic, positions)

    def _fold(self, db: sqlite3.Connection, entries: Sequence[LogEntry]) -> None:
        ids = list(dict.fromkeys(e.message_id for e in entries if e.message_id is not None))
        view = DeliveryView()
        known = _load_states(db, ids)
        # What each message had before this batch, so that the board's hourly counters count
        # each first routing, delivery, acknowledgement and refusal exactly once.
        before = {
            mid: (
                {(a, k) for a, r in m.recipients.items() for k in r.at},
                m.rejected_reason is not None,
            )
            for mid, m in known.items()
        }
        view.messages.update(known)
        extra: dict[str, dict[str, Any]] = {}
        rows = []
        for e in entries:
            rows.append(
                (
                    e.message_id,
                    str(e.status),
                    e.at.timestamp(),
                    e.event_type,
                    e.sender,
                    e.recipient,
                    e.role,
                    e.case_ref,
                    e.urgency,
                    e.reason,
                    e.related_message_id,
                    e.source,
                    e.writer,
                )
            )
            if e.message_id is None:
                continue
            view.apply(e)
            x = extra.setdefault(e.message_id, {"first": None, "last": None})
            at = e.at.timestamp()
            x["first"] = at if x["first"] is None else min(x["first"], at)
            x["last"] = at if x["last"] is None else max(x["last"], at)
            if e.occurred_at is not None:
                x["occurred_at"] = e.occurred_at.timestamp()
            if e.sharing is not None:
                x["sharing"] = json.dumps(e.sharing, sort_keys=True)
            if e.facts is not None:
                x["facts"] = json.dumps(e.facts, sort_keys=True)
        db.executemany("INSERT INTO entries VALUES (NULL,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        activity: dict[str, list[float | None]] = {}
        counts: dict[tuple[int, str, str], int] = {}

        def count(agency: str | None, metric: str, at: float) -> None:
            if agency:
                key = (int(at // 3600), agency, metric)
                counts[key] = counts.get(key, 0) + 1

        for mid in ids:
            m = view.messages[mid]
            summary = view.summary(mid)
            assert summary is not None
            x = extra[mid]
            db.execute(
                """INSERT INTO messages(message_id, event_type, sender, case_ref, urgency,
                     occurred_at, accepted_at, ack_deadline, first_at, last_at, status,
                     rejected_reason, sharing, recipients, facts)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(message_id) DO UPDATE SET
                     event_type=excluded.event_type, sender=excluded.sender,
                     case_ref=excluded.case_ref, urgency=excluded.urgency,
                     occurred_at=COALESCE(excluded.occurred_at, messages.occurred_at),
                     accepted_at=excluded.accepted_at, ack_deadline=excluded.ack_deadline,
                     first_at=MIN(messages.first_at, excluded.first_at),
                     last_at=MAX(messages.last_at, excluded.last_at),
                     status=excluded.status, rejected_reason=excluded.rejected_reason,
                     sharing=COALESCE(excluded.sharing, messages.sharing),
                     recipients=excluded.recipients,
                     facts=COALESCE(excluded.facts, messages.facts)""",
                (
                    mid,
                    m.event_type,
                    m.sender,
                    m.case_ref,
                    m.urgency,
                    x.get("occurred_at"),
                    epoch(m.accepted_at),
                    epoch(m.ack_deadline),
                    x["first"],
                    x["last"],
                    summary["status"],
                    m.rejected_reason,
                    x.get("sharing"),
                    " ".join(sorted(m.recipients)),
                    x.get("facts"),
                ),
            )
            seen, was_refused = before.get(mid, (set(), False))
            if mid not in before:
                count(m.sender, "sent", x["first"])
            if m.rejected_reason is not None and not was_refused:
                count(m.sender, "refused", x["first"])
            for agency, r in m.recipients.items():
                for key, metric in _COUNTED.items():
                    when = r.at.get(key)
                    if when is not None and (agency, key) not in seen:
                        count(agency, metric, when.timestamp())
            if m.sender and (m.accepted_at is not None or m.rejected_reason is not None):
                a = activity.setdefault(m.sender, [None, None])
                a[0] = max(a[0] or 0.0, x["last"])
            for agency, r in m.recipients.items():
                ats = {col: epoch(r.at.get(str(s))) for s, col in _AT_COLUMNS.items()}
                last = max((v for v in ats.values() if v is not None), default=x["last"])
                db.execute(
                    f"""INSERT OR REPLACE INTO recipients(message_id, agency, role, status,
                          {", ".join(ats)}, last_at)
                        VALUES (?,?,?,?,{",".join("?" * len(ats))},?)""",  # noqa: S608
                    (mid, agency, r.role, str(r.status), *ats.values(), last),
                )
                receipt = max(
                    (v for v in (ats["delivered_at"], ats["acknowledged_at"]) if v), default=None
                )
                if receipt is not None:
                    a = activity.setdefault(agency, [None, None])
                    a[1] = max(a[1] or 0.0, receipt)
        db.executemany(
            """INSERT INTO board_counts VALUES (?,?,?,?) ON CONFLICT(hour, agency, metric)
               DO UPDATE SET n = n + excluded.n""",
            [(agency, metric, hour, n) for (hour, agency, metric), n in counts.items()],
        )
        for agency, (sent, receipt) in activity.items():
            db.execute(
                """INSERT INTO agency_activity VALUES (?,?,?) ON CONFLICT(agency) DO UPDATE SET
                     last_sent_at=MAX(COALESCE(agency_activity.last_sent_at, 0),
                                      COALESCE(excluded.last_sent_at, 0)),
                     last_receipt_at=MAX(COALESCE(agency_activity.last_receipt_at, 0),
                                         COALESCE(excluded.last_receipt_at, 0))""",
                (agency, sent, receipt),
            )

    # -- queries ------------------------------------------------------------------------------

    def board(self, since: float, now: float) -> list[dict[str, Any]]:
        """Per agency: sent, refused, routed to it, delivered, acknowledged since ``since``;
        overdue and escalated (unacknowledged) now; when its connector last sent a receipt."""
        out: dict[str, dict[str, Any]] = {}

        def row(agency: str) -> dict[str, Any]:
            return out.setdefault(
                agency,
                {
                    "agency": agency,
                    "sent": 0,
                    "refused": 0,
                    "routed": 0,
                    "delivered": 0,
                    "acknowledged": 0,
                    "overdue": 0,
                    "escalated": 0,
                    "last_receipt_at": None,
                    "last_sent_at": None,
                },
            )

        # Whole hours from the counters; the part of the first hour inside the window counted
        # from the rows themselves (each through an index on its time), so any window is exact.
        edge = math.ceil(since / 3600) * 3600
        for r in self._rows(
            """SELECT agency, metric, SUM(n) AS n FROM board_counts
               WHERE hour >= ? GROUP BY agency, metric""",
            (edge // 3600,),
        ):
            row(r["agency"])[r["metric"]] += r["n"]
        if since < edge:
            for r in self._rows(
                """SELECT sender, COUNT(*) AS sent, SUM(status = 'REJECTED') AS refused
                   FROM messages WHERE first_at >= ? AND first_at < ? AND sender IS NOT NULL
                   GROUP BY sender""",
                (since, edge),
            ):
                x = row(r["sender"])
                x["sent"] += r["sent"]
                x["refused"] += r["refused"]
            for col, metric in (
                ("routed_at", "routed"),
                ("delivered_at", "delivered"),
                ("acknowledged_at", "acknowledged"),
            ):
                for r in self._rows(
                    f"""SELECT agency, COUNT(*) AS n FROM recipients
                        WHERE {col} >= ? AND {col} < ? GROUP BY agency""",  # noqa: S608
                    (since, edge),
                ):
                    row(r["agency"])[metric] += r["n"]
        for r in self._rows(
            """SELECT agency, SUM(status = 'OVERDUE') AS overdue,
                      SUM(status = 'ESCALATED') AS escalated
               FROM recipients WHERE status IN ('OVERDUE', 'ESCALATED') GROUP BY agency"""
        ):
            x = row(r["agency"])
            x["overdue"], x["escalated"] = r["overdue"], r["escalated"]
        for r in self._rows("SELECT * FROM agency_activity"):
            if r["agency"] in out or r["last_receipt_at"]:
                x = row(r["agency"])
                x["last_receipt_at"] = utc(r["last_receipt_at"] or None)
                x["last_sent_at"] = utc(r["last_sent_at"] or None)
        names = {}
        for r in self._rows("SELECT agency, name FROM directory WHERE kind != 'SERVICE'"):
            row(r["agency"])
            names[r["agency"]] = r["name"]
        for a, x in out.items():
            x["name"] = names.get(a, a)
        return [out[a] for a in sorted(out)]

    def escalations(self, now: float) -> list[dict[str, Any]]:
        """Every recipient overdue or escalated and not acknowledged, oldest deadline first."""
        rows = self._rows(
            """SELECT r.message_id, r.agency, r.role, r.status, r.overdue_at, r.escalated_at,
                      m.event_type, m.sender, m.case_ref, m.urgency, m.ack_deadline,
                      m.accepted_at
               FROM recipients r JOIN messages m USING (message_id)
               WHERE r.status IN ('OVERDUE', 'ESCALATED')
               ORDER BY m.ack_deadline, r.message_id, r.agency"""
        )
        return [
            {
                **dict(r),
                "past_deadline_s": (now - r["ack_deadline"]) if r["ack_deadline"] else None,
            }
            for r in rows
        ]

    def reminders(self, limit: int = 200) -> list[dict[str, Any]]:
        """The exchange's overdue-obligation reminders, newest first: which clock of which case,
        whom they reached and whether each acknowledged."""
        rows = self._rows(
            """SELECT message_id, case_ref, occurred_at, first_at, status, facts, recipients
               FROM messages WHERE event_type = ? ORDER BY first_at DESC LIMIT ?""",
            (OBLIGATION_OVERDUE, limit),
        )
        out = []
        for r in rows:
            facts = json.loads(r["facts"]) if r["facts"] else {}
            states = self._rows(
                "SELECT agency, role, status FROM recipients WHERE message_id = ? ORDER BY agency",
                (r["message_id"],),
            )
            out.append(
                {
                    "message_id": r["message_id"],
                    "case_ref": r["case_ref"],
                    "obligation": facts.get("obligation"),
                    "clock": facts.get("clock_id"),
                    "due_at": r["occurred_at"],
                    "sent_at": r["first_at"],
                    "status": r["status"],
                    "recipients": [dict(x) for x in states],
                }
            )
        return out

    def search(self, q: Search) -> tuple[list[dict[str, Any]], int]:
        """Messages matching ``q``, newest first, one page; and how many match in all."""
        where: list[str] = []
        args: list[Any] = []
        for col, v in (
            ("message_id", q.message_id),
            ("case_ref", q.case_ref),
            ("event_type", q.event_type),
            ("status", q.status),
            ("urgency", q.urgency),
        ):
            if v:
                where.append(f"{col} = ?")
                args.append(v)
        if q.agency:
            where.append(
                "(sender = ? OR message_id IN (SELECT message_id FROM recipients WHERE agency = ?))"
            )
            args += [q.agency, q.agency]
        if q.since is not None:
            where.append("first_at >= ?")
            args.append(q.since)
        if q.until is not None:
            where.append("first_at < ?")
            args.append(q.until)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self._rows(f"SELECT COUNT(*) AS n FROM messages {clause}", args)[0]["n"]  # noqa: S608
        page = max(1, q.page)
        rows = self._rows(
            f"SELECT * FROM messages {clause} ORDER BY first_at DESC, message_id "  # noqa: S608
            "LIMIT ? OFFSET ?",
            [*args, q.per_page, (page - 1) * q.per_page],
        )
        return [_message(r) for r in rows], total

    def message(self, message_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM messages WHERE message_id = ?", (message_id,))
        if not rows:
            return None
        m = _message(rows[0])
        m["recipient_states"] = [
            dict(r)
            for r in self._rows(
                "SELECT * FROM recipients WHERE message_id = ? ORDER BY agency", (message_id,)
            )
        ]
        m["timeline"] = [
            dict(r)
            for r in self._rows(
                "SELECT * FROM entries WHERE message_id = ? ORDER BY at, seq", (message_id,)
            )
        ]
        related = self._rows(
            """SELECT DISTINCT related_message_id AS id FROM entries
               WHERE message_id = ? AND related_message_id IS NOT NULL
               UNION SELECT DISTINCT message_id FROM entries WHERE related_message_id = ?""",
            (message_id, message_id),
        )
        ids = {r["id"] for r in related} | {
            e["related_message_id"] for e in m["timeline"] if e["related_message_id"]
        }
        ids.discard(message_id)
        # Only messages of the log are linked (a receipt's id, say, is not one).
        known = self._known(sorted(ids))
        m["related"] = [i for i in sorted(ids) if i in known]
        m["linkable"] = known
        m["notes"] = self.notes(message_id)
        m["dead_letters"] = [
            DeadLetterRow(**dict(r))
            for r in self._rows("SELECT * FROM deadletters WHERE message_id = ?", (message_id,))
        ]
        return m

    def _known(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        return {
            r["message_id"]
            for r in self._rows(
                f"SELECT message_id FROM messages WHERE message_id IN ({marks})",  # noqa: S608
                ids,
            )
        }

    def case(self, case_ref: str) -> list[dict[str, Any]]:
        """Every message of one case, in the order things happened, with its recipients."""
        out = []
        for r in self._rows(
            """SELECT * FROM messages WHERE case_ref = ?
               ORDER BY COALESCE(occurred_at, first_at), first_at""",
            (case_ref,),
        ):
            m = _message(r)
            m["recipient_states"] = [
                dict(x)
                for x in self._rows(
                    "SELECT * FROM recipients WHERE message_id = ? ORDER BY agency",
                    (r["message_id"],),
                )
            ]
            out.append(m)
        return out

    def notes(self, message_id: str | None = None) -> list[dict[str, Any]]:
        if message_id is None:
            rows = self._rows(
                "SELECT * FROM actions WHERE action = 'note' AND outcome = 'DONE' ORDER BY at"
            )
        else:
            rows = self._rows(
                """SELECT * FROM actions WHERE action = 'note' AND outcome = 'DONE'
                   AND message_id = ? ORDER BY at""",
                (message_id,),
            )
        return [{**dict(r), "at": utc(r["at"])} for r in rows]

    def actions(self, limit: int = 200) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM actions ORDER BY at DESC LIMIT ?", (limit,))
        return [{**dict(r), "at": utc(r["at"])} for r in rows]

    def dead_letters(self) -> list[DeadLetterRow]:
        return [
            DeadLetterRow(**dict(r)) for r in self._rows("SELECT * FROM deadletters ORDER BY at")
        ]

    def dead_letter(self, dead_letter_id: str) -> DeadLetterRow | None:
        rows = self._rows("SELECT * FROM deadletters WHERE id = ?", (dead_letter_id,))
        return DeadLetterRow(**dict(rows[0])) if rows else None

    def replays(self) -> dict[str, dict[str, Any]]:
        """Dead letter id → the operator action that replayed it."""
        return {
            r["target"]: {**dict(r), "at": utc(r["at"])}
            for r in self._rows(
                "SELECT * FROM actions WHERE action = 'replay' AND outcome = 'DONE' ORDER BY at"
            )
        }

    def directory(self) -> list[dict[str, Any]]:
        return [
            {**dict(r), "keys": json.loads(r["keys"] or "[]"), "updated": utc(r["updated"])}
            for r in self._rows("SELECT * FROM directory ORDER BY kind, agency")
        ]

    def counts(self) -> dict[str, int]:
        return {
            t: self._rows(f"SELECT COUNT(*) AS n FROM {t}")[0]["n"]  # noqa: S608
            for t in ("entries", "messages", "recipients", "deadletters", "actions", "directory")
        }


def _save_offsets(db: sqlite3.Connection, topic: str, positions: dict[int, int]) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO offsets VALUES (?,?,?)",
        [(topic, p, o) for p, o in positions.items()],
    )


def _message(r: sqlite3.Row) -> dict[str, Any]:
    m = dict(r)
    m["sharing"] = json.loads(r["sharing"]) if r["sharing"] else None
    m["facts"] = json.loads(r["facts"]) if r["facts"] else None
    m["recipient_list"] = r["recipients"].split() if r["recipients"] else []
    return m


def _load_states(db: sqlite3.Connection, ids: list[str]) -> dict[str, MessageState]:
    """The folded state of messages already in the view (to continue folding them)."""
    out: dict[str, MessageState] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        for r in db.execute(
            f"SELECT * FROM messages WHERE message_id IN ({marks})",  # noqa: S608
            chunk,
        ):
            out[r["message_id"]] = MessageState(
                message_id=r["message_id"],
                event_type=r["event_type"],
                sender=r["sender"],
                case_ref=r["case_ref"],
                urgency=r["urgency"],
                accepted_at=utc(r["accepted_at"]),
                ack_deadline=utc(r["ack_deadline"]),
                rejected_reason=r["rejected_reason"],
            )
        for r in db.execute(
            f"SELECT * FROM recipients WHERE message_id IN ({marks})",  # noqa: S608
            chunk,
        ):
            m = out[r["message_id"]]
            ats = {str(s): at for s, col in _AT_COLUMNS.items() if (at := utc(r[col])) is not None}
            m.recipients[r["agency"]] = RecipientState(Status(r["status"]), r["role"], ats)
            if Status.ESCALATED.value in ats:
                m.escalated.add(r["agency"])
    return out
