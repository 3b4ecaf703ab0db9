"""The operators' console on the real broker: what it shows is what the delivery log says, every
refusal is audited on the topic, and no page or API answer carries a sealed value."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from pathlib import Path
from typing import Any

import pytest
from console_harness import (
    PASSWORDS,
    Played,
    audit_topic,
    console,
    csrf_of,
    delivery_view,
    log_entries,
    sign_in,
)

from broker.console.auth import Sessions
from broker.delivery_log import Status
from broker.kafka import clients as kafka

pytestmark = pytest.mark.kafka


@pytest.fixture
def played(console_case: Played) -> Played:
    return console_case


def case_ref(played: Played) -> str:
    return played.case_ref


async def test_the_pages_say_what_the_delivery_log_says(played: Played, tmp_path: Path) -> None:
    view = await delivery_view(played.admin)
    medway = played.case.agencies["medway"]
    async with console(played, tmp_path / "view.sqlite") as (_r, client):
        await sign_in(client, "victor")
        # Every message of the case, with each recipient's state as the tracker folds it.
        found = (await client.get("/api/messages", params={"case_ref": case_ref(played)})).json()
        in_log = {m.message_id for m in view.messages.values() if m.case_ref == case_ref(played)}
        assert {m["message_id"] for m in found["messages"]} == in_log
        assert found["total"] == len(in_log) >= 2
        for mid in in_log:
            trace = (await client.get(f"/api/messages/{mid}")).json()
            summary = view.summary(mid)
            assert summary is not None
            assert trace["status"] == summary["status"]
            assert {(r["agency"], r["status"]) for r in trace["recipient_states"]} == {
                (r["agency"], r["status"]) for r in summary["recipients"]
            }
            assert trace["sharing"]["purpose"] == "safeguard a looked-after child"
            assert trace["sharing"]["consent"] == "NOT_SOUGHT"
            assert trace["sharing"]["decision_maker_role"] == "Registered manager"
            assert "UK_GDPR_6_1_E_PUBLIC_TASK" in trace["sharing"]["lawful_basis"]
            statuses = [e["status"] for e in trace["timeline"]]
            assert statuses[0] == "ACCEPTED"
            assert "ROUTED" in statuses
        # The escalation: exactly Medway, on the missing report, past its deadline.
        escalations = (await client.get("/api/escalations")).json()
        escalated = {(m.message_id, a) for m in view.messages.values() for a in m.escalated}
        assert {(e["message_id"], e["agency"]) for e in escalations} == escalated
        assert {a for _m, a in escalated} == {medway}
        assert all(e["past_deadline_s"] > 0 for e in escalations)
        assert {e["urgency"] for e in escalations} == {"IMMEDIATE"}
        # The board counts per agency over the week.
        board = {
            r["agency"]: r for r in (await client.get("/api/board?window=week")).json()["rows"]
        }
        for agency in set(played.case.agencies.values()):
            sent = [m for m in view.messages.values() if m.sender == agency]
            got = [
                r for m in view.messages.values() for a, r in m.recipients.items() if a == agency
            ]
            assert board[agency]["sent"] == len(sent), agency
            assert board[agency]["routed"] == sum(1 for r in got if Status.ROUTED.value in r.at), (
                agency
            )
            assert board[agency]["acknowledged"] == sum(
                1 for r in got if Status.ACKNOWLEDGED.value in r.at
            ), agency
            assert board[agency]["escalated"] == sum(
                1 for r in got if r.status == Status.ESCALATED
            ), agency
        assert board[medway]["escalated"] == 1
        # The case chronology in CSV: one row per message and recipient, in time order.
        answer = await client.get(f"/cases/{case_ref(played)}/chronology.csv")
        assert answer.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(answer.text)))
        assert {r["message_id"] for r in rows} == in_log
        assert len(rows) == sum(len(view.messages[m].recipients) for m in in_log)
        occurred = [r["occurred_at"] for r in rows]
        assert occurred == sorted(occurred)
        # The dead letter the router wrote, with its reason.
        dead = (await client.get("/api/dead-letters")).json()
        assert [d["id"] for d in dead] == [played.dead_letter]
        assert dead[0]["reason"]
        assert dead[0]["sender"] == played.case.agencies["home"]
        # The directory with key ages, and the ACLs of an agency.
        agencies = {a["agency"]: a for a in (await client.get("/api/agencies")).json()}
        assert {k["use"] for k in agencies[medway]["keys"]} == {"encryption", "signing"}
        assert all(k["age_days"] == 0 and not k["rotation_due"] for k in agencies[medway]["keys"])
        assert {
            "resource": "topic",
            "name": f"{played.admin.topic_prefix}.inbox.{medway}",
            "pattern": "literal",
            "operation": "READ",
        } in agencies[medway]["acls"]
        assert agencies["svc-operator"]["keys"] == []


async def test_consumer_lag_shows_messages_waiting_for_a_connector(
    played: Played, tmp_path: Path
) -> None:
    """The scenario's connectors are stopped; Medway's inbox group committed all it read, so the
    board shows a number for every agency, and the router and tracker as services."""
    import asyncio

    async with console(played, tmp_path / "view.sqlite") as (r, client):
        await sign_in(client, "victor")
        for _ in range(100):
            if r.console.lag():
                break
            await asyncio.sleep(0.1)
        board = (await client.get("/api/board")).json()
        waiting = {row["agency"]: row["waiting"] for row in board["rows"]}
        for agency in set(played.case.agencies.values()):
            assert waiting[agency] == 0, (agency, waiting)
        services = {s["name"]: s for s in board["services"]}
        assert set(services) == {"router", "tracker"}
        assert services["tracker"]["lag"] == 0
        # The scenario's services have stopped: no commit was seen since the console started.
        assert services["tracker"]["progressed_at"] is None
        # The router has routed the case (a dead letter replayed since may wait for it).
        assert services["router"]["committed"] >= len(played.report["messages"])
        # A connector that is down: a record lands in its inbox and nobody reads it.
        medway = played.case.agencies["medway"]
        producer = kafka.producer(played.admin)
        await producer.start()
        try:
            await producer.send_and_wait(played.admin.topics.inbox(medway), b"waiting", key=b"k")
        finally:
            await producer.stop()
        for _ in range(100):
            rows = (await client.get("/api/board")).json()["rows"]
            if {row["agency"]: row["waiting"] for row in rows}[medway] == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the board never showed the message waiting for Medway")


async def test_a_note_and_a_replay_are_kept_on_the_audit_topic(
    played: Played, tmp_path: Path
) -> None:
    escalated = next(
        m for m in played.report["messages"] if m["event_type"] == "ChildMissingReported"
    )
    mid = escalated["message_id"]
    async with console(played, tmp_path / "view.sqlite") as (_r, client):
        token = await sign_in(client, "olive")
        note = "Telephoned Medway duty desk at 14:05, receipt confirmed"
        answer = await client.post(
            f"/messages/{mid}/notes", data={"note": note, "csrf_token": token}
        )
        assert answer.status_code == 303
        trace = await client.get(f"/messages/{mid}")
        assert note in trace.text
        # Replay asks for confirmation first, then puts the record back and says so.
        page = await client.get(f"/dead-letters/{played.dead_letter}/replay")
        assert "Replay dead letter" in page.text
        unconfirmed = await client.post(
            f"/dead-letters/{played.dead_letter}/replay", data={"csrf_token": token}
        )
        assert unconfirmed.status_code == 400
        done = await client.post(
            f"/dead-letters/{played.dead_letter}/replay",
            data={"csrf_token": token, "confirm": "yes"},
        )
        assert done.status_code == 303, done.text[-1000:]
    actions = await audit_topic(played.admin)
    notes = [a for a in actions if a.action == "note" and a.message_id == mid]
    assert [(a.actor, a.outcome, a.text) for a in notes][-1] == ("olive", "DONE", note)
    replays = [a for a in actions if a.action == "replay" and a.target == played.dead_letter]
    assert [(a.actor, a.outcome) for a in replays][-1] == ("olive", "DONE")
    assert replays[-1].client == "10.1.2.3"
    entries = await log_entries(played.admin)
    assert any(
        e.status == Status.REPLAYED and e.reason and "replayed by olive" in e.reason
        for e in entries
    )
    # A new console, on a new view, rebuilt from the topics, shows the note on the trace.
    async with console(played, tmp_path / "rebuilt.sqlite") as (_r, client):
        await sign_in(client, "victor")
        assert note in (await client.get(f"/messages/{mid}")).text
        assert "Replayed" in (await client.get("/dead-letters")).text


async def test_refusals_are_refused_and_audited(played: Played, tmp_path: Path) -> None:
    now = [dt.datetime.now(dt.UTC)]
    sessions = Sessions(idle=dt.timedelta(minutes=30), clock=lambda: now[0])
    mid = played.report["messages"][0]["message_id"]
    async with console(played, tmp_path / "view.sqlite", sessions) as (_r, client):
        # Nothing without signing in; the API answers 401, pages go to the sign-in form.
        assert (await client.get("/api/board")).status_code == 401
        assert (await client.get("/board")).headers["location"].startswith("/sign-in")
        # A wrong password.
        form = await client.get("/sign-in")
        wrong = await client.post(
            "/sign-in",
            data={
                "username": "olive",
                "password": "not it at all",
                "csrf_token": csrf_of(form.text),
            },
        )
        assert wrong.status_code == 401
        assert "not right" in wrong.text
        assert client.cookies.get("cbx_console_session") is None
        # A sign-in form posted without its token; then one from a browser with no sign-in
        # cookie (a forged cross-site form), which must not be taken either.
        form = await client.get("/sign-in")
        forged = await client.post(
            "/sign-in", data={"username": "olive", "password": "operator password 1"}
        )
        assert forged.status_code == 403
        held = client.cookies.get("cbx_console_signin")
        client.cookies.delete("cbx_console_signin")
        cookieless = await _olive_signs_in(client, csrf_of(form.text))
        assert cookieless.status_code == 403
        assert client.cookies.get("cbx_console_session") is None
        # A token that is not the cookie's.
        client.cookies.set("cbx_console_signin", held, domain="console")
        mismatched = await _olive_signs_in(client, "x" * 32)
        assert mismatched.status_code == 403
        # A viewer trying to replay, and to write a note.
        token = await sign_in(client, "victor")
        replay = await client.post(
            f"/dead-letters/{played.dead_letter}/replay",
            data={"csrf_token": token, "confirm": "yes"},
        )
        assert replay.status_code == 403
        assert "may not replay" in replay.text
        # An operator's form without its CSRF token, and with another session's token.
        client.cookies.clear()
        await sign_in(client, "olive")
        missing = await client.post(f"/messages/{mid}/notes", data={"note": "x"})
        assert missing.status_code == 403
        other = await client.post(f"/messages/{mid}/notes", data={"note": "x", "csrf_token": token})
        assert other.status_code == 403
        # An expired session: 31 minutes without a request.
        now[0] += dt.timedelta(minutes=31)
        expired = await client.get("/board")
        assert expired.status_code == 303
        assert "expired=1" in expired.headers["location"]
        assert (await client.get("/api/board")).status_code == 401
    refused = [
        (a.actor, a.action, a.reason)
        for a in await audit_topic(played.admin)
        if a.outcome == "REFUSED"
    ]
    assert ("olive", "sign-in", "wrong password") in refused
    csrf = "missing or wrong CSRF token"
    assert ("olive", "sign-in", f"{csrf}: the form had no token") in refused
    assert ("olive", "sign-in", f"{csrf}: the browser sent no sign-in cookie") in refused
    assert ("olive", "sign-in", f"{csrf}: the form's token is not the cookie's") in refused
    assert ("victor", "replay", "the viewer role may not replay") in refused
    assert ("olive", "note", "missing or wrong CSRF token") in refused
    assert refused.count(("olive", "note", "missing or wrong CSRF token")) >= 2
    assert ("olive", "session", "session expired") in refused


async def test_no_page_or_answer_holds_a_sealed_value(
    played: Played, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every page and API answer the console serves, for every message, searched for the case's
    sensitive values; and the console never opens a keystore."""
    from broker.crypto import keys

    def no_keystore(*_a: object, **_k: object) -> None:
        raise AssertionError("the console opened a keystore")

    monkeypatch.setattr(keys, "load", no_keystore)
    monkeypatch.setattr(keys, "save", no_keystore)
    async with console(played, tmp_path / "view.sqlite") as (_r, client):
        token = await sign_in(client, "olive")
        ids = [m["message_id"] for m in (await client.get("/api/messages")).json()["messages"]]
        assert len(ids) >= 2
        await client.post(f"/messages/{ids[0]}/notes", data={"note": "called", "csrf_token": token})
        paths = [
            "/board",
            "/board/table",
            "/board?window=week",
            "/api/board?window=week",
            "/escalations",
            "/api/escalations",
            "/messages",
            "/api/messages",
            f"/messages?case_ref={case_ref(played)}",
            f"/cases/{case_ref(played)}",
            f"/cases/{case_ref(played)}/chronology.csv",
            f"/api/cases/{case_ref(played)}",
            "/dead-letters",
            "/api/dead-letters",
            f"/dead-letters/{played.dead_letter}/replay",
            "/agencies",
            "/api/agencies",
            "/audit",
            "/api/audit",
            "/sign-in",
            "/readyz",
            *(f"/messages/{m}" for m in ids),
            *(f"/api/messages/{m}" for m in ids),
        ]
        served = {}
        for p in paths:
            answer = await client.get(p)
            assert answer.status_code == 200, (p, answer.status_code)
            served[p] = answer.text
        # Links on the pages lead only to pages in this list or to messages and cases.
        linked = set(re.findall(r'href="(/[^"#]*)"', "".join(served.values())))
        for link in linked - set(served):
            if link.startswith("/assets/"):
                continue
            answer = await client.get(link.replace("&amp;", "&"))
            sources = [p for p, text in served.items() if link in text]
            assert answer.status_code in (200, 303), (link, sources)
            served[link] = answer.text
    leaks = {(p, v) for p, text in served.items() for v in played.secrets if v in text}
    assert leaks == set()
    assert len(served) > 30


async def test_cbx_console_serves_the_namespace_it_is_given(played: Played, tmp_path: Path) -> None:
    """The command itself: ready once its view has caught up, signs in, SIGTERM stops it."""
    import asyncio
    import os
    import signal
    import subprocess
    import sys

    import httpx
    from browser import free_port

    port = free_port()
    env = {
        **os.environ,
        "CBX_CONSOLE_ACCOUNTS": str(played.accounts.path),
        "CBX_CONSOLE_DATABASE_URL": f"sqlite:///{tmp_path / 'view.sqlite'}",
    }
    args = [sys.executable, "-m", "cbx.cli", "console", "--port", str(port)]
    proc = subprocess.Popen(  # noqa: ASYNC220 - started, then polled over HTTP
        [*args, "--namespace", played.admin.topic_prefix],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(300):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("cbx console never became ready")
            await sign_in(client, "victor")
            found = await client.get("/api/messages", params={"case_ref": played.case_ref})
            assert found.json()["total"] >= 2
            assert (
                await client.get("/assets/vendor/govuk-frontend/govuk-frontend.min.css")
            ).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert (tmp_path / "view.sqlite").exists()


async def test_the_case_view_shows_its_statutory_clocks(played: Played, tmp_path: Path) -> None:
    """The placement notice (start 2 Nov 2026, sent when the test ran) is met late; the initial
    health assessment is due 20 working days after the start, and nobody has asked for it."""
    from broker.policy import calendar

    async with console(played, tmp_path / "view.sqlite") as (_r, client):
        await sign_in(client, "victor")
        answer = (await client.get(f"/api/cases/{played.case_ref}")).json()
        page = (await client.get(f"/cases/{played.case_ref}")).text
    placement = next(m for m in answer["messages"] if m["event_type"] == "PlacementNotified")
    assert placement["facts"] == {"emergency": "false", "start_date": "2026-11-02"}
    clocks = {c["obligation"]: c for c in answer["clocks"]}
    assert set(clocks) == {"placement-notice", "initial-health-assessment"}
    notice = clocks["placement-notice"]
    assert notice["status"] == "MET"
    assert notice["met_by"] == placement["message_id"]
    assert notice["margin_s"] < 0  # sent after the placement started
    health = clocks["initial-health-assessment"]
    due = calendar.working_days_after(dt.date(2026, 11, 2), 20)
    assert health["due_at"] == due.isoformat()
    expected = "OVERDUE" if dt.datetime.now(dt.UTC) > due else "DUE"
    assert health["status"] == expected
    assert health["owed_by"] == ["PLACING_AUTHORITY"]
    assert 'data-obligation="placement-notice" data-status="MET"' in page
    assert "late by" in page


async def test_hostile_queries_get_clear_answers(played: Played, tmp_path: Path) -> None:
    async with console(played, tmp_path / "view.sqlite") as (_r, client):
        await sign_in(client, "victor")
        for params, field in (
            ({"since": "31/02/2026"}, "since"),
            ({"until": "9" * 400}, "until"),
            ({"status": "DELIVERED' OR 1=1 --"}, "status"),
            ({"page": "-"}, "page"),
        ):
            answer = await client.get("/api/messages", params=params)
            assert answer.status_code == 400, params
            assert answer.json()["error"].startswith(field), answer.json()
        # Values that are merely strange find nothing and break nothing.
        for params in (
            {"case_ref": "x" * 10_000},
            {"agency": "la-e10000016' OR '1'='1"},
            {"message_id": "\u0000\ud7ff"},
            {"since": "9999-12-31T23:59:59+00:00"},
            {"until": "0001-01-01T00:00:00+00:00"},
            {"page": "99999999"},
        ):
            answer = await client.get("/api/messages", params=params)
            assert answer.status_code == 200, params
            assert answer.json()["messages"] == [], params
        assert (await client.get("/api/messages/%27%20OR%201%3D1")).status_code == 404
        # A huge form is refused before it is read, and so is one without a length.
        huge = await client.post(
            "/sign-in",
            content=b"a=" + b"x" * 200_000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert huge.status_code == 413

        async def chunks():  # type: ignore[no-untyped-def]
            yield b"username=olive"

        unsized = await client.post(
            "/sign-in",
            content=chunks(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert unsized.status_code == 411
        assert (await client.get("/api/cases/" + "z" * 5000)).json()["messages"] == []
        # The first page of "everything" is not empty, so the filters above did filter, and the
        # calendar's extremes as a range hold all of it.
        everything = (await client.get("/api/messages")).json()["total"]
        assert everything >= 2
        extremes = {"since": "0001-01-01T00:00:00+00:00", "until": "9999-12-31T23:59:59+00:00"}
        assert (await client.get("/api/messages", params=extremes)).json()["total"] == everything


async def test_a_batch_the_view_cannot_store_is_read_again(played: Played, tmp_path: Path) -> None:
    """A failed write (a full disk, say) loses nothing and doubles nothing: the feed goes back to
    the offsets stored with the rows and reads again."""
    from broker.console.feed import Feed
    from broker.console.store import ViewStore
    from broker.schema.catalogue import Catalogue

    class Flaky(ViewStore):
        failures = 2

        def apply_log(self, *args: object, **kwargs: object) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("disk full")
            super().apply_log(*args, **kwargs)  # type: ignore[arg-type]

    store = Flaky(tmp_path / "view.sqlite")
    feed = Feed(played.operator, store, Catalogue.load())
    await feed.start()
    try:
        await feed.sync(timeout_s=60)
    finally:
        await feed.stop()
    assert store.failures == 0
    assert feed.state.failing is None
    entries = await log_entries(played.admin)
    assert store.counts()["entries"] == len(entries)
    assert store.counts()["messages"] == len({e.message_id for e in entries if e.message_id})


async def test_two_sign_in_pages_open_at_once_both_sign_in(played: Played, tmp_path: Path) -> None:
    """A second sign-in page (another tab, a reload, a redirect that crosses a submit) keeps the
    browser's sign-in token, so the form opened first still signs in."""
    async with console(played, tmp_path / "view.sqlite") as (_r, client):
        first = await client.get("/sign-in")
        second = await client.get("/sign-in?next=/escalations")
        assert csrf_of(first.text) == csrf_of(second.text)
        answer = await _olive_signs_in(client, csrf_of(first.text), next="/board")
        assert answer.status_code == 303, answer.text[-2000:]
        assert answer.headers["location"] == "/board"
        # Signed in, the sign-in token is spent: the next sign-in page has a new one.
        assert client.cookies.get("cbx_console_signin") is None
        again = await client.get("/sign-in")
        assert csrf_of(again.text) != csrf_of(first.text)
        # A cookie that is not a token this console made is replaced, never echoed back.
        client.cookies.set("cbx_console_signin", '"><script>', domain="console")
        page = await client.get("/sign-in")
        assert "<script>" not in csrf_of(page.text)
        assert len(csrf_of(page.text)) == 32


async def _olive_signs_in(client: Any, token: str, **more: str) -> Any:
    """The operator's sign-in form, posted with ``token`` as its double-submit token."""
    return await client.post(
        "/sign-in",
        data={"username": "olive", "password": PASSWORDS["olive"], "csrf_token": token, **more},
    )
