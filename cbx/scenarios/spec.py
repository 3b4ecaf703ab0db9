"""Scenario files: a case as YAML (agencies, steps, expectations), checked and loaded.

The format is documented in ``docs/scenarios.md``. A later step can refer to what an earlier one
produced (``${steps.placement.case_ref}``, ``${uuid}``), resolved by :class:`Context`.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from broker.errors import ConfigurationError
from broker.kafka.topics import check_agency_id
from broker.paths import schemas_dir
from broker.policy.deadlines import Windows, ack_windows, parse_duration
from broker.policy.obligations import load as load_obligations
from broker.schema.catalogue import Catalogue

_REF = re.compile(r"\$\{([^}]+)\}")
_STEP_ID = re.compile(r"^[a-z][a-z0-9_-]*$")
#: ``${now}``, ``${now-3h}``, ``${today+14d}``: times relative to when the scenario is played.
_OFFSET = re.compile(r"(now|today)(?:\s*([+-])\s*(\S+))?")


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
    #: Exactly these recipients must be escalated by the tracker (None: not checked).
    escalated: tuple[str, ...] | None = None
    #: A phrase the refusal must contain (the step must be refused).
    refused_because: str | None = None


@dataclass(frozen=True)
class ClockExpectation:
    """A statutory clock a step's message starts, and what must become of it."""

    obligation: str
    step: str
    status: str  # MET | OVERDUE
    #: For OVERDUE: the aliases that must receive, and acknowledge, the reminder.
    notified: tuple[str, ...] = ()


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
    #: Obligation id -> a shorter limit for this run (obligations.yaml otherwise).
    limits: dict[str, dt.timedelta] = field(default_factory=dict)
    clocks: tuple[ClockExpectation, ...] = ()


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
        refused_because = expect.get("refused_because")
        if refused_because is not None and not str(refused_because).strip():
            raise ScenarioError(f"{w}.expect.refused_because: give a phrase the refusal contains")
        outcome = expect.get("outcome", "rejected" if refused_because else "accepted")
        if refused_because and outcome != "rejected":
            raise ScenarioError(f"{w}.expect.refused_because: the outcome must be rejected")
        if outcome not in ("accepted", "rejected"):
            raise ScenarioError(f"{w}.expect.outcome: accepted or rejected, not {outcome!r}")
        lists = {}
        for key, source in (
            ("recipients", expect),
            ("not_recipients", expect),
            ("escalated", expect),
            ("acknowledge", raw),
        ):
            value = source.get(key)
            if value is None or isinstance(value, bool):
                continue
            if not isinstance(value, list):
                raise ScenarioError(f"{w}.{key}: expected a list of agency aliases")
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
                escalated=lists.get("escalated"),
                refused_because=str(refused_because) if refused_because else None,
            )
        )
    limits, clocks = _obligations(doc.get("obligations"), where, agencies, ids)
    return Scenario(
        name=str(doc["name"]),
        description=str(doc.get("description", "")),
        agencies={str(k): str(v) for k, v in agencies.items()},
        vars=doc.get("vars") or {},
        steps=tuple(steps),
        windows=windows,
        wait_s=_seconds(doc.get("wait", "60s"), f"{where}: wait"),
        source=where,
        limits=limits,
        clocks=clocks,
    )


def _obligations(
    raw: Any, where: str, agencies: dict[str, Any], steps: set[str]
) -> tuple[dict[str, dt.timedelta], tuple[ClockExpectation, ...]]:
    """The ``obligations`` section: shorter limits for the run, and clocks to expect."""
    if raw is None:
        return {}, ()
    w = f"{where}: obligations"
    if not isinstance(raw, dict) or set(raw) - {"limits", "expect"}:
        raise ScenarioError(f"{w}: expected a mapping with limits and expect")
    known = {o.id for o in load_obligations()}
    limits = {}
    for oid, value in (raw.get("limits") or {}).items():
        if oid not in known:
            raise ScenarioError(f"{w}.limits.{oid}: no such obligation in obligations.yaml")
        limits[str(oid)] = dt.timedelta(seconds=_seconds(value, f"{w}.limits.{oid}"))
    out = []
    for n, e in enumerate(raw.get("expect") or [], start=1):
        we = f"{w}.expect[{n}]"
        if not isinstance(e, dict):
            raise ScenarioError(f"{we}: expected a mapping")
        if e.get("obligation") not in known:
            raise ScenarioError(f"{we}.obligation: no such obligation {e.get('obligation')!r}")
        if e.get("step") not in steps:
            raise ScenarioError(f"{we}.step: no step {e.get('step')!r} in this scenario")
        status = e.get("status")
        if status not in ("MET", "OVERDUE"):
            raise ScenarioError(f"{we}.status: MET or OVERDUE, not {status!r}")
        notified = e.get("notified") or []
        if not isinstance(notified, list) or [a for a in notified if a not in agencies]:
            raise ScenarioError(f"{we}.notified: expected a list of agency aliases")
        if notified and status != "OVERDUE":
            raise ScenarioError(f"{we}.notified: only an OVERDUE clock notifies anyone")
        out.append(ClockExpectation(str(e["obligation"]), str(e["step"]), status, tuple(notified)))
    return limits, tuple(out)


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
        offset = _OFFSET.fullmatch(ref)
        if offset:
            base, sign, amount = offset.group(1), offset.group(2), offset.group(3)
            delta = dt.timedelta(0)
            if sign:
                delta = dt.timedelta(seconds=_seconds(amount, f"{where}: ${{{ref}}}"))
                delta = -delta if sign == "-" else delta
            if base == "today":
                return (dt.date.today() + dt.timedelta(days=delta.days)).isoformat()
            at = dt.datetime.now(dt.UTC).replace(microsecond=0) + delta
            return at.isoformat()
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
