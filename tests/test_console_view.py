"""The console's SQLite view on its own (no broker): batches in any split, records read twice,
and board counts that equal a plain count over the entries for any window."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

from benchmarks.bench_console import synthetic
from broker.console.store import Search, ViewStore
from broker.delivery_log import LogEntry, Status
from broker.tracker.view import DeliveryView

TOPIC = "cbx.delivery-log"


def entries_with_refusals(n: int) -> list[LogEntry]:
    out = synthetic(n, seed=3)
    now = dt.datetime.now(dt.UTC)
    for i in range(20):
        out.append(
            LogEntry(
                message_id=f"refused-{i}",
                status=Status.REJECTED,
                at=now - dt.timedelta(minutes=7 * i),
                sender="la-e10000003",
                event_type="ChildFound",
                reason="bad-signature",
            )
        )
    return out


def fold(store: ViewStore, entries: list[LogEntry], rnd: random.Random) -> None:
    i = 0
    offset = 0
    while i < len(entries):
        size = rnd.randint(1, 400)
        batch = entries[i : i + size]
        # A record read twice (a restart between applying and saving the offset) changes nothing.
        if rnd.random() < 0.2 and i:
            batch = [entries[i - 1], *batch]
        offset += len(batch)
        store.apply_log(batch, TOPIC, {0: offset})
        i += size


def naive_board(entries: list[LogEntry], since: float) -> dict[str, dict[str, int]]:
    view = DeliveryView()
    first: dict[str, float] = {}
    for e in entries:
        view.apply(e)
        if e.message_id:
            first[e.message_id] = min(first.get(e.message_id, e.at.timestamp()), e.at.timestamp())
    out: dict[str, dict[str, int]] = {}

    def bump(agency: str, metric: str) -> None:
        out.setdefault(agency, {}).setdefault(metric, 0)
        out[agency][metric] += 1

    for mid, m in view.messages.items():
        if m.sender and first[mid] >= since:
            bump(m.sender, "sent")
            if m.rejected_reason is not None:
                bump(m.sender, "refused")
        for agency, r in m.recipients.items():
            for key, metric in (
                ("ROUTED", "routed"),
                ("DELIVERED", "delivered"),
                ("ACKNOWLEDGED", "acknowledged"),
            ):
                at = r.at.get(key)
                if at is not None and at.timestamp() >= since:
                    bump(agency, metric)
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_board_counts_equal_a_plain_count_for_any_window(tmp_path: Path, seed: int) -> None:
    entries = entries_with_refusals(6000)
    store = ViewStore(tmp_path / "view.sqlite")
    fold(store, entries, random.Random(seed))
    now = dt.datetime.now(dt.UTC).timestamp()
    rnd = random.Random(seed)
    for since in [
        now - 3600,
        now - 86_400,
        now - 7 * 86_400,
        *(now - rnd.uniform(0, 6e5) for _ in range(5)),
    ]:
        board = {r["agency"]: r for r in store.board(since, now)}
        expected = naive_board(entries, since)
        for agency, metrics in expected.items():
            for metric, n in metrics.items():
                assert board[agency][metric] == n, (since, agency, metric)
        for agency, row in board.items():
            for metric in ("sent", "refused", "routed", "delivered", "acknowledged"):
                assert row[metric] == expected.get(agency, {}).get(metric, 0), (agency, metric)


def test_states_match_the_trackers_fold_and_the_offsets_are_kept(tmp_path: Path) -> None:
    entries = entries_with_refusals(3000)
    store = ViewStore(tmp_path / "view.sqlite")
    fold(store, entries, random.Random(5))
    view = DeliveryView()
    for e in entries:
        view.apply(e)
    for mid in list(view.messages)[:200]:
        summary = view.summary(mid)
        assert summary is not None
        m = store.message(mid)
        assert m is not None
        assert m["status"] == summary["status"]
        assert {(r["agency"], r["status"]) for r in m["recipient_states"]} == {
            (r["agency"], r["status"]) for r in summary["recipients"]
        }
    assert store.offsets(TOPIC) == {0: store.offsets(TOPIC)[0]}
    assert store.offsets(TOPIC)[0] >= len(entries)
    # Escalations: exactly the recipients the tracker escalated and that never acknowledged.
    escalated = {
        (m.message_id, a)
        for m in view.messages.values()
        for a, r in m.recipients.items()
        if r.status == Status.ESCALATED
    }
    assert escalated
    assert {(e["message_id"], e["agency"]) for e in store.escalations(0)} == escalated
    # The view survives a restart: reopened, it has the same answers.
    store.close()
    again = ViewStore(tmp_path / "view.sqlite")
    assert again.search(Search(status="ESCALATED", per_page=1000))[1] == len(
        {mid for mid, _a in escalated}
    )
    assert again.search(Search(status="REJECTED"))[1] == 20


def test_search_filters_and_pages(tmp_path: Path) -> None:
    entries = entries_with_refusals(3000)
    store = ViewStore(tmp_path / "view.sqlite")
    store.apply_log(entries, TOPIC, {0: len(entries)})
    view = DeliveryView()
    for e in entries:
        view.apply(e)
    agency = next(iter(view.messages.values())).sender
    assert agency
    involved = {
        mid for mid, m in view.messages.items() if m.sender == agency or agency in m.recipients
    }
    rows, total = store.search(Search(agency=agency, per_page=10))
    assert total == len(involved)
    seen = set()
    for page in range(1, -(-total // 10) + 1):
        rows, _ = store.search(Search(agency=agency, per_page=10, page=page))
        seen |= {r["message_id"] for r in rows}
    assert seen == involved
    missing = {mid for mid, m in view.messages.items() if m.event_type == "ChildMissingReported"}
    assert store.search(Search(event_type="ChildMissingReported", urgency="IMMEDIATE"))[1] == len(
        missing
    )


def test_overdue_obligation_reminders_are_listed_with_each_recipients_state(
    tmp_path: Path,
) -> None:
    now = dt.datetime.now(dt.UTC)
    due = now - dt.timedelta(minutes=5)
    common = {
        "message_id": "r-1",
        "event_type": "ObligationOverdue",
        "sender": "svc-tracker",
        "case_ref": "la-e10000016/KCC-9",
        "urgency": "URGENT",
        "occurred_at": due,
    }
    facts = {
        "clock_id": "return-home-interview:la-e10000016/KCC-9:ep",
        "obligation": "return-home-interview",
    }
    kent = {"recipient": "la-e10000016", "role": "PLACING_AUTHORITY"}
    lancs = {"recipient": "la-e10000017", "role": "HOST_AUTHORITY"}
    other = {**common, "message_id": "m-2", "event_type": "ChildFound"}
    entries = [
        LogEntry(status=Status.ACCEPTED, at=now, facts=facts, **common),
        LogEntry(status=Status.ROUTED, at=now, **kent, **common),
        LogEntry(status=Status.ROUTED, at=now, **lancs, **common),
        LogEntry(status=Status.ACKNOWLEDGED, at=now, **lancs, **common),
        LogEntry(status=Status.ACCEPTED, at=now, **other),  # not a reminder: not listed
    ]
    store = ViewStore(tmp_path / "view.sqlite")
    store.apply_log(entries, TOPIC, {0: len(entries)})
    (r,) = store.reminders()
    assert r["obligation"] == "return-home-interview"
    assert r["clock"] == facts["clock_id"]
    assert r["case_ref"] == "la-e10000016/KCC-9"
    assert r["due_at"] == pytest.approx(due.timestamp())
    assert {(x["agency"], x["status"]) for x in r["recipients"]} == {
        ("la-e10000016", "ROUTED"),
        ("la-e10000017", "ACKNOWLEDGED"),
    }
