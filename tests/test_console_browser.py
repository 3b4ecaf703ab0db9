"""The console and a connector's API docs in a real headless Chromium, on a network where nothing
but this machine answers: sign in, read every page against the delivery log, write a note,
replay a dead letter; screenshots under the test artefacts folder."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from browser import artefacts, chromium, requested_urls, served, wait_for
from console_harness import PASSWORDS, Played, audit_topic, delivery_view
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from broker.console.service import running
from broker.crypto.keys import AgencyKeys
from broker.delivery_log import Status
from broker.kafka import principals
from broker.tracker.view import RecipientState
from connectors.gateway.connector import Connector
from connectors.ingest.http import create_app
from connectors.ingest.idempotency import IdempotencyStore

pytestmark = pytest.mark.kafka
_NONE = RecipientState(Status.ROUTE_GAP)


def only_local(urls: list[str], base: str) -> list[str]:
    """The requests that left this machine's server (data: URLs stay in the page)."""
    return [u for u in urls if not (u.startswith(base + "/") or u.startswith("data:"))]


async def test_an_operator_works_a_case_in_chromium(console_case: Played, tmp_path: Path) -> None:
    import asyncio

    played = console_case
    view = await delivery_view(played.admin)
    in_case = {m.message_id for m in view.messages.values() if m.case_ref == played.case_ref}
    medway = played.case.agencies["medway"]
    shots = artefacts("console")
    board = {
        agency: {
            "sent": sum(1 for m in view.messages.values() if m.sender == agency),
            "routed": sum(
                1 for m in view.messages.values() if "ROUTED" in m.recipients.get(agency, _NONE).at
            ),
            "acknowledged": sum(
                1
                for m in view.messages.values()
                if "ACKNOWLEDGED" in m.recipients.get(agency, _NONE).at
            ),
        }
        for agency in set(played.case.agencies.values())
    }

    @asynccontextmanager
    async def app() -> AsyncIterator[Any]:
        async with running(played.operator, tmp_path / "view.sqlite", played.accounts) as r:
            yield r.app

    def drive() -> list[str]:
        with served(app) as base:
            browser = chromium()
            try:
                return _session(browser, base, played, in_case, medway, shots, board)
            finally:
                browser.quit()

    leaving = await asyncio.to_thread(drive)
    assert leaving == []
    replays = [a for a in await audit_topic(played.admin) if a.action == "replay"]
    assert ("olive", "DONE") in [(a.actor, a.outcome) for a in replays]
    for name in (
        "sign-in",
        "board",
        "escalations",
        "trace",
        "search",
        "case",
        "dead-letters",
        "agencies",
        "audit",
    ):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name


def _session(
    browser: Any,
    base: str,
    played: Played,
    in_case: set[str],
    medway: str,
    shots: Path,
    board: dict[str, dict[str, int]],
) -> list[str]:
    def shot(name: str) -> None:
        browser.save_screenshot(str(shots / f"{name}.png"))

    def find(css: str) -> Any:
        return wait_for(lambda: browser.find_element(By.CSS_SELECTOR, css), what=css)

    # Signing in: the first Tab reaches the skip link; every field has its label.
    browser.get(base + "/board")
    wait_for(lambda: "/sign-in" in browser.current_url, what="the sign-in page")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("class") == "govuk-skip-link"
    for field in browser.find_elements(By.CSS_SELECTOR, "input:not([type=hidden])"):
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for={field.get_attribute('id')}]")
    find("#username").send_keys("olive")
    find("#password").send_keys(PASSWORDS["olive"])
    shot("sign-in")
    find("#sign-in").click()
    # The submit is a navigation of its own: wait for it to land before going anywhere else,
    # or a second navigation can cross it.
    wait_for(lambda: "/sign-in" not in browser.current_url, what="the sign-in to complete")
    assert find("#signed-in-as").text == "olive"

    # The board (over the week): each agency's numbers as the delivery log has them.
    browser.get(base + "/board?window=week")
    row = find(f"tr[data-agency='{medway}']")
    assert row.find_element(By.CSS_SELECTOR, "[data-col=escalated]").text == "1"
    for agency, numbers in board.items():
        cells = find(f"tr[data-agency='{agency}']")
        for col, n in numbers.items():
            assert cells.find_element(By.CSS_SELECTOR, f"[data-col={col}]").text == str(n), (
                agency,
                col,
            )
    assert find("#signed-in-as").text == "olive"
    wait_for(
        lambda: int(find("#board").get_attribute("data-refreshed") or 0) >= 1,
        timeout_s=15,
        what="the board to refresh without a reload",
    )
    assert "govuk-frontend-supported" in find("body").get_attribute("class")
    shot("board")

    # Escalations: the silent recipient, with the deadline passed.
    browser.get(base + "/escalations")
    escalated = find(f"tr[data-recipient='{medway}']")
    assert "IMMEDIATE" in escalated.text
    message_id = escalated.get_attribute("data-message")
    shot("escalations")

    # The trace: the sharing decision, each recipient's state, and a note written here.
    escalated.find_element(By.CSS_SELECTOR, "a").click()
    wait_for(lambda: message_id in browser.current_url, what="the trace")
    assert find("#sharing-purpose").text == "safeguard a looked-after child"
    assert find("#sharing-decider").text == "Registered manager"
    state = find(f"tr[data-recipient='{medway}'] [data-col=status]").text
    assert state == "ESCALATED"
    note = "Rang Medway out-of-hours team; they confirmed receipt"
    find("#note").send_keys(note)
    find("#add-note").click()
    wait_for(lambda: note in find("#notes-list").text, what="the note on the trace")
    shot("trace")

    # Search by case: exactly the case's messages in the delivery log.
    browser.get(base + "/messages")
    find("#case_ref").send_keys(played.case_ref)
    find("#search-button").click()
    wait_for(lambda: "case_ref=" in browser.current_url, what="the search")
    shown = {
        r.get_attribute("data-message")
        for r in browser.find_elements(By.CSS_SELECTOR, "#messages-table tbody tr")
    }
    assert shown == in_case
    assert find("#result-count").text.startswith(f"{len(in_case)} message")
    shot("search")

    # The case view, in time order, with its CSV link.
    browser.get(base + "/cases")
    find("#case_ref").send_keys(played.case_ref + Keys.ENTER)
    wait_for(lambda: "/cases/" in browser.current_url, what="the case page")
    rows = browser.find_elements(By.CSS_SELECTOR, "#case-table tbody tr")
    assert {r.get_attribute("data-message") for r in rows} == in_case
    assert find("#case-csv").get_attribute("href").endswith("/chronology.csv")
    shot("case")

    # Dead letters: the refused record, replayed after confirming.
    browser.get(base + "/dead-letters")
    find(f"tr[data-dead-letter='{played.dead_letter}']")
    shot("dead-letters")
    browser.get(base + f"/dead-letters/{played.dead_letter}/replay")
    find("#replay-button").click()  # not confirmed: refused, nothing replayed
    assert "Confirm the replay" in find("#refusal").text
    browser.get(base + f"/dead-letters/{played.dead_letter}/replay")
    find("label[for=confirm]").click()
    find("#replay-button").click()
    wait_for(
        lambda: "by olive" in find(f"tr[data-dead-letter='{played.dead_letter}']").text,
        what="the replay shown",
    )

    # The directory, and the audit trail of this session.
    browser.get(base + "/agencies")
    assert re.search(r"\d+ days", find(f"[data-agency='{medway}']").text)
    shot("agencies")
    browser.get(base + "/audit")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-action=note]"), what="note")
    shot("audit")
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    # The one error expected: the unconfirmed replay's answer, 400.
    assert [e for e in errors if "/replay - " not in e or "status of 400" not in e] == []
    assert len(errors) == 1
    return only_local(requested_urls(browser), base)


async def test_connector_api_docs_load_with_no_internet(tmp_path: Path, kafka_ns: Any) -> None:
    """Swagger UI is served by the connector itself: on a closed network the page renders."""
    import asyncio

    conn = Connector(
        principals.settings_for(kafka_ns, "la-e10000016"), AgencyKeys.new("la-e10000016")
    )

    @asynccontextmanager
    async def app() -> AsyncIterator[Any]:
        yield create_app(conn, IdempotencyStore(tmp_path / "idem.jsonl"))

    def drive() -> tuple[str, list[str]]:
        with served(app) as base:
            browser = chromium()
            try:
                browser.get(base + "/docs")
                title = wait_for(
                    lambda: browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text,
                    what="Swagger UI to render",
                )
                wait_for(
                    lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock-tag"),
                    what="the operations",
                )
                browser.save_screenshot(str(artefacts("connector") / "docs.png"))
                return title, only_local(requested_urls(browser), base)
            finally:
                browser.quit()

    title, leaving = await asyncio.to_thread(drive)
    assert "cbx connector for la-e10000016" in title
    assert leaving == []
