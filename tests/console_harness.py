"""A played case for the console's tests: one scenario on the real broker (an escalation among
its deliveries), one dead letter the router refused, and two console accounts."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from broker import model
from broker.admin import provision
from broker.console.auth import Accounts, Role, Sessions
from broker.console.feed import ActionCodec
from broker.console.service import Running, running
from broker.delivery_log import LogCodec, LogEntry
from broker.kafka import clients as kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.router import deadletter
from broker.router.service import RouterService
from broker.schema.catalogue import Catalogue
from broker.tracker.view import DeliveryView
from cbx.scenarios import audit, runner, spec

CATALOGUE = Catalogue.load()
SCENARIO = spec.scenarios_dir() / "expected-escalation.yaml"
PASSWORDS = {"olive": "operator password 1", "victor": "viewer password 22"}


@dataclass
class Played:
    case: spec.Scenario
    report: dict[str, Any]
    admin: KafkaSettings
    operator: KafkaSettings
    accounts: Accounts
    secrets: set[str]
    dead_letter: str
    case_ref: str
    """As the exchange names it: the placing authority's id, a slash, the reference it sent."""


async def _dead_letter(ns: KafkaSettings, agency: str) -> str:
    """A record no reader can parse, on ``agency``'s outbound topic; the router refuses it."""
    producer = kafka.producer(ns)
    await producer.start()
    try:
        await producer.send_and_wait(ns.topics.outbound(agency), b"\x00not an envelope", key=b"k")
    finally:
        await producer.stop()
    router = RouterService(principals.settings_for(ns, model.ROUTER))
    task = asyncio.create_task(router.run())
    try:
        for _ in range(300):
            found = await deadletter.list_dead_letters(ns)
            if found:
                return found[-1].id
            await asyncio.sleep(0.2)
        raise AssertionError("the router wrote no dead letter")
    finally:
        router.stop_event.set()
        await task


def play(admin: KafkaSettings, folder: Path) -> Played:
    case = spec.load(SCENARIO)
    report = asyncio.run(runner.run(admin, case))
    assert report["ok"], report["failures"]
    ns = admin.with_prefix(report["namespace"])
    dead = asyncio.run(_dead_letter(ns, case.agencies["home"]))
    asyncio.run(provision.ensure_service(ns, model.OPERATOR, grant=True))
    accounts = Accounts(folder / "accounts.json")
    accounts.add("olive", PASSWORDS["olive"], Role.OPERATOR)
    accounts.add("victor", PASSWORDS["victor"], Role.VIEWER)
    requests = [(s.event_type, s.request) for s in case.steps if s.event_type]
    secrets = {
        v
        for v in audit.sensitive_values(CATALOGUE, requests)
        if "${" not in v  # type: ignore[arg-type]
    }
    assert len(secrets) >= 5
    first = asyncio.run(delivery_view(ns)).messages[report["messages"][0]["message_id"]]
    assert first.case_ref
    return Played(
        case,
        report,
        ns,
        principals.settings_for(ns, model.OPERATOR),
        accounts,
        secrets,
        dead,
        first.case_ref,
    )


@asynccontextmanager
async def console(
    played: Played, db: Path, sessions: Sessions | None = None
) -> AsyncIterator[tuple[Running, httpx.AsyncClient]]:
    async with running(played.operator, db, played.accounts, sessions, lag_every_s=0.5) as r:
        transport = httpx.ASGITransport(app=r.app, client=("10.1.2.3", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            yield r, client


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = _CSRF.search(html)
    assert m, "no CSRF token in the page"
    return m.group(1)


async def sign_in(client: httpx.AsyncClient, name: str, password: str | None = None) -> str:
    """Signs in; the session's CSRF token (from the board's sign-out form)."""
    form = await client.get("/sign-in")
    answer = await client.post(
        "/sign-in",
        data={
            "username": name,
            "password": password if password is not None else PASSWORDS[name],
            "csrf_token": csrf_of(form.text),
            "next": "/board",
        },
    )
    assert answer.status_code == 303, answer.text[-2000:]
    board = await client.get("/board")
    assert board.status_code == 200
    return csrf_of(board.text)


async def log_entries(ns: KafkaSettings) -> list[LogEntry]:
    codec = LogCodec(CATALOGUE)
    out: list[LogEntry] = []
    await kafka.read_to_end(
        ns, ns.topics.delivery_log, lambda r: out.extend(codec.entries(r.value))
    )
    return out


async def delivery_view(ns: KafkaSettings) -> DeliveryView:
    view = DeliveryView()
    for e in await log_entries(ns):
        view.apply(e)
    return view


async def audit_topic(ns: KafkaSettings) -> list[Any]:
    """Every operator action on the audit topic itself (not the console's view of it)."""
    codec = ActionCodec(CATALOGUE)
    out: list[Any] = []
    await kafka.read_to_end(ns, ns.topics.audit, lambda r: out.append(codec.decode(r.value)))
    return out
