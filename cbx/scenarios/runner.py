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
import datetime as dt
import re
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from broker import model
from broker.admin import provision
from broker.crypto.keys import AgencyKeys
from broker.delivery_log import LogCodec, Status
from broker.errors import ConfigurationError, PolicyError
from broker.kafka import clients as kafka
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.kafka.topics import check_agency_id
from broker.paths import schemas_dir
from broker.policy.deadlines import Windows, ack_windows, parse_duration
from broker.policy.routing import rules
from broker.router.service import RouterService
from broker.schema.catalogue import Catalogue
from broker.tracker.service import TrackerService
from connectors.gateway.connector import Connector
from connectors.gateway.inbox import Delivered
from connectors.ingest.http import create_app
from connectors.ingest.idempotency import IdempotencyStore

_REF = re.compile(r"\$\{([^}]+)\}")
_STEP_ID = re.compile(r"^[a-z][a-z0-9_-]*$")
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9_]*$")


def scenarios_dir() -> Path:
    return schemas_dir() / "scenarios"


def demo() -> Path:
    """The case ``cbx demo`` plays."""
    return scenarios_dir() / "out-of-area-missing.yaml"


def shipped() -> list[Path]:
    """The example scenarios shipped with cbx."""
    return sorted(scenarios_dir().glob("*.yaml"))


@dataclass(frozen=True)
class StepSpec:
    id: str
    title: str
    sender: str  # alias
    event_type: str | None  # None for a pause
    request: Any
    outcome: str = "accepted"
    recipients: tuple[str, ...] = ()
    not_recipients: tuple[str, ...] = ()
    acknowledge: tuple[str, ...] | None = None  # None: every recipient acknowledges
    pause_s: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    agencies: dict[str, str]
    vars: dict[str, Any]
    steps: tuple[StepSpec, ...]
    windows: Windows | None
    wait_s: float
    source: str


class ScenarioError(ConfigurationError):
    """A scenario file that cannot be played, with where and why."""


def _seconds(text: Any, where: str) -> float:
    try:
        return parse_duration(str(text)).total_seconds()
    except ConfigurationError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def load(path: Path) -> Scenario:
    """Read and check a scenario file (every problem names the step and the key)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path.name}: unreadable: {exc}") from None
    where = path.name
    if not isinstance(doc, dict):
        raise ScenarioError(f"{where}: expected a mapping with name, agencies and steps")
    for key in ("name", "agencies", "steps"):
        if key not in doc:
            raise ScenarioError(f"{where}: missing {key!r}")
    agencies = doc["agencies"]
    if not isinstance(agencies, dict) or not agencies:
        raise ScenarioError(f"{where}: agencies must map aliases to agency ids")
    for alias, agency in agencies.items():
        try:
            check_agency_id(str(agency))
        except ConfigurationError as exc:
            raise ScenarioError(f"{where}: agencies.{alias}: {exc}") from None
    known_types = set(Catalogue.load().event_types())
    windows: Windows | None = None
    if "deadlines" in doc:
        windows = dict(ack_windows())
        for urgency, v in (doc["deadlines"] or {}).items():
            w = f"{where}: deadlines.{urgency}"
            windows[urgency] = None if v is None else dt.timedelta(seconds=_seconds(v, w))
    steps: list[StepSpec] = []
    ids: set[str] = set()
    for n, raw in enumerate(doc["steps"] or [], start=1):
        w = f"{where}: steps[{n}]"
        if not isinstance(raw, dict):
            raise ScenarioError(f"{w}: expected a mapping")
        step_id = str(raw.get("id", f"step{n}"))
        if not _STEP_ID.match(step_id) or step_id in ids:
            raise ScenarioError(f"{w}: id {step_id!r} must be unique, lower-case, like 'missing'")
        ids.add(step_id)
        if "pause" in raw:
            pause = _seconds(raw["pause"], f"{w}.pause")
            title = str(raw.get("title", "pause"))
            steps.append(StepSpec(step_id, title, "", None, None, pause_s=pause))
            continue
        for key in ("sender", "type", "request"):
            if key not in raw:
                raise ScenarioError(f"{w}: missing {key!r}")
        if raw["sender"] not in agencies:
            raise ScenarioError(f"{w}.sender: {raw['sender']!r} is not one of the agencies")
        if raw["type"] not in known_types:
            raise ScenarioError(f"{w}.type: unknown message type {raw['type']!r}")
        expect = raw.get("expect") or {}
        outcome = expect.get("outcome", "accepted")
        if outcome not in ("accepted", "rejected"):
            raise ScenarioError(f"{w}.expect.outcome: accepted or rejected, not {outcome!r}")
        lists = {}
        for key, source in (
            ("recipients", expect),
            ("not_recipients", expect),
            ("acknowledge", raw),
        ):
            value = source.get(key)
            if value is None or isinstance(value, bool):
                continue
            unknown = [a for a in value if a not in agencies]
            if unknown:
                raise ScenarioError(f"{w}.{key}: {', '.join(map(str, unknown))} not agencies")
            lists[key] = tuple(value)
        ack = raw.get("acknowledge", True)
        steps.append(
            StepSpec(
                id=step_id,
                title=str(raw.get("title", raw["type"])),
                sender=raw["sender"],
                event_type=raw["type"],
                request=raw["request"],
                outcome=outcome,
                recipients=lists.get("recipients", ()),
                not_recipients=lists.get("not_recipients", ()),
                acknowledge=None if ack is True else lists.get("acknowledge", ()),
            )
        )
    return Scenario(
        name=str(doc["name"]),
        description=str(doc.get("description", "")),
        agencies={str(k): str(v) for k, v in agencies.items()},
        vars=doc.get("vars") or {},
        steps=tuple(steps),
        windows=windows,
        wait_s=_seconds(doc.get("wait", "60s"), f"{where}: wait"),
        source=where,
    )


class Context:
    """What ``${...}`` can refer to: agencies, vars, earlier steps, fresh values."""

    def __init__(self, scenario: Scenario) -> None:
        self.values: dict[str, Any] = {"agencies": dict(scenario.agencies), "steps": {}}
        self.values["vars"] = {}
        for k, v in scenario.vars.items():
            self.values["vars"][k] = self.resolve(v, f"vars.{k}")

    def lookup(self, ref: str, where: str) -> Any:
        ref = ref.strip()
        if ref == "uuid":
            return str(uuid.uuid4())
        if ref == "random":
            return secrets.token_hex(3).upper()
        if ref == "now":
            return dt.datetime.now(dt.UTC).isoformat()
        if ref == "today":
            return dt.date.today().isoformat()
        node: Any = self.values
        for part in ref.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ScenarioError(f"{where}: ${{{ref}}} refers to nothing (at {part!r})")
        return node

    def resolve(self, value: Any, where: str) -> Any:
        if isinstance(value, str):
            whole = _REF.fullmatch(value)
            if whole:
                return self.lookup(whole.group(1), where)
            return _REF.sub(lambda m: str(self.lookup(m.group(1), where)), value)
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dt.datetime | dt.date):
            return value.isoformat()
        return value


@dataclass
class Played:
    spec: StepSpec
    request: dict[str, Any]
    sent_at: float
    status_code: int
    answer: dict[str, Any]
    message_id: str | None = None
    recipients: list[tuple[str, str]] = field(default_factory=list)
    received: dict[str, float] = field(default_factory=dict)
    acknowledged: dict[str, float] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    escalated: set[str] = field(default_factory=set)


def sensitive_values(catalogue: Catalogue, requests: list[tuple[str, dict[str, Any]]]) -> set[str]:
    """Every string of six or more characters inside a field the schemas mark sensitive.

    Enum symbols (``MEDIUM``, ``CHILDRENS_HOME``) are left out: they are the schemas' public
    vocabulary and appear in clear elsewhere (the risk grade, for one, is not a sensitive field).
    """
    out: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, str) and len(v) >= 6 and not _SYMBOL.match(v):
            out.add(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for event_type, request in requests:
        sensitive = catalogue.latest(event_type).sensitive_fields
        event = request.get("event")
        if isinstance(event, dict):
            for k, v in event.items():
                if k in sensitive:
                    walk(v)
    return out


async def plaintext_scan(settings: KafkaSettings, values: set[str]) -> tuple[int, int]:
    """(matches, records scanned) of ``values`` in the raw bytes of every topic in the namespace."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix + ".")]
    finally:
        await admin.close()
    needles = [v.encode() for v in values]
    found = 0
    scanned = 0

    def check(r: Any) -> None:
        nonlocal found, scanned
        scanned += 1
        blob = (r.key or b"") + (r.value or b"") + b"".join(v for _, v in r.headers)
        found += sum(1 for n in needles if n in blob)

    for name in names:
        await kafka.read_to_end(settings, name, check)
    return found, scanned


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
        self._alias = {v: k for k, v in scenario.agencies.items()}

    def _sink(self, agency: str) -> Any:
        async def sink(d: Delivered) -> None:
            p = self.by_id.get(str(d.header.message_id))
            if p is None:
                return
            p.received.setdefault(agency, time.perf_counter())
            acks = p.spec.acknowledge
            if acks is None or self._alias.get(agency) in acks:
                await self._acks.put((agency, str(d.header.message_id)))

        return sink

    async def _acknowledger(self) -> None:
        # The agency's system confirms at once (in life, a person reads it first).
        while True:
            agency, message_id = await self._acks.get()
            for _ in range(100):  # the connector records the delivery just after the sink
                try:
                    await self.connectors[agency].acknowledge(message_id)
                    break
                except PolicyError:
                    await asyncio.sleep(0.02)
            p = self.by_id.get(message_id)
            if p is not None:
                p.acknowledged.setdefault(agency, time.perf_counter())

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
        tracker = TrackerService(principals.settings_for(self.ns, model.TRACKER), check_every_s=0.5)
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
            finally:
                for c in clients.values():
                    await c.aclose()
                ack_task.cancel()
                router.stop_event.set()
                await tasks[0]
                for conn in self.connectors.values():
                    await conn.stop()
        await self._settle(router.catalogue)
        tracker.stop_event.set()
        await tasks[1]
        return await self._report(router.catalogue)

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
            acks = p.spec.acknowledge
            wanted_acks = {a for a in got if acks is None or self._alias.get(a) in acks} - unknown
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
                e = codec.decode(r.value)
                if e.status == Status.ACKNOWLEDGED:
                    acked.add((e.message_id, e.recipient))

            await kafka.read_to_end(self.ns, self.ns.topics.delivery_log, take)
            return wanted <= acked

        try:
            await self._until(logged, 30, "acknowledgements in the delivery log")
        except TimeoutError:
            self.failures.append("the tracker did not log every acknowledgement within 30 s")

    async def _report(self, catalogue: Catalogue) -> dict[str, Any]:
        codec = LogCodec(catalogue)
        entries: list[Any] = []
        await kafka.read_to_end(
            self.ns, self.ns.topics.delivery_log, lambda r: entries.append(codec.decode(r.value))
        )
        for e in entries:
            p = self.by_id.get(e.message_id or "")
            if p is None:
                continue
            if e.status == Status.ROUTE_GAP:
                p.gaps.append(e.recipient or "")
            elif e.status == Status.ESCALATED and e.recipient:
                p.escalated.add(e.recipient)
        windows = self.scenario.windows if self.scenario.windows is not None else ack_windows()
        messages = []
        for p in self.played:
            if p.message_id is None:
                continue
            window = windows.get(str(p.request.get("urgency", "ROUTINE")))
            window_ms = window.total_seconds() * 1000 if window is not None else None
            recipients = []
            for agency, role in p.recipients:
                delivered = _ms(p.received.get(agency), p.sent_at)
                acked = _ms(p.acknowledged.get(agency), p.sent_at)
                status = (
                    "ESCALATED"
                    if agency in p.escalated
                    else "ACKNOWLEDGED"
                    if acked is not None
                    else "DELIVERED"
                    if delivered is not None
                    else "NOT_REACHED"
                )
                late = agency in p.escalated or (
                    window_ms is not None and acked is not None and acked > window_ms
                )
                if late:
                    limit = f" ({window_ms / 1000:.0f} s)" if window_ms is not None else ""
                    self.failures.append(
                        f"{p.spec.id}: {agency} did not acknowledge {p.spec.event_type} within "
                        f"the {p.request.get('urgency')} deadline{limit}"
                    )
                recipients.append(
                    {
                        "agency": agency,
                        "role": role,
                        "status": status,
                        "delivered_ms": delivered,
                        "acknowledged_ms": acked,
                    }
                )
            messages.append(
                {
                    "step": p.spec.id,
                    "title": p.spec.title,
                    "message_id": p.message_id,
                    "event_type": p.spec.event_type,
                    "sender": self.scenario.agencies[p.spec.sender],
                    "case_ref": p.request.get("case_ref"),
                    "urgency": p.request.get("urgency", "ROUTINE"),
                    "ack_deadline_ms": window_ms,
                    "recipients": recipients,
                    "route_gaps": p.gaps,
                }
            )
        rejections = [
            {
                "step": p.spec.id,
                "title": p.spec.title,
                "event_type": p.spec.event_type,
                "sender": self.scenario.agencies[p.spec.sender],
                "status_code": p.status_code,
                "expected": p.spec.outcome == "rejected",
                "errors": p.answer.get("errors") or [{"problem": p.answer.get("error")}],
            }
            for p in self.played
            if p.message_id is None
        ]
        self.progress("searching the raw bytes of every topic for the case's sensitive values")
        values = sensitive_values(
            catalogue, [(p.spec.event_type or "", p.request) for p in self.played]
        )
        found, scanned = await plaintext_scan(self.ns, values)
        if found:
            self.failures.append(f"{found} sensitive values found in clear on the topics")
        return {
            "scenario": self.scenario.name,
            "namespace": self.ns.topic_prefix,
            "case_refs": sorted({str(p.request.get("case_ref")) for p in self.played}),
            "messages": messages,
            "rejections": rejections,
            "sensitive_values_searched": len(values),
            "records_scanned": scanned,
            "plaintext_found": found,
            "failures": self.failures,
            "ok": not self.failures,
        }


def _ms(at: float | None, since: float) -> float | None:
    return round((at - since) * 1000, 1) if at is not None else None


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
