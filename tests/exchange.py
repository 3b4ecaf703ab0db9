"""A whole exchange on the real broker for integration tests: a router process and connectors.

Each test gets its own topic namespace, so tests share the session broker without seeing each
other's messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agencies import SHARING
from aiokafka import TopicPartition

from broker import model
from broker.admin import provision
from broker.crypto.keys import AgencyKeys
from broker.delivery_log import LogCodec, LogEntry
from broker.directory import AgencyEntry, publish
from broker.envelope import EnvelopeCodec, Header
from broker.kafka import clients as kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.policy.profiles import directory_kind
from broker.router.deadletter import DeadLetter, list_dead_letters
from broker.schema.catalogue import Catalogue
from connectors.gateway.connector import Connector

CATALOGUE = Catalogue.load()
ENVELOPES = EnvelopeCodec(CATALOGUE)
LOGS = LogCodec(CATALOGUE)


class RouterProcess:
    """``cbx router`` as a child process, with its log kept for failures."""

    def __init__(
        self,
        settings: KafkaSettings,
        home: Path,
        metrics_port: int | None = None,
        name: str = "router",
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.home = home
        self.metrics_port = metrics_port
        self.name = name
        #: Its CBX_ROUTER_INSTANCE (its name unless given).
        self.instance = instance or name
        self.log_path = home / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: Killed or stopped by the test (not exited by itself) and not started since.
        self.killed = False

    def start(self) -> None:
        router = principals.settings_for(self.settings, model.ROUTER)
        env = {
            **os.environ,
            **router.to_env(),
            "CBX_HOME": str(self.home),
            "CBX_LOG_FORMAT": "json",
            "CBX_ROUTER_INSTANCE": self.instance,
        }
        args = [sys.executable, "-m", "cbx.cli", "router"]
        if self.metrics_port is not None:
            args += ["--metrics-port", str(self.metrics_port)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1
        self.killed = False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.killed = True

    def terminate(self, timeout: float = 60) -> int:
        """Stop it as an operator does (SIGTERM): the test's doing, like a kill."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.killed = True
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Exchange:
    settings: KafkaSettings
    home: Path
    router: RouterProcess
    connectors: dict[str, Connector] = field(default_factory=dict)
    #: Further router instances in the same group (``add_router``).
    more_routers: list[RouterProcess] = field(default_factory=list)

    def add_router(self, instance: str | None = None) -> RouterProcess:
        """Start another ``cbx router`` in the router's group: the instances share the outbound
        partitions. (``instance``: its CBX_ROUTER_INSTANCE, if not its own name.)"""
        extra = RouterProcess(
            self.settings,
            self.home,
            name=f"router-{len(self.more_routers) + 2}",
            instance=instance,
        )
        extra.start()
        self.more_routers.append(extra)
        return extra

    def owner_of(self, partition: str) -> RouterProcess:
        """The router instance that last committed a batch of ``partition`` ("topic/n")."""
        last: tuple[str, RouterProcess] | None = None
        for router in (self.router, *self.more_routers):
            for line in router.log_text().splitlines():
                if '"batch_committed"' in line and f'"{partition}"' in line:
                    at = json.loads(line).get("timestamp", "")
                    if last is None or at >= last[0]:
                        last = (at, router)
        assert last is not None, f"no router has committed a batch of {partition}"
        return last[1]

    async def agency(
        self, agency: str, *, publish_keys: bool = True, inbox: bool = False, sink: Any = None
    ) -> Connector:
        """Provision an agency (principal, topics, ACLs) and start its connector as itself."""
        await provision.add_agency(self.settings, agency)
        keys = AgencyKeys.new(agency)
        conn = Connector(principals.settings_for(self.settings, agency), keys)
        await conn.start()
        if publish_keys:
            await self.publish_keys(conn)
        if inbox:
            conn.start_inbox(sink)
        self.connectors[agency] = conn
        return conn

    async def agencies(self, agencies: list[str]) -> None:
        """Provision and start every agency in ``agencies``, then let each see the others."""
        for agency in agencies:
            await self.agency(agency)
        await self.sync_all()

    async def publish_keys(self, conn: Connector) -> None:
        entry = AgencyEntry.from_keys(conn.keys, conn.agency, directory_kind(conn.agency))
        await publish(self.settings, entry)

    async def wait_registered(self, agency: str, case_ref: str) -> None:
        """Until ``agency``'s connector sees ``case_ref`` in the placement registry."""
        conn = self.connectors[agency]

        async def registered() -> bool:
            await conn.sync()
            return conn.registry.get(case_ref) is not None

        await self.wait_for(registered, what=f"{case_ref} in {agency}'s placement registry")

    async def wait_party(self, agency: str, case_ref: str, party: str) -> None:
        """Until ``agency``'s connector sees ``party`` among the parties in force of the case."""
        conn = self.connectors[agency]

        async def in_force() -> bool:
            await conn.sync()
            case = conn.registry.get(case_ref)
            return case is not None and party in case.parties.values()

        await self.wait_for(in_force, what=f"{party} a party of {case_ref} for {agency}")

    async def report_missing(self, host_force: str, case_ref: str) -> Any:
        """The host force reports the child of ``case_ref`` missing (IMMEDIATE)."""
        from agencies import body_of

        await self.wait_registered(host_force, case_ref)
        return await self.connectors[host_force].send(
            "ChildMissingReported",
            body_of("ChildMissingReported"),
            case_ref=case_ref,
            sharing=SHARING,
            urgency="IMMEDIATE",
        )

    async def sync_all(self) -> None:
        for c in self.connectors.values():
            await c.sync()

    async def inbox(self, agency: str) -> list[tuple[Header, Any]]:
        """Everything committed to an agency's inbox, decoded (header only)."""
        out: list[tuple[Header, Any]] = []

        def handle(r: Any) -> None:
            header, _ = ENVELOPES.decode(r.value)
            out.append((header, r))

        await kafka.read_to_end(self.settings, self.settings.topics.inbox(agency), handle)
        return out

    async def log(self) -> list[LogEntry]:
        out: list[LogEntry] = []
        await kafka.read_to_end(
            self.settings,
            self.settings.topics.delivery_log,
            lambda r: out.extend(LOGS.entries(r.value)),
        )
        return out

    async def dead_letters(self) -> list[DeadLetter]:
        return await list_dead_letters(self.settings)

    async def uncommitted_count(self, topic: str) -> int:
        """Records on ``topic`` including those of open or aborted transactions (diagnostics)."""
        c = kafka.consumer(self.settings, group_id=None, isolation_level="read_uncommitted")
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in await kafka.partitions(self.settings, topic)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            n = 0
            while True:
                batch = await c.getmany(timeout_ms=1000)
                if not batch:
                    return n
                n += sum(len(v) for v in batch.values())
        finally:
            await c.stop()

    async def wait_for(self, predicate: Any, within_s: float = 60, what: str = "condition") -> Any:
        deadline = time.monotonic() + within_s
        while True:
            result = await predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                tail = self.router.log_text()[-6000:]
                raise AssertionError(f"timed out waiting for {what}\n--- router log ---\n{tail}")
            if not self.router.alive() and self.router.starts and not self.router.killed:
                raise AssertionError(f"router exited\n{self.router.log_text()[-6000:]}")
            await asyncio.sleep(0.3)

    async def router_progress(self) -> tuple[int, int]:
        """(records the router has committed, records on outbound topics), from offsets only."""
        admin = kafka.admin(self.settings)
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(
                self.settings.topics.group("router")
            )
            topics = [
                t
                for t in await admin.list_topics()
                if t.startswith(self.settings.topics.outbound_prefix)
            ]
        finally:
            await admin.close()
        c = kafka.consumer(self.settings, group_id=None)
        await c.start()
        try:
            tps = [
                TopicPartition(t, p)
                for t in topics
                for p in await kafka.partitions(self.settings, t)
            ]
            ends = await c.end_offsets(tps) if tps else {}
        finally:
            await c.stop()
        done = sum(m.offset for tp, m in committed.items() if tp in ends and m.offset >= 0)
        return done, sum(ends.values())

    async def inbox_ids(self, agency: str) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for header, _ in await self.inbox(agency):
            counts[str(header.message_id)] += 1
        return counts


@asynccontextmanager
async def exchange(
    settings: KafkaSettings,
    home: Path,
    *,
    start_router: bool = True,
    metrics_port: int | None = None,
) -> AsyncIterator[Exchange]:
    saved = os.environ.get("CBX_HOME")
    os.environ["CBX_HOME"] = str(home)  # credentials and keystores of this exchange
    await provision.setup(settings)
    router = RouterProcess(settings, home, metrics_port)
    ex = Exchange(settings, home, router)
    if start_router:
        router.start()
    try:
        yield ex
    finally:
        for c in ex.connectors.values():
            await c.stop()
        for r in (router, *ex.more_routers):
            if r.alive():
                r.terminate()
        if saved is None:
            os.environ.pop("CBX_HOME", None)
        else:
            os.environ["CBX_HOME"] = saved


__all__ = ["SHARING", "Exchange", "exchange"]
