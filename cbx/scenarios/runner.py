"""Scenarios: a case written as YAML, played through the whole exchange on a real broker.

A scenario names its agencies and lists steps; each step is one agency's system posting one
message to its connector's HTTP ingest, exactly as an agency would (the same request body), and a
later step can use what an earlier one produced. The runner provisions a private topic namespace,
runs the router, the tracker and one connector per agency (each as its own Kafka principal), plays
the steps, waits for every recipient to have each message (and acknowledge it, unless the step says
otherwise), and reports, per message, who received it, when, and whether they acknowledged; every
route gap and rejection; and whether any of the case's sensitive values appear in clear on any
topic. The format is documented in ``docs/scenarios.md``; ``cbx demo`` is the shipped scenario
``out-of-area-missing.yaml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from broker import model
from broker.admin import provision
from broker.crypto.keys import AgencyKeys
from broker.delivery_log import LogCodec, Status
from broker.errors import PolicyError
from broker.files import write_private
from broker.kafka import clients as kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.policy.obligations import Clock, shortened
from broker.policy.routing import rules
from broker.router.service import RouterService
from broker.schema.catalogue import Catalogue
from broker.tracker.service import TrackerService
from cbx.scenarios.audit import plaintext_scan, sensitive_values
from cbx.scenarios.report import Played, build_report
from cbx.scenarios.spec import ClockExpectation, Context, Scenario, ScenarioError, StepSpec
from connectors.gateway.connector import Connector
from connectors.gateway.inbox import Delivered
from connectors.ingest.http import create_app
from connectors.ingest.idempotency import IdempotencyStore


class Runner:
    """Plays one scenario on a broker, in its own namespace, with every part running."""

    def __init__(
        self,
        admin: KafkaSettings,
        scenario: Scenario,
        progress: Callable[[str], None] = lambda _s: None,
    ) -> None:
        self.scenario = scenario
        self.progress = progress
        self.ns = admin.with_prefix(f"scn{uuid.uuid4().hex[:8]}")
        self.played: list[Played] = []
        self.by_id: dict[str, Played] = {}
        self.connectors: dict[str, Connector] = {}
        self.failures: list[str] = []
        self._acks: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        #: Overdue-obligation reminders: clock id -> agency -> when it arrived / was acknowledged.
        self.reminded: dict[str, dict[str, float]] = {}
        self.reminder_acks: dict[str, dict[str, float]] = {}
        self._reminder_clock: dict[str, str] = {}
        # Every alias of each agency: two aliases may name one agency (one ICB for two areas).
        self._aliases: dict[str, set[str]] = {}
        for alias, agency in scenario.agencies.items():
            self._aliases.setdefault(agency, set()).add(alias)

    def _acknowledges(self, spec: StepSpec, agency: str) -> bool:
        """Whether ``agency`` acknowledges this step's message (by any of its aliases)."""
        acks = spec.acknowledge
        return acks is None or bool(self._aliases.get(agency, set()) & set(acks))

    def _sink(self, agency: str) -> Any:
        async def sink(d: Delivered) -> None:
            if d.header.event_type == model.OBLIGATION_OVERDUE:
                # The exchange's reminder: every agency's system acknowledges it at once.
                clock_id = str(d.body.get("clock_id"))
                self.reminded.setdefault(clock_id, {}).setdefault(agency, time.perf_counter())
                self._reminder_clock[str(d.header.message_id)] = clock_id
                await self._acks.put((agency, str(d.header.message_id)))
                return
            p = self.by_id.get(str(d.header.message_id))
            if p is None:
                return
            p.received.setdefault(agency, time.perf_counter())
            if self._acknowledges(p.spec, agency):
                await self._acks.put((agency, str(d.header.message_id)))

        return sink

    async def _acknowledger(self) -> None:
        # The agency's system confirms at once (in life, a person reads it first).
        while True:
            agency, message_id = await self._acks.get()
            try:  # waits, if need be, for the connector to record the delivery
                await self.connectors[agency].acknowledge(message_id)
            except PolicyError as exc:
                self.failures.append(f"{agency} could not acknowledge {message_id}: {exc}")
                continue
            p = self.by_id.get(message_id)
            if p is not None:
                p.acknowledged.setdefault(agency, time.perf_counter())
            clock_id = self._reminder_clock.get(message_id)
            if clock_id is not None:
                acks = self.reminder_acks.setdefault(clock_id, {})
                acks.setdefault(agency, time.perf_counter())

    async def run(self) -> dict[str, Any]:
        sc = self.scenario
        self.progress(f"{sc.name}: namespace {self.ns.topic_prefix}, topics, principals and ACLs")
        await provision.setup(self.ns)
        for agency in dict.fromkeys(sc.agencies.values()):
            await provision.add_agency(self.ns, agency)
            keys = AgencyKeys.new(agency)
            await provision.publish_agency_keys(self.ns, keys)
            self.connectors[agency] = Connector(principals.settings_for(self.ns, agency), keys)
        for conn in self.connectors.values():
            await conn.start()
            conn.start_inbox(self._sink(conn.agency))
        self.progress(f"{len(self.connectors)} agencies connected, each as its own principal")
        router = RouterService(principals.settings_for(self.ns, model.ROUTER), windows=sc.windows)
        tracker = TrackerService(
            principals.settings_for(self.ns, model.TRACKER),
            check_every_s=0.5,
            obligations=shortened(sc.limits),
        )
        self.tracker = tracker
        tasks = [
            asyncio.create_task(router.run(), name="router"),
            asyncio.create_task(tracker.run(), name="tracker"),
        ]
        ack_task = asyncio.create_task(self._acknowledger(), name="acknowledger")
        with tempfile.TemporaryDirectory(prefix="cbx-scenario-") as tmp:
            clients = {
                agency: httpx.AsyncClient(
                    transport=httpx.ASGITransport(
                        app=create_app(conn, IdempotencyStore(Path(tmp) / f"{agency}.jsonl"))
                    ),
                    base_url=f"http://{agency}.connector",
                )
                for agency, conn in self.connectors.items()
            }
            try:
                context = Context(sc)
                for spec in sc.steps:
                    if spec.event_type is None:
                        self.progress(f"{spec.title}: waiting {spec.pause_s:.0f} s")
                        await asyncio.sleep(spec.pause_s)
                        continue
                    await self._play(spec, context, clients)
                await self._clocks(tracker)
            finally:
                for c in clients.values():
                    await c.aclose()
                ack_task.cancel()
                router.stop_event.set()
                await tasks[0]
                for conn in self.connectors.values():
                    await conn.stop()
        await self._settle(router.catalogue)
        await self._escalations(router.catalogue)
        tracker.stop_event.set()
        await tasks[1]
        return await self._report(router.catalogue)

    async def export_chronologies(self, folder: Path) -> list[Path]:
        """Each agency's chronology of each case played (JSON, CSV and a printable page), and
        the merged multi-agency chronology of each case, under ``folder/<case>/``. Run after
        :meth:`run`, with the agencies' keys still in hand."""
        from connectors.gateway.chronology import merge, merged_csv, to_csv, to_html

        written: list[Path] = []
        refs = {str(p.request.get("case_ref")) for p in self.played if p.message_id}
        exports: dict[str, list[dict[str, Any]]] = {}
        with tempfile.TemporaryDirectory(prefix="cbx-chronology-") as tmp:
            for agency, old in self.connectors.items():
                conn = Connector(
                    principals.settings_for(self.ns, agency), old.keys, state_dir=Path(tmp) / agency
                )
                await conn.start()
                try:
                    await conn.sync()
                    for ref in sorted(refs):
                        found = conn.registry.get(ref)
                        case = found.case_ref if found else ref
                        try:
                            doc = await conn.chronologies.chronology(case)
                        except PolicyError:  # this agency took no part in the case
                            continue
                        exports.setdefault(case, []).append(doc)
                finally:
                    await conn.stop()
        for case, docs in sorted(exports.items()):
            where = folder / "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in case)
            # The case's content, as each agency may read it: this user's alone (0600 in 0700).
            for doc in docs:
                for ext, text in (
                    ("json", json.dumps(doc, indent=2)),
                    ("csv", to_csv(doc)),
                    ("html", to_html(doc)),
                ):
                    written.append(write_private(where / f"{doc['agency']}.{ext}", text))
            merged = merge(docs)
            for ext, text in (("csv", merged_csv(merged)), ("html", to_html(merged))):
                written.append(write_private(where / f"merged.{ext}", text))
        self.progress(f"chronologies of {len(exports)} case(s) written under {folder}")
        return written

    async def _play(self, spec: StepSpec, context: Context, clients: dict[str, Any]) -> None:
        sc = self.scenario
        request = context.resolve(spec.request, f"steps.{spec.id}.request")
        if not isinstance(request, dict):
            raise ScenarioError(f"{sc.source}: steps.{spec.id}.request must be a mapping")
        assert spec.event_type is not None
        sender = sc.agencies[spec.sender]
        conn = self.connectors[sender]
        case_ref = request.get("case_ref")
        registered_earlier = any(
            p.message_id and p.request.get("case_ref") == case_ref for p in self.played
        )
        if registered_earlier and not rules().rule(spec.event_type).registers_placement:
            await self._until(
                lambda: _synced_has(conn, str(case_ref)), 30, f"{case_ref} known to {sender}"
            )
        sent_at = time.perf_counter()
        key = f"{self.ns.topic_prefix}-{spec.id}"
        resp = await clients[sender].post(
            f"/v1/events/{spec.event_type}", json=request, headers={"Idempotency-Key": key}
        )
        answer = resp.json()
        p = Played(spec, request, sent_at, resp.status_code, answer)
        self.played.append(p)
        context.values["steps"][spec.id] = {
            "status_code": resp.status_code,
            "request": request,
            **answer,
        }
        if resp.status_code != 202:
            if spec.outcome == "accepted":
                self.failures.append(
                    f"{spec.id}: {spec.event_type} from {spec.sender} was refused "
                    f"({resp.status_code}): {_errors_text(answer)}"
                )
            elif spec.refused_because and spec.refused_because not in _errors_text(answer):
                self.failures.append(
                    f"{spec.id}: refused, but not because {spec.refused_because!r}: "
                    f"{_errors_text(answer)}"
                )
            self.progress(f"{spec.title}: refused ({resp.status_code})")
            return
        if spec.outcome == "rejected":
            self.failures.append(f"{spec.id}: expected a rejection, but it was accepted")
        p.message_id = answer["message_id"]
        p.recipients = [(r["agency"], r["role"]) for r in answer["recipients"]]
        self.by_id[answer["message_id"]] = p
        got = {a for a, _ in p.recipients}
        for alias in spec.recipients:
            if sc.agencies[alias] not in got:
                self.failures.append(
                    f"{spec.id}: required recipient {alias} ({sc.agencies[alias]}) was not "
                    "among the recipients"
                )
        for alias in spec.not_recipients:
            if sc.agencies[alias] in got:
                self.failures.append(f"{spec.id}: {alias} received it and must not have")
        unknown = got - set(self.connectors)
        for agency in sorted(unknown):
            self.failures.append(f"{spec.id}: recipient {agency} is not one of the agencies")

        def done() -> bool:
            wanted_acks = {a for a in got if self._acknowledges(p.spec, a)} - unknown
            return got - unknown <= set(p.received) and wanted_acks <= set(p.acknowledged)

        try:
            await self._until(done, sc.wait_s, f"{spec.id} delivered")
        except TimeoutError:
            for agency in sorted(got - unknown - set(p.received)):
                self.failures.append(
                    f"{spec.id}: {spec.event_type} did not reach {agency} within {sc.wait_s:.0f} s"
                )
        self.progress(
            f"{spec.title}: delivered to {len(p.received)}/{len(got)}, "
            f"acknowledged by {len(p.acknowledged)}"
        )

    def _clock_of(self, tracker: TrackerService, e: ClockExpectation) -> Clock | None:
        p = next((p for p in self.played if p.spec.id == e.step), None)
        started_by = p.message_id if p else None
        return next(
            (
                c
                for c in tracker.obligations.clocks.clocks.values()
                if c.obligation.id == e.obligation and c.started_by == started_by
            ),
            None,
        )

    async def _clocks(self, tracker: TrackerService) -> None:
        """``obligations.expect``: each clock MET with no reminder (checked once its limit has
        passed), or OVERDUE with its reminder received and acknowledged by the agencies named."""
        sc = self.scenario
        for e in sc.clocks:
            what = f"obligations: {e.obligation} started by {e.step}"
            try:
                await self._until(partial(self._clock_of, tracker, e), sc.wait_s, what)
            except TimeoutError:
                self.failures.append(f"{what}: no such clock was started")
                continue
            clock = self._clock_of(tracker, e)
            assert clock is not None
            wanted = {sc.agencies[a] for a in e.notified}

            def settled(
                clock: Clock = clock, wanted: set[str] = wanted, e: ClockExpectation = e
            ) -> bool:
                if e.status == "MET":
                    # Met before its limit: no reminder can follow. Met after it: give the
                    # tracker a moment to have sent one, wrongly.
                    now = dt.datetime.now(dt.UTC)
                    grace = clock.due_at + dt.timedelta(seconds=1.5)
                    return clock.met_by is not None and not (clock.due_at <= now <= grace)
                return clock.overdue_at is not None and wanted <= set(
                    self.reminder_acks.get(clock.id, {})
                )

            with contextlib.suppress(TimeoutError):  # what is missing is reported below
                wait = max(sc.wait_s, (clock.due_at - dt.datetime.now(dt.UTC)).total_seconds() + 5)
                await self._until(settled, wait, what)
            told = set(self.reminded.get(clock.id, {}))
            if e.status == "MET":
                if clock.met_by is None:
                    self.failures.append(f"{what}: never met (it is {clock.status})")
                elif clock.margin is not None and clock.margin.total_seconds() < 0:
                    self.failures.append(f"{what}: met late, by {-clock.margin}")
                if told:
                    self.failures.append(f"{what}: met, yet a reminder reached {sorted(told)}")
                continue
            if clock.overdue_at is None:
                self.failures.append(f"{what}: expected OVERDUE, but it is {clock.status}")
            for agency in sorted(wanted - told):
                self.failures.append(f"{what}: the reminder did not reach {agency}")
            for agency in sorted(told - wanted):
                self.failures.append(f"{what}: the reminder reached {agency}, which was not named")
            acked = set(self.reminder_acks.get(clock.id, {}))
            for agency in sorted((wanted & told) - acked):
                self.failures.append(f"{what}: {agency} did not acknowledge the reminder")
            self.progress(f"{e.obligation}: OVERDUE; reminder to {', '.join(sorted(told))}")

    async def _until(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            await asyncio.sleep(0.05)

    async def _settle(self, catalogue: Catalogue) -> None:
        """Until the tracker has logged every acknowledgement made (or 30 s)."""
        wanted = {(p.message_id, a) for p in self.played for a in p.acknowledged}
        codec = LogCodec(catalogue)

        async def logged() -> bool:
            acked: set[tuple[str | None, str | None]] = set()

            def take(r: Any) -> None:
                for e in codec.entries(r.value):
                    if e.status == Status.ACKNOWLEDGED:
                        acked.add((e.message_id, e.recipient))

            await kafka.read_to_end(self.ns, self.ns.topics.delivery_log, take)
            return wanted <= acked

        try:
            await self._until(logged, 30, "acknowledgements in the delivery log")
        except TimeoutError:
            self.failures.append("the tracker did not log every acknowledgement within 30 s")

    async def _logged(self, catalogue: Catalogue, status: Status) -> set[tuple[str, str]]:
        """(message id, recipient) of every delivery-log entry with ``status``."""
        codec = LogCodec(catalogue)
        found: set[tuple[str, str]] = set()

        def take(r: Any) -> None:
            for e in codec.entries(r.value):
                if e.status == status and e.message_id and e.recipient:
                    found.add((e.message_id, e.recipient))

        await kafka.read_to_end(self.ns, self.ns.topics.delivery_log, take)
        return found

    async def _escalations(self, catalogue: Catalogue) -> None:
        """Steps with ``expect.escalated``: exactly those recipients escalated by the tracker."""
        checked = [p for p in self.played if p.spec.escalated is not None and p.message_id]
        if not checked:
            return
        sc = self.scenario

        def wanted(p: Played) -> set[str]:
            return {sc.agencies[a] for a in p.spec.escalated or ()}

        escalated: set[tuple[str, str]] = set()

        async def all_there() -> bool:
            nonlocal escalated
            escalated = await self._logged(catalogue, Status.ESCALATED)
            return all({(p.message_id, a) for a in wanted(p)} <= escalated for p in checked)

        with contextlib.suppress(TimeoutError):  # what is missing is reported below
            await self._until(all_there, sc.wait_s, "escalations")
        await asyncio.sleep(1.0)  # the tracker escalates every overdue recipient in one pass
        escalated = await self._logged(catalogue, Status.ESCALATED)
        for p in checked:
            got = {a for m, a in escalated if m == p.message_id}
            for agency in sorted(wanted(p) - got):
                self.failures.append(f"{p.spec.id}: {agency} was not escalated")
            for agency in sorted(got - wanted(p)):
                self.failures.append(f"{p.spec.id}: {agency} was escalated and must not have been")

    async def _report(self, catalogue: Catalogue) -> dict[str, Any]:
        codec = LogCodec(catalogue)
        entries: list[Any] = []
        await kafka.read_to_end(
            self.ns, self.ns.topics.delivery_log, lambda r: entries.extend(codec.entries(r.value))
        )
        self.progress("searching the raw bytes of every topic for the case's sensitive values")
        values = sensitive_values(
            catalogue, [(p.spec.event_type or "", p.request) for p in self.played]
        )
        found, scanned = await plaintext_scan(self.ns, values)
        clocks = [
            {**c.as_json(), "reminded": sorted(self.reminded.get(c.id, {}))}
            for c in sorted(
                self.tracker.obligations.clocks.clocks.values(), key=lambda c: c.started_at
            )
            if c.case_ref in {str(p.request.get("case_ref")) for p in self.played}
        ]
        return build_report(
            self.scenario,
            self.ns.topic_prefix,
            self.played,
            entries,
            self.failures,
            searched=len(values),
            scanned=scanned,
            found=found,
            clocks=clocks,
        )


def _errors_text(answer: dict[str, Any]) -> str:
    if "errors" in answer:
        return "; ".join(
            f"{e.get('path') or '(request)'}: {e['problem']}" for e in answer["errors"]
        )
    return str(answer.get("error", answer))


async def _synced_has(conn: Connector, case_ref: str) -> bool:
    await conn.sync()
    return conn.registry.get(case_ref) is not None


async def run(
    admin: KafkaSettings, scenario: Scenario, progress: Callable[[str], None] = lambda _s: None
) -> dict[str, Any]:
    """Play ``scenario``; the report (the JSON that ``cbx scenario run --json`` prints)."""
    return await Runner(admin, scenario, progress).run()
