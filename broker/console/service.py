"""``cbx console``: the view, the feed, the lag sampler and the web server in one process."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker import env
from broker.errors import ConfigurationError
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger
from broker.paths import cbx_home
from broker.router import deadletter
from broker.schema.catalogue import Catalogue

from .app import Console, create_app
from .auth import Accounts, Sessions
from .feed import AuditLog, Feed, GroupLag, lags
from .oidc import OidcSettings
from .store import ViewStore

log = get_logger("console")


def database_path(settings: KafkaSettings) -> Path:
    """``CBX_CONSOLE_DATABASE_URL`` (``sqlite:///path``), or one file per namespace under
    ``$CBX_HOME/console``."""
    url = env.get("CBX_CONSOLE_DATABASE_URL")
    if not url:
        return cbx_home() / "console" / f"view-{settings.topic_prefix}.sqlite"
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    raise ConfigurationError(
        f"CBX_CONSOLE_DATABASE_URL: only sqlite:///PATH is supported, not {url.split(':')[0]}"
    )


def accounts_file() -> Path:
    raw = env.get("CBX_CONSOLE_ACCOUNTS")
    return Path(raw) if raw else cbx_home() / "console" / "accounts.json"


@dataclass
class Running:
    console: Console
    feed: Feed
    app: Any


@asynccontextmanager
async def running(
    settings: KafkaSettings,
    db: Path | str,
    accounts: Accounts,
    sessions: Sessions | None = None,
    lag_every_s: float = 10.0,
    secure_cookies: bool = False,
    oidc: OidcSettings | None = None,
) -> AsyncIterator[Running]:
    """The console's parts started (the view caught up with its topics), and stopped after."""
    catalogue = Catalogue.load()
    store = ViewStore(db)
    feed = Feed(settings, store, catalogue)
    audit = AuditLog(settings, store, catalogue)
    lag_now: dict[str, GroupLag] = {}

    async def sample() -> None:
        while True:
            agencies = [a["agency"] for a in store.directory() if a["kind"] != "SERVICE"]
            try:
                fresh = await lags(settings, agencies)
                now = time.time()
                for name, g in fresh.items():
                    before = lag_now.get(name)
                    # A group's last commit, as far as the console saw it happen.
                    if before is None:
                        g.progressed_at = None
                    elif before.committed != g.committed:
                        g.progressed_at = now
                    else:
                        g.progressed_at = before.progressed_at
                lag_now.clear()
                lag_now.update(fresh)
            except Exception as exc:
                log.warning("console_lag_failed", error_class=type(exc).__name__)
            await asyncio.sleep(lag_every_s)

    async def replay(dead_letter_id: str, operator: str) -> Any:
        return await deadletter.replay(settings, dead_letter_id, by=operator)

    console = Console(
        settings=settings,
        store=store,
        audit=audit,
        accounts=accounts,
        sessions=sessions or Sessions(),
        feed=feed.state,
        replay=replay,
        secure_cookies=secure_cookies,
        lag=lambda: dict(lag_now),
        oidc=oidc,
    )
    await audit.start()
    await feed.start()
    sampler: asyncio.Task[None] | None = None
    try:
        await feed.sync(timeout_s=600)
        sampler = asyncio.create_task(sample(), name="console lag")
        yield Running(console, feed, create_app(console))
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sampler
        await feed.stop()
        await audit.stop()
        store.close()


async def serve(
    settings: KafkaSettings,
    host: str,
    port: int,
    idle_minutes: float = 30,
    secure_cookies: bool = False,
    oidc: OidcSettings | None = None,
) -> None:
    import uvicorn

    db = database_path(settings)
    accounts = Accounts(accounts_file())
    if not accounts.list() and oidc is None:
        raise ConfigurationError(
            "no console account yet: add one with cbx console user add NAME --role operator"
            " (or sign operators in through --oidc-issuer)"
        )
    sessions = Sessions(idle=dt.timedelta(minutes=idle_minutes))
    async with running(
        settings, db, accounts, sessions, secure_cookies=secure_cookies, oidc=oidc
    ) as r:
        log.info("console_started", url=f"http://{host}:{port}/", view=str(db))
        server = uvicorn.Server(
            uvicorn.Config(r.app, host=host, port=port, log_level="warning", access_log=False)
        )
        # uvicorn stops on SIGTERM and then raises the signal again for the handler it found:
        # with this one in place the console stops its feed and exits 0, as a supervisor expects.
        previous = signal.signal(signal.SIGTERM, lambda *_: None)
        try:
            await server.serve()
        finally:
            signal.signal(signal.SIGTERM, previous)
        log.info("console_stopped")
